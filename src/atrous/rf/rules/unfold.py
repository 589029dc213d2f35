"""Unfold and fold (``aten.im2col``, ``aten.col2im``): sliding windows moved into and out of channels.

``F.unfold`` maps (N, C, H, W) to (N, C * kh * kw, L) with L = H' * W' blocks, H' major: channel
``c * kh * kw + i * kw + j`` of block ``(h', w')`` holds input ``(h' * s - p + i * d, w' * s - p + j * d)``. The
block dim carries both spatial axes, as a ``view(N, C, H' * W')`` of an (N, C, H', W') tensor would: the H' axis
as a Loc with ``inner = W'``, the W' axis with ``inner = 1`` (see :mod:`atrous.rf.layout`), so later views,
permutes, matrix products and a fold find them where they are.

Along each axis a block reads a convolution window. Channels keep which input channel they hold (channel block
``c`` reads channel ``c``, the relation of a grouped convolution with C groups), but not which kernel offset: the
channel-segment propagation cannot tell channel ``c * kh * kw + i * kw + j`` from its neighbours, so every
channel of a block carries the whole window. That is exact for the tensor as a whole and after any op that mixes
the offsets (attention over the window, a Linear or a sum over them: VOLO, CARAFE, involution); an op that reads
single offsets (a fold straight after the unfold, a selection of offsets) gets the union over offsets, an
over-approximation the report notes.

``F.fold`` is the adjoint: output pixel ``(h, w)`` of channel ``c`` sums the (block, offset) pairs that land on
it from channels ``c * kh * kw`` to ``(c + 1) * kh * kw - 1``: a transposed convolution per axis, channel block ``c``
read whole. Following each offset on its own (one channel slice and one-tap transposed convolution per offset)
would gain nothing after an unfold, whose channels all carry the whole window, and costs kh * kw times the work
(a 16 x 16 patch fold at 224 x 224: 19 s against 0.3 s, analysis and one support).
"""

from __future__ import annotations

from atrous.rf import layout as L
from atrous.rf.graph import TensorArg
from atrous.rf.layout import Layout, Loc, Part, Split
from atrous.rf.rules.base import (
    MIX,
    AxisRule,
    Channels,
    Ctx,
    Dep,
    Effect,
    axis_names,
    per_axis_values,
    rule,
    spatial_axes,
)
from atrous.rf.rules.conv import conv_rule, transposed_conv_rule

OFFSETS_NOTE = (
    "approximate: {where} moves kernel offsets into channels and the engine keeps, per channel, the "
    "whole window: exact once a later op mixes the offsets (attention over the window, a Linear or a sum over "
    "them), an over-approximation where an output reads single offsets (a fold straight after the unfold)"
)


