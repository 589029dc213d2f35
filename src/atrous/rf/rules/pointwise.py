"""Elementwise ops (with broadcasting): each output reads the same position of every input."""

from __future__ import annotations

from math import prod

import numpy as np

from atrous.rf import layout as L
from atrous.rf.graph import TensorArg
from atrous.rf.layout import Loc, Part, Split
from atrous.rf.rules.base import (
    BROADCAST_RULE,
    GLOBAL_RULE,
    AxisRule,
    Ctx,
    Dep,
    Effect,
    axis_names,
    channels_of,
    digits_rule,
    fixed_finite,
)
from atrous.rf.support import GLOBAL, AxisMap


def pointwise_over(ctx: Ctx, inputs: list[TensorArg]) -> list[Effect]:
    """Elementwise op with broadcasting: inputs align to the output's trailing dims; a size-1 dim broadcast
    along an axis makes every output index read index 0. When the inputs place an axis differently, the output
    takes the placement that holds every other one's digits (see :func:`_richest`)."""
    out_shape = ctx.out_shapes[0]
    n_out = len(out_shape)
    n_axes = max((len(ctx.layout(t)) for t in inputs), default=0)
    claims: dict[int, list[tuple[int, Loc | Split]]] = {}  # axis -> (input, placement in output dims)
    weak: dict[int, Loc] = {}  # axis -> placement known only from a broadcast
    deps = []
    for i, t in enumerate(inputs):
        shift = n_out - len(t.shape)
        rules = {}
        for axis, loc in enumerate(ctx.layout(t)):
            if loc is None:
                continue
            if isinstance(loc, Loc) and t.shape[loc.dim] == 1 and out_shape[loc.dim + shift] != 1:
                rules[axis] = BROADCAST_RULE
                weak.setdefault(axis, Loc(loc.dim + shift, 1, out_shape[loc.dim + shift]))
            else:
                claims.setdefault(axis, []).append((i, L.move(loc, shift)))
        deps.append(Dep(t, rules))
    placed: list[Loc | Split | None] = [None] * n_axes
    notes: list[str] = []
    for axis in range(n_axes):
        if axis not in claims:
            placed[axis] = weak.get(axis)
            continue
        locs = [loc for _, loc in claims[axis]]
        richest = _richest(locs)
        placed[axis] = richest or _owner(locs)
        for i, loc in claims[axis]:
            if loc == placed[axis]:
                continue
            if richest is not None:
                deps[i].axes[axis] = _subset_rule(loc, placed[axis])
            else:
                deps[i].axes[axis] = _crossed_rule(loc, placed[axis], out_shape)
                notes.append(_crossed_note(ctx, axis, n_axes))
    layout = L.with_sizes(tuple(placed), out_shape)
    _refuse_overlap(ctx, layout)
    for dep in deps:
        dep.channels = channels_of(ctx, dep.source, out_shape, layout)
    return [Effect(layout, deps, list(dict.fromkeys(notes))) for _ in ctx.out_shapes]


def _refuse_overlap(ctx: Ctx, layout: tuple) -> None:
    """Placements chosen axis by axis from inputs that disagree may claim the same digits of one dim for two
    axes (H from one input, W from the other, both in dim 3): no element could be addressed then, and the
    support read at it would miss pixels, so such an add is refused as before the crossed placements."""
    taken: list[tuple[int, int, int, int]] = []  # (dim, lo, hi, axis)
    for axis, loc in enumerate(layout):
        for p in () if loc is None else L.parts_of(loc):
            lo, hi = p.inner, p.inner * p.size
            if any(d == p.dim and a != axis and lo < end and start < hi for d, start, end, a in taken):
                names = axis_names(len(layout))
                raise ctx.unsupported(
                    f"combines tensors whose spatial axes sit in different dims and would share dim {p.dim} "
                    f"({names[axis]} with another axis); reshape both to the same layout first"
                )
            taken.append((p.dim, lo, hi, axis))


def _key(p: Part) -> tuple[int, int, int]:
    return p.dim, p.inner, p.size


def _richest(locs: list[Loc | Split]) -> Loc | Split | None:
    """The placement whose digits include every other placement's digits (same dim, step and size). A tensor
    whose reduction over in-window tokens kept its window index (a norm within each window) reads only the
    window digits of the tensor it is combined with; anything else (None) is two incompatible views of one
    axis."""
    for cand in locs:
        have = {_key(p) for p in L.parts_of(cand)}
        if all({_key(p) for p in L.parts_of(loc)} <= have for loc in locs) and not (
            isinstance(cand, Loc) and any(isinstance(o, Loc) and o.offset != cand.offset for o in locs)
        ):
            return cand
    return None


def _owner(locs: list[Loc | Split]) -> Loc | Split:
    """The output's placement when the inputs' placements are incompatible: an axis that owns its dim, the
    longest otherwise (the residual branch of MAnet's position attention, whose attention output a row-major
    reshape scattered into the channels)."""
    return max(locs, key=lambda loc: (isinstance(loc, Loc) and loc.plain and not loc.offset, loc.size))


ENUMERATION_LIMIT = 1 << 20  # elements enumerated to relate two placements; beyond it, read whole


def _crossed_rule(loc: Loc | Split, placed: Loc | Split, shape: tuple[int, ...]) -> AxisRule:
    """Output index ``u`` (along ``placed``) reads every index of ``loc`` that some element of the output with
    index ``u`` holds: enumerated over the dims either placement lives in. Exact per axis; as the other axes
    and the channels are related separately, the product over-approximates where the placements disagree."""
    dims = sorted(L.dims_of(loc) | L.dims_of(placed))
    count = prod(shape[d] for d in dims)
    if any(isinstance(x, Loc) and x.offset for x in (loc, placed)) or count > ENUMERATION_LIMIT:
        return GLOBAL_RULE
    grid = np.indices([shape[d] for d in dims]).reshape(len(dims), -1)
    at = dict(zip(dims, grid))
    rel = np.zeros((placed.size, loc.size), dtype=bool)
    rel[_index(placed, at), _index(loc, at)] = True
    if rel.all():
        return GLOBAL_RULE
    return AxisRule(AxisMap.constant(GLOBAL), fixed_finite("a crossed rule", lambda: rel))


def _index(loc: Loc | Split, at: dict[int, np.ndarray]) -> np.ndarray:
    """The axis index the elements with dim indexes ``at`` hold."""
    parts = L.parts_of(loc)
    return sum(((at[p.dim] // p.inner) % p.size) * w for p, w in zip(parts, L.current_weights(parts)))


def _crossed_note(ctx: Ctx, axis: int, n_axes: int) -> str:
    name = axis_names(n_axes)[axis]
    return (
        f"approximate: {ctx.where} combines tensors that place axis {name} in different dims; each output "
        f"reads the union over the elements that share its {name} index (exact when that input is global)"
    )


def _subset_rule(loc: Loc | Split, richer: Loc | Split) -> AxisRule:
    """Output index (digits of ``richer``) -> the index of ``loc``, made of the digits the two share."""
    weight = {_key(p): p.weight for p in L.parts_of(richer)}
    src = tuple(Part(p.dim, p.inner, p.size, weight[_key(p)]) for p in L.parts_of(loc))
    return digits_rule(src, L.parts_of(richer), {})


POINTWISE_EXTRA = {
    # leaky_relu carries torch.Tag.pointwise only from torch 2.13 on; the floor (2.11) needs it named here
    "aten.leaky_relu",
    "aten.leaky_relu_",
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
