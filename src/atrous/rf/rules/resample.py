"""Resampling: interpolation (every mode PyTorch has), pixel shuffle and unshuffle."""

from __future__ import annotations

from collections.abc import Callable
from fractions import Fraction
from math import floor

import numpy as np
import torch

from atrous.rf.rules.base import (
    MERGE,
    AxisRule,
    Ctx,
    Effect,
    packet_rank,
    rule,
    spatial_op,
    windows_rule,
)
from atrous.rf.support import AxisMap, Offsets


def _ratio(n_in: int, n_out: int, scale: float | None, align_corners: bool) -> Fraction:
    """Source-index step per output index, as PyTorch defines it (a rational for the periodic rule)."""
    if align_corners:
        return Fraction(n_in - 1, n_out - 1) if n_out > 1 else Fraction(0)
    if scale is not None and scale > 0:
        return Fraction(1 / scale).limit_denominator(10_000)
    return Fraction(n_in, n_out)


def interpolation_rule(mode: str, n_in: int, n_out: int, scale: float | None, align_corners: bool) -> AxisMap:
    """Periodic (interior) rule of nearest / linear / cubic resampling in exact rational arithmetic."""
    r = _ratio(n_in, n_out, scale, align_corners)
    if r == 0:
        return AxisMap.constant(Offsets.of([0]))

    def taps(u: int) -> list[int]:
        if mode == "nearest":
            return [floor(u * r)]
        if mode == "nearest-exact":
            return [floor((u + Fraction(1, 2)) * r)]
        src = u * r if align_corners else (u + Fraction(1, 2)) * r - Fraction(1, 2)
        i0, frac = floor(src), src - floor(src)
        if frac == 0:  # the neighbours get weight exactly 0
            return [i0]
        return [i0, i0 + 1] if mode == "linear" else [i0 - 1, i0, i0 + 1, i0 + 2]

    return windows_rule(taps, r)


def _probe_interpolation(packet: str, k: int, i: int, args: dict) -> Callable[[int, int], np.ndarray]:
    """Exact finite relation of axis ``i``: PyTorch's own kernel run on one-hot rows along that axis.

    Its float index arithmetic (and weights that round to exactly 0) decide which pixels really contribute,
    so the relation is measured rather than re-derived. The other axes have size 1 in and out. The ``.vec``
    overloads compute a size and call the per-axis-scale ``.default`` kernel, which is what we call here.
    """

    def finite(n_in: int, n_out: int) -> np.ndarray:
        op = getattr(torch.ops.aten, packet.split(".", 1)[1]).default
        eye = torch.eye(n_in, dtype=torch.float64).reshape(
            [1, n_in] + [n_in if j == i else 1 for j in range(k)]
        )
        out_size = [n_out if j == i else 1 for j in range(k)]
        scales = _scales(args, k)
        align = [bool(args["align_corners"])] if "align_corners" in args else []
        out = op(eye, out_size, *align, *[scales[i] if j == i else None for j in range(k)])
        return (out.reshape(n_in, n_out) != 0).numpy().T  # (output index, input index)

    return finite


def _scales(args: dict, k: int) -> list[float | None]:
    if "scale_factors" in args:
        sf = args.get("scale_factors")
        return list(sf) if sf is not None else [None] * k
    names = {1: ["scales"], 2: ["scales_h", "scales_w"], 3: ["scales_d", "scales_h", "scales_w"]}[k]
    return [args.get(n) for n in names]


@rule(
    "aten.upsample_nearest1d",
    "aten.upsample_nearest2d",
    "aten.upsample_nearest3d",
    "aten._upsample_nearest_exact1d",
    "aten._upsample_nearest_exact2d",
    "aten._upsample_nearest_exact3d",
    "aten.upsample_linear1d",
    "aten.upsample_bilinear2d",
    "aten.upsample_trilinear3d",
    "aten.upsample_bicubic2d",
)
def _interpolate(ctx: Ctx) -> list[Effect]:
    packet, args = ctx.call.packet, ctx.call.args
    k = packet_rank(packet)
    mode = (
        "nearest-exact"
        if "exact" in packet
        else "nearest"
        if "nearest" in packet
        else "cubic"
        if "bicubic" in packet
        else "linear"
    )
    align = bool(args.get("align_corners") or False)
    scales = _scales(args, k)

    def per_dim(i: int, n_in: int, n_out: int) -> AxisRule:
        periodic = interpolation_rule(mode, n_in, n_out, scales[i], align)
        return AxisRule(periodic, _probe_interpolation(packet, k, i, args))

    return spatial_op(ctx, k, per_dim)


@rule("aten.pixel_shuffle")
def _pixel_shuffle(ctx: Ctx) -> list[Effect]:
    r = int(ctx.call.args["upscale_factor"])
    shuffle = AxisRule(AxisMap(r, 1, (Offsets.of([0]),) * r))
    return spatial_op(ctx, 2, lambda i, n_in, n_out: shuffle, MERGE)


BLOCK_NOTE = (
    "approximate: {where} moves the positions of each {r}x{r} block into channels and the engine keeps, per "
    "channel, the whole block: exact once a later op mixes those channels (a convolution, a Linear), an "
    "over-approximation where an output reads single block positions (pixel_shuffle back, a depthwise op, "
    "a channel slice)"
)


@rule("aten.pixel_unshuffle")
def _pixel_unshuffle(ctx: Ctx) -> list[Effect]:
    """Channel ``c * r * r + i * r + j`` of block ``(h, w)`` holds input ``(h * r + i, w * r + j)`` of channel
    ``c``. The channel-segment propagation has no relation for "output channel k reads input channel
    k // (r * r) at block position k % (r * r)", so every channel carries the whole block, and the rule says so.

    Following the positions exactly, as digits of H and W in the channel dim (the unshuffle as the view,
    permute and view it is, through the layout algebra the view rules use for space-to-depth), was tried
    twice: it makes the round trip and a depthwise op between exact, but the engine still misreads some
    layouts it leads to, and under-reaches there (as space-to-depth written as views does today): a grid dim
    that holds none of an axis whose digits sit in channels (an input of height r, or a pooling to one pixel
    after the unshuffle) and is then resized (an upsampling, an adaptive pooling to more than one pixel, an
    expand, a transposed convolution) is read by axis coordinates in ``RFReport``, and so is a transposed
    output whose grid dim shrank to 1 (transpose, unshuffle, stride-2 convolution). Those chains are pinned in
    tests/rf/test_view_chains.py (``AFTER_UNSHUFFLE``); the exact rule can come back once they pass with
    it."""
    r = int(ctx.call.args["downscale_factor"])
    unshuffle = AxisRule(AxisMap.affine(r, Offsets.interval(0, r - 1)))
    effects = spatial_op(ctx, 2, lambda i, n_in, n_out: unshuffle, MERGE)
    if r > 1:
        for effect in effects:
            effect.notes.append(BLOCK_NOTE.format(where=ctx.where, r=r))
    return effects