def blocks(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    """Number of sliding-window positions along one axis (PyTorch's formula)."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def _params(ctx: Ctx) -> tuple[list[int], list[int], list[int], list[int]]:
    a = ctx.call.args
    return tuple(per_axis_values(a[n], 2) for n in ("kernel_size", "stride", "padding", "dilation"))


def _leading(ctx: Ctx, layout: Layout, channel_dim: int) -> list[Loc | Split | None]:
    """Axes that live in the leading (batch) dims pass through unchanged; one in the channel dim is refused,
    because unfold and fold interleave channels with kernel offsets."""
    names = axis_names(len(layout))
    kept: list[Loc | Split | None] = [None] * len(layout)
    for axis, loc in enumerate(layout):
        if loc is None:
            continue
        dims = L.dims_of(loc)
        if channel_dim in dims:
            raise ctx.unsupported(
                f"dim {channel_dim} (the channels) carries spatial axis {names[axis]} (a view moved it "
                "there); keep spatial axes out of the channel dim before unfold/fold"
            )
        if max(dims) < channel_dim:
            kept[axis] = loc
    return kept


def _tracked_channels(ctx: Ctx, x: TensorArg, x_ndim: int, out_layout: Layout) -> bool:
    """Channel segments can be followed when both tensors have their channels at dim 1 (batched calls)."""
    out_shape = ctx.out_shapes[0]
    return (
        len(x.shape) == x_ndim
        and L.channel_dim(ctx.layout(x), x.shape) == 1
        and L.channel_dim(out_layout, out_shape) == 1
    )


@rule("aten.im2col")
def _unfold(ctx: Ctx) -> list[Effect]:
    x = ctx.call.inputs[0]
    if x.node is None:
        raise ctx.unsupported("the unfolded tensor is not tracked while other inputs are")
    kernel, stride, padding, dilation = _params(ctx)
    n_dim = len(x.shape)
    n_blocks = [blocks(x.shape[n_dim - 2 + i], kernel[i], stride[i], padding[i], dilation[i]) for i in (0, 1)]
    out_shape = ctx.out_shapes[0]
    block_dim = len(out_shape) - 1
    new = _leading(ctx, ctx.layout(x), n_dim - 3)
    rules: dict[int, AxisRule] = {}
    for i, axis in enumerate(spatial_axes(ctx, x, 2)):
        if axis is None:
            continue
        # The block index is h' * W' + w': the row block is the digit of weight W', the column block of weight 1.
        inner = n_blocks[1] if i == 0 else 1
        new[axis] = L.from_parts([Part(block_dim, inner, n_blocks[i], 1)], out_shape)
        rules[axis] = conv_rule(kernel[i], stride[i], padding[i], dilation[i])
    layout = L.with_sizes(tuple(new), out_shape)
    channels = Channels("groups", x.shape[1]) if _tracked_channels(ctx, x, 4, layout) else MIX
    kk = kernel[0] * kernel[1]
    notes = [OFFSETS_NOTE.format(where=ctx.where)] if kk > 1 else []
    return [Effect(layout, [Dep(x, rules, channels)], notes)]


def _grid_position(ctx: Ctx, loc: Loc | Split, n_blocks: list[int], taken: set[int]) -> int:
    """Which block coordinate (0: rows, 1: columns) an axis found in the block dim indexes."""
    if isinstance(loc, Loc) and loc.offset == 0:
        for pos, inner in ((0, n_blocks[1]), (1, 1)):
            if pos not in taken and loc.inner == inner and loc.size == n_blocks[pos]:
                return pos
    raise ctx.unsupported(
        f"the block dim does not hold the {n_blocks[0]} x {n_blocks[1]} blocks in raster order (rows major), "
        "so fold cannot tell where each block goes; reshape the blocks back to that order before F.fold"
    )


def _uncovered(out: int, n: int, kernel: int, stride: int, padding: int, dilation: int) -> bool:
    """Whether some output index along an axis receives no (block, offset) pair."""
    hit = {b * stride - padding + i * dilation for b in range(n) for i in range(kernel)}
    return any(u not in hit for u in range(out))


@rule("aten.col2im")
def _fold(ctx: Ctx) -> list[Effect]:
    x = ctx.call.inputs[0]
    if x.node is None:
        raise ctx.unsupported("the folded tensor is not tracked while other inputs are")
    kernel, stride, padding, dilation = _params(ctx)
    size = per_axis_values(ctx.call.args["output_size"], 2)
    n_blocks = [blocks(size[i], kernel[i], stride[i], padding[i], dilation[i]) for i in (0, 1)]
    out_shape = ctx.out_shapes[0]
    n_dim, block_dim = len(x.shape), len(x.shape) - 1
    layout = ctx.layout(x)
    new = _leading(ctx, layout, n_dim - 2)
    where: dict[int, int] = {}  # axis -> block coordinate it indexes
    for axis, loc in enumerate(layout):
        if loc is not None and block_dim in L.dims_of(loc):
            where[axis] = _grid_position(ctx, loc, n_blocks, set(where.values()))
            pos = where[axis]
            new[axis] = Loc(len(out_shape) - 2 + pos, 1, size[pos], True)
    out_layout = L.with_sizes(tuple(new), out_shape)
    notes = []
    for pos in {0, 1} - set(where.values()):
        # No axis indexes this block coordinate: every block reads the same set along it, and the engine cannot
        # say that output pixels no block reaches read nothing.
        if _uncovered(size[pos], n_blocks[pos], kernel[pos], stride[pos], padding[pos], dilation[pos]):
            notes.append(
                f"approximate: {ctx.where} leaves output pixels that no block reaches; their support is "
                "shown as that of the blocks"
            )
    rules = {
        axis: transposed_conv_rule(kernel[pos], stride[pos], padding[pos], dilation[pos])
        for axis, pos in where.items()
    }
    channels = Channels("groups", out_shape[1]) if _tracked_channels(ctx, x, 3, out_layout) else MIX
    return [Effect(out_layout, [Dep(x, rules, channels)], list(dict.fromkeys(notes)))]
