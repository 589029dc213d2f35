"""Convolution and pooling: windows of ``kernel`` taps, ``dilation`` apart, every ``stride``."""

from __future__ import annotations

from fractions import Fraction
from math import ceil, floor, gcd

from atrous.rf.rules.base import (
    GLOBAL_RULE,
    MIX,
    AxisRule,
    Channels,
    Ctx,
    Effect,
    axis_names,
    packet_rank,
    per_axis_values,
    rule,
    spatial_axes,
    spatial_op,
    windows_rule,
)
from atrous.rf.support import AxisMap, Offsets


def conv_rule(kernel: int, stride: int, padding: int, dilation: int) -> AxisRule:
    """Output ``u`` reads ``u * stride - padding + dilation * j`` for ``j < kernel``."""
    return AxisRule(AxisMap.affine(stride, Offsets.of(-padding + dilation * j for j in range(kernel))))


def transposed_conv_rule(kernel: int, stride: int, padding: int, dilation: int) -> AxisRule:
    """Input ``v`` writes output ``v * stride - padding + dilation * j``; so output phase ``f`` reads the
    ``v = q + (f + padding - dilation * j) / stride`` that are whole numbers."""
    phases = []
    for f in range(stride):
        taps = [
            (f + padding - dilation * j) // stride
            for j in range(kernel)
            if (f + padding - dilation * j) % stride == 0
        ]
        phases.append(Offsets.of(taps))
    return AxisRule(AxisMap(stride, 1, tuple(phases)).normalized())


@rule("aten.convolution", "aten._convolution", "aten.convolution_overrideable", "aten.mkldnn_convolution")
def _convolution(ctx: Ctx) -> list[Effect]:
    a = ctx.call.args
    weight = a["weight"]
    k = len(weight.shape) - 2
    kernel = weight.shape[2:]
    stride, padding, dilation = (
        per_axis_values(a.get(n, 1 if n != "padding" else 0), k) for n in ("stride", "padding", "dilation")
    )
    transposed = bool(a.get("transposed", False))
    groups = int(a.get("groups", 1))

    def per_dim(i: int, n_in: int, n_out: int) -> AxisRule:
        make = transposed_conv_rule if transposed else conv_rule
        return make(kernel[i], stride[i], padding[i], dilation[i])

    channels = Channels("groups", groups) if groups > 1 else MIX
    return spatial_op(ctx, k, per_dim, channels)


@rule(
    "aten.max_pool1d",
    "aten.max_pool2d",
    "aten.max_pool3d",
    "aten.max_pool1d_with_indices",
    "aten.max_pool2d_with_indices",
    "aten.max_pool3d_with_indices",
    "aten.avg_pool1d",
    "aten.avg_pool2d",
    "aten.avg_pool3d",
)
def _pool(ctx: Ctx) -> list[Effect]:
    a = ctx.call.args
    k = packet_rank(ctx.call.packet)
    kernel = per_axis_values(a["kernel_size"], k)
    stride = per_axis_values(a.get("stride") or kernel, k)
    padding = per_axis_values(a.get("padding", 0), k)
    dilation = per_axis_values(a.get("dilation", 1), k)
    # ceil_mode only adds a last (partial) window: the index rule is unchanged and the finite pass clips it.
    return spatial_op(ctx, k, lambda i, n_in, n_out: conv_rule(kernel[i], stride[i], padding[i], dilation[i]))


def adaptive_rule(n_in: int, n_out: int) -> AxisRule:
    """PyTorch's adaptive windows: ``[floor(u * n_in / n_out), ceil((u + 1) * n_in / n_out))``."""
    if n_out == 1:
        return GLOBAL_RULE
    g = gcd(n_in, n_out)
    ratio = Fraction(n_in // g, n_out // g)
    return AxisRule(
        windows_rule(lambda f: (floor(f * n_in / n_out), ceil((f + 1) * n_in / n_out) - 1), ratio)
    )


@rule(
    "aten._adaptive_avg_pool2d",
    "aten._adaptive_avg_pool3d",
    "aten.adaptive_avg_pool1d",
    "aten.adaptive_max_pool1d",
    "aten.adaptive_max_pool2d",
    "aten.adaptive_max_pool3d",
)
def _adaptive_pool(ctx: Ctx) -> list[Effect]:
    k = packet_rank(ctx.call.packet)
    effects = spatial_op(ctx, k, lambda i, n_in, n_out: adaptive_rule(n_in, n_out))
    x = ctx.call.inputs[0]
    axes = spatial_axes(ctx, x, k)
    out = ctx.out_shapes[0]
    names = axis_names(len(ctx.layout(x)))
    pooled = [names[a] for i, a in enumerate(axes) if a is not None and out[len(out) - k + i] == 1]
    if pooled:
        for e in effects:
            e.notes.append(f"global: adaptive pooling to size 1 over {', '.join(pooled)} ({ctx.where})")
    return effects
