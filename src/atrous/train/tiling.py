"""Exact tiled inference: margins from the receptive-field engine, tile origins on the output's period.

A tile's logits equal whole-image logits on every pixel whose theoretical window (the receptive field on an
unbounded input, bounding box included) lies inside the tile or is cut only by the image's own border, and
whose computation is the same shifted one: the tile starts on a multiple of the output's period (the phases
of strided and upsampling paths) and has a size the model handles like the image's (a multiple of the period,
or, at the image's far edge, the image's remainder). The engine gives all three facts; :func:`plan_tiles` asks
it at the tile size and at the edge tile's size, and refuses when no tiling can be exact (a global receptive
field, or a model that resamples its features to the input's size at a size that is not a multiple of its
stride: then its output drifts across the image) or none can be promised (the engine's index maps outgrew
its budget and were coarsened: it bounds the windows, but gives no exact stride or phases).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from atrous.errors import AtrousError

AUTO_CORE = 448  # pixels per side a tile contributes at least, with --tile auto
CORE_ALIGN = 16  # --tile auto makes cores a multiple of this: TIFF tiles must be, and a core is one TIFF tile
GLOBAL_WHOLE_IMAGE = 2048 * 2048  # --tile auto runs a global-RF model on the whole image up to this size


class TilingError(AtrousError):
    """A tiling the model or the image cannot take."""


@dataclass(frozen=True)
class AxisGeometry:
    """What the engine says about one axis of the model's output at one input size."""

    period: int  # output pixels q * period + f, f < period, see windows shifted by q * period
    before: int  # input pixels an output pixel sees before itself (its theoretical window), any phase
    after: int
    global_: bool = False
    drift: str | None = None  # set when the window moves with the position (stride != 1)
    # The engine only bounds the windows: its index maps outgrew the phase budget and were coarsened, so the
    # stride and phases it would give are rounded, not exact (see AxisRF.approximate).
    approximate: bool = False


def _geometry(model: nn.Module, channels: int, size: tuple[int, int]) -> list[AxisGeometry]:
    from atrous.rf import analyze

    report = analyze(model, (channels, *size))
    out = report.output()
    if tuple(out.shape[-2:]) != tuple(size):
        raise TilingError(
            f"the model returns {tuple(out.shape[-2:])} logits for a {size[0]}x{size[1]} input; tiled "
            "prediction needs logits at the input's size"
        )
    axes = []
    for a in out.axes:
        if a.global_:
            axes.append(AxisGeometry(1, 0, 0, global_=True))
        elif a.approximate:
            axes.append(AxisGeometry(1, 0, 0, approximate=True))
        elif a.stride != 1 or not a.phases:
            axes.append(AxisGeometry(1, 0, 0, drift=str(a.stride)))
        else:
            axes.append(
                AxisGeometry(
                    period=max(p.phase for p in a.phases) + 1,
                    before=max(p.phase - p.lo for p in a.phases),
                    after=max(p.hi - p.phase for p in a.phases),
                )
            )
    return axes


def _approximate_error(size: tuple[int, ...]) -> TilingError:
    return TilingError(
        f"at {size[0]}x{size[1]} the receptive-field engine can only bound the model's windows: its exact index "
        "maps outgrow the phase budget (it resamples features to sizes the input does not divide) and were "
        "coarsened, so no tiling can be promised to equal whole-image inference; pass a --tile that the "
        "engine analyses exactly, or --approximate-tiles MARGIN"
    )


