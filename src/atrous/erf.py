"""Effective receptive fields (Luo et al., 2016): how much each input pixel actually moves one output pixel.

``effective_rf`` averages ``|d (sum_c y[c, p]) / d x|`` (channels of the input summed) over N inputs, for one
output position ``p``. In eval mode samples are independent, so one backward pass over a batch of N inputs
yields N separate per-sample gradients (the gradient of a sum of per-sample outputs is the stack of
per-sample gradients); ``batch`` bounds how many go through at once. Train-mode BatchNorm couples the samples
of a batch, so that view is offered with a warning.

Only the receptive field of ``p`` can have a nonzero gradient, and the RF engine knows it exactly. When the RF
is much smaller than the input, the model runs on a crop around it, aligned to the model's largest stride so
that every feature map on the paths to ``p`` sees the same pixels and the same borders. The crop is checked
against the full input on the first sample and dropped if the two gradients differ.

Metrics (``ERFResult.metrics``):

* ``area_10`` / ``area_2sigma``: pixels with at least 10 % (the seed's threshold) / 4.55 % (``1 - 95.45 %``,
  Luo et al.'s "2 sigma") of the peak;
* ``radius_50`` / ``radius_95``: the smallest half-width ``r`` of a square centred on ``p`` holding 50 % / 95 %
  of the total mass (RepLKNet's high-contribution area), and that square's side over the theoretical RF;
* ``sigma``: per axis, the standard deviation of the marginal profile (the moment fit of a Gaussian), which
  makes "the ERF grows like sqrt(depth)" checkable.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from atrous.errors import AtrousError, InputShapeError
from atrous.rf import analyze

DISTRIBUTIONS = ("normal", "uniform", "ones")


@dataclass
class ERFResult:
    name: str
    map: np.ndarray  # (H, W): mean |gradient| over samples, input channels summed
    position: tuple[int, int]  # output pixel
    samples: int
    rf: list[int | None]  # theoretical RF per axis from the engine (None: global)
    window: tuple[tuple[int, int], np.ndarray] | None  # theoretical support of the position (origin, mask)
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def profiles(self) -> tuple[np.ndarray, np.ndarray]:
        """Marginal profiles: mass per row and per column."""
        return self.map.sum(axis=1), self.map.sum(axis=0)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "position": list(self.position),
            "samples": self.samples,
            "rf": self.rf,
            "shape": list(self.map.shape),
            **self.metrics,
        }


def _inputs(kind: str, n: int, shape: Sequence[int], gen: torch.Generator) -> torch.Tensor:
    if kind == "normal":
        return torch.randn(n, *shape, generator=gen)
    if kind == "uniform":
        return torch.rand(n, *shape, generator=gen)
    if kind == "ones":
        return torch.ones(n, *shape)
    raise AtrousError(
        f"unknown input distribution {kind!r}; use {', '.join(DISTRIBUTIONS)} or a dataset spec"
    )


def _dataset_inputs(spec: str, n: int) -> torch.Tensor:
    from atrous.data import build_dataset

    dataset = build_dataset(spec, split="val")
    if len(dataset) < n:
        raise AtrousError(f"{spec} has {len(dataset)} samples, fewer than the {n} samples asked for")
    images = [dataset[i][0] for i in range(n)]
    if len({tuple(x.shape) for x in images}) > 1:
        raise AtrousError(f"{spec} has images of different sizes; crop them (e.g. crop=...) for an ERF")
    return torch.stack(images)


def gradient_maps(model: nn.Module, x: torch.Tensor, position: tuple[int, int], batch: int) -> torch.Tensor:
    """(N, H, W) per-sample |gradient| of the output channels' sum at ``position``, batches of ``batch``."""
    maps = []
    for chunk in torch.split(x, batch):
        inp = chunk.clone().requires_grad_(True)
        out = model(inp)
        if out.dim() != 4:
            raise InputShapeError(
                f"the model returned shape {tuple(out.shape)}; an ERF needs (N, C, H, W) maps"
            )
        out[:, :, position[0], position[1]].sum().backward()
        maps.append(inp.grad.abs().sum(dim=1))
    return torch.cat(maps)


def sample_loop_maps(model: nn.Module, x: torch.Tensor, position: tuple[int, int]) -> torch.Tensor:
    """The same maps, one backward pass per sample: the baseline the batched version is benchmarked against."""
    return torch.cat([gradient_maps(model, x[i : i + 1], position, 1) for i in range(len(x))])


def _square_radius(m: np.ndarray, centre: tuple[int, int], fraction: float) -> int:
    total = m.sum()
    cy, cx = centre
    for r in range(max(m.shape)):
        if (
            m[max(0, cy - r) : cy + r + 1, max(0, cx - r) : cx + r + 1].sum()
            >= fraction * total - 1e-12 * total
        ):
            return r
    return max(m.shape)


