"""Compare lab runs comparison by comparison: the agreement of every prediction, each run's health counts,
wall time and the estimate it printed. Used for the seed-set checks in BENCHMARKS.md:

    python benchmarks/lab_agreements.py runs/lab-figures runs/lab-check20 runs/lab-check30
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def agreements(node: object, path: str = "") -> dict[str, str]:
    """Every ``agreement`` string in results.json, keyed by where it sits (judgement copies left out)."""
    out: dict[str, str] = {}
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "judgement":
                continue
            if key == "agreement" and isinstance(value, str):
                out[path] = value
            elif key == "agreement" and isinstance(value, dict):
                out.update({f"{path}/{k}": v for k, v in value.items() if isinstance(v, str)})
            else:
                out.update(agreements(value, f"{path}/{key}"))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            out.update(agreements(value, f"{path}[{i}]"))
    return out


def main(dirs: list[str]) -> None:
    runs = {d: json.loads((Path(d) / "results.json").read_text()) for d in dirs}
    found = {d: agreements({k: v for k, v in r.items() if k != "meta"}) for d, r in runs.items()}
    keys = sorted(set().union(*found.values()))
    print("| comparison | " + " | ".join(Path(d).name for d in dirs) + " |")
    print("|---|" + "---|" * len(dirs))
    same = 0
    for key in keys:
        values = [found[d].get(key, "-") for d in dirs]
        same += (
            len({v for v in values if v != "-"}) == 1
        )  # a run without the comparison (--only) is no answer
        print(f"| {key} | " + " | ".join(values) + " |")
    print(f"\n{same} of {len(keys)} agreements identical across the {len(dirs)} runs that hold them\n")
    for d, r in runs.items():
        t = json.loads((Path(d) / "timings.json").read_text())
        steps = sum(run["steps"] for run in t["runs"].values())
        wall, expected = t["wall_seconds"], t["expected_seconds"]
        print(
            f"{d}: seeds {r['meta'].get('seeds')}, wall {wall:.0f} s, expected {expected:.0f} s "
            f"({(expected - wall) / wall:+.0%}), {steps} steps, health {r['meta']['health']}"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
