"""What the lab's seed count can detect, comparison by comparison, from the spread that lab runs measured.

    python benchmarks/lab_power.py runs/lab-design8 [runs/lab-check180 ...]

For every registered comparison it pools, over the runs given, the per-seed differences' variance (recovered
from each run's 95 % CI of the mean difference, which is t * sd / sqrt(n)) and the mean difference, and prints:

* a predicted difference (better / worse): the power of the lab's paired t-test at the runs' seed count when
  the true difference is the pooled mean, and the seeds it would need for power 0.8 at that difference
  (``stats.power_paired``, ``stats.seeds_needed``: exact, noncentral t);
* a predicted tie: the power of TOST at +-0.05 when the true difference is the pooled mean
  (``stats.equivalence_power``), and the seeds it would need for 0.8.

Plug-in power (the effect and spread measured are taken as the truth) says which comparisons the design can be
expected to answer and which will come out ``undetermined`` on some seed sets; it is not a test.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from atrous.lab import stats

MAX_SEEDS = 20


def judgements(node: object, path: str = "") -> dict[str, dict]:
    """Every judgement in results.json (a dict with ``predicted`` and ``comparison``), keyed by its place."""
    out: dict[str, dict] = {}
    if isinstance(node, dict):
        if "predicted" in node and "comparison" in node:
            return {path: node}
        for key, value in node.items():
            if key != "meta":
                out.update(judgements(value, f"{path}/{key}"))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            out.update(judgements(value, f"{path}[{i}]"))
    return out


def spread(diff: dict) -> float:
    """SD of the per-seed differences behind a mean-and-CI (``stats.mean_ci``)."""
    n = diff["n"]
    return diff["ci95"] * math.sqrt(n) / stats.t_quantile(0.975, n - 1)


def needed(predicted: str, effect: float, sd: float) -> str:
    for n in range(2, MAX_SEEDS + 1):
        if power(predicted, effect, sd, n) >= stats.POWER:
            return str(n)
    return f"> {MAX_SEEDS}"


def power(predicted: str, effect: float, sd: float, n: int) -> float:
    if predicted == "tie":
        return stats.equivalence_power(sd, n, stats.RELEVANT, true_diff=effect)
    return stats.power_paired(effect, sd, n)


def main(dirs: list[str]) -> None:
    found = [judgements(json.loads((Path(d) / "results.json").read_text())) for d in dirs]
    keys = sorted(set().union(*found))
    print(
        "| comparison | predicted | seeds | mean difference | SD of per-seed differences | power at these seeds | "
        "seeds for power 0.8 |"
    )
    print("|---|---|---|---|---|---|---|")
    enough = 0
    for key in keys:
        here = [f[key] for f in found if key in f]
        predicted, n = {j["predicted"] for j in here}, {j["comparison"]["diff"]["n"] for j in here}
        if len(predicted) > 1 or len(n) > 1:
            raise SystemExit(
                f"{key}: the runs differ in its prediction ({sorted(predicted)}) or seed count ({sorted(n)}); "
                "pool only runs of the same design"
            )
        (pred,), (seeds,) = predicted, n
        if seeds < 2:
            raise SystemExit(f"{key}: one seed per run has no spread to pool; give runs of two seeds or more")
        diffs = [j["comparison"]["diff"] for j in here]
        effect = sum(d["mean"] for d in diffs) / len(diffs)
        sd = math.sqrt(sum(spread(d) ** 2 for d in diffs) / len(diffs))
        p = power(pred, effect, sd, seeds)
        enough += p >= stats.POWER
        print(
            f"| {key} | {pred} | {seeds} | {effect:+.3f} | {sd:.3f} | {p:.2f} | {needed(pred, effect, sd)} |"
        )
    print(
        f"\n{enough} of {len(keys)} comparisons have power >= {stats.POWER} at the seeds they had "
        f"(spread pooled over {len(dirs)} run(s))"
    )


if __name__ == "__main__":
    main(sys.argv[1:])
