"""Command-line interface: thin sub-commands over library functions.

User errors (``AtrousError``) print one line to stderr and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from rich.console import Console

from atrous.errors import AtrousError, InputShapeError

if TYPE_CHECKING:
    from atrous.train.config import TrainConfig as TrainConfigT

console = Console()


def parse_ints(text: str, what: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in re.split(r"[,x]", text.strip()))
    except ValueError:
        raise InputShapeError(f"{what} {text!r} must be comma-separated integers, e.g. 3,224,224") from None


def model_kwargs(args: argparse.Namespace) -> dict:
    """``--model-kwargs`` as a dict: arguments a spec string cannot spell (or that are easier in JSON)."""
    from atrous.spec import parse_json_kwargs

    return parse_json_kwargs(args.model_kwargs, "--model-kwargs")


def cmd_rf(args: argparse.Namespace) -> int:
    from atrous.models.registry import resolve_model
    from atrous.rf import analyze
    from atrous.rf.render import layers_table, outputs_table

    shape = parse_ints(args.input, "--input")
    model = resolve_model(args.model, **model_kwargs(args))
    report = analyze(model, shape, train_view=args.train_view, ignore_statistics=args.ignore_stats)
    # An unknown name fails here, with the list of names, even without --at.
    chosen = report.output(args.output)
    at = parse_ints(args.at, "--at") if args.at else None
    support = None
    if at is not None:
        out = chosen
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
            "output": out.name,
            "index": list(at),
            "pixels": int(grid.sum()),
            "box": [[int(i[0]), int(i[-1])] if len(i) else None for i in idx],
        }
    pictures(report, args, at)
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
        of = f" of '{chosen.name}'" if len(report.outputs) > 1 else ""
        console.print(
            f"in-image support of output pixel {tuple(at)}{of}: {support['pixels']} input pixels, "
            f"bounding box {support['box']}"
        )
    return 0


def pictures(report, args: argparse.Namespace, at: tuple[int, ...] | None) -> None:
    """``--plot`` and ``--html``: the figure and the page of the chosen output (messages to stderr, so that
    ``--json`` keeps stdout machine-readable)."""
    if args.plot:
        from atrous.rf.pictures import rf_figure

        path = rf_figure(report, args.plot, at, args.output)
        print(f"wrote {path}", file=sys.stderr)
    if args.html:
        from atrous.rf.page import write_page

        path = write_page(report, args.html, args.output, title=f"{args.model} at input {args.input}")
        print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)", file=sys.stderr)


def custom_model_row(spec: str, shape: tuple[int, ...]) -> dict:
    """A ``models`` row for a model outside the zoo (an import path): what the engine and the FLOP counter
    measure. It declares no task or minimum size; its output stride is the RF engine's (first output)."""
    from atrous.flops import count_flops, count_params
    from atrous.models.registry import resolve_model
    from atrous.rf import analyze

    model = resolve_model(spec)
    out = analyze(model, shape).outputs[0]
    strides = [None if s is None else int(s) if s.denominator == 1 else float(s) for s in out.stride]
    doc = " ".join((type(model).__doc__ or "").split("\n\n")[0].split())  # its first paragraph
    return {
        "name": spec,
        "task": "custom",
        "params": count_params(model),
        "flops": count_flops(model, shape),
        "rf": out.rf,
        "rf_global": out.global_,
        "holes": [a.hole_count for a in out.axes],
        "output_stride": strides[0] if len(set(strides)) == 1 else strides,
        "min_size": None,
        "summary": f"{type(model).__name__}: {doc}" if doc else type(model).__name__,
    }


def cmd_models(args: argparse.Namespace) -> int:
    from atrous.models.registry import list_models
    from atrous.models.summary import models_table, summarize
    from atrous.spec import split_spec, with_kwargs

    shape = parse_ints(args.input, "--input")
    kwargs = model_kwargs(args)
    if kwargs and not args.name:
        raise AtrousError("--model-kwargs needs one model: atrous models NAME --model-kwargs '{...}'")
    # Specs read Python literals back, so the JSON arguments join the spec (and the row's name shows them).
    spec = with_kwargs(args.name, kwargs) if args.name else None
    if spec and split_spec(spec)[0] not in list_models():
        rows = [custom_model_row(spec, shape)]
    else:
        rows = summarize(shape, [spec] if spec else None)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    console.print(models_table(rows, shape))
    return 0


