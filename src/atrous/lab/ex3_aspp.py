"""Exercise 3: DeepLabv3 (ASPP) and the context module added to the U-Net comparison, same protocol.

The small DeepLab's ASPP rates are scaled to its feature map (stride 8 on the lab's small images leaves a few
pixels per side; the standard 12/24/36 would read padding with all but the centre tap)."""

from __future__ import annotations

from pathlib import Path

from atrous.lab import compare
from atrous.lab.jobs import Job
from atrous.lab.presets import Preset
from atrous.lab.report import Section

KEY = "ex3"


def jobs(p: Preset, seeds: list[int]) -> list[Job]:
    return compare.jobs(p, p.unets + p.others, seeds, KEY)


def section(p: Preset, seeds: list[int], results: dict, run_dir: Path, timings: dict) -> Section:
    title = "Exercise 3: ASPP (DeepLabv3) and the context module"
    return compare.section(KEY, title, p, p.unets + p.others, seeds, results, run_dir, timings)
