"""``atrous lab``: collect every exercise's training jobs, run them in parallel, then write one report."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from atrous.data import build_dataset
from atrous.errors import AtrousError
from atrous.fileio import write_atomic
from atrous.lab import ex1_receptive_fields, ex2_unets, ex3_aspp, ex4_multiscale, ex5_rf_accuracy
from atrous.lab.jobs import run_jobs
from atrous.lab.presets import get_preset
from atrous.lab.report import write_report
from atrous.models.registry import create_model

EXERCISES = {m.KEY: m for m in (ex1_receptive_fields, ex2_unets, ex3_aspp, ex4_multiscale, ex5_rf_accuracy)}


def parse_seeds(seeds: str | int | None, default: int) -> list[int]:
    if seeds is None:
        return list(range(default))
    text = str(seeds)
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise AtrousError(f"--seeds {text!r}: give a count (3) or a list (0,1,2)") from None
    if len(values) == 1 and "," not in text:
        if values[0] < 1:
            raise AtrousError("--seeds must be >= 1")
        return list(range(values[0]))
    return values


def default_workers(device: str) -> int:
    """CPU: one single-threaded process per core. GPU: small models leave most of the card idle, so several
    processes share it (each with its own CUDA context, about 0.5 GB), fed by the CPU's cores."""
    cores = os.cpu_count() or 1
    return min(2, cores) if device == "cpu" else max(2, min(8, cores))


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return f"{torch.cuda.get_device_name(torch.device(device))} ({device})"
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def run_lab(
    preset: str = "quick",
    out: str | Path = "runs/lab",
    only: str | None = None,
    seeds: str | None = None,
    workers: int | None = None,
    console: Console | None = None,
    device: str = "cpu",
) -> dict[str, Path]:
    console = console or Console()
    chosen = list(EXERCISES) if not only else [e.strip() for e in only.split(",") if e.strip()]
    unknown = [e for e in chosen if e not in EXERCISES]
    if unknown:
        raise AtrousError(f"unknown exercise {unknown[0]!r} in --only; available: {', '.join(EXERCISES)}")
    p = get_preset(preset)
    seed_list = parse_seeds(seeds, p.seeds)
    workers = workers if workers is not None else default_workers(device)
    run_dir = Path(out)
    run_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    jobs = [j for key in chosen for j in EXERCISES[key].jobs(p, seed_list)]
    for model, data in {(j.model, j.data) for j in jobs}:  # fail before any training, not halfway through
        build_dataset(data)
        create_model(model)
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task(f"lab {preset}: training", total=len({j.key for j in jobs}))

        def done(job, count: int, total: int) -> None:
            bar.update(task, completed=count, description=f"lab {preset}: done {job.label}")

        results = run_jobs(jobs, run_dir / "runs", workers, done, device)
        sections, timings = [], {}
        report_task = bar.add_task("report", total=len(chosen))
        for key in chosen:
            bar.update(report_task, description=f"report: {key}")
            sections.append(EXERCISES[key].section(p, seed_list, results, run_dir, timings))
            bar.advance(report_task)
    meta = {
        "preset": preset,
        "device": device_name(device),
        "exercises": chosen,
        "seeds": seed_list,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    header = (
        f"Preset {preset}; exercises {', '.join(chosen)}; seeds {seed_list}; torch {torch.__version__}; "
        f"trained on {device_name(device)}. "
        "Every number below was computed in this run."
    )
    paths = write_report(sections, run_dir, header, meta)
    # Measured speeds vary from run to run: kept out of results.json so that it is reproducible.
    timings["wall_seconds"] = time.perf_counter() - start
    write_atomic(run_dir / "timings.json", json.dumps(timings, indent=2) + "\n")
    console.print(
        f"report: {paths['html']} ({paths['md'].name}, {paths['json'].name}); {timings['wall_seconds']:.0f} s"
    )
    return paths
