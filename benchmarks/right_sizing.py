"""Right-sizing (issue 3): how accuracy and training speed change with U-Net width and depth on `scale`.

Each model trains 200 steps (batch 16, AdamW 3e-3, Dice+CE) on scale:size=48,small=6,large=16 with 3 seeds, one
thread per run, two runs at a time; validation mIoU mean +- 95 % CI and measured img/s, all in this run.
Run: ``.venv/bin/python benchmarks/right_sizing.py`` (about 6 minutes on 2 cores).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from atrous.lab.jobs import Job, run_jobs
from atrous.lab.stats import mean_ci

MODELS = (
    "unet:width=8,depth=2",
    "unet:width=16,depth=2",
    "unet:width=32,depth=2",
    "unet:width=16,depth=3",
    "seed_unet",
)
DATA = "scale:size=48,n=400,small=6,large=16"
SEEDS = (0, 1, 2)


def main() -> None:
    jobs = [Job(m, DATA, s, 200, 16, 3e-3) for m in MODELS for s in SEEDS]
    with tempfile.TemporaryDirectory() as tmp:
        results = run_jobs(jobs, Path(tmp), workers=2)
    base = None
    print(
        f"{'model':26s} {'params':>10s} {'GFLOPs':>8s} {'img/s':>7s} {'vs seed':>8s}  val mIoU (3 seeds)  per seed"
    )
    rows = []
    for m in MODELS:
        runs = [results[Job(m, DATA, s, 200, 16, 3e-3).key] for s in SEEDS]
        img_s = sum(r["timing"]["train_img_s"] for r in runs) / len(runs)
        rows.append((m, runs, img_s))
        if m == "seed_unet":
            base = img_s
    for m, runs, img_s in rows:
        miou = mean_ci([r["final"]["miou"] for r in runs])
        print(
            f"{m:26s} {runs[0]['params']:>10,d} {runs[0]['flops'] / 1e9:>8.3f} {img_s:>7.0f} {img_s / base:>7.1f}x"
            f"  {miou!s:18s}  {[round(r['final']['miou'], 3) for r in runs]}"
        )


if __name__ == "__main__":
    main()
