"""Matrix products: Linear layers, attention, and the tokens they mix."""

from __future__ import annotations

from collections.abc import Callable

from atrous.rf import layout as L
from atrous.rf.graph import TensorArg
from atrous.rf.layout import Loc, Part, Split
from atrous.rf.rules.base import (
    MIX,
    Ctx,
    Dep,
    Effect,
    axis_names,
    digit_rule,
    rule,
)
from atrous.rf.rules.pointwise import pointwise_over


def _product_effect(
    ctx: Ctx, operands: list[tuple[TensorArg, Callable[[int], int | None]]], out_shape: tuple[int, ...]
) -> Effect:
    """A sum of products (matrix product, attention): each operand's dim ``d`` becomes output dim ``where(d)``,
    or is summed over when ``where(d)`` is None.

    Per axis, the output indexes the digits of the first operand that carries them; a later operand whose digit
    sits in another output dim (keys are columns where queries are rows) or is summed over is read whole along
    that digit: globally for an unsplit token axis, per window when only the in-window digits differ.
    """
    n_axes = max(len(ctx.layout(t)) for t, _ in operands)
    names = axis_names(n_axes)
    out_loc: list[Loc | Split | None] = [None] * n_axes
    out_parts: list[tuple[Part, ...]] = [()] * n_axes
    moved = []
    for t, where in operands:
        per_axis = {}
        for axis, loc in enumerate(ctx.layout(t)):
            if loc is None:
                continue
            parts = L.parts_of(loc)
            kept = tuple(
                Part(where(p.dim), p.inner, p.size, p.weight) for p in parts if where(p.dim) is not None
            )
            summed = len(kept) < len(parts)
            cand = (
                (L.move(loc, where) if not summed else L.from_parts(list(kept), out_shape)) if kept else None
            )
            if out_loc[axis] is None and cand is not None:
                out_loc[axis], out_parts[axis] = cand, kept
            elif cand is not None:
                out_parts[axis] = _with_coarser(out_loc[axis], out_parts[axis], kept, len(out_shape) - 2)
                if len(out_parts[axis]) > len(L.parts_of(out_loc[axis])):
                    out_loc[axis] = L.from_parts(list(out_parts[axis]), out_shape)
            per_axis[axis] = (parts, kept, summed)
        moved.append(per_axis)
    deps, notes = [], []
    for (t, _), per_axis in zip(operands, moved):
        rules = {}
        for axis, (parts, kept, summed) in per_axis.items():
            placed = set(out_parts[axis])
            free = {p.weight for p in parts} - {p.weight for p in kept if p in placed}
            if not free and out_loc[axis] is not None and len(kept) == len(out_parts[axis]):
                continue
            try:
                rules[axis] = digit_rule(parts, out_parts[axis], free)
            except ValueError as exc:
                raise ctx.unsupported(str(exc)) from None
            if rules[axis].periodic.is_global:
                notes.append(
                    f"global: {names[axis]} is summed over by a matrix product (a Linear layer on flattened "
                    f"features, or attention weights applied to value tokens) ({ctx.where})"
                    if summed and not kept
                    else f"global: key positions along {names[axis]} in a product of two position-indexed "
                    f"tensors, e.g. attention ({ctx.where})"
                )
        deps.append(Dep(t, rules, MIX))
    return Effect(L.with_sizes(tuple(out_loc), out_shape), deps, list(dict.fromkeys(notes)))


def _with_coarser(
    placed: Loc | Split, parts: tuple[Part, ...], kept: tuple[Part, ...], batch: int
) -> tuple[Part, ...]:
    """The output's digits of an axis, plus those a later operand keeps in a batch dim (before ``batch``) that
    are coarser than all of them and overlap none in place: GCViT's global query is one window-sized map
    shared by every window, so the query rows index the in-window position and the keys add the window, which
    they keep in the batch dim. An output element holds each of these digits exactly, so every operand then
    reads the digits it has, exactly (without them, the keys were read whole). Token axes with extra tokens
    are left as they are."""
    if isinstance(placed, Loc) and placed.offset:
        return parts
    out = list(parts)
    for p in sorted(kept, key=lambda p: p.weight):
        if p.dim < batch and all(p.weight >= q.weight * q.size and not _clash(p, q) for q in out):
            out.append(p)
    return tuple(out)


