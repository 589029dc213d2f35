"""Synthetic data generation speed."""

from __future__ import annotations

import torch
from rich.console import Console
from rich.table import Table

from atrous.bench.timing import median_time


def bench_data(count: int = 2000) -> list[dict]:
    """Synthetic samples per second at 64 x 64 on one thread (the data must never bound training)."""
    from atrous.data import build_dataset

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    rows = []
    try:
        for spec in ("shapes:size=64", "scale:size=64", "multiscale:size=64,max_extent=48"):
            ds = build_dataset(f"{spec},n={count}")
            seconds = median_time(lambda ds=ds: [ds[i] for i in range(count)], repeats=3)
            rows.append({"task": spec, "images": count, "img_per_s": count / seconds})
    finally:
        torch.set_num_threads(threads)
    return rows


def print_data(rows: list[dict], console: Console) -> None:
    table = Table(title="Synthetic data generation, 64x64, one thread")
    for col in ("task", "images", "img/s"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["task"], str(r["images"]), f"{r['img_per_s']:.0f}")
    console.print(table)
