"""Timing helpers: medians of repeated runs, and the machine's practical matmul peak for MFU."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def median_time(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_peak(sizes: tuple[int, ...] = (2048, 3072)) -> float:
    """Best achieved fp32 FLOP/s of large square matrix products: the machine's practical peak for MFU
    (on this 2-core AVX2 CPU about 170 GFLOP/s; 1024x1024 products reach only ~120)."""
    best = 0.0
    for n in sizes:
        a, b = torch.randn(n, n), torch.randn(n, n)
        best = max(best, 2 * n**3 / median_time(lambda a=a, b=b: a @ b, repeats=3))
    return best
