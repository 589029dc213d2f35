"""Train one lab configuration past its cap without the stopping rule, and show where the rule would have stopped.

    python benchmarks/lab_long_run.py --model SPEC --data SPEC --seeds 2,10,141 --epochs 96 [--clip 5]

Each seed trains ``--epochs`` epochs at the preset's settings (its last 3 at 0.1x the rate, like the convergence
audit's long runs), two single-threaded processes at a time. Per seed it prints the validation mIoU every 4
epochs, every fall of more than 0.2 between two epochs (a collapse), where the rule stops on the first
``cap`` epochs of the curve and how far that is from the end. ``--clip`` overrides the preset's gradient clipping
(0: off). Used for the clipping study of session 12 (BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from atrous.lab import common, convergence
from atrous.lab.jobs import curves, reach_of, run_jobs
from atrous.lab.presets import get_preset

COLLAPSE = 0.2


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--seeds", required=True, help="comma-separated")
    ap.add_argument("--epochs", type=int, default=96)
    ap.add_argument("--clip", type=float, help="gradient clipping norm (default: the preset's)")
    ap.add_argument("--preset", default="quick")
    ap.add_argument("--out", default="runs/lab-long")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    p = get_preset(args.preset)
    clip = p.clip_grad if args.clip is None else args.clip
    epoch_steps = p.n // p.batch_size
    jobs = [
        replace(
            common.job(p, args.model, args.data, int(s), f"seed {s}"),
            steps=args.epochs * epoch_steps,
            stop_early=False,
            clip_grad=clip,
        )
        for s in args.seeds.split(",")
    ]
    cap = p.steps // epoch_steps
    print(
        f"{args.model} on {args.data}, {args.epochs} epochs, clip {clip:g}; the rule read on the first {cap}"
    )

    def report(job, result, done, total) -> None:
        miou, loss = curves(result["history"])
        ious = [h["val"]["iou"] for h in result["history"]]
        reach = reach_of(result)
        stop = convergence.stop_epoch(miou[:cap], loss[:cap], ious[:cap], reach)
        health = convergence.health(miou[:stop], loss[:stop], ious[stop - 1], reach)
        falls = [
            (e + 1, miou[e - 1], miou[e]) for e in range(1, len(miou)) if miou[e - 1] - miou[e] > COLLAPSE
        ]
        print(
            f"seed {job.seed}: "
            + " ".join(f"{m:.2f}" for m in miou[3::4])
            + f" | end {miou[-1]:.3f}, best {max(miou):.3f}; rule: epoch {stop} at {miou[stop - 1]:.3f} ({health}), "
            f"{miou[-1] - miou[stop - 1]:+.3f} to the end"
            + "".join(f"; collapse at epoch {e}: {a:.3f} -> {b:.3f}" for e, a, b in falls),
            flush=True,
        )

    run_jobs(jobs, Path(args.out), args.workers, report)


if __name__ == "__main__":
    main()