def _round_up(n: int, p: int) -> int:
    return -(-n // p) * p


@dataclass(frozen=True)
class Window:
    """Input rows/cols ``[start, stop)`` fed to the model; output ``[core_start, core_stop)`` kept."""

    start: int
    stop: int
    core_start: int
    core_stop: int


def axis_windows(n: int, tile: int, period: int, before: int, after: int) -> list[Window]:
    """Windows along one axis of ``n`` pixels: ``tile`` pixels each, starting on multiples of ``period``, the
    last one ending on the image's edge (at most two sizes, so tiles batch). The kept cores form a regular
    grid: core ``k`` is ``[k * core, (k + 1) * core)`` with ``core = tile - before - after`` (a multiple of
    ``period``), the last one cut by the image's edge; each window holds ``before`` pixels of context above its
    core and ``after`` below, except where its edge is the image's. A regular grid lets a writer stream each
    core as one tile of a tiled file, in order, holding nothing for the rest of the row."""
    if n <= tile:
        return [Window(0, n, 0, n)]
    core = tile - before - after
    if core < 1:
        raise TilingError(f"tile {tile} leaves no core between margins {before} and {after}")
    last_start = (n - tile) // period * period  # the window that ends at n starts here
    windows: list[Window] = []
    for c in range(0, n, core):
        start = max(c - before, 0) // period * period
        if start + tile > n:  # the edge window: it ends at n, where no context is needed
            windows.append(Window(last_start, n, c, min(c + core, n)))
        else:
            windows.append(Window(start, start + tile, c, min(c + core, n)))
    return windows


@dataclass
class TilePlan:
    """How an image is cut: per axis (H, W) the tile size, the period tile origins sit on, the margins each
    side (multiples of the period), the engine's exact reach (None for a global RF) and whether the stitched
    logits equal whole-image inference."""

    tile: tuple[int, int]
    period: tuple[int, int]
    margin: tuple[tuple[int, int], tuple[int, int]]
    reach: tuple[tuple[int, int], tuple[int, int]] | None
    exact: bool
    whole: bool = False  # the image is one tile: plain whole-image inference
    warnings: list[str] = field(default_factory=list)

    def windows(self, h: int, w: int) -> tuple[list[Window], list[Window]]:
        if self.whole:
            return [Window(0, h, 0, h)], [Window(0, w, 0, w)]
        return (
            axis_windows(h, self.tile[0], self.period[0], *self.margin[0]),
            axis_windows(w, self.tile[1], self.period[1], *self.margin[1]),
        )

    @property
    def core(self) -> tuple[int, int] | None:
        """The kept cores' grid step (H, W): every core but the image's last row and column has this size.
        None for whole-image inference."""
        if self.whole:
            return None
        return tuple(t - b - a for t, (b, a) in zip(self.tile, self.margin))  # type: ignore[return-value]

    def count(self, h: int, w: int) -> int:
        """Inputs the model runs on (windows that share their input span run once, see ``_groups``)."""
        rows, cols = self.windows(h, w)
        return len(_groups(rows)) * len(_groups(cols))

    def describe(self) -> str:
        if self.whole:
            return "whole image in one pass (exact)"
        (bh, ah), (bw, aw) = self.margin
        kind = "exact" if self.exact else "approximate"
        reach = ""
        if self.reach is not None:
            (rbh, rah), (rbw, raw) = self.reach
            reach = f"; receptive-field reach {rbh}/{rah} (H) {rbw}/{raw} (W)"
        return (
            f"{kind} tiles of {self.tile[0]}x{self.tile[1]}, margins {bh}/{ah} (H) {bw}/{aw} (W) px, "
            f"origins on multiples of {self.period[0]}x{self.period[1]}{reach}"
        )


def plan_tiles(
    model: nn.Module,
    image_size: tuple[int, int],
    channels: int,
    tile: int | str | None = "auto",
    overlap: int | None = None,
    approximate: int | None = None,
) -> TilePlan:
    """The tiling of an ``image_size`` (H, W) image for ``model``.

    ``tile``: pixels per side fed to the model ("auto": a core of at least 448 pixels plus the margins; None:
    the whole image). ``overlap``: pixels neighbouring tiles share (margin ``overlap / 2`` each side, warned
    about when below the exact reach). ``approximate``: the margin each side for a model no tiling can
    reproduce exactly (global receptive field, drift at this image size, or windows the engine can only bound)."""
    h, w = image_size
    min_size = int(getattr(model, "min_size", 1))
    stride = max(1, int(getattr(model, "output_stride", 1) or 1))
    if tile is None:
        return TilePlan((h, w), (1, 1), ((0, 0), (0, 0)), None, exact=True, whole=True)
    auto = tile == "auto"
    if not auto and (not isinstance(tile, int) or tile < 1):
        raise TilingError(f"tile {tile!r}: give a positive number of pixels or 'auto'")
    for name, value in (("overlap", overlap), ("approximate", approximate)):
        if value is not None and value < 0:
            raise TilingError(f"{name} {value} must be >= 0 pixels")
    base = _round_up(max(512 if auto else int(tile), min_size), stride)
    geo = _geometry(model, channels, (base, base))
    if any(g.global_ or g.approximate for g in geo):
        if approximate is None:
            if (auto and h * w <= GLOBAL_WHOLE_IMAGE) or (not auto and h <= tile and w <= tile):
                return TilePlan((h, w), (1, 1), ((0, 0), (0, 0)), None, exact=True, whole=True)
            if not any(g.global_ for g in geo):
                raise _approximate_error((base, base))
            raise TilingError(
                f"the model's receptive field is global (image pooling, attention or normalisation over "
                f"space): no tiling of a {h}x{w} image equals whole-image inference; pass an approximate "
                "margin (--approximate-tiles MARGIN) to tile anyway"
            )
        period = (stride, stride)
        reach = None
    else:
        if any(g.drift for g in geo):
            raise TilingError(
                f"at tile size {base} the model's output drifts across the tile (stride "
                f"{', '.join(g.drift or '1' for g in geo)}): pass --tile a multiple of its total stride"
            )
        period = tuple(math.lcm(g.period, stride) for g in geo)
        reach = tuple((g.before, g.after) for g in geo)
    if approximate is not None:
        m = approximate
        margins = tuple((_round_up(m, p), _round_up(m, p)) for p in period)
    elif overlap is not None:
        m = -(-overlap // 2)
        margins = tuple((_round_up(m, p), _round_up(m, p)) for p in period)
    else:
        margins = tuple((_round_up(b, p), _round_up(a, p)) for (b, a), p in zip(reach, period))
    if auto:
        size = tuple(
            b + a + _round_up(max(AUTO_CORE, 2 * (b + a)), math.lcm(p, CORE_ALIGN))
            for (b, a), p in zip(margins, period)
        )
    else:
        size = tuple(max(int(tile) // p * p, p) for p in period)
    for axis, ((b, a), p, t) in enumerate(zip(margins, period, size)):
        if t < b + a + p:
            raise TilingError(
                f"tile {tile} is smaller than twice the margin ({b} + {a} px along {'HW'[axis]}) plus the "
                f"period {p}: use a tile of at least {b + a + p} pixels, or --tile auto"
            )
    plan = TilePlan(size, period, margins, reach, exact=approximate is None)
    if h <= size[0] and w <= size[1]:
        plan.whole = True
        plan.exact = True
        return plan
    short = reach is not None and any(mb < rb or ma < ra for (mb, ma), (rb, ra) in zip(margins, reach))
    if short and overlap is not None and approximate is None:
        need = max(max(rb, ra) for rb, ra in reach)
        plan.exact = False
        plan.warnings.append(
            f"overlap {overlap} gives margins {margins[0][0]}/{margins[1][0]} px, below the receptive-field "
            f"reach ({need} px): tile borders will differ from whole-image inference; use overlap "
            f">= {2 * need} or leave it out for exact tiles"
        )
    if plan.exact:
        _check_edges(model, channels, (h, w), plan, base)
    return plan


def _check_edges(model: nn.Module, channels: int, size: tuple[int, int], plan: TilePlan, base: int) -> None:
    """The edge windows have the image's remainder modulo the period: ask the engine that the model handles
    that size like the tile size (a model resizing its features to the input's size drifts otherwise)."""
    edge = tuple(n if n <= t else t + (n - t) % p for n, t, p in zip(size, plan.tile, plan.period))
    if all(e % p == 0 for e, p in zip(edge, plan.period)) and tuple(plan.tile) == (base, base):
        return
    for shape in {tuple(plan.tile), edge}:
        for axis, g in enumerate(_geometry(model, channels, shape)):
            if (g.drift or g.global_ or g.approximate) and size[axis] <= plan.tile[axis]:
                continue  # one window spans this axis: the tile is the image, whatever the model does
            if g.approximate:
                raise _approximate_error(shape)
            if g.drift or g.global_:
                p = plan.period[axis]
                raise TilingError(
                    f"the model resamples its features to the input's size: at {size[0]}x{size[1]} "
                    f"({'HW'[axis]} = {size[axis]} is not a multiple of its period {p}) its output drifts "
                    f"across the image (stride {g.drift}), so no tiling equals whole-image inference; crop or "
                    f"pad the image to a multiple of {p}, or pass --approximate-tiles MARGIN"
                )
            if plan.reach is not None and (
                g.before > max(plan.reach[axis]) or g.after > max(plan.reach[axis])
            ):
                raise TilingError(
                    f"the receptive field at tile size {shape} is wider than at {base}: pass a larger --tile"
                )


# Region [y0, y1) x [x0, x1) of the prepared image: (C, y1 - y0, x1 - x0) float.
Region = Callable[[int, int, int, int], torch.Tensor]
# The same region written into ``out`` (C, y1 - y0, x1 - x0) float: reading, converting and batching in one pass.
Fill = Callable[[int, int, int, int, torch.Tensor], None]


def _groups(windows: list[Window]) -> list[list[int]]:
    """Indices of consecutive windows that read the same input span. Cores narrower than a margin make them:
    at the image's far edge (the last core narrower than the margin after it: the last windows all end on
    the edge) and at its start (cores narrower than the margin before them: the first windows all start at
    0). Such a span is computed once and each of its cores is cut from that one output."""
    groups: list[list[int]] = []
    for i, w in enumerate(windows):
        if groups and (windows[groups[-1][0]].start, windows[groups[-1][0]].stop) == (w.start, w.stop):
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


@torch.no_grad()
def iter_tiles(
    model: nn.Module,
    region: Region,
    size: tuple[int, int],
    plan: TilePlan,
    batch: int = 4,
    on_tile: Callable[[int, int], None] | None = None,
    on_window: Callable[[Window, Window, torch.Tensor], None] | None = None,
    keep: Callable[[torch.Tensor], Any] = lambda core: core,
    fill: tuple[int, Fill] | None = None,
) -> Iterator[tuple[Window, Window, Any]]:
    """Each tile's row and column windows and ``keep(core)`` of its kept logits (K, h, w), in row-major order.

    Each tile's input is read on its own and its core handed on at once: memory follows the tiles in flight,
    not the image's width (the one exception: the cores of a row group's later rows, held until their
    turn, are together narrower than a margin). Consecutive inputs of one shape (across rows too) run as a
    batch on the model's device. ``fill = (channels, fill)`` writes each input straight into the batch (else
    ``region`` is stacked). ``on_tile(inputs, pixels)`` is called after each batch (progress),
    ``on_window(row, col, input)`` with each input (previews); ``keep(core)`` turns a core's logits, a view
    into the batch's output, into what is handed on (class indices, say)."""
    device = next(model.parameters()).device
    row_windows, col_windows = plan.windows(*size)
    row_groups, col_groups = _groups(row_windows), _groups(col_windows)
    # One input per (row group, column group), in row-major order; each serves the cores of its groups.
    order = [(rg, cg) for rg in row_groups for cg in col_groups]
    later: dict[int, list[tuple[Window, Window, Any]]] = {}  # cores of a row whose window an earlier row ran

    def window(unit: tuple[list[int], list[int]]) -> tuple[Window, Window]:
        return row_windows[unit[0][0]], col_windows[unit[1][0]]

    def shape(unit: tuple[list[int], list[int]]) -> tuple[int, int]:
        rw, cw = window(unit)
        return rw.stop - rw.start, cw.stop - cw.start

    i = 0
    while i < len(order):
        chunk = [order[i]]
        while (
            len(chunk) < batch
            and i + len(chunk) < len(order)
            and shape(order[i + len(chunk)]) == shape(chunk[0])
        ):
            chunk.append(order[i + len(chunk)])
        i += len(chunk)
        logits = _run(model, device, [window(u) for u in chunk], region, on_window, fill)
        served = [
            [(r, c, keep(_core(logits[k], row_windows[r], col_windows[c]))) for r in rg for c in cg]
            for k, (rg, cg) in enumerate(chunk)
        ]
        del logits
        if on_tile is not None:
            on_tile(len(chunk), sum(_area(row_windows[r], col_windows[c]) for u in served for r, c, _ in u))
        for (rg, cg), items in zip(chunk, served):
            for r, c, item in items:
                if r == rg[0]:
                    yield row_windows[r], col_windows[c], item
                else:
                    later.setdefault(r, []).append((row_windows[r], col_windows[c], item))
            if cg[-1] == len(col_windows) - 1:  # the row group's last input: the rows it also served follow
                for r in rg[1:]:
                    yield from later.pop(r)


def _area(rw: Window, cw: Window) -> int:
    return (rw.core_stop - rw.core_start) * (cw.core_stop - cw.core_start)


def _run(
    model: nn.Module,
    device: torch.device,
    windows: list[tuple[Window, Window]],
    region: Region,
    on_window: Callable[[Window, Window, torch.Tensor], None] | None,
    fill: tuple[int, Fill] | None,
) -> torch.Tensor:
    """The model's logits on a batch of same-shaped windows, each read (or written by ``fill``) on its own."""
    if fill is not None:
        rw, cw = windows[0]
        inputs = torch.empty(len(windows), fill[0], rw.stop - rw.start, cw.stop - cw.start)
        for k, (rw, cw) in enumerate(windows):
            fill[1](rw.start, rw.stop, cw.start, cw.stop, inputs[k])
    else:
        inputs = torch.stack([region(rw.start, rw.stop, cw.start, cw.stop) for rw, cw in windows])
    if on_window is not None:
        for (rw, cw), x in zip(windows, inputs):
            on_window(rw, cw, x)
    return model(inputs.to(device))


def _core(logits: torch.Tensor, rw: Window, cw: Window) -> torch.Tensor:
    """The kept part (K, h, w) of one window's logits, on the CPU in float32."""
    return (
        logits[
            :,
            rw.core_start - rw.start : rw.core_stop - rw.start,
            cw.core_start - cw.start : cw.core_stop - cw.start,
        ]
        .float()
        .cpu()
    )


def tiled_logits(model: nn.Module, image: torch.Tensor, plan: TilePlan, batch: int = 4) -> torch.Tensor:
    """Logits (K, H, W) of a (C, H, W) image, stitched from the plan's tiles (for images that fit in memory)."""
    h, w = image.shape[1:]
    out = None
    region = lambda y0, y1, x0, x1: image[:, y0:y1, x0:x1]  # noqa: E731
    for rw, cw, core in iter_tiles(model, region, (h, w), plan, batch):
        if out is None:
            out = core.new_empty(core.shape[0], h, w)
        out[:, rw.core_start : rw.core_stop, cw.core_start : cw.core_stop] = core
    assert out is not None
    return out
