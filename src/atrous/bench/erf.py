"""ERF batching and RF cropping vs a per-sample loop."""

from __future__ import annotations

import torch
from rich.console import Console
from rich.table import Table

from atrous.bench.timing import median_time


def bench_erf(samples: int = 64, repeats: int = 3) -> list[dict]:
    """ERF of ``samples`` inputs: a per-sample loop of full backward passes (baseline), the same batched 16 per
    pass, and ``effective_rf`` (batched, on a crop around the exact RF when that is exact and saves work)."""
    from atrous.erf import effective_rf, gradient_maps, sample_loop_maps
    from atrous.models.registry import create_model

    rows = []
    cases = (
        ("convstack:preset=dilated", 64),
        ("convstack:preset=hdc,width=16", 96),
        ("unet:width=16,depth=3", 64),
        ("deeplabv3_small", 64),
    )
    for spec, size in cases:
        torch.manual_seed(0)
        model = create_model(spec).eval()
        x = torch.randn(samples, model.in_channels, size, size)
        pos = (size // 2, size // 2)
        shape = tuple(x.shape[1:])
        t_loop = median_time(lambda m=model, x=x, p=pos: sample_loop_maps(m, x, p), repeats)
        t_batch = median_time(lambda m=model, x=x, p=pos: gradient_maps(m, x, p, 16), repeats)
        t_erf = median_time(lambda m=model, s=shape: effective_rf(m, s, samples=samples, batch=16), repeats)
        cropped = effective_rf(model, shape, samples=2).metrics["cropped_to"]
        rows.append(
            {
                "model": spec,
                "samples": samples,
                "size": size,
                "loop_s": t_loop,
                "batched_s": t_batch,
                "erf_s": t_erf,
                "batched_speedup": t_loop / t_batch,
                "erf_speedup": t_loop / t_erf,
                "cropped_to": cropped,
            }
        )
    return rows


def print_erf(rows: list[dict], console: Console) -> None:
    table = Table(title="ERF of N inputs vs a per-sample loop of full backward passes, CPU, same run")
    for col in (
        "model",
        "N",
        "input",
        "loop (s)",
        "batched, 16/pass",
        "effective_rf (batched + RF crop)",
        "crop",
    ):
        table.add_column(col)
    for r in rows:
        crop = "none" if r["cropped_to"] is None else "x".join(str(b - a) for a, b in r["cropped_to"])
        table.add_row(
            r["model"],
            str(r["samples"]),
            f"{r['size']}x{r['size']}",
            f"{r['loop_s']:.3f}",
            f"{r['batched_s']:.3f} s ({r['batched_speedup']:.1f}x)",
            f"{r['erf_s']:.3f} s ({r['erf_speedup']:.1f}x)",
            crop,
        )
    console.print(table)
