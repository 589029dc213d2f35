"""Training: the zoo's training step, and wall time to a target Dice."""

from __future__ import annotations

import time

from rich.console import Console
from rich.table import Table

from atrous.bench.models import bench_models


def bench_train(
    models: tuple[str, ...] = (
        "seed_unet",
        "unet:width=16,depth=3",
        "dilated_unet:width=16,depth=3",
        "deeplabv3_small",
        "context",
    ),
    target: float = 0.9,
    max_epochs: int = 15,
) -> list[dict]:
    """Wall time for each model to reach validation foreground Dice >= ``target`` on ``shapes`` (64x64, 256
    training images, batch 16, AdamW 1e-3, Dice+CE), all in this run; ratios against the seed U-Net."""
    import tempfile

    from atrous.train.config import TrainConfig
    from atrous.train.loop import fit

    rows = []
    for spec in models:
        with tempfile.TemporaryDirectory() as tmp:
            cfg = TrainConfig(
                model=spec,
                data="shapes:size=64,n=256",
                epochs=max_epochs,
                batch_size=16,
                lr=1e-3,
                out=f"{tmp}/run",
            )
            start = time.perf_counter()
            result = fit(
                cfg, console=Console(quiet=True), until=lambda r: (r["val"]["fg_dice"] or 0) >= target
            )
            seconds = time.perf_counter() - start
        last = result.history[-1]
        rows.append(
            {
                "model": spec,
                "reached": (last["val"]["fg_dice"] or 0) >= target,
                "seconds": seconds,
                "epochs": len(result.history),
                "steps": result.steps,
                "fg_dice": last["val"]["fg_dice"],
                "train_img_s": last["img_per_s"],
            }
        )
    for r in rows:
        r["time_vs_seed_unet"] = r["seconds"] / rows[0]["seconds"]
    return {"step": bench_models(forward=False), "to_dice": rows}


def print_train(result: dict, console: Console) -> None:
    step = result["step"]
    table = Table(
        title=f"Training step, 64x64, batch 32, CPU fp32 (matmul peak {step[0]['matmul_peak_gflops']:.0f} "
        "GFLOP/s measured in this run; MFU from effective FLOPs)"
    )
    for col in ("model", "train GFLOPs/img (effective)", "train img/s", "train MFU", "vs naive seed U-Net"):
        table.add_column(col)
    for r in step:
        table.add_row(
            r["model"],
            f"{r['train_effective_gflops_img']:.3f}",
            f"{r['train_img_s']:.1f}",
            f"{r['train_mfu']:.0%}",
            f"{r['train_vs_base']:.2f}x",
        )
    console.print(table)
    rows = result["to_dice"]
    table = Table(title="Time to validation foreground Dice >= 0.9 on shapes (64x64), CPU, same run")
    for col in (
        "model",
        "reached",
        "epochs",
        "steps",
        "final fg Dice",
        "train img/s",
        "wall s",
        "vs seed_unet",
    ):
        table.add_column(col)
    for r in rows:
        table.add_row(
            r["model"],
            "yes" if r["reached"] else "no",
            str(r["epochs"]),
            str(r["steps"]),
            f"{r['fg_dice']:.3f}",
            f"{r['train_img_s']:.1f}",
            f"{r['seconds']:.1f}",
            f"{r['time_vs_seed_unet']:.2f}x",
        )
    console.print(table)