def erf_metrics(m: np.ndarray, centre: tuple[int, int], rf: list[int | None]) -> dict[str, Any]:
    peak = float(m.max())
    if peak <= 0:  # e.g. every ReLU on the path is closed for these inputs: say so rather than divide by zero
        return {
            "peak": 0.0,
            "area_10": 0,
            "area_2sigma": 0,
            "radius_50": None,
            "radius_95": None,
            "side_95_over_rf": None,
            "sigma": None,
            "note": "the gradient is zero for every input sample",
        }
    r50, r95 = _square_radius(m, centre, 0.5), _square_radius(m, centre, 0.95)
    sigma = []
    for axis in (1, 0):  # marginal over columns -> rows profile, then columns
        profile = m.sum(axis=axis)
        pos = np.arange(profile.size)
        w = profile / profile.sum()
        mean = float((w * pos).sum())
        sigma.append(float(np.sqrt((w * (pos - mean) ** 2).sum())))
    rf_side = [r for r in rf if r is not None]
    return {
        "peak": peak,
        "area_10": int((m >= 0.10 * peak).sum()),
        "area_2sigma": int((m >= (1 - 0.9545) * peak).sum()),
        "radius_50": r50,
        "radius_95": r95,
        "side_95_over_rf": [(2 * r95 + 1) / r for r in rf_side] if len(rf_side) == len(rf) else None,
        "sigma": sigma,
    }