def cmd_schedule(args: argparse.Namespace) -> int:
    from atrous.rf import schedule

    if args.suggest is not None:
        results = schedule.suggest(args.suggest, args.kernel, limit=args.limit)
    else:
        if not args.rates:
            raise AtrousError("give rates to check (atrous schedule 1,2,5) or --suggest TARGET_RF")
        results = [schedule.check(list(parse_ints(args.rates, "rates")), args.kernel)]
    if args.plot:
        from atrous.rf.pictures import schedule_figure

        print(f"wrote {schedule_figure(results, args.plot)}", file=sys.stderr)
    if args.json:
        print(json.dumps([r.to_json() for r in results], indent=2))
        return 0
    from atrous.rf.render import schedule_table

    console.print(schedule_table(results, args.kernel))
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


def cmd_data_stats(args: argparse.Namespace) -> int:
    """``data stats``: object statistics, and with ``--model`` exact coverage by its RF (``--erf``: its ERF)."""
    from atrous.data import build_dataset
    from atrous.data.coverage import ModelView, coverage, erf_coverage
    from atrous.data.stats import scan, stats_figure, stats_table, summary
    from atrous.models.registry import resolve_model

    err = Console(stderr=True)
    if args.erf and not args.model:
        raise AtrousError("--erf needs --model: the effective RF is a model's")
    objs = scan(build_dataset(args.spec, split=args.split), parse_background(args.background), args.limit)
    data = summary(objs, args.max_sizes)
    lines: dict[str, float] = {}
    if args.model:
        model = resolve_model(args.model, **model_kwargs(args))
        view = ModelView(model, args.model, int(getattr(model, "in_channels", objs.channels)))
        data["coverage"] = coverage(objs, view, args.margin, args.anchor, args.max_sizes, progress=True)
        rfs = [
            max(r for r in f["rf"] if r is not None)
            for f in data["coverage"]["rf"].values()
            if not f["global"]
        ]
        if rfs:
            lines[f"RF {max(rfs)}"] = max(rfs)
        if args.erf:
            data["erf"] = erf_coverage(
                objs, view, args.erf_mass, args.margin, args.anchor, max_sizes=args.max_sizes
            )
            sides = [r["side"] for r in data["erf"]["by_size"].values()]
            lines[f"ERF {args.erf_mass:.0%} side {max(sides)}"] = max(sides)
    if args.plot:
        err.print(f"wrote {stats_figure(objs, args.plot, lines)}")
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    console.print(stats_table(data, f"{args.spec}: {data['images']} masks"))
    for c in data["classes"]:
        if "note" in c:
            console.print(c["note"])
    if len(data["sizes"]) > 1:
        where = f"in {len(data['size_buckets'])} buckets" if "size_buckets" in data else "each on its own"
        console.print(
            f"{len(data['sizes'])} image sizes, {where}: per-size statistics and coverage in --json"
        )
    if "size_buckets_why" in data.get("coverage", {}):
        console.print(f"coverage per size bucket: {data['coverage']['size_buckets_why']}")
    if "coverage" in data:
        print_coverage(data)
    return 0


def print_coverage(data: dict) -> None:
    """One line per class: objects and pixels covered, the object rate at the median, and the ERF's coverage."""
    cov = data["coverage"]
    for note in cov.get("notes", []):
        console.print(f"coverage is 100 % because {note}")
    facts = next(iter(cov["rf"].values()))
    rf = (
        "global"
        if facts["global"]
        else f"{max(r for r in facts['rf'] if r is not None)} (holes {facts['holes']})"
    )
    console.print(f"{cov['model']}: RF {rf}; covered from the {cov['anchor']} pixel's exact support:")
    erf = data.get("erf", {}).get("classes", {})
    for k, row in cov["classes"].items():
        rate = row["object_rate"]
        text = (
            f"  {row['name']}: {row['objects_covered']:.1%} of objects, {row['pixels_covered']:.1%} of pixels"
        )
        if rate is not None:
            text += f", object rate p50 {rate['p50']:.2f}"
        if k in erf:
            text += f"; ERF {erf[k]['objects_covered']:.1%}"
        console.print(text)


