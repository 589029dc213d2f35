"""``atrous bench``: speed measured as ratios against a baseline run in the same process.

Absolute seconds on a shared 2-core CPU drift from run to run; the ratio to a baseline measured moments
earlier on the same machine is what BENCHMARKS.md records. One module per suite; ``gpu`` runs only on CUDA.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module
from typing import Any

import torch
from rich.console import Console

from atrous.bench.models import NaiveSeedUNet
from atrous.bench.timing import matmul_peak, median_time

__all__ = ["SUITES", "NaiveSeedUNet", "matmul_peak", "median_time", "run"]

# suite -> (module, measuring function, printing function); modules load when their suite runs.
SUITES = {
    "rf": ("rf", "bench_rf", "print_rf"),
    "models": ("models", "bench_models", "print_models"),
    "train": ("train", "bench_train", "print_train"),
    "erf": ("erf", "bench_erf", "print_erf"),
    "data": ("data", "bench_data", "print_data"),
    "gpu": ("gpu", "bench_gpu", "print_gpu"),
}


def _suite(name: str) -> tuple[Callable[..., Any], Callable[[Any, Console], None]]:
    module, measure, show = SUITES[name]
    mod = import_module(f"atrous.bench.{module}")
    return getattr(mod, measure), getattr(mod, show)


def run(suites: list[str], console: Console, device: torch.device | None = None) -> dict[str, Any]:
    """Run each suite and print its table. The CPU suites measure the CPU; ``gpu`` measures ``device``."""
    results = {}
    for name in suites:
        measure, show = _suite(name)
        results[name] = measure(device) if name == "gpu" else measure()
        show(results[name], console)
    return results
