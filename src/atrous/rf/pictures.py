"""Pictures of receptive fields, drawn from what the engine computed (nothing here recomputes an RF).

* ``support_panel``: one support on a grid: black where an input pixel reaches the output pixel, grey where it
  lies inside the theoretical RF box but does not (dilation's holes), the box outlined. The lab's Exercise 1 and
  ``atrous rf --plot`` draw with it.
* ``rf_figure``: for any model, (a) the exact in-image support of one output pixel with its theoretical RF box,
  (b) the RF after every layer along the network, stride on a second axis, (c) for outputs whose phases see
  different windows (after transposed convolutions or upsampling), each phase's window side by side.
* ``schedule_figure``: a chain of dilated convolutions: its 1-D support with the holes marked, its 2-D support,
  and the HDC rule's verdict.
"""

from __future__ import annotations

import itertools
import textwrap
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Rectangle

from atrous.errors import InputShapeError

HOLE, REACHED, BOX = 0.3, 1.0, "tab:cyan"
MAX_PHASE_PANELS = 4


def support_panel(
    ax: plt.Axes,
    mask: np.ndarray,
    box: tuple[int, int, int, int] | None = None,
    holes: np.ndarray | None = None,
    title: str = "",
) -> None:
    """Draw ``mask`` (bool, H x W). ``box`` = (top, left, height, width) of the theoretical RF in the same grid
    coordinates, outlined; ``holes`` (bool, same shape) are cells of that box the window does not reach."""
    canvas = np.where(mask, REACHED, 0.0)
    if holes is not None:
        canvas = np.where(holes & ~mask, HOLE, canvas)
    ax.imshow(canvas, cmap="Greys", vmin=0, vmax=1, interpolation="nearest")
    if box is not None:
        top, left, h, w = box
        ax.add_patch(Rectangle((left - 0.5, top - 0.5), w, h, fill=False, edgecolor=BOX, linewidth=1.2))
    ax.set_title(title, fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])


def window_panel(ax: plt.Axes, mask: np.ndarray, title: str) -> None:
    """A theoretical window on its own: reached cells black, holes grey, the whole box outlined."""
    support_panel(ax, mask, (0, 0, *mask.shape), ~mask, title)


def _in_image_holes(window, shape: tuple[int, int]) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """The window's holes placed on the input grid (clipped to it), and its box in grid coordinates."""
    (oy, ox), mask = window
    grid = np.zeros(shape, dtype=bool)
    ys, xs = np.nonzero(~mask)
    ys, xs = ys + oy, xs + ox
    keep = (ys >= 0) & (ys < shape[0]) & (xs >= 0) & (xs < shape[1])
    grid[ys[keep], xs[keep]] = True
    return grid, (oy, ox, *mask.shape)


