"""RF analysis of ResNet trunks vs one forward+backward pass at the same size."""

from __future__ import annotations

import torch
from rich.console import Console
from rich.table import Table

from atrous.bench.timing import median_time


def bench_rf(repeats: int = 5) -> list[dict]:
    """RF analysis of ResNet trunks at 224x224 vs one real forward+backward pass at the same size (the least a
    gradient-based tool needs, and it would need an input larger than the RF: 1024x1024 for ResNet-101)."""
    from atrous.models.resnet import Trunk, resnet
    from atrous.rf import analyze

    rows = []
    for depth in (50, 101):
        model = Trunk(resnet(depth)).eval()
        report = analyze(model, (3, 224, 224))
        t_rf = median_time(lambda m=model: analyze(m, (3, 224, 224)), repeats)
        t_support = median_time(
            lambda r=report: r.support((3, 3)) if r._finite is None else None, 1, warmup=0
        )
        x = torch.randn(1, 3, 224, 224, requires_grad=True)

        def fwd_bwd(m: torch.nn.Module = model, x: torch.Tensor = x) -> None:
            m(x)[0, :, 3, 3].sum().backward()

        t_grad = median_time(fwd_bwd, repeats)
        rows.append(
            {
                "model": f"resnet{depth} trunk",
                "ops": len(report.graph.calls),
                "rf": report.rf[0],
                "analyze_s": t_rf,
                "in_image_support_s": t_support,
                "fwd_bwd_224_s": t_grad,
                "analyze_vs_fwd_bwd": t_rf / t_grad,
            }
        )
    return rows


def print_rf(rows: list[dict], console: Console) -> None:
    table = Table(title="RF engine (CPU): exact analysis vs one forward+backward at 224x224, same run")
    for col in (
        "model",
        "ops",
        "RF",
        "analyze (s)",
        "in-image support, first call (s)",
        "fwd+bwd 224 (s)",
        "analyze / fwd+bwd",
    ):
        table.add_column(col)
    for r in rows:
        table.add_row(
            r["model"],
            str(r["ops"]),
            str(r["rf"]),
            f"{r['analyze_s']:.3f}",
            f"{r['in_image_support_s']:.3f}",
            f"{r['fwd_bwd_224_s']:.3f}",
            f"{r['analyze_vs_fwd_bwd']:.2f}x",
        )
    console.print(table)
