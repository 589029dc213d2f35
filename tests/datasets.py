"""Small real-format datasets written by the tests themselves."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image


def folder_dataset(root: Path, bad: bool = False) -> Path:
    """Six random 20 x 22 RGB images with binary masks; with ``bad`` one mask is missing."""
    rng = np.random.default_rng(0)
    for i in range(6):
        (root / "images").mkdir(parents=True, exist_ok=True)
        (root / "masks").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (20, 22, 3), dtype=np.uint8)).save(root / "images" / f"{i}.png")
        if not (bad and i == 3):
            Image.fromarray((rng.integers(0, 2, (20, 22)) * 1).astype(np.uint8)).save(
                root / "masks" / f"{i}.png"
            )
    (root / "classes.json").write_text(json.dumps(["bg", "fg"]))
    return root
