"""Padding, slicing, flipping, rolling, concatenation: elements move between positions."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np

from atrous.rf import layout as L
from atrous.rf.graph import TensorArg
from atrous.rf.layout import Loc, Split
from atrous.rf.rules.base import (
    GLOBAL_RULE,
    MERGE,
    MIX,
    SAME,
    AxisRule,
    Channels,
    Ctx,
    Dep,
    Effect,
    dim_index,
    rule,
)
from atrous.rf.support import AxisMap, Offsets


def _reflect(v: int, n: int) -> int:
    period = 2 * (n - 1)
    if period == 0:
        return 0
    v = abs(v) % period
    return period - v if v >= n else v


def _pad_finite(left: int, how: str) -> Callable[[int, int], np.ndarray]:
    def finite(n_in: int, n_out: int) -> np.ndarray:
        m = np.zeros((n_out, n_in), dtype=bool)
        for u in range(n_out):
            v = u - left
            if how == "reflect":
                v = _reflect(v, n_in)
            elif how == "replicate":
                v = min(max(v, 0), n_in - 1)
            elif how == "circular":
                v %= n_in
            if 0 <= v < n_in:
                m[u, v] = True
        return m

    return finite


def _pad_effect(ctx: Ctx, pads: list[int], how: str) -> list[Effect]:
    x = ctx.call.inputs[0]
    ndim = len(x.shape)
    k = len(pads) // 2
    lefts = {ndim - 1 - j: pads[2 * j] for j in range(k)}  # pads run from the last dim backwards
    layout = ctx.layout(x)
    rules: dict[int, AxisRule] = {}
    channels = SAME
    for d, left in lefts.items():
        try:
            axis = L.axis_at_dim(layout, d)
        except ValueError:
            raise ctx.unsupported("padding a dim that holds several axes") from None
        if axis is not None:
            finite = _pad_finite(left, how) if how != "constant" else None
            rules[axis] = AxisRule(AxisMap.affine(1, Offsets.of([-left])), finite)
        elif d == L.channel_dim(layout, x.shape) and left != 0:
            channels = Channels("slice", -left, 1)
    out_shape = ctx.out_shapes[0]
    return [Effect(L.with_sizes(layout, out_shape), [Dep(x, rules, channels)])]


@rule("aten.constant_pad_nd")
def _constant_pad(ctx: Ctx) -> list[Effect]:
    return _pad_effect(ctx, list(ctx.call.args["pad"]), "constant")


@rule(
    "aten.reflection_pad1d",
    "aten.reflection_pad2d",
    "aten.reflection_pad3d",
    "aten.replication_pad1d",
    "aten.replication_pad2d",
    "aten.replication_pad3d",
    "aten._pad_circular",
)
def _border_pad(ctx: Ctx) -> list[Effect]:
    how = (
        "reflect"
        if "reflection" in ctx.call.packet
        else "replicate"
        if "replication" in ctx.call.packet
        else "circular"
    )
    return _pad_effect(ctx, list(ctx.call.args.get("padding") or ctx.call.args.get("pad")), how)


EXTRA_TOKENS = (
    "global: extra tokens (a class token) carry no position, so reading them alone is taken to read every "
    "position: exact once attention has mixed the tokens, an over-approximation before"
)


def _token_slice(
    ctx: Ctx, x: TensorArg, dim: int, start: int, step: int, out_shape: tuple, drop: bool
) -> Effect:
    """Slicing a token dim (positions flattened into one dim, maybe after extra tokens): keeping every position
    only moves the extra tokens; taking only extra tokens reads no position; one token is one position."""
    layout = ctx.layout(x)
    holders = {a: loc for a, loc in enumerate(layout) if loc is not None and dim in L.dims_of(loc)}
    if (
        any(isinstance(loc, Split) for loc in holders.values())
        or len({loc.offset for loc in holders.values()}) > 1
    ):
        raise ctx.unsupported("slicing a dim that holds part of a split axis")
    off = next(iter(holders.values())).offset
    end = off + max(loc.inner * loc.size for loc in holders.values())
    stop = start + ((1 if drop else out_shape[dim]) - 1) * step + 1
    rules: dict[int, AxisRule] = {}
    notes: list[str] = []
    new = list(layout)
    if drop and off <= start < end:
        for a, loc in holders.items():
            rules[a] = AxisRule(AxisMap.constant(Offsets.of([((start - off) // loc.inner) % loc.size])))
            new[a] = None
    elif stop <= off or start >= end:
        for a in holders:
            rules[a], new[a] = GLOBAL_RULE, None
        notes.append(f"{EXTRA_TOKENS} ({ctx.where})")
    elif not drop and step == 1 and start <= off and stop >= end:
        for a, loc in holders.items():
            plain = len(holders) == 1 and loc.inner == 1 and off == start and loc.size == out_shape[dim]
            new[a] = replace(loc, offset=off - start, plain=plain)
    else:
        raise ctx.unsupported(
            "slicing part of a flattened token sequence: its positions no longer form a grid"
        )
    if drop:
        new = [None if loc is None else L.move(loc, lambda d: d - (d > dim)) for loc in new]
    return Effect(L.with_sizes(tuple(new), out_shape), [Dep(x, rules, SAME if not drop else MIX)], notes)


def _slice_effect(
    ctx: Ctx, x: TensorArg, dim: int, start: int, step: int, out_shape: tuple, drop: bool
) -> Effect:
    """Output index j along ``dim`` reads input index ``start + j * step`` (``drop``: the dim disappears)."""
    layout = ctx.layout(x)
    holders = [loc for loc in layout if loc is not None and dim in L.dims_of(loc)]
    if holders and (len(holders) > 1 or not isinstance(holders[0], Loc) or not holders[0].plain):
        return _token_slice(ctx, x, dim, start, step, out_shape, drop)
    try:
        axis = L.axis_at_dim(layout, dim)
    except ValueError:
        raise ctx.unsupported("slicing a dim that holds several axes") from None
    rules: dict[int, AxisRule] = {}
    channels = SAME
    if axis is not None:
        rules[axis] = AxisRule(
            AxisMap.constant(Offsets.of([start])) if drop else AxisMap.affine(step, Offsets.of([start]))
        )
    elif dim == L.channel_dim(layout, x.shape):
        channels = Channels("slice", start, step)
    if drop:
        new_layout = tuple(
            None if loc is None or dim in L.dims_of(loc) else L.move(loc, lambda d: d - (d > dim))
            for loc in layout
        )
        if dim <= 1 and channels.kind == "same":
            channels = MIX
    else:
        new_layout = layout
    return Effect(L.with_sizes(new_layout, out_shape), [Dep(x, rules, channels)])


def _norm_range(start: int | None, end: int | None, n: int) -> tuple[int, int]:
    start = 0 if start is None else start + n if start < 0 else start
    end = n if end is None else end + n if end < 0 else end
    return min(max(start, 0), n), min(max(end, 0), n)


@rule("aten.slice")
def _slice(ctx: Ctx) -> list[Effect]:
    a = ctx.call.args
    x = ctx.call.inputs[0]
    dim = dim_index(a.get("dim", 0), len(x.shape))
    start, _ = _norm_range(a.get("start"), a.get("end"), x.shape[dim])
    return [_slice_effect(ctx, x, dim, start, int(a.get("step", 1)), ctx.out_shapes[0], drop=False)]


@rule("aten.narrow")
def _narrow(ctx: Ctx) -> list[Effect]:
    a, x = ctx.call.args, ctx.call.inputs[0]
    dim = dim_index(a["dim"], len(x.shape))
    start = a["start"] + x.shape[dim] if a["start"] < 0 else a["start"]
    return [_slice_effect(ctx, x, dim, start, 1, ctx.out_shapes[0], drop=False)]


@rule("aten.select")
def _select(ctx: Ctx) -> list[Effect]:
    a, x = ctx.call.args, ctx.call.inputs[0]
    dim = dim_index(a["dim"], len(x.shape))
    index = a["index"] + x.shape[dim] if a["index"] < 0 else a["index"]
    return [_slice_effect(ctx, x, dim, index, 1, ctx.out_shapes[0], drop=True)]


@rule(
    "aten.split", "aten.split_with_sizes", "aten.unsafe_split", "aten.unsafe_split_with_sizes", "aten.unbind"
)
def _split(ctx: Ctx) -> list[Effect]:
    a, x = ctx.call.args, ctx.call.inputs[0]
    dim = dim_index(a.get("dim", 0), len(x.shape))
    drop = ctx.call.packet == "aten.unbind"
    effects, start = [], 0
    for shape in ctx.out_shapes:
        effects.append(_slice_effect(ctx, x, dim, start, 1, shape, drop=drop))
        start += 1 if drop else shape[dim]
    return effects


@rule("aten.cat", "aten.concat", "aten.concatenate")
def _cat(ctx: Ctx) -> list[Effect]:
    tensors = ctx.call.args["tensors"]
    out_shape = ctx.out_shapes[0]
    dim = dim_index(ctx.call.args.get("dim", 0), len(out_shape))
    ref = next(t for t in tensors if t.node is not None)
    layout = ctx.layout(ref)
    if dim in L.dims_with_axes(layout):
        return [_cat_tokens(ctx, tensors, dim, out_shape)]
    deps, offset = [], 0
    is_channel = dim == L.channel_dim(layout, ref.shape)
    for t in tensors:
        if t.node is not None and t.shape != (0,):
            deps.append(Dep(t, {}, Channels("slice", -offset, 1) if is_channel else SAME))
        offset += t.shape[dim] if len(t.shape) > dim else 0
    return [Effect(L.with_sizes(layout, out_shape), deps)]


def _cat_tokens(ctx: Ctx, tensors: list[TensorArg], dim: int, out_shape: tuple) -> Effect:
    """Constant tokens (a class token, registers) concatenated to the patch tokens: the positions move by the
    tokens in front, and the extra tokens carry none. Two input-derived pieces along a spatial dim (tiling,
    circular padding written as cat) sit at different offsets: no shift-invariant receptive field, refused."""
    tracked = [i for i, t in enumerate(tensors) if t.node is not None]
    layout = ctx.layout(tensors[tracked[0]])
    holders = {a: loc for a, loc in enumerate(layout) if loc is not None and dim in L.dims_of(loc)}
    if len(tracked) > 1 or any(isinstance(loc, Split) for loc in holders.values()):
        raise ctx.unsupported(
            "concatenation along a spatial dim (for example circular padding or tiling): the pieces sit at "
            "different offsets, so no shift-invariant receptive field exists; concatenate along channels instead "
            "(extra tokens such as a class token must be constants, e.g. parameters)"
        )
    before = sum(t.shape[dim] for t in tensors[: tracked[0]])
    new = list(layout)
    for a, loc in holders.items():
        new[a] = replace(loc, offset=loc.offset + before, plain=False)
    return Effect(L.with_sizes(tuple(new), out_shape), [Dep(tensors[tracked[0]])])


@rule("aten.stack")
def _stack(ctx: Ctx) -> list[Effect]:
    tensors = ctx.call.args["tensors"]
    out_shape = ctx.out_shapes[0]
    dim = dim_index(ctx.call.args.get("dim", 0), len(out_shape))
    deps = []
    layout = None
    for t in tensors:
        if t.node is None:
            continue
        shifted = tuple(L.move(loc, lambda d: d + (d >= dim)) for loc in ctx.layout(t))
        layout = layout or shifted
        deps.append(Dep(t, {}, MIX if dim <= 1 else SAME))
    return [Effect(L.with_sizes(layout, out_shape), deps)]


@rule("aten.flip")
def _flip(ctx: Ctx) -> list[Effect]:
    x = ctx.call.inputs[0]
    layout = ctx.layout(x)
    rules, notes = {}, []
    channels = SAME
    for d in ctx.call.args["dims"]:
        d = dim_index(d, len(x.shape))
        if _read_mixed_dim_whole(ctx, layout, d, rules, notes):
            continue
        axis = L.axis_at_dim(layout, d)
        if axis is not None:
            rules[axis] = AxisRule(AxisMap.affine(-1, Offsets.of([x.shape[d] - 1])))
        elif d == L.channel_dim(layout, x.shape):
            channels = MERGE
    return [Effect(layout, [Dep(x, rules, channels)], notes)]


@rule("aten.roll")
def _roll(ctx: Ctx) -> list[Effect]:
    x = ctx.call.inputs[0]
    layout = ctx.layout(x)
    shifts, dims = list(ctx.call.args["shifts"]), list(ctx.call.args.get("dims") or [])
    if not dims:
        raise ctx.unsupported("roll over the flattened tensor mixes all axes")
    rules, notes = {}, []
    channels = SAME
    for s, d in zip(shifts, dims):
        d = dim_index(d, len(x.shape))
        if _read_mixed_dim_whole(ctx, layout, d, rules, notes):
            continue
        axis = L.axis_at_dim(layout, d)
        if axis is not None:
            # An unbounded input has no border to wrap around, so the theoretical view sees a plain shift (Swin's
            # shifted windows then show as windows offset by s, per phase); the in-image view wraps exactly, so a
            # corner pixel's support (report.support) includes pixels from the far side of the image.
            rules[axis] = AxisRule(AxisMap.affine(1, Offsets.of([-s])), _pad_finite(s, "circular"))
        elif d == L.channel_dim(layout, x.shape):
            channels = MERGE
    return [Effect(layout, [Dep(x, rules, channels)], notes)]


def _read_mixed_dim_whole(ctx: Ctx, layout: L.Layout, d: int, rules: dict, notes: list[str]) -> bool:
    """A flip or roll along a dim that holds several axes, or digits of a split axis (a raster-order shift of
    flattened tokens), moves elements across those axes in a way no per-axis rule describes: each such axis is
    read whole, an over-approximation the report states (never an under-reach). False for an ordinary dim."""
    try:
        L.axis_at_dim(layout, d)
        return False
    except ValueError:
        pass
    for axis, _ in L.occupants(layout, d):
        rules[axis] = GLOBAL_RULE
    notes.append(
        f"approximate: {ctx.where} moves elements along dim {d}, which holds several spatial axes or digits of "
        "one; the axes it holds are taken as read whole"
    )
    return True


@rule("aten.embedding")
def _embedding(ctx: Ctx) -> list[Effect]:
    """A lookup table (``F.embedding``, a codebook): position ``p`` of the output, ``(*indices.shape, D)``, is the
    table's row ``indices[p]``, so it reads the index at ``p`` alone; the indices' layout carries over and the
    row is a new last dim. Which row depends on the index's value, not its position: the receptive field of the
    output is the index's. A table computed from the input would be read whole at every position: refused."""
    a = ctx.call.args
    weight, indices = a["weight"], a["indices"]
    if weight.node is not None:
        raise ctx.unsupported("a lookup table computed from the input (every position would read all of it)")
    return [Effect(L.with_sizes(ctx.layout(indices), ctx.out_shapes[0]), [Dep(indices, {}, MERGE)])]