def parse_background(text: str) -> int | None:
    if text.lower() == "none":
        return None
    try:
        return int(text)
    except ValueError:
        raise AtrousError(f"--background {text!r} must be a class index or none") from None


def cmd_suggest(args: argparse.Namespace) -> int:
    from atrous.data import build_dataset
    from atrous.data.stats import scan
    from atrous.suggest import suggest, suggest_table, summary_lines

    if args.top < 1:
        raise AtrousError(f"--top {args.top}: show at least 1 row")
    objs = scan(build_dataset(args.spec, split=args.split), parse_background(args.background), args.limit)
    classes = list(parse_ints(args.classes, "--classes")) if args.classes else None
    data = suggest(objs, args.target, args.margin, args.anchor, classes, args.max_sizes, progress=True)
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    console.print(suggest_table(data, args.top))
    for line in summary_lines(data):
        console.print(line)
    return 0


TRAIN_OPTIONS = {  # flag -> (TrainConfig field, type, help)
    "--model": (
        "model",
        str,
        "zoo spec (unet:width=16) or import path (package.module:factory:key=value,...)",
    ),
    "--data": ("data", str, "training data spec, e.g. scale:size=64"),
    "--val": (
        "val",
        str,
        "validation data spec (default: the synthetic task's val split; 'none' for no val)",
    ),
    "--out": ("out", str, "run directory (default runs/train)"),
    "--epochs": ("epochs", int, "number of epochs"),
    "--steps": ("steps", int, "number of optimizer steps (instead of --epochs)"),
    "--batch-size": ("batch_size", int, "global batch size (default 16)"),
    "--eval-batch-size": ("eval_batch_size", int, "validation batch size"),
    "--lr": ("lr", float, "peak learning rate (default 1e-3)"),
    "--optimizer": ("optimizer", str, "adamw or sgd"),
    "--weight-decay": ("weight_decay", float, "weight decay"),
    "--schedule": ("schedule", str, "poly, cosine, step or constant"),
    "--warmup": ("warmup", int, "linear warm-up steps"),
    "--clip-grad": ("clip_grad", float, "scale gradients down to this global L2 norm (default 0: off)"),
    "--ema": ("ema", float, "validate and save an exponential moving average of the weights, decay per step"),
    "--loss": ("loss", str, "dice, ce, bce or dice+ce"),
    "--aux-weight": ("aux_weight", float, "weight of DeepLab's auxiliary loss"),
    "--seed": ("seed", int, "the one seed of the run"),
    "--checkpoint-every": ("checkpoint_every", int, "also checkpoint every N steps"),
    "--device": ("device", str, "auto, cpu or cuda[:N]"),
    "--precision": ("precision", str, "fp32 or bf16 (autocast)"),
    "--workers": ("workers", int, "DataLoader workers (default 0)"),
    "--crop": ("crop", int, "crop size for real-data augmentation"),
}
TRAIN_FLAGS = {  # flag -> (TrainConfig field, value when given)
    "--dice-per-image": ("dice_per_image", True),
    "--no-channels-last": ("channels_last", False),
    "--no-augment": ("augment", False),
    "--skip-bad": ("skip_bad", True),
    "--tensorboard": ("tensorboard", True),
    "--compile": ("compile", True),
    "--cpu-data": ("cpu_data", True),
}


def train_config(args: argparse.Namespace) -> TrainConfigT:
    from atrous.train.config import TrainConfig

    cfg = TrainConfig.from_file(args.config) if args.config else TrainConfig()
    values = cfg.to_json()
    for field_name, _, _ in TRAIN_OPTIONS.values():
        given = getattr(args, field_name)
        if given is not None:
            values[field_name] = given
    for field_name, value in TRAIN_FLAGS.values():
        if getattr(args, field_name):
            values[field_name] = value
    return TrainConfig.from_json(values)


