"""Write a synthetic task as a folder dataset (images/, masks/, classes.json), e.g. for the README's
`atrous data stats` and `atrous suggest` examples:

    .venv/bin/python scripts/make_folder_dataset.py multiscale:size=96,n=64 runs/demo-data
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from atrous.data import build_dataset


def main(spec: str, out: str) -> None:
    ds = build_dataset(spec)
    root = Path(out)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(exist_ok=True)
    for i in range(len(ds)):
        image, mask = ds[i]
        # The noisy float image as 8-bit RGB around mid-grey: what a real folder dataset holds.
        rgb = np.clip(128 + 32 * image[:3].permute(1, 2, 0).numpy(), 0, 255).astype(np.uint8)
        Image.fromarray(rgb).save(root / "images" / f"{i:04d}.png")
        Image.fromarray(mask.numpy().astype(np.uint8)).save(root / "masks" / f"{i:04d}.png")
    (root / "classes.json").write_text(json.dumps(list(ds.class_names)))
    print(f"wrote {len(ds)} image/mask pairs of {spec} to {root}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit("usage: make_folder_dataset.py SPEC OUT_DIR")
    main(sys.argv[1], sys.argv[2])
