"""Elementwise ops (with broadcasting): each output reads the same position of every input."""

from __future__ import annotations

from dataclasses import replace

from atrous.rf import layout as L
from atrous.rf.graph import TensorArg
from atrous.rf.layout import Loc, Split
from atrous.rf.rules.base import (
    BROADCAST_RULE,
    Ctx,
    Dep,
    Effect,
    channels_of,
)


def pointwise_over(ctx: Ctx, inputs: list[TensorArg]) -> list[Effect]:
    """Elementwise op with broadcasting: inputs align to the output's trailing dims; a size-1 dim broadcast
    along an axis makes every output index read index 0."""
    out_shape = ctx.out_shapes[0]
    n_out = len(out_shape)
    n_axes = max((len(ctx.layout(t)) for t in inputs), default=0)
    placed: dict[int, tuple[Loc, bool]] = {}  # axis -> (loc in the output, only known from a broadcast)
    deps = []
    for t in inputs:
        shift = n_out - len(t.shape)
        rules = {}
        for axis, loc in enumerate(ctx.layout(t)):
            if loc is None:
                continue
            if isinstance(loc, Split):  # digits have size > 1: never broadcast
                weak, candidate = False, L.move(loc, shift)
            else:
                d = loc.dim + shift
                weak = t.shape[loc.dim] == 1 and out_shape[d] != 1
                candidate = Loc(d, 1, out_shape[d]) if weak else replace(loc, dim=d)
            if weak:
                rules[axis] = BROADCAST_RULE
            existing = placed.get(axis)
            if existing is None or (existing[1] and not weak):
                placed[axis] = (candidate, weak)
            elif not weak and not existing[1] and existing[0] != candidate:
                raise ctx.unsupported("combines tensors whose spatial axes sit in different dims")
        deps.append(Dep(t, rules))
    layout = L.with_sizes(tuple(placed[a][0] if a in placed else None for a in range(n_axes)), out_shape)
    for dep in deps:
        dep.channels = channels_of(ctx, dep.source, out_shape, layout)
    return [Effect(layout, deps) for _ in ctx.out_shapes]


POINTWISE_EXTRA = {
    "aten._prelu_kernel",
    "aten.hardswish",
    "aten.hardswish_",
    "aten.prelu",
    "aten.where",
    "aten.clamp_min",
    "aten.clamp_max",
    "aten.masked_fill",
    "aten.masked_fill_",
    "aten.lerp",
    "aten.addcdiv",
    "aten.addcmul",
    "aten._softmax_backward_data",
}


def pointwise(ctx: Ctx) -> list[Effect]:
    return pointwise_over(ctx, ctx.tracked())