def effective_rf(
    model: nn.Module,
    input_shape: Sequence[int] | None = None,
    *,
    data: str | None = None,
    samples: int = 64,
    position: str | Sequence[int] = "centre",
    distribution: str = "normal",
    batch: int = 64,
    train_mode: bool = False,
    seed: int = 0,
    name: str = "model",
    crop: bool = True,
    device: str | torch.device | None = None,
) -> ERFResult:
    """The ERF of ``model`` at one output position, averaged over ``samples`` inputs of ``input_shape``
    (C, H, W) drawn from ``distribution``, or over the first samples of dataset spec ``data``. The gradients are
    computed on ``device`` (default: where the model's parameters are; the model is moved there); the inputs
    are drawn on the CPU, so every device sees the same samples."""
    if (input_shape is None) == (data is None):
        raise AtrousError("give an input shape or a dataset spec for the ERF inputs, not both")
    if samples < 1 or batch < 1:
        raise AtrousError(f"samples and batch must be >= 1, got {samples} and {batch}")
    gen = torch.Generator().manual_seed(seed)
    x = (
        _dataset_inputs(data, samples)
        if data is not None
        else _inputs(distribution, samples, input_shape, gen)
    )
    shape = tuple(x.shape[1:])
    report = analyze(model, shape)
    if device is not None:
        model.to(device)
    param = next(model.parameters(), None)
    x = x.to(param.device if param is not None else "cpu")
    out_hw = tuple(report.outputs[0].shape[2:])
    if len(out_hw) != 2:
        raise InputShapeError("ERFs are drawn for 2-D models: give an input shape C,H,W")
    pos = tuple(n // 2 for n in out_hw) if position == "centre" else tuple(int(p) for p in position)
    if len(pos) != 2 or not all(0 <= p < n for p, n in zip(pos, out_hw)):
        raise InputShapeError(f"position {pos} is outside the output of size {out_hw}")
    was_training = model.training
    model.train(train_mode)
    if train_mode:
        warnings.warn(
            "train-mode BatchNorm mixes the samples of a batch: per-sample gradients are no longer "
            "independent",
            stacklevel=2,
        )
    try:
        box = crop_box(report, pos, shape[1:], out_hw) if crop and not train_mode else None
        if box is not None and not _crop_agrees(model, x[:1], pos, box):
            box = None
        maps = gradient_maps(model, x, pos, batch) if box is None else cropped_maps(model, x, pos, box, batch)
    finally:
        model.train(was_training)
    m = maps.mean(0).cpu().numpy().astype(np.float64)
    # The ERF is centred on the input pixel under the output position.
    centre = tuple(int(pos[i] * shape[1 + i] / out_hw[i]) for i in range(2))
    out = report.outputs[0]
    result = ERFResult(name, m, pos, samples, out.rf, report.window(pos))
    result.metrics = erf_metrics(m, centre, out.rf)
    result.metrics["cropped_to"] = None if box is None else [list(box.rows), list(box.cols)]
    return result


@dataclass(frozen=True)
class Crop:
    rows: tuple[int, int]
    cols: tuple[int, int]
    ratio: tuple[int, int]  # input pixels per output pixel, per axis

    def output_position(self, pos: tuple[int, int]) -> tuple[int, int]:
        return pos[0] - self.rows[0] // self.ratio[0], pos[1] - self.cols[0] // self.ratio[1]


def crop_box(report, pos: tuple[int, int], in_hw: tuple[int, ...], out_hw: tuple[int, ...]) -> Crop | None:
    """An input crop holding the RF of ``pos`` with a margin of the model's largest stride, its origin a
    multiple of that stride (so every strided feature map keeps its grid and its ratios); None when the RF is
    global or the crop would not save at least half of the pixels."""
    window = report.window(pos)
    if window is None or any(i % o for i, o in zip(in_hw, out_hw)):
        return None
    strides = [
        a.stride for r in report.layers() for a in r.tensor.axes if a.stride is not None and a.stride > 0
    ]
    step = max([1, *(int(-(-s // 1)) for s in strides)])
    (oy, ox), mask = window
    spans = []
    for lo, length, n in ((oy, mask.shape[0], in_hw[0]), (ox, mask.shape[1], in_hw[1])):
        start = max(0, (lo - step) // step * step)
        stop = min(n, -(-(lo + length + step) // step) * step)
        spans.append((start, stop))
    area = (spans[0][1] - spans[0][0]) * (spans[1][1] - spans[1][0])
    if area > 0.5 * in_hw[0] * in_hw[1]:
        return None
    return Crop(spans[0], spans[1], (in_hw[0] // out_hw[0], in_hw[1] // out_hw[1]))


def cropped_maps(
    model: nn.Module, x: torch.Tensor, pos: tuple[int, int], crop: Crop, batch: int
) -> torch.Tensor:
    (y0, y1), (x0, x1) = crop.rows, crop.cols
    inner = gradient_maps(model, x[:, :, y0:y1, x0:x1], crop.output_position(pos), batch)
    full = inner.new_zeros(x.shape[0], x.shape[2], x.shape[3])
    full[:, y0:y1, x0:x1] = inner
    return full


def _crop_agrees(model: nn.Module, x: torch.Tensor, pos: tuple[int, int], crop: Crop) -> bool:
    """The self-check: full-input and cropped gradients of one sample agree (same support, same values)."""
    full = gradient_maps(model, x, pos, 1)
    cropped = cropped_maps(model, x, pos, crop, 1)
    scale = float(full.abs().max()) or 1.0
    return bool(
        torch.equal(full > 0, cropped > 0) and torch.allclose(full, cropped, rtol=1e-4, atol=1e-6 * scale)
    )


def load_for_erf(
    spec: str,
    checkpoint: str | None,
    model_kwargs: dict[str, Any] | None = None,
    output: str | None = None,
) -> nn.Module:
    """The model of ``spec`` (zoo or import path, ``model_kwargs`` overriding its arguments) or of a trained
    ``checkpoint``, returning only its output ``output`` (default: the first): gradients need one tensor, and
    models with dict, tuple or dataclass outputs (torchvision's ``{"out", "aux"}``) are common."""
    from atrous.rf.analyze import select_output

    if checkpoint:
        if model_kwargs:
            raise AtrousError(
                "--model-kwargs does not apply to --checkpoint: the checkpoint has its own config"
            )
        from atrous.train.inference import load

        return select_output(load(checkpoint), output)
    from atrous.models.registry import resolve_model

    return select_output(resolve_model(spec, **(model_kwargs or {})), output)


def draw(results: list[ERFResult], path: str | Path, log: bool = True) -> Path:
    """One column per result (shared colour scale: each map normalised to unit mass); rows: linear and log
    scale. The theoretical RF box is outlined and its holes (pixels no path reaches) dotted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm
    from matplotlib.patches import Rectangle

    maps = [r.map / r.map.sum() if r.map.sum() > 0 else r.map for r in results]
    vmax = max(max(m.max() for m in maps), 1e-12)
    positive = [m[m > 0].min() for m in maps if (m > 0).any()]
    vmin_log = max(min(positive), vmax * 1e-6) if positive else 1e-12
    rows = 2 if log else 1
    fig, axes = plt.subplots(rows, len(results), figsize=(3.4 * len(results), 3.2 * rows), squeeze=False)
    for col, (r, m) in enumerate(zip(results, maps)):
        for row in range(rows):
            ax = axes[row][col]
            norm = LogNorm(vmin=vmin_log, vmax=vmax) if row == 1 else None
            im = ax.imshow(
                np.where(m > 0, m, np.nan) if row == 1 else m,
                cmap="inferno",
                norm=norm,
                vmin=None if row == 1 else 0,
                vmax=None if row == 1 else vmax,
                interpolation="nearest",
            )
            if r.window is not None:
                (oy, ox), mask = r.window
                ax.add_patch(
                    Rectangle(
                        (ox - 0.5, oy - 0.5),
                        mask.shape[1],
                        mask.shape[0],
                        fill=False,
                        edgecolor="cyan",
                        linewidth=1,
                    )
                )
                hy, hx = np.nonzero(~mask)
                ys, xs = hy + oy, hx + ox
                inside = (ys >= 0) & (ys < m.shape[0]) & (xs >= 0) & (xs < m.shape[1])
                if inside.any() and (~mask).sum() <= 4000:
                    ax.plot(xs[inside], ys[inside], ".", color="cyan", markersize=1.5)
            met = r.metrics
            rf = "global" if any(v is None for v in r.rf) else "x".join(map(str, sorted(set(r.rf))))
            sig = "-" if met["sigma"] is None else f"{met['sigma'][0]:.1f}/{met['sigma'][1]:.1f}"
            title = f"{r.name}\nRF {rf}, r95 {met['radius_95']}, sigma {sig}" if row == 0 else "log scale"
            ax.set_title(title, fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
    fig.suptitle(
        f"Effective receptive fields ({results[0].samples} inputs each; maps normalised to unit mass; "
        "cyan: theoretical RF box, dots: holes)",
        fontsize=9,
    )
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
