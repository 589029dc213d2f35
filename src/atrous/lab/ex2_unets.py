"""Exercise 2: standard vs dilated U-Net on shapes and scale (the seed's claim "dilated is better", tested)."""

from __future__ import annotations

from pathlib import Path

from atrous.lab import compare
from atrous.lab.jobs import Job
from atrous.lab.presets import Preset
from atrous.lab.report import Section

KEY = "ex2"


def jobs(p: Preset, seeds: list[int]) -> list[Job]:
    return compare.jobs(p, p.unets, seeds, KEY)


def section(p: Preset, seeds: list[int], results: dict, run_dir: Path, timings: dict) -> Section:
    return compare.section(
        KEY, "Exercise 2: standard vs dilated U-Net", p, p.unets, seeds, results, run_dir, timings
    )