def cmd_train(args: argparse.Namespace) -> int:
    from atrous.train.loop import fit

    cfg = train_config(args)
    result = fit(cfg, resume=args.resume, overwrite=args.overwrite, console=console)
    if int(os.environ.get("RANK", "0")) == 0:
        console.print(
            f"run: {result.run_dir} ({result.steps} steps; best val mIoU {result.best_miou:.4f}; "
            f"checkpoints {result.run_dir / 'best'} and {result.run_dir / 'last'})"
        )
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from atrous.data import build_dataset
    from atrous.train.inference import load
    from atrous.train.loop import evaluate
    from atrous.train.metrics import AGGREGATION

    device = resolve_device(args.device)
    model = load(args.checkpoint, device)
    dataset = build_dataset(args.data, split="val", check=True)
    if dataset.num_classes != max(model.num_classes, 2):
        raise AtrousError(
            f"the checkpoint predicts {model.num_classes} classes but {args.data} has {dataset.num_classes}"
        )
    scores = evaluate(model, dataset, args.batch_size, device, tile=parse_tile(args.tile))
    result = {"checkpoint": str(args.checkpoint), "data": args.data, "samples": len(dataset), **scores}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    from rich.table import Table

    table = Table(title=f"{args.checkpoint} on {args.data} ({len(dataset)} samples)", caption=AGGREGATION)
    for col in ("class", "IoU", "Dice"):
        table.add_column(col)
    fmt = lambda v: "n/a" if v is None else f"{v:.4f}"  # noqa: E731
    for name, iou, dice in zip(dataset.class_names, scores["iou"], scores["dice"]):
        table.add_row(name, fmt(iou), fmt(dice))
    table.add_row("mean", fmt(scores["miou"]), fmt(scores["mdice"]), end_section=True)
    console.print(table)
    console.print(f"pixel accuracy {scores['pixel_acc']:.4f}")
    return 0


def parse_tile(text: str) -> int | str | None:
    """``--tile``: ``auto``, ``none`` (the whole image in one pass) or a number of pixels."""
    if text.lower() in ("auto", "none"):
        return None if text.lower() == "none" else "auto"
    try:
        value = int(text)
    except ValueError:
        raise AtrousError(f"--tile {text!r}: give a number of pixels, auto or none") from None
    if value < 1:
        raise AtrousError(f"--tile {value}: give a positive number of pixels, auto or none")
    return value


