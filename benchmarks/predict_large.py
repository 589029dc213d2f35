"""Peak memory and throughput of ``atrous.predict`` on large TIFFs (issue 20).

For each size: an RGB TIFF (tiled 256 x 256, zlib) is generated tile by tile, so making it never holds the
image; then a fresh Python process segments it with a small zoo model (random weights) through
``atrous.predict`` (exact tiles, mask written core by core as a tiled TIFF, downscaled overlay) and reports:

* peak RSS of that process (``resource.getrusage``: the whole process, Python and torch included);
* throughput, and the model's own forward time inside the run (every ``model(x)`` call on the same tiles,
  timed): ``forward share`` = forward time / total time is the fraction of the throughput of the model's
  batched forward that the pipeline keeps (the rest is reading, stitching, writing, the preview);
* margin overhead: pixels the model computes per pixel kept (the exact margins).

Run: ``OMP_NUM_THREADS=2 .venv/bin/python benchmarks/predict_large.py --sizes 4000,10000,20000`` (CPU; about
4 minutes per 100 Mpx for unet:width=8,depth=2 on the loaded 2-core machine; the 20,000² input is 0.7 GB).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

TILE = 256


def make_tiff(path: Path, n: int) -> None:
    """An n x n RGB TIFF of smooth stripes and discs, generated one 256 x 256 tile at a time."""
    import tifffile

    if path.exists():
        return

    def tiles():
        yy, xx = np.mgrid[0:TILE, 0:TILE].astype(np.float32)
        for y in range(0, n, TILE):
            for x in range(0, n, TILE):
                gy, gx = yy + y, xx + x
                r = 127 + 100 * np.sin(gx / 37.0) * np.cos(gy / 53.0)
                g = 127 + 100 * np.sin((gx + gy) / 91.0)
                disc = ((gx % 300 - 150) ** 2 + (gy % 300 - 150) ** 2) < 80**2
                b = np.where(disc, 230, 30)
                tile = np.stack([r, g, b], axis=-1).astype(np.uint8)
                yield tile[: min(TILE, n - y), : min(TILE, n - x)]

    tmp = path.with_suffix(".partial.tif")
    tifffile.imwrite(
        tmp,
        tiles(),
        shape=(n, n, 3),
        dtype=np.uint8,
        tile=(TILE, TILE),
        photometric="rgb",
        compression="zlib",
        compressionargs={"level": 1},
        bigtiff=n * n * 3 > 2**31,
    )
    os.replace(tmp, path)


CHILD = r"""
import json, resource, sys, time, torch
import atrous
spec, src, out, tile, batch = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
torch.manual_seed(0)
model = atrous.create_model(spec).eval()
forward = {"s": 0.0, "calls": 0, "pixels": 0}
inner = model.forward
def timed(x):
    t = time.perf_counter()
    y = inner(x)
    forward["s"] += time.perf_counter() - t
    forward["calls"] += 1
    forward["pixels"] += x.shape[0] * x.shape[2] * x.shape[3]
    return y
model.forward = timed
# The engine's analyses (plan_tiles) run the model too: timed apart, as "plan", not as forward on tiles.
import atrous.train.predict as P
plan_tiles = P.plan_tiles
plan = {"s": 0.0}
def planned(*a, **k):
    t, before = time.perf_counter(), forward["s"]
    try:
        return plan_tiles(*a, **k)
    finally:
        plan["s"] += time.perf_counter() - t
        forward["s"] = before
        forward["calls"] = forward["pixels"] = 0
P.plan_tiles = planned
t0 = time.perf_counter()
result = atrous.predict(model, src, out, tile=tile if tile == "auto" else int(tile), batch=batch,
                        overwrite=True, progress=False)
total = time.perf_counter() - t0
h = w = None
import tifffile
with tifffile.TiffFile(src) as tif:
    h, w = tif.pages.first.shape[:2]
print(json.dumps({
    "seconds": total, "forward_s": forward["s"], "plan_s": plan["s"], "calls": forward["calls"],
    "computed_px": forward["pixels"],
    "pixels": h * w, "tiles": result.plan.count(h, w), "plan": result.plan.describe(),
    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
}))
"""


def run(size: int, spec: str, tile: str, batch: int, workdir: Path) -> dict:
    src = workdir / f"rgb_{size}.tif"
    t = time.perf_counter()
    make_tiff(src, size)
    made = time.perf_counter() - t
    out = workdir / f"mask_{size}.tif"
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, spec, str(src), str(out), tile, str(batch)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if proc.returncode:
        raise SystemExit(f"size {size}: the prediction process failed:\n{proc.stderr[-3000:]}")
    record = json.loads(proc.stdout.strip().splitlines()[-1])
    record.update(size=size, generate_s=made, mask_mb=out.stat().st_size / 1e6)
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="4000,10000,20000")
    parser.add_argument("--model", default="unet:width=8,depth=2")
    parser.add_argument("--tile", default="auto")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--workdir", default="/tmp/predict_large")
    args = parser.parse_args()
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    rows = []
    print(
        f"model {args.model}, tile {args.tile}, batch {args.batch}, OMP_NUM_THREADS "
        f"{os.environ.get('OMP_NUM_THREADS', '2')}",
        flush=True,
    )
    for size in (int(s) for s in args.sizes.split(",")):
        r = run(size, args.model, args.tile, args.batch, workdir)
        rows.append(r)
        print(json.dumps(r), flush=True)
    print()
    print(f"plan: {rows[0]['plan']}")
    print(
        "| image | tiles | wall (s) | plan (s) | peak RSS (MB) | Mpx/s | forward share | share after plan "
        "| computed / kept px | mask TIFF (MB) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['size']:,}² | {r['tiles']:,} | {r['seconds']:.0f} | {r['plan_s']:.1f} | {r['peak_rss_mb']:.0f} "
            f"| {r['pixels'] / r['seconds'] / 1e6:.2f} | {r['forward_s'] / r['seconds']:.2f} "
            f"| {r['forward_s'] / (r['seconds'] - r['plan_s']):.2f} | {r['computed_px'] / r['pixels']:.2f} "
            f"| {r['mask_mb']:.1f} |"
        )


if __name__ == "__main__":
    main()