def _clash(p: Part, q: Part) -> bool:
    """Whether two digits overlap in the axis (their weight ranges) or in a dim (their index ranges)."""
    in_axis = p.weight < q.weight * q.size and q.weight < p.weight * p.size
    return in_axis or (p.dim == q.dim and p.inner < q.inner * q.size and q.inner < p.inner * p.size)


def _matmul_effect(ctx: Ctx, left: TensorArg, right: TensorArg, bias: TensorArg | None) -> list[Effect]:
    """``out[..., i, j] = sum_k left[..., i, k] * right[..., k, j]``: rows come from ``left``, columns from
    ``right``, leading (batch) dims are shared (broadcast from the right); the contracted dim is read whole."""
    out_shape = ctx.out_shapes[0]
    n = len(out_shape)
    operands = []
    for t, is_left in ((left, True), (right, False)):
        if t.node is None:
            continue
        nd = len(t.shape)
        contracted, kept_in, kept_out = (nd - 1, nd - 2, n - 2) if is_left else (nd - 2, nd - 1, n - 1)

        def where(d: int, c=contracted, ki=kept_in, ko=kept_out, shift=n - nd) -> int | None:
            return None if d == c else ko if d == ki else d + shift

        operands.append((t, where))
    effect = _product_effect(ctx, operands, out_shape)
    if bias is not None and bias.node is not None:
        effect.deps += pointwise_over(ctx, [bias])[0].deps
    return [effect]


@rule("aten.mm", "aten.bmm", "aten.matmul")
def _mm(ctx: Ctx) -> list[Effect]:
    left, right = ctx.call.inputs[0], ctx.call.inputs[1]
    return _matmul_effect(ctx, left, right, None)


@rule("aten.addmm", "aten.baddbmm", "aten.addbmm")
def _addmm(ctx: Ctx) -> list[Effect]:
    a = ctx.call.args
    left = a["mat1"] if "mat1" in a else a["batch1"]
    right = a["mat2"] if "mat2" in a else a["batch2"]
    return _matmul_effect(ctx, left, right, a["self"])


@rule(
    "aten._scaled_dot_product_attention_math",
    "aten._scaled_dot_product_flash_attention",
    "aten._scaled_dot_product_flash_attention_for_cpu",
    "aten._scaled_dot_product_efficient_attention",
    "aten._scaled_dot_product_cudnn_attention",
    "aten._scaled_dot_product_fused_attention_overrideable",
    "aten.scaled_dot_product_attention",
)
def _attention(ctx: Ctx) -> list[Effect]:
    """``softmax(q k^T + mask) v`` in one kernel: the output row of query ``i`` reads every key and value token
    (and the mask's row ``i``). On shape-only tensors PyTorch decomposes attention into bmm and softmax, which
    the rules above follow; this rule covers models that call a fused kernel directly."""
    a = ctx.call.args
    if a.get("is_causal"):
        raise ctx.unsupported(
            "causal attention (query i reads keys up to i in raster order) has no receptive-field rule; "
            "pass an explicit attn_mask instead"
        )
    q = a["query"]
    n = len(q.shape)
    mask = a.get("attn_mask", a.get("attn_bias"))
    effects = []
    for shape in ctx.out_shapes:
        if len(shape) < n - 1:  # seeds, offsets, cumulative lengths: no data from the input
            effects.append(Effect((None,) * max(len(ctx.layout(t)) for t in ctx.tracked()), []))
            continue
        operands = []
        for t, last in (
            (q, None),
            (a["key"], None),
            (a["value"], n - 1 if len(shape) == n else None),
            (mask, None),
        ):
            if not isinstance(t, TensorArg) or t.node is None:
                continue
            nd, shift = len(t.shape), n - len(t.shape)

            def where(d: int, t=t, nd=nd, shift=shift, last=last) -> int | None:
                if d == nd - 1:  # features of q/k, key tokens of the mask, features of v
                    return last
                if d == nd - 2:  # query rows, key/value tokens (summed over)
                    return n - 2 if t is q or t is mask else None
                return d + shift

            operands.append((t, where))
        effects.append(_product_effect(ctx, operands, shape))
    return effects
