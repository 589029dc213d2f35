"""Views and copies: the layout moves, the values do not."""

from __future__ import annotations

from dataclasses import replace

from atrous.rf import layout as L
from atrous.rf.layout import Loc, Split
from atrous.rf.rules.base import (
    BROADCAST_RULE,
    GLOBAL_RULE,
    MERGE,
    MIX,
    SAME,
    AxisRule,
    Ctx,
    Dep,
    Effect,
    axis_names,
    dim_index,
    rule,
)
from atrous.rf.rules.pointwise import pointwise_over
from atrous.rf.support import AxisMap, Offsets


@rule(
    "aten.view",
    "aten._unsafe_view",
    "aten.reshape",
    "aten._reshape_alias",
    "aten.squeeze",
    "aten.unsqueeze",
    "aten.flatten",
    "aten.unflatten",
    "aten.view_as",
    "aten.reshape_as",
)
def _reshape(ctx: Ctx) -> list[Effect]:
    x = ctx.call.inputs[0]
    out_shape = ctx.out_shapes[0]
    layout, dropped, lost = L.reshape(ctx.layout(x), x.shape, out_shape)
    rules = {a: BROADCAST_RULE for a in dropped}
    layout, rules = _own_dims(layout, out_shape, rules)
    notes = []
    names = axis_names(len(layout))
    for a in lost:
        rules[a] = GLOBAL_RULE
        notes.append(
            f"global: the view at {ctx.where} splits axis {names[a]} across dims, so its index is lost"
        )
    same_channels = (
        len(x.shape) >= 2
        and len(out_shape) >= 2
        and x.shape[:2] == tuple(out_shape[:2])
        and L.channel_dim(ctx.layout(x), x.shape) is not None
        and L.channel_dim(layout, out_shape) is not None
    )
    return [Effect(L.with_sizes(layout, out_shape), [Dep(x, rules, SAME if same_channels else MERGE)], notes)]


def _own_dims(layout: L.Layout, shape: tuple[int, ...], rules: dict) -> tuple[L.Layout, dict]:
    """An axis that owns its dim but steps ``k`` dim indexes per position (``index = k * position + s``, with
    ``s`` from dims that carried no axis) becomes a plain axis of the dim's size, read through ``index // k``.
    That is depth-to-space written as views (the channel digits become ``s``) and nearest upsampling by expand
    and reshape; a later convolution or elementwise op then meets an ordinary axis. The channels were merged
    by the view (see ``MERGE``), which over-approximates only when channels reached different pixels."""
    new = list(layout)
    for axis in range(len(layout)):
        k = L.upsampled(layout, axis, shape)
        if k is not None:
            new[axis] = Loc(layout[axis].dim, 1, shape[layout[axis].dim])
            rules = {**rules, axis: AxisRule(AxisMap(k, 1, (Offsets.of([0]),) * k))}
    return tuple(new), rules


@rule("aten.expand", "aten.expand_as", "aten.broadcast_to")
def _expand(ctx: Ctx) -> list[Effect]:
    x = ctx.call.inputs[0]
    out_shape = ctx.out_shapes[0]
    shift = len(out_shape) - len(x.shape)
    rules = {}
    new = []
    for axis, loc in enumerate(ctx.layout(x)):
        if loc is None or isinstance(loc, Split):
            new.append(L.move(loc, shift))
            continue
        d = loc.dim + shift
        if x.shape[loc.dim] == 1 and out_shape[d] != 1:
            # Every index along the dim holds the same value: the axis has no position there (None), so an
            # elementwise op meets no second claim on the dim (a norm over tokens, divided into the tokens).
            rules[axis] = BROADCAST_RULE
            new.append(None)
            continue
        new.append(replace(loc, dim=d))
    channels = SAME if shift == 0 and len(x.shape) >= 2 and x.shape[1] == out_shape[1] else MIX
    return [Effect(L.with_sizes(tuple(new), out_shape), [Dep(x, rules, channels)])]


def _permutation_effect(ctx: Ctx, perm: list[int]) -> list[Effect]:
    x = ctx.call.inputs[0]
    layout = L.permute(ctx.layout(x), perm)
    keeps_channels = len(perm) >= 2 and perm[0] == 0 and perm[1] == 1
    return [Effect(L.with_sizes(layout, ctx.out_shapes[0]), [Dep(x, {}, SAME if keeps_channels else MERGE)])]


