"""Exercise 1: receptive fields of the seed's conv stacks.

First half: RF, holes, parameters and FLOPs from the engine and counters; all stacks map 64 channels to 64
channels with bias-free 3x3 / 7x7 convolutions, as in the seed's table. Second half: effective receptive fields
of the standard, dilated, large-kernel and HDC stacks at initialisation and after training on ``scale``.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch

from atrous.erf import draw, effective_rf
from atrous.flops import count_flops, count_params
from atrous.lab import common
from atrous.lab.jobs import Job
from atrous.lab.presets import Preset
from atrous.lab.report import Section, Table
from atrous.models.blocks import PRESETS, convstack
from atrous.rf import analyze
from atrous.rf.pictures import window_panel

CHANNELS = 64
STACKS = ("standard", "dilated", "dilated4", "large", "hdc", "gridded")
ERF_STACKS = ("standard", "dilated", "large", "hdc")
KEY = "ex1"


def erf_spec(p: Preset, name: str) -> str:
    return f"convstack:preset={name},width={p.width}"


def jobs(p: Preset, seeds: list[int]) -> list[Job]:
    data = common.scale_task(p)
    return [
        common.job(p, erf_spec(p, name), data, seeds[0], f"ex1 {name} stack on scale") for name in ERF_STACKS
    ]


def predictions(p: Preset, seeds: list[int]) -> dict:
    """Exercise 1 makes no comparison: its registered design is what the engine says of each stack."""
    rows = [measure(name, p.ex1_flops_size)[0] for name in STACKS]
    return {
        "stacks": {r["name"]: {"rf": r["rf"], "holes": r["holes"]} for r in rows},
        "erf_stacks": ERF_STACKS,
    }


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
    fig, axes = plt.subplots(1, len(rows), figsize=(2.2 * len(rows), 2.6))
    for ax, row, mask in zip(axes, rows, masks):
        window_panel(ax, mask, f"{row['name']}\nRF {row['rf']}, {row['hole_count']} holes/axis")
    fig.suptitle(
        "Exact support of one output pixel (black: reaches it; grey: holes inside the RF box)", fontsize=9
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def erf_panels(p: Preset, seeds: list[int], results: dict, run_dir: Path) -> tuple[list[list], dict, list]:
    """ERFs of the Ex1 stacks at initialisation and after training on scale, on validation images."""
    from atrous.train.inference import load

    data = common.scale_task(p)
    val = data.replace(f"n={p.n}", f"n={p.ex1_erf_samples}") + ",split=val"
    before, after, rows, out = [], [], [], {}
    for name in ERF_STACKS:
        trained = common.runs(results, p, erf_spec(p, name), data, seeds[:1])[0]
        torch.manual_seed(seeds[0])  # the training run's initial weights come from this seed
        init_model = load(trained["run_dir"] + "/last")
        init_model.load_state_dict(type(init_model)(**_stack_kwargs(init_model)).state_dict())
        kwargs = {"data": val, "samples": p.ex1_erf_samples, "name": name}
        a, b = effective_rf(init_model, **kwargs), effective_rf(load(trained["run_dir"] + "/last"), **kwargs)
        before.append(a)
        after.append(b)
        rows.append(
            [
                name,
                a.rf[0],
                a.metrics["radius_95"],
                b.metrics["radius_95"],
                _sig(a),
                _sig(b),
                a.metrics["area_2sigma"],
                b.metrics["area_2sigma"],
            ]
        )
        out[name] = {"rf": a.rf[0], "init": a.to_json(), "trained": b.to_json()}
    draw(before, run_dir / "ex1_erf_init.png")
    draw(after, run_dir / "ex1_erf_trained.png")
    return (
        rows,
        out,
        [
            ("ex1_erf_init.png", "Effective RFs at initialisation"),
            ("ex1_erf_trained.png", "Effective RFs after training on scale"),
        ],
    )


def _stack_kwargs(model) -> dict:
    return {
        "in_channels": model.in_channels,
        "num_classes": model.num_classes,
        "width": model.body[0].out_channels,
        "kernel": model.kernels,
        "rates": model.rates,
    }


def _sig(result) -> str:
    sigma = result.metrics["sigma"]
    return "-" if sigma is None else f"{sigma[0]:.1f}"


def section(p: Preset, seeds: list[int], results: dict, run_dir: Path, registered: dict) -> Section:
    measured = [measure(name, p.ex1_flops_size) for name in STACKS]
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
            f"FLOPs @{p.ex1_flops_size}²",
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
    erf_rows, erf_out, erf_figs = erf_panels(p, seeds, results, run_dir)
    erf_table = Table(
        [
            "stack",
            "RF",
            "r95 init",
            "r95 trained",
            "sigma init",
            "sigma trained",
            "area >= 4.55% init",
            "trained",
        ],
        erf_rows,
        f"ERFs (width {p.width}) on {p.ex1_erf_samples} validation images of scale: r95 = half-width of the centred "
        "square holding 95 % of the gradient mass; sigma = SD of the row profile; area = pixels above 4.55 % of "
        "the peak",
    )
    grown = [r[0] for r in erf_rows if r[3] is not None and r[2] is not None and r[3] > r[2]]
    paragraphs.append(
        f"Training on scale widened the 95 % ERF radius of {len(grown)} of {len(erf_rows)} stacks"
        + (f" ({', '.join(grown)})." if grown else ".")
    )
    return Section(
        key=KEY,
        title="Exercise 1: receptive fields of conv stacks",
        command=f"atrous lab --only ex1 --preset {p.name}",
        paragraphs=paragraphs,
        tables=[table, erf_table],
        figures=[("ex1_supports.png", "Exact support of one output pixel for each stack"), *erf_figs],
        results={"rows": rows, "erf": erf_out},
    )
