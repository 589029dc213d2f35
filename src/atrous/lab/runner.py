"""Runs the selected exercises with a progress display and writes the report."""

from __future__ import annotations

import platform
from collections.abc import Callable
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from atrous.errors import AtrousError
from atrous.lab import ex1_receptive_fields
from atrous.lab.presets import Preset, get_preset
from atrous.lab.report import Section, write_report

EXERCISES: dict[str, Callable[[Preset, Path], Section]] = {"ex1": ex1_receptive_fields.run}


def run_lab(
    preset: str = "quick",
    out: str | Path = "runs/lab",
    only: str | None = None,
    console: Console | None = None,
) -> dict[str, Path]:
    console = console or Console()
    chosen = list(EXERCISES) if not only else [e.strip() for e in only.split(",") if e.strip()]
    unknown = [e for e in chosen if e not in EXERCISES]
    if unknown:
        raise AtrousError(f"unknown exercise {unknown[0]!r} in --only; available: {', '.join(EXERCISES)}")
    p = get_preset(preset)
    run_dir = Path(out)
    run_dir.mkdir(parents=True, exist_ok=True)
    sections = []
    with Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), console=console) as bar:
        task = bar.add_task("lab", total=len(chosen))
        for key in chosen:
            bar.update(task, description=f"{key} ({preset})")
            sections.append(EXERCISES[key](p, run_dir))
            bar.advance(task)
    meta = {
        "preset": preset,
        "exercises": chosen,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    header = f"Preset {preset}; exercises {', '.join(chosen)}; torch {torch.__version__}."
    paths = write_report(sections, run_dir, header, meta)
    console.print(f"report: {paths['html']}  ({paths['md'].name}, {paths['json'].name})")
    return paths
