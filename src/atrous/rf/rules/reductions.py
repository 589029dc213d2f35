"""Reductions and ops along one dim (sums, softmax, cumulative ops, sorting)."""

from __future__ import annotations

from collections.abc import Callable

from atrous.rf import layout as L
from atrous.rf.layout import Loc, Part, Split
from atrous.rf.rules.base import (
    MIX,
    SAME,
    AxisRule,
    Ctx,
    Dep,
    Effect,
    axis_names,
    digit_rule,
    dim_index,
    rule,
)
from atrous.rf.rules.pointwise import pointwise


def free_digits(
    ctx: Ctx, loc: Loc | Split, dims: set[int], keep: bool, renumber: Callable[[int], int] = lambda d: d
) -> tuple[Loc | Split | None, AxisRule]:
    """An op reads whole lines along ``dims``. The digits of the axis that live there are free: with ``keep``
    the output still indexes them (softmax, normalisation: each position reads its whole line, a window when
    the axis is split), otherwise they are gone (a sum: the output has one index per line) and ``renumber``
    gives the output dims of the digits left."""
    parts = L.parts_of(loc)
    hit = {p.weight for p in parts if p.dim in dims}
    rest = parts if keep else tuple(p for p in parts if p.weight not in hit)
    try:
        rule_ = digit_rule(parts, rest, hit)
    except ValueError as exc:
        raise ctx.unsupported(str(exc)) from None
    if keep:
        return loc, rule_
    if not rest:
        return None, rule_
    if len(rest) == len(parts):
        return L.move(loc, renumber), rule_
    moved = [Part(renumber(p.dim), p.inner, p.size, p.weight) for p in rest]
    return L.from_parts(moved, ctx.out_shapes[0]), rule_


def global_note(what: str, names: list[str], ctx: Ctx) -> list[str]:
    return [f"global: {what} over {', '.join(names)} ({ctx.where})"] if names else []


def _reduce(ctx: Ctx, dims: list[int] | None, keepdim: bool, what: str) -> list[Effect]:
    x = ctx.call.inputs[0]
    ndim = len(x.shape)
    dims = list(range(ndim)) if not dims else [dim_index(d, ndim) for d in dims]
    layout = ctx.layout(x)
    names = axis_names(len(layout))
    rules, reduced = {}, []
    new: list[Loc | Split | None] = []
    for axis, loc in enumerate(layout):
        if loc is None or not L.dims_of(loc) & set(dims):
            new.append(loc if keepdim else L.move(loc, lambda d: d - sum(r < d for r in dims)))
            continue
        renumber = (lambda d: d) if keepdim else (lambda d: d - sum(r < d for r in dims))
        kept, rules[axis] = free_digits(ctx, loc, set(dims), False, renumber)
        if rules[axis].periodic.is_global:
            reduced.append(names[axis])
        if kept is None:
            # A fully reduced axis kept as a size-1 dim broadcasts like any size-1 dim.
            top = max(L.parts_of(loc), key=lambda p: p.weight)
            new.append(Loc(top.dim, 1, 1) if keepdim else None)
        else:
            new.append(kept)
    channels = MIX if L.channel_dim(layout, x.shape) in dims or len(dims) == ndim else SAME
    if not keepdim and (0 in dims or 1 in dims):
        channels = MIX
    notes = global_note(what, reduced, ctx)
    return [
        Effect(L.with_sizes(tuple(new), s), [Dep(x, rules, channels)], list(notes)) for s in ctx.out_shapes
    ]


@rule(
    "aten.mean",
    "aten.sum",
    "aten.amax",
    "aten.amin",
    "aten.max",
    "aten.min",
    "aten.argmax",
    "aten.argmin",
    "aten.var",
    "aten.std",
    "aten.var_mean",
    "aten.std_mean",
    "aten.logsumexp",
    "aten.linalg_vector_norm",
    "aten.norm",
    "aten.prod",
    "aten.all",
    "aten.any",
    "aten.nansum",
    "aten.median",
    "aten.mode",
)
def _reduction(ctx: Ctx) -> list[Effect]:
    a = ctx.call.args
    if len(ctx.tracked()) > 1 and ctx.call.packet in ("aten.max", "aten.min"):
        return pointwise(ctx)  # max(a, b) elementwise overload
    dims = a.get("dim")
    if isinstance(dims, int):
        dims = [dims]
    return _reduce(ctx, dims, bool(a.get("keepdim", False)), ctx.call.packet.split(".")[1])


@rule(
    "aten._softmax",
    "aten._safe_softmax",
    "aten._log_softmax",
    "aten.softmax",
    "aten.log_softmax",
    "aten.cumsum",
    "aten.cumprod",
    "aten.logcumsumexp",
    "aten.sort",
    "aten.topk",
    "aten.cummax",
    "aten.cummin",
)
def _along_dim(ctx: Ctx) -> list[Effect]:
    """Ops where each output reads a whole line of the input along ``dim``."""
    x = ctx.call.inputs[0]
    d = dim_index(ctx.call.args.get("dim", -1), len(x.shape))
    layout = ctx.layout(x)
    names = axis_names(len(layout))
    rules, along = {}, []
    for axis, loc in enumerate(layout):
        if loc is not None and d in L.dims_of(loc):
            _, rules[axis] = free_digits(ctx, loc, {d}, keep=True)
            if rules[axis].periodic.is_global:
                along.append(names[axis])
    notes = [f"global: {ctx.call.packet.split('.')[1]} along {n} ({ctx.where})" for n in along]
    channels = MIX if d == L.channel_dim(layout, x.shape) else SAME
    return [Effect(L.with_sizes(layout, s), [Dep(x, rules, channels)], list(notes)) for s in ctx.out_shapes]