def cmd_predict(args: argparse.Namespace) -> int:
    from atrous.train.inference import predict_files

    device = resolve_device(args.device)
    written = predict_files(
        args.checkpoint,
        args.images,
        args.out,
        parse_tile(args.tile),
        args.overlap,
        device,
        approximate=args.approximate_tiles,
        batch=args.batch,
        probabilities=args.probabilities,
        overwrite=args.overwrite,
        progress=sys.stderr.isatty(),
        log=lambda line: console.print(line, highlight=False, markup=False),
    )
    console.print(f"wrote {len(written)} mask(s) and overlays to {args.out}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from atrous.train.inference import export_onnx

    if args.format != "onnx":
        raise AtrousError(f"--format {args.format!r}: only onnx is supported")
    if args.opset < 17:
        raise AtrousError(f"--opset {args.opset}: use 17 or newer")
    result = export_onnx(args.checkpoint, args.out, args.opset, device=resolve_device(args.device))
    diffs = ", ".join(f"{k}: {v:.2e}" for k, v in result["max_abs_diff"].items())
    console.print(
        f"wrote {result['path']} (opset {result['opset']}, dynamic batch/height/width); "
        f"onnxruntime ({result['onnxruntime_provider']}) vs PyTorch ({result['torch_device']}) "
        f"max abs diff {diffs}"
    )
    return 0


def cmd_erf(args: argparse.Namespace) -> int:
    from atrous.erf import draw, effective_rf, load_for_erf

    shape = parse_ints(args.input, "--input") if args.input else None
    if args.samples < 1 or args.batch < 1:
        raise AtrousError(f"--samples and --batch must be >= 1, got {args.samples} and {args.batch}")
    device = resolve_device(args.device)
    specs = [args.model, *(args.compare or [])]
    results = []
    for i, spec in enumerate(specs):
        # --checkpoint, --model-kwargs and --output describe MODEL; --compare specs carry their own arguments.
        main = i == 0
        model = load_for_erf(
            spec,
            args.checkpoint if main else None,
            model_kwargs(args) if main else None,
            args.output if main else None,
        )
        results.append(
            effective_rf(
                model,
                shape,
                data=args.data,
                samples=args.samples,
                position=parse_ints(args.at, "--at") if args.at else "centre",
                distribution=args.inputs,
                batch=args.batch,
                train_mode=args.train_mode,
                seed=args.seed,
                name=f"{spec} (output {args.output})" if main and args.output else spec,
                device=device,
            )
        )
    path = draw(results, args.out)
    if args.json:
        print(json.dumps([r.to_json() for r in results], indent=2))
        return 0
    for r in results:
        m = r.metrics
        sigma = "-" if m["sigma"] is None else f"{m['sigma'][0]:.2f}/{m['sigma'][1]:.2f}"
        note = f" ({m['note']})" if "note" in m else ""
        console.print(
            f"{r.name}: RF {r.rf}, area>=10% {m['area_10']} px, area>=4.55% {m['area_2sigma']} px, "
            f"r50 {m['radius_50']}, r95 {m['radius_95']}, sigma {sigma}{note}"
        )
    console.print(f"wrote {path}")
    return 0


def cmd_lab(args: argparse.Namespace) -> int:
    from atrous.lab.runner import audit_lab, run_lab

    if args.audit:
        summary = audit_lab(
            device=str(resolve_device(args.device)),
            preset=args.preset,
            out=args.out if args.out != "runs/lab" else "runs/lab-audit",
            only=args.only,
            seeds=args.seeds,
            workers=args.workers,
            console=console,
        )
        return 0 if summary["meets_target"] else 1
    run_lab(
        device=str(resolve_device(args.device)),
        preset=args.preset,
        out=args.out,
        only=args.only,
        seeds=args.seeds,
        workers=args.workers,
        console=console,
    )
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from atrous import bench

    suites = list(bench.SUITES) if args.suite == "all" else [args.suite]
    # With --json the tables go to stderr so stdout stays machine-readable.
    device = resolve_device(args.device)
    if "gpu" in suites and device.type != "cuda":
        if args.suite == "gpu":
            raise AtrousError("atrous bench gpu needs a CUDA GPU (--device cuda); none is in use")
        suites.remove("gpu")
    results = bench.run(suites, Console(stderr=True) if args.json else console, device)
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


def add_model_kwargs(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model-kwargs",
        metavar="JSON",
        help="keyword arguments for the model as a JSON object, e.g. '{\"weights\": null}' (override the spec's)",
    )


def add_device(p: argparse.ArgumentParser, what: str = "") -> None:
    text = "auto (CUDA when present), cpu, cuda or cuda:N" + (f"; {what}" if what else "")
    p.add_argument("--device", default="auto", help=text)


def resolve_device(name: str):
    from atrous.device import resolve_device as resolve

    return resolve(name)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="atrous", description="Dilated convolutions, exactly.")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_rf_commands, _add_data_commands, _add_training_commands, _add_study_commands):
        add(sub)
    return parser


def _add_rf_commands(sub) -> None:
    """The receptive-field sub-commands: rf, models, schedule."""
    p = sub.add_parser("rf", help="exact receptive fields of a model")
    p.add_argument(
        "model",
        help="zoo spec (convstack:rates=1,2,5) or import path package.module:factory[:key=value,...] "
        "(values are Python literals: None, True, 2, 'a', [False,True,True])",
    )
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
    p.add_argument(
        "--output",
        help="which model output --at, --plot, --html refer to, by name (out, aux, 0, 1, ...; default: the first)",
    )
    p.add_argument(
        "--plot", metavar="PNG", help="draw the support of --at (default: centre), RF per layer, phases"
    )
    p.add_argument(
        "--html", metavar="HTML", help="write an interactive page: hover an output pixel, see its support"
    )
    add_model_kwargs(p)
    p.set_defaults(func=cmd_rf)

    p = sub.add_parser("models", help="list the zoo: parameters, FLOPs, receptive field, output stride")
    p.add_argument("name", nargs="?", help="one model spec or import path (default: every registered name)")
    p.add_argument("--input", default="3,64,64", help="input shape C,H,W for FLOPs and RF (default 3,64,64)")
    p.add_argument("--json", action="store_true")
    add_model_kwargs(p)
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("schedule", help="check a dilation schedule for holes, or suggest hole-free ones")
    p.add_argument("rates", nargs="?", help="comma-separated rates, e.g. 1,2,5")
    p.add_argument("--kernel", type=int, default=3)
    p.add_argument(
        "--suggest", type=int, metavar="TARGET_RF", help="shortest hole-free schedules reaching this RF"
    )
    p.add_argument("--limit", type=int, default=5)
    p.add_argument(
        "--plot",
        nargs="?",
        const="schedule.png",
        metavar="PNG",
        help="draw the supports (default schedule.png)",
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_schedule)


