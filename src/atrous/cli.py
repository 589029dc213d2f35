"""Command-line interface: thin sub-commands over library functions.

User errors (``AtrousError``) print one line to stderr and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence

from rich.console import Console

from atrous.errors import AtrousError, InputShapeError

console = Console()


def parse_ints(text: str, what: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in re.split(r"[,x]", text.strip()))
    except ValueError:
        raise InputShapeError(f"{what} {text!r} must be comma-separated integers, e.g. 3,224,224") from None


def cmd_rf(args: argparse.Namespace) -> int:
    from atrous.models.registry import resolve_model
    from atrous.rf import analyze
    from atrous.rf.render import layers_table, outputs_table

    shape = parse_ints(args.input, "--input")
    report = analyze(
        resolve_model(args.model), shape, train_view=args.train_view, ignore_statistics=args.ignore_stats
    )
    at = parse_ints(args.at, "--at") if args.at else None
    support = None
    if at is not None:
        out = report.output(args.output)
        spatial = out.shape[2:]
        if len(at) != len(spatial) or any(not 0 <= i < n for i, n in zip(at, spatial)):
            raise InputShapeError(
                f"--at {args.at} is outside output '{out.name}' of spatial size {tuple(spatial)}"
            )
        grid = report.support(at, args.output)
        idx = [
            ax.nonzero()[0]
            for ax in (grid.any(axis=tuple(j for j in range(grid.ndim) if j != i)) for i in range(grid.ndim))
        ]
        support = {
            "index": list(at),
            "pixels": int(grid.sum()),
            "box": [[int(i[0]), int(i[-1])] if len(i) else None for i in idx],
        }
    if args.json:
        data = report.to_json()
        if support is not None:
            data["support_at"] = support
        print(json.dumps(data, indent=2))
        return 0
    if args.layers:
        console.print(layers_table(report))
    console.print(outputs_table(report))
    if support is not None:
        console.print(
            f"in-image support of output pixel {tuple(at)}: {support['pixels']} input pixels, "
            f"bounding box {support['box']}"
        )
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from atrous.models.summary import summarize

    shape = parse_ints(args.input, "--input")
    names = [args.name] if args.name else None
    rows = summarize(shape, names)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    from rich.table import Table

    table = Table(title=f"atrous zoo (FLOPs and RF at input {','.join(map(str, shape))})")
    for col in ("name", "task", "params", "GFLOPs", "RF", "out stride", "min size", "summary"):
        table.add_column(col, overflow="fold")
    for r in rows:
        rf = "global" if r["rf_global"] else "×".join(map(str, sorted(set(r["rf"]))))
        table.add_row(
            r["name"],
            r["task"],
            f"{r['params']:,}",
            f"{r['flops'] / 1e9:.3f}",
            rf,
            str(r["output_stride"]),
            str(r["min_size"]),
            r["summary"],
        )
    console.print(table)
    return 0


def cmd_schedule(args: argparse.Namespace) -> int:
    from atrous.rf import schedule

    if args.suggest is not None:
        results = schedule.suggest(args.suggest, args.kernel, limit=args.limit)
    else:
        if not args.rates:
            raise AtrousError("give rates to check (atrous schedule 1,2,5) or --suggest TARGET_RF")
        results = [schedule.check(list(parse_ints(args.rates, "rates")), args.kernel)]
    if args.json:
        print(json.dumps([r.to_json() for r in results], indent=2))
        return 0
    from rich.table import Table

    table = Table(title=f"Dilation schedules, kernel {args.kernel}")
    for col in ("rates", "RF", "holes", "hole positions", "HDC rule"):
        table.add_column(col, overflow="fold")
    for r in results:
        table.add_row(
            ",".join(map(str, r.rates)),
            str(r.rf),
            str(len(r.holes)),
            str(list(r.holes)) if r.holes else "-",
            r.hdc.verdict,
        )
    console.print(table)
    return 0


def cmd_data_check(args: argparse.Namespace) -> int:
    from atrous.data.specs import check_dataset, detect_layout

    spec = args.path if ":" in args.path else detect_layout(args.path)
    total, problems = check_dataset(spec, args.split)
    for p in problems:
        print(f"{p.kind:15s} {p.line()}")
    verdict = "no problems" if not problems else f"{len(problems)} problem(s)"
    print(f"{spec}: {total} image/mask pairs, {verdict}")
    return 1 if problems else 0


def cmd_data_preview(args: argparse.Namespace) -> int:
    from atrous.data import build_dataset
    from atrous.data.preview import preview

    path = preview(build_dataset(args.spec, split=args.split), args.out, args.count)
    console.print(f"wrote {path}")
    return 0


def cmd_lab(args: argparse.Namespace) -> int:
    from atrous.lab.runner import run_lab

    run_lab(preset=args.preset, out=args.out, only=args.only, console=console)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from atrous import bench

    suites = list(bench.SUITES) if args.suite == "all" else [args.suite]
    # With --json the tables go to stderr so stdout stays machine-readable.
    results = bench.run(suites, Console(stderr=True) if args.json else console)
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="atrous", description="Dilated convolutions, exactly.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("rf", help="exact receptive fields of a model")
    p.add_argument("model", help="zoo spec (convstack:rates=1,2,5) or import path package.module:factory")
    p.add_argument("--input", required=True, help="input shape C,H,W (batch excluded)")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.add_argument(
        "--layers", action="store_true", help="also show the RF after every layer (JSON always has them)"
    )
    p.add_argument(
        "--train-view", action="store_true", help="BatchNorm with batch statistics (RF becomes global)"
    )
    p.add_argument("--ignore-stats", action="store_true", help="treat normalisation statistics as constants")
    p.add_argument("--at", help="also give the exact in-image support of this output pixel, e.g. 16,16")
    p.add_argument("--output", help="which model output --at refers to (default: the first)")
    p.set_defaults(func=cmd_rf)

    p = sub.add_parser("models", help="list the zoo: parameters, FLOPs, receptive field, output stride")
    p.add_argument("name", nargs="?", help="one model spec (default: every registered name)")
    p.add_argument("--input", default="3,64,64", help="input shape C,H,W for FLOPs and RF (default 3,64,64)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("schedule", help="check a dilation schedule for holes, or suggest hole-free ones")
    p.add_argument("rates", nargs="?", help="comma-separated rates, e.g. 1,2,5")
    p.add_argument("--kernel", type=int, default=3)
    p.add_argument(
        "--suggest", type=int, metavar="TARGET_RF", help="shortest hole-free schedules reaching this RF"
    )
    p.add_argument("--limit", type=int, default=5)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_schedule)

    p = sub.add_parser("data", help="check or preview datasets")
    data = p.add_subparsers(dest="data_command", required=True)
    q = data.add_parser("check", help="scan a dataset and list every problem (exit 1 if any)")
    q.add_argument("path", help="dataset folder (folder or VOC layout, detected) or a spec such as voc:/path")
    q.add_argument("--split", help="VOC split (default train)")
    q.set_defaults(func=cmd_data_check)
    q = data.add_parser("preview", help="write a grid of samples with mask overlays")
    q.add_argument("spec", help="dataset spec, e.g. scale:size=64 or folder:/path")
    q.add_argument("--out", default="preview.png")
    q.add_argument("--count", type=int, default=16)
    q.add_argument("--split")
    q.set_defaults(func=cmd_data_preview)

    p = sub.add_parser("lab", help="run the exercises and write one report")
    p.add_argument("--preset", default="quick", choices=["tiny", "quick", "full"])
    p.add_argument("--out", default="runs/lab", help="report directory")
    p.add_argument("--only", help="comma-separated exercises, e.g. ex1")
    p.set_defaults(func=cmd_lab)

    p = sub.add_parser("bench", help="speed benchmarks, as ratios against a baseline in the same run")
    p.add_argument("suite", nargs="?", default="all", choices=["all", "rf", "models"])
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except AtrousError as exc:
        print(f"atrous: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
