"""Re-read a convergence audit's long runs under the current stopping rule, without training them again.

    python benchmarks/lab_audit_reread.py --seeds 118,119 --out runs/lab-audit-118119 [--only ex3] [--preset quick]
        [--audit-steps 1536]

The audit's long runs train without the rule (``audit.long_job``), so their curves do not depend on it: the rule
is read off them afterwards (``audit.audit_run``). This script finds each configuration's long run by its job key
under ``OUT/runs`` (the directory ``atrous lab --audit --out OUT`` wrote), rebuilds its curves from the run's
``metrics.jsonl``, judges them with the rule and reach (out-of-reach classes, floors) of the code it runs with, and
prints the audit's table and summary. ``--seeds`` and ``--only`` must be those of the audit, ``--audit-steps`` the
step cap it ran with if the preset's has changed since (the long runs are found by it, and judged at today's cap:
a rule that stops a run before the end of its long run can be read off it). Used for the floor clause of session 13,
which changed after the audit of seeds 118 and 119 had started, and for the 72-epoch cap of session 14 (the audit
had run at 48, its long runs are 144 epochs: twice today's cap; BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

from atrous.errors import AtrousError
from atrous.lab import audit, convergence
from atrous.lab.jobs import reach_for
from atrous.lab.presets import get_preset
from atrous.lab.runner import EXERCISES, choose


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", required=True, help="the audit's seeds, comma-separated (e.g. 40,41,42)")
    ap.add_argument("--out", required=True, help="the audit's --out directory")
    ap.add_argument("--only")
    ap.add_argument("--preset", default="quick")
    ap.add_argument("--audit-steps", type=int, help="the step cap the audit ran with (default: the preset's)")
    args = ap.parse_args()
    try:
        p = get_preset(args.preset)
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]  # the audit's seeds as it printed them
    except (AtrousError, ValueError) as e:
        ap.error(f"{e} (--preset: one of the lab's presets; --seeds: integers, comma-separated)")
    if args.audit_steps is not None and args.audit_steps < 1:
        ap.error(f"--audit-steps must be >= 1, got {args.audit_steps}")
    audited = args.audit_steps or p.steps
    # The rule is read off the long runs' first epochs up to today's cap, at the constant rate: they must go past it
    # and past the annealed epochs at their end.
    needed = p.steps + convergence.ANNEAL_EPOCHS * (p.n // p.batch_size)
    if audit.FACTOR * audited < needed:
        ap.error(
            f"--audit-steps {audited}: the audit's long runs ({audit.FACTOR * audited} steps) do not reach past "
            f"today's cap and their annealed epochs ({needed} steps), so they cannot judge the rule"
        )
    # A run two exercises share (the U-Nets of Exercises 2 and 3) is one long run, as in the audit
    # (``calibrate.longest_first``, whose label it keeps).
    jobs = list({j.key: j for key in choose(args.only) for j in EXERCISES[key].jobs(p, seeds)}.values())
    rows = []
    for job in jobs:
        run_dir = Path(args.out) / "runs" / audit.long_job(replace(job, steps=audited)).key
        metrics = run_dir / "metrics.jsonl"
        if not metrics.exists():
            ap.error(f"{metrics}: no long run of {job.label!r}; give the audit's --seeds, --only and --out")
        history = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
        reach = reach_for(job.model, job.data, job.seed)
        result = {
            "history": history,
            "out_of_reach": sorted(reach.out_of_reach),
            "floors": list(reach.floors),
        }
        rows.append(audit.audit_run(job, result, history[0]["step"]))
    summary = audit.summarize(rows)
    summary.update(preset=p.name, factor=audit.FACTOR * audited / p.steps, rule=convergence.RULE)
    print(audit.markdown(summary, rows))


if __name__ == "__main__":
    main()