def _add_data_commands(sub) -> None:
    """data check, preview and stats; suggest."""
    p = sub.add_parser("data", help="check, preview or measure datasets")
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
    q = data.add_parser("stats", help="object sizes per class; with --model, exact coverage by its RF")
    add_stats_options(q)
    q.add_argument("--model", help="zoo spec or import path: coverage of the objects by its exact support")
    add_model_kwargs(q)
    q.add_argument("--erf", action="store_true", help="also coverage by the effective RF (needs --model)")
    q.add_argument("--erf-mass", type=float, default=0.95, help="ERF square holding this gradient mass")
    q.add_argument("--plot", metavar="PNG", help="histograms of extent and diameter per class")
    q.set_defaults(func=cmd_data_stats)
    p = sub.add_parser("suggest", help="cheapest zoo models whose exact RF covers the dataset's objects")
    add_stats_options(p)
    p.add_argument("--target", type=float, default=0.95, help="share of each class's objects to cover")
    p.add_argument("--classes", help="class indices to cover, e.g. 1,2 (default: all but the background)")
    p.add_argument("--top", type=int, default=12, help="rows of the table")
    p.set_defaults(func=cmd_suggest)


def add_stats_options(q: argparse.ArgumentParser) -> None:
    """What ``data stats`` and ``suggest`` share: the data, the object definition, the coverage question."""
    q.add_argument("spec", help="dataset spec: folder:/path, voc:/path, scale:size=64, multiscale, shapes")
    q.add_argument("--split", help="split (synthetic: train; VOC: train)")
    q.add_argument("--limit", type=int, help="read only the first N masks")
    q.add_argument("--background", default="0", help="class index that is not an object, or none")
    q.add_argument("--margin", type=int, default=0, help="pixels of context around an object to cover too")
    q.add_argument(
        "--anchor",
        default="centre",
        choices=["centre", "every"],
        help="cover from the object's centre pixel, or from every pixel (the lab's criterion with --margin 1)",
    )
    q.add_argument(
        "--max-sizes",
        type=int,
        default=8,
        help="image sizes analysed each on its own; more are grouped into this many buckets",
    )
    q.add_argument("--json", action="store_true")


