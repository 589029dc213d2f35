"""Exercise 1, first half: RF, holes, parameters and FLOPs of the seed's conv stacks, from the engine.

All stacks map 64 channels to 64 channels with bias-free 3x3 / 7x7 convolutions, as in the seed's table.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from atrous.flops import count_flops, count_params
from atrous.lab.presets import Preset
from atrous.lab.report import Section, Table
from atrous.models.blocks import PRESETS, convstack
from atrous.rf import analyze

CHANNELS = 64
STACKS = ("standard", "dilated", "dilated4", "large", "hdc", "gridded")


def measure(name: str, flops_size: int) -> tuple[dict, np.ndarray]:
    kernel, rates = PRESETS[name]
    model = convstack(name, in_channels=CHANNELS, num_classes=None, width=CHANNELS, norm=None, bias=False)
    shape = (CHANNELS, flops_size, flops_size)
    report = analyze(model, shape)
    out = report.outputs[0]
    params = count_params(model)
    _, mask = report.window([flops_size // 2, flops_size // 2])
    row = {
        "name": name,
        "kernel": kernel,
        "rates": list(rates),
        "rf": out.rf[0],
        "holes": out.axes[0].holes,
        "hole_count": out.axes[0].hole_count,
        "area_coverage": out.area_coverage,
        "params": params,
        "flops": count_flops(model, shape),
        "rf_per_kparam": out.rf[0] / (params / 1000),
    }
    return row, mask


def draw_supports(rows: list[dict], masks: list[np.ndarray], path: Path) -> None:
    size = max(m.shape[0] for m in masks)
    fig, axes = plt.subplots(1, len(rows), figsize=(2.2 * len(rows), 2.6))
    for ax, row, mask in zip(axes, rows, masks):
        pad = (size - mask.shape[0]) // 2
        canvas = np.zeros((size, size))
        canvas[pad : pad + mask.shape[0], pad : pad + mask.shape[1]] = np.where(mask, 1.0, 0.35)
        ax.imshow(canvas, cmap="Greys", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(f"{row['name']}\nRF {row['rf']}, {row['hole_count']} holes/axis", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(
        "Exact support of one output pixel (black: reaches it; grey: holes inside the RF box)", fontsize=9
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(preset: Preset, run_dir: Path) -> Section:
    measured = [measure(name, preset.ex1_flops_size) for name in STACKS]
    rows = [r for r, _ in measured]
    draw_supports(rows, [m for _, m in measured], run_dir / "ex1_supports.png")
    table = Table(
        [
            "stack",
            "kernel",
            "rates",
            "RF",
            "holes/axis",
            "params",
            f"FLOPs @{preset.ex1_flops_size}²",
            "RF per 1k params",
        ],
        [
            [
                r["name"],
                r["kernel"],
                r["rates"],
                r["rf"],
                r["hole_count"],
                r["params"],
                r["flops"],
                round(r["rf_per_kparam"], 4),
            ]
            for r in rows
        ],
        f"{CHANNELS} channels in and out, bias-free convolutions; RF and holes from the exact engine, "
        "parameters counted, FLOPs from PyTorch's FlopCounterMode (2 per multiply-add).",
    )
    best = max(rows, key=lambda r: r["rf_per_kparam"])
    gridded = [r for r in rows if r["hole_count"]]
    paragraphs = [
        f"Largest receptive field per parameter: {best['name']} (rates {best['rates']}, RF {best['rf']}, "
        f"{best['rf_per_kparam']:.4f} per 1k parameters)."
    ]
    paragraphs += [
        f"{r['name']} (rates {r['rates']}) spans {r['rf']} pixels per axis but reaches only "
        f"{r['rf'] - r['hole_count']} of them: holes at offsets {r['holes']} "
        f"({r['area_coverage']:.1%} of the {r['rf']}x{r['rf']} box)."
        for r in gridded
    ]
    return Section(
        key="ex1",
        title="Exercise 1: receptive fields of conv stacks",
        command="atrous lab --only ex1",
        paragraphs=paragraphs,
        tables=[table],
        figures=[("ex1_supports.png", "Exact support of one output pixel for each stack")],
        results={"rows": rows},
    )
