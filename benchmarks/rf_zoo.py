"""The receptive-field zoo as a table for BENCHMARKS.md: every model of ``tests/zoo/zoo.py`` (timm,
torchvision, Hugging Face transformers, segmentation_models_pytorch; random weights, nothing downloaded),
analysed at a small input and checked against the gradient oracle at the centre and a corner.

    make test-zoo                  # builds .venv-zoo (the zoo extra) and runs the same sample as tests
    .venv-zoo/bin/python benchmarks/rf_zoo.py [--only NAME ...] [--limit 30] [--markdown]

Seconds are the analysis alone (recording and propagation, on 2 CPU cores shared with other work here); the
oracle's float64 forward and backward passes are not counted.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "zoo")]

from zoo import Result, check, sample  # noqa: E402


def row(r: Result, markdown: bool) -> str:
    secs = "" if r.seconds is None else f"{r.seconds:.2f}"
    what = r.verdict
    if r.entry.known_gap:
        passes = r.verdict in ("exact", "over")
        what += f" ({'listed as a known gap, passes now' if passes else 'known gap'}: {r.entry.known_gap})"
    detail = r.detail.replace("\n", " ")
    if r.notes:
        detail += " | note: " + " / ".join(r.notes)
    if len(detail) > 220:
        detail = detail[:217] + "..."
    cells = [r.entry.family, r.entry.name, r.input, what, secs, detail]
    if markdown:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"
    return f"{cells[0]:<13} {cells[1]:<30} {cells[2]:<8} {what:<10} {secs:>7}  {detail}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="model names (substrings) to run")
    parser.add_argument("--limit", type=float, default=30.0, help="seconds per analysis before 'slow'")
    parser.add_argument("--markdown", action="store_true", help="a Markdown table")
    args = parser.parse_args()
    entries = [e for e in sample() if not args.only or any(s in e.name for s in args.only)]
    if args.markdown:
        print("| family | model | input | verdict | analysis s | detail |")
        print("|---|---|---|---|---:|---|")
    start = time.perf_counter()
    results = []
    for entry in entries:
        r = check(entry, args.limit)
        results.append(r)
        print(row(r, args.markdown), flush=True)
    counts: dict[str, int] = {}
    for r in results:
        counts[r.verdict] = counts.get(r.verdict, 0) + 1
    summary = ", ".join(f"{n} {v}" for v, n in sorted(counts.items()))
    print(f"\n{len(results)} models: {summary}; {time.perf_counter() - start:.0f} s in all", file=sys.stderr)
    sys.exit(1 if counts.get("UNDER") else 0)


if __name__ == "__main__":
    main()