def _add_training_commands(sub) -> None:
    """Training and using a model: train, eval, predict, export."""
    p = sub.add_parser(
        "train", help="train a model (torchrun --nproc_per_node=N -m atrous train ... for DDP)"
    )
    for flag, (field_name, typ, text) in TRAIN_OPTIONS.items():
        p.add_argument(flag, dest=field_name, type=typ, default=None, help=text)
    for flag, (field_name, _) in TRAIN_FLAGS.items():
        p.add_argument(flag, dest=field_name, action="store_true")
    p.add_argument("--config", help="JSON file with any of the options (command-line flags override it)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run in --out")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate a checkpoint on a dataset")
    p.add_argument("--checkpoint", required=True, help="RUN_DIR, RUN_DIR/best or RUN_DIR/last")
    p.add_argument("--data", required=True, help="dataset spec (synthetic specs use their val split)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--json", action="store_true")
    p.add_argument(
        "--tile",
        default="none",
        help="tile large images exactly as predict does (pixels or auto); default none: one pass per image",
    )
    add_device(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser(
        "predict", help="predict masks for images of any size (exact tiles from the receptive field)"
    )
    p.add_argument("images", nargs="+", help="image files or folders (.png .jpg .tif, or .npy arrays)")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", default="predictions")
    p.add_argument(
        "--tile",
        default="auto",
        help="pixels per tile side fed to the model, auto (margins from the receptive field) or none",
    )
    p.add_argument(
        "--overlap", type=int, help="pixels neighbouring tiles share (default: twice the exact margin)"
    )
    p.add_argument(
        "--approximate-tiles",
        type=int,
        metavar="MARGIN",
        help="tile a model no tiling reproduces exactly (global RF) with this margin; prints the error",
    )
    p.add_argument("--batch", type=int, default=4, help="tiles per forward pass")
    p.add_argument("--probabilities", action="store_true", help="also write class probabilities (float16)")
    p.add_argument("--overwrite", action="store_true", help="replace masks that exist")
    add_device(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("export", help="export a checkpoint to ONNX, with a parity check")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--format", default="onnx")
    p.add_argument("--out", default="model.onnx")
    p.add_argument("--opset", type=int, default=17)
    add_device(p, "where the parity check runs PyTorch (and onnxruntime, when it has CUDA)")
    p.set_defaults(func=cmd_export)


def _add_study_commands(sub) -> None:
    """Studies and measurements: erf, lab, bench."""
    p = sub.add_parser("erf", help="effective receptive field (averaged input gradients), drawn with the RF")
    p.add_argument("model", help="zoo spec or import path package.module:factory[:key=value,...]")
    add_model_kwargs(p)
    p.add_argument("--output", help="which model output, by name (default: the first)")
    p.add_argument("--input", help="input shape C,H,W (random inputs), or use --data")
    p.add_argument("--data", help="dataset spec whose (val) samples are the inputs")
    p.add_argument("--inputs", default="normal", help="random input distribution: normal, uniform or ones")
    p.add_argument("--samples", type=int, default=64)
    p.add_argument("--batch", type=int, default=64, help="samples per backward pass (bounds memory)")
    p.add_argument("--at", help="output position y,x (default: the centre)")
    p.add_argument("--checkpoint", help="use trained weights for MODEL (a run dir or checkpoint)")
    p.add_argument(
        "--compare", nargs="+", metavar="MODEL", help="more models, side by side on one colour scale"
    )
    p.add_argument("--train-mode", action="store_true", help="train-mode BatchNorm (couples samples; warns)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="erf.png")
    p.add_argument("--json", action="store_true")
    add_device(p)
    p.set_defaults(func=cmd_erf)

    p = sub.add_parser("lab", help="run the exercises and write one report")
    p.add_argument("--preset", default="quick", choices=["tiny", "quick", "full"])
    p.add_argument("--out", default="runs/lab", help="report directory")
    p.add_argument("--only", help="comma-separated exercises, e.g. ex2,ex5")
    p.add_argument(
        "--seeds",
        help="number of seeds (3) or a list (0,1,2); default from the preset. An exercise whose comparisons need "
        "more (quick: ex4, 2 more) also trains the next integers after the largest",
    )
    p.add_argument("--workers", type=int, help="parallel training processes (default: 2, one thread each)")
    p.add_argument(
        "--audit",
        action="store_true",
        help="validate the stopping rule: train every configuration 3x its step cap on seeds the preset does "
        "not report (default 40,41,42) and print what the rule left on the table (runs/lab-audit)",
    )
    add_device(p, "cpu: parallel one-thread processes; cuda: several jobs share the GPU")
    p.set_defaults(func=cmd_lab)

    p = sub.add_parser("bench", help="speed benchmarks, as ratios against a baseline in the same run")
    p.add_argument(
        "suite", nargs="?", default="all", choices=["all", "rf", "models", "train", "erf", "data", "gpu"]
    )
    p.add_argument("--json", action="store_true")
    add_device(p, "gpu runs only on CUDA; 'all' includes it when a GPU is in use")
    p.set_defaults(func=cmd_bench)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except AtrousError as exc:
        print(f"atrous: error: {exc.for_cli()}", file=sys.stderr)
        return 2


def run() -> None:
    """The ``atrous`` program: ``main`` with its exit status (torchrun ranks leave through ``exit_rank``)."""
    code = main()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from atrous.train.distributed import exit_rank

        exit_rank(code)
    raise SystemExit(code)


if __name__ == "__main__":
    run()