@rule("aten.permute")
def _permute(ctx: Ctx) -> list[Effect]:
    x = ctx.call.inputs[0]
    return _permutation_effect(ctx, [dim_index(d, len(x.shape)) for d in ctx.call.args["dims"]])


@rule("aten.transpose", "aten.swapaxes", "aten.swapdims", "aten.t")
def _transpose(ctx: Ctx) -> list[Effect]:
    x = ctx.call.inputs[0]
    n = len(x.shape)
    a, b = (ctx.call.args.get("dim0", 0), ctx.call.args.get("dim1", 1)) if n >= 2 else (0, 0)
    perm = list(range(n))
    a, b = dim_index(a, n), dim_index(b, n)
    perm[a], perm[b] = perm[b], perm[a]
    return _permutation_effect(ctx, perm)


@rule(
    "aten.alias",
    "aten.detach",
    "aten.clone",
    "aten._to_copy",
    "aten.lift_fresh",
    "aten.lift_fresh_copy",
    "aten.contiguous",
    "aten.to",
    "aten._conj",
    "aten.dropout",
    "aten.feature_dropout",
    "aten.alpha_dropout",
)
def _same(ctx: Ctx) -> list[Effect]:
    x = ctx.call.inputs[0]
    return [Effect(L.with_sizes(ctx.layout(x), ctx.out_shapes[0]), [Dep(x)])]


@rule("aten.as_strided", "aten.as_strided_")
def _as_strided(ctx: Ctx) -> list[Effect]:
    """Only the restriding that changes no element's position: same sizes, same offset, and the same stride on
    every dim longer than 1 (a dim of length 1 has one index whatever its stride). PyTorch's kernels do this
    to give an output the memory format of their input (an adaptive pooling of a permuted tensor, as in
    torchvision's Swin head). Any other as_strided reinterprets memory and has no index rule."""
    x = ctx.call.inputs[0]
    size, stride = tuple(ctx.call.args["size"]), tuple(ctx.call.args["stride"])
    offset = ctx.call.args.get("storage_offset")
    same = size == x.shape and (offset is None or offset == x.storage_offset)
    if not same or any(n > 1 and a != b for n, a, b in zip(size, stride, x.stride)):
        raise ctx.unsupported(
            "as_strided that moves elements (other sizes, offset or strides) has no exact index rule"
        )
    return _same(ctx)


@rule("aten.native_dropout")
def _native_dropout(ctx: Ctx) -> list[Effect]:
    x = ctx.call.inputs[0]
    layout = L.with_sizes(ctx.layout(x), ctx.out_shapes[0])
    return [Effect(layout, [Dep(x)]), Effect(layout, [])]  # the random mask does not depend on the input


@rule("aten.copy", "aten.copy_")
def _copy(ctx: Ctx) -> list[Effect]:
    """``dst.copy_(src)``: the result holds src's values (broadcast to dst's shape); dst's old values are gone."""
    src = ctx.call.args["src"]
    return pointwise_over(ctx, [src] if src.node is not None else [])


# Fresh tensors made from an input's shape only: the recorder keeps them as constants (see graph.py), so that
# whatever is later written into them (a shifted-window mask filled by slice assignment) stays a constant.
CONSTANT_PACKETS = frozenset(
    {
        "aten.zeros_like",
        "aten.ones_like",
        "aten.empty_like",
        "aten.full_like",
        "aten.rand_like",
        "aten.randn_like",
        "aten.randint_like",
        "aten.new_zeros",
        "aten.new_ones",
        "aten.new_empty",
        "aten.new_full",
        "aten.new_empty_strided",
        "aten.empty_strided",
    }
)


@rule(
    "aten.zero_",
    "aten.fill_",
    "aten.fill",
    "aten.bernoulli",
    "aten.bernoulli_",
    "aten.normal_",
    "aten.uniform_",
)
def _no_dependence(ctx: Ctx) -> list[Effect]:
    """Values that do not depend on the input's values (only its shape), so they carry no receptive field."""
    x = ctx.tracked()[0]
    layout = ctx.layout(x)
    return [
        Effect(L.with_sizes(layout, s) if len(s) == len(x.shape) else (None,) * len(layout), [])
        for s in ctx.out_shapes
    ]
