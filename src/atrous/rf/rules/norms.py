"""Normalisation: statistics over batch, groups or features, and when they reach the whole image."""

from __future__ import annotations

from atrous.rf import layout as L
from atrous.rf.graph import TensorArg
from atrous.rf.layout import Layout
from atrous.rf.rules.base import (
    GLOBAL_RULE,
    MIX,
    SAME,
    Channels,
    Ctx,
    Dep,
    Effect,
    axis_names,
    reads_whole,
    rule,
)
from atrous.rf.rules.reductions import free_digits, global_note


def _read_all(t: TensorArg, layout: Layout) -> Dep:
    """A per-channel statistic of ``t``: reads every position of it."""
    return Dep(t, {a: GLOBAL_RULE for a, loc in enumerate(layout) if loc is not None}, MIX)


def _statistics_effect(ctx: Ctx, global_: bool, why: str, channels: Channels) -> list[Effect]:
    """Normalisation: output 0 is the normalised input; further outputs (saved mean / inverse std) are
    statistics over the whole input, or empty tensors when running statistics are used."""
    x = ctx.call.inputs[0]
    layout = ctx.layout(x)
    rules = {a: GLOBAL_RULE for a, loc in enumerate(layout) if loc is not None} if global_ else {}
    notes = [f"global: {why} ({ctx.where})"] if global_ else []
    deps = [Dep(x, rules, channels)] + [
        reads_whole(t, ctx.layout(t)) for t in ctx.call.inputs[1:] if t.node is not None
    ]
    effects = [Effect(L.with_sizes(layout, ctx.out_shapes[0]), deps, notes)]
    for shape in ctx.out_shapes[1:]:
        empty = any(n == 0 for n in shape)
        effects.append(Effect((None,) * len(layout), [] if empty else [_read_all(x, layout)]))
    return effects


@rule(
    "aten.native_batch_norm",
    "aten._native_batch_norm_legit",
    "aten._native_batch_norm_legit_no_training",
    "aten.cudnn_batch_norm",
    "aten.miopen_batch_norm",
    "aten._batch_norm_with_update",
    "aten._batch_norm_no_update",
    "aten.batch_norm",
)
def _batch_norm(ctx: Ctx) -> list[Effect]:
    packet = ctx.call.packet
    if packet in ("aten._native_batch_norm_legit_no_training", "aten._batch_norm_no_update"):
        training = False
    elif packet == "aten._batch_norm_with_update":
        training = True
    else:
        training = bool(ctx.call.args.get("training", False))
    if training and not ctx.options.ignore_statistics:
        why = "batch statistics (BatchNorm in training mode, or InstanceNorm)"
        return _statistics_effect(ctx, True, why, SAME)
    if ctx.options.train_batchnorm and not ctx.options.ignore_statistics:
        return _statistics_effect(ctx, True, "batch statistics (train-mode view of BatchNorm)", SAME)
    return _statistics_effect(ctx, False, "", SAME)


@rule("aten.native_group_norm")
def _group_norm(ctx: Ctx) -> list[Effect]:
    groups = int(ctx.call.args["group"])
    channels = SAME if ctx.options.ignore_statistics else Channels("groups", groups) if groups > 1 else MIX
    return _statistics_effect(
        ctx, not ctx.options.ignore_statistics, "GroupNorm statistics over each sample", channels
    )


@rule("aten.native_layer_norm")
def _layer_norm(ctx: Ctx) -> list[Effect]:
    x = ctx.call.inputs[0]
    n = len(ctx.call.args["normalized_shape"])
    dims = set(range(len(x.shape) - n, len(x.shape)))
    layout = ctx.layout(x)
    names = axis_names(len(layout))
    spatial = [a for a, loc in enumerate(layout) if loc is not None and L.dims_of(loc) & dims]
    channel = L.channel_dim(layout, x.shape)
    if ctx.options.ignore_statistics:
        spatial = []
    # Statistics over normalized dims that hold window digits are per window (a window-local norm).
    rules = {a: free_digits(ctx, layout[a], dims, keep=True)[1] for a in spatial}
    notes = global_note(
        "LayerNorm statistics", [names[a] for a in spatial if rules[a].periodic.is_global], ctx
    )
    channels = (
        MIX
        if (channel in dims or any(d not in L.dims_with_axes(layout) for d in dims))
        and not ctx.options.ignore_statistics
        else SAME
    )
    deps = [Dep(x, rules, channels)] + [
        reads_whole(t, ctx.layout(t)) for t in ctx.call.inputs[1:] if t.node is not None
    ]
    effects = [Effect(L.with_sizes(layout, ctx.out_shapes[0]), deps, notes)]
    effects += [Effect((None,) * len(layout), [_read_all(x, layout)]) for _ in ctx.out_shapes[1:]]
    return effects