def rf_figure(report, path: str | Path, at: Sequence[int] | None = None, output: str | None = None) -> Path:
    """(a) exact support of output pixel ``at`` (default: the centre), (b) RF per layer, (c) phase windows."""
    out = report.output(output)
    spatial = tuple(out.shape[2:])
    if len(spatial) != 2 or len(report.input_shape) != 3:
        raise InputShapeError("RF pictures are drawn for 2-D inputs: give an input shape C,H,W")
    at = tuple(at) if at is not None else tuple(n // 2 for n in spatial)
    phases = _phase_positions(report, out.name, at) if not out.aligned and not out.global_ else []
    fig, axes = plt.subplots(1, 2 + bool(phases), figsize=(4.2 * (2 + bool(phases)), 4.0))
    _support_axes(axes[0], report, out, at)
    _layers_axes(axes[1], report)
    if phases:
        _phases_axes(fig, axes[2], report, out.name, phases)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _support_axes(ax: plt.Axes, report, out, at: tuple[int, ...]) -> None:
    shape = tuple(report.input_shape[1:])
    support = report.support(at, out.name)
    title = f"output '{out.name}' pixel {at}: {int(support.sum())} input pixels"
    if out.global_:
        support_panel(ax, support, title=title)
        why = "; ".join(out.notes) or "a global operation"
        ax.set_xlabel(f"global RF: {why}", fontsize=7, wrap=True)
        return
    holes, box = _in_image_holes(report.window(at, out.name), shape)
    rf = "x".join(map(str, out.rf))
    support_panel(ax, support, box, holes, f"{title}\nRF {rf} (box), holes grey")


def _layers_axes(ax: plt.Axes, report) -> None:
    """RF (largest over axes) after each recorded layer; global layers drawn at the top as crosses."""
    rows = report.to_json()["layers"]
    depth = np.arange(1, len(rows) + 1)
    rf = [max(r["rf"]) if all(v is not None for v in r["rf"]) else np.nan for r in rows]
    stride = [
        max(float(s) for s in r["stride"]) if all(s is not None for s in r["stride"]) else np.nan
        for r in rows
    ]
    ax.plot(depth, rf, marker=".", label="RF (pixels)")
    finite = [v for v in rf if v == v]
    top = max(finite) if finite else 1
    glob = [d for d, v in zip(depth, rf) if v != v]
    if glob:
        ax.plot(glob, [top * 1.05] * len(glob), "x", color="tab:red", label="global")
    ax.set_xlabel("layer (recorded op, in order)")
    ax.set_ylabel("receptive field (pixels per axis)")
    twin = ax.twinx()
    twin.step(depth, stride, where="post", color="tab:orange", alpha=0.7, label="stride")
    twin.set_ylabel("stride")
    twin.set_yscale("log", base=2)
    handles = ax.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
    ax.legend(handles, [h.get_label() for h in handles], fontsize=7, loc="upper left")
    ax.set_title("RF after every layer", fontsize=8)
    ax.grid(alpha=0.3)


def _phase_positions(report, name: str, at: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Output pixels next to ``at``, one per phase (up to MAX_PHASE_PANELS), for outputs that are not aligned."""
    entry = next(o for o in report.to_json()["outputs"] if o["name"] == name)
    periods = [max(1, len(p)) for p in entry["phases"]]
    offsets = itertools.product(*(range(p) for p in periods))
    return [tuple(a + d for a, d in zip(at, off)) for off in itertools.islice(offsets, MAX_PHASE_PANELS)]


def _phases_axes(fig: plt.Figure, ax: plt.Axes, report, name: str, positions: list[tuple[int, ...]]) -> None:
    """Each phase's theoretical window, relative to its own output pixel, side by side in one panel."""
    windows = [report.window(p, name) for p in positions]
    ax.axis("off")
    ax.set_title("phases see different windows", fontsize=8)
    grid = ax.get_subplotspec().subgridspec(1, len(windows), wspace=0.15)
    for i, ((origin, mask), pos) in enumerate(zip(windows, positions)):
        sub = fig.add_subplot(grid[0, i])
        # Relative to the pixel's own position, so that what differs between phases is visible.
        offset = tuple(int(o - p) for o, p in zip(origin, pos))
        window_panel(sub, mask, f"pixel {pos}\nwindow from {offset}")


def schedule_figure(results: Sequence, path: str | Path) -> Path:
    """One column per schedule: its 1-D support (row 1) and 2-D support (row 2), the HDC verdict above."""
    fig, axes = plt.subplots(
        2,
        len(results),
        figsize=(3.2 * len(results), 4.4),
        squeeze=False,
        gridspec_kw={"height_ratios": [1, 4]},
    )
    for col, r in enumerate(results):
        line = np.zeros(r.rf, dtype=bool)
        line[[o for o in range(r.rf) if o not in set(r.holes)]] = True
        window_panel(axes[0][col], line[None, :], f"rates {','.join(map(str, r.rates))}: RF {r.rf}")
        text = r.hdc.verdict if "HDC" in r.hdc.verdict else f"HDC rule: {r.hdc.verdict}"
        verdict = textwrap.fill(text, 34)
        window_panel(axes[1][col], np.outer(line, line), f"{len(r.holes)} holes per axis\n{verdict}")
    fig.suptitle("Support of one output pixel (black: reached; grey: holes)", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
