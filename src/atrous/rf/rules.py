"""The one table of receptive-field rules: what every ATen operation does to spatial indices.

Each rule looks at one recorded call (its arguments, input and output shapes) and says, for every output
tensor, which tracked inputs it reads and how: per input spatial axis an :class:`AxisRule` (output index ->
input indices, see :mod:`atrous.rf.support`), and how output channels relate to input channels. Rules are
written per axis, so 1-D, 2-D and 3-D variants and rectangular kernels share code. An op without a rule is an
error that names it; nothing is silently treated as the identity.

Conventions: ``Offsets`` are op-input indices relative to ``q * advance`` (see ``AxisMap``). A rule's optional
``finite`` function gives the exact relation on the real tensor sizes, where it differs from clipping the
periodic rule to the input range (reflect padding, PyTorch's own resampling arithmetic).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from fractions import Fraction
from math import ceil, floor, gcd, prod

import numpy as np
import torch

from atrous.errors import UnsupportedOpError
from atrous.rf import layout as L
from atrous.rf.graph import OpCall, TensorArg
from atrous.rf.layout import Layout, Loc, Part, Split
from atrous.rf.support import GLOBAL, IDENTITY, AxisMap, Offsets

# ------------------------------------------------------------------------------------------------------------
# What a rule returns


@dataclass(frozen=True)
class AxisRule:
    periodic: AxisMap
    finite: Callable[[int, int], np.ndarray] | None = None  # (n_in, n_out) -> bool matrix (n_out, n_in)


IDENTITY_RULE = AxisRule(IDENTITY)
GLOBAL_RULE = AxisRule(AxisMap.constant(GLOBAL))
BROADCAST_RULE = AxisRule(AxisMap.constant(Offsets.of([0])))


@dataclass(frozen=True)
class Channels:
    """How output channels (dim 1) read input channels.

    kind: "same" (channel c reads channel c), "mix" (every output channel reads every input channel),
    "groups" (grouped convolution, ``a`` groups), "slice" (output channel j reads input ``a + j * b``).
    "merge" is "mix" caused by a layout change that moved channels around: exact for the tensor as a whole,
    but a later channel selection may then over-approximate, which the report says.
    """

    kind: str
    a: int = 0
    b: int = 1


SAME = Channels("same")
MIX = Channels("mix")
MERGE = Channels("merge")


@dataclass
class Dep:
    source: TensorArg
    axes: dict[int, AxisRule] = field(default_factory=dict)  # input axis -> rule; absent = identity
    channels: Channels = SAME


@dataclass
class Effect:
    """One output tensor of a call: its layout and what it reads."""

    layout: Layout
    deps: list[Dep]
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Options:
    train_batchnorm: bool = False  # the train-mode view: BatchNorm uses batch statistics (global)
    ignore_statistics: bool = False  # treat normalisation statistics as constants (structural view)


class Ctx:
    """What a rule may ask about a call beyond its arguments."""

    def __init__(self, call: OpCall, layouts: dict[int, Layout], shapes: dict[int, tuple], options: Options):
        self.call = call
        self._layouts = layouts
        self.out_shapes = [shapes[n] for n in call.outputs]
        self.options = options

    @property
    def where(self) -> str:
        return f"{self.call.packet} at module '{self.call.module or '<model>'}'"

    def layout(self, t: TensorArg) -> Layout:
        return self._layouts[t.node]

    def tracked(self) -> list[TensorArg]:
        return [t for t in self.call.inputs if t.node is not None]

    def unsupported(self, why: str) -> UnsupportedOpError:
        return UnsupportedOpError(f"{self.where}: {why}")


RuleFn = Callable[[Ctx], list[Effect]]
RULES: dict[str, RuleFn] = {}


def rule(*packets: str) -> Callable[[RuleFn], RuleFn]:
    def register(fn: RuleFn) -> RuleFn:
        for p in packets:
            RULES[p] = fn
        return fn

    return register


AXIS_NAMES = {1: ("L",), 2: ("H", "W"), 3: ("D", "H", "W")}


# ------------------------------------------------------------------------------------------------------------
# Helpers shared by rules


def _dim(d: int, ndim: int) -> int:
    return d + ndim if d < 0 else d


def _per_dim(value, k: int) -> list:
    if isinstance(value, (list, tuple)):
        value = list(value)
        return value * k if len(value) == 1 else value
    return [value] * k


def _whole(t: TensorArg, layout: Layout) -> Dep:
    """Every output element reads every element of ``t`` (tracked weights, statistics)."""
    return Dep(t, {a: GLOBAL_RULE for a, loc in enumerate(layout) if loc is not None}, MIX)


def _spatial_axes(ctx: Ctx, t: TensorArg, k: int) -> list[int | None]:
    """The axes carried by the last ``k`` dims of ``t`` (None where a dim carries no axis)."""
    layout, ndim = ctx.layout(t), len(t.shape)
    axes = []
    for d in range(ndim - k, ndim):
        try:
            axes.append(L.axis_at_dim(layout, d))
        except ValueError:
            raise ctx.unsupported(
                f"dim {d} mixes a spatial axis with other dims (a view merged them); "
                "the spatial op cannot be followed on it"
            ) from None
    return axes


def _channels_of(ctx: Ctx, t: TensorArg, out_shape: tuple, out_layout: Layout) -> Channels:
    """SAME when input and output both have a channel dim of the same size at dim 1, else MIX."""
    cin = L.channel_dim(ctx.layout(t), t.shape)
    cout = L.channel_dim(out_layout, out_shape)
    if cin is not None and cout is not None and t.shape[1] == out_shape[1] and len(t.shape) == len(out_shape):
        return SAME
    return MIX


def _spatial_op(
    ctx: Ctx, k: int, rule_for_dim: Callable[[int, int, int], AxisRule], channels: Channels = SAME
):
    """A per-axis op on the last ``k`` dims of the first input; every output gets the same effect."""
    x = ctx.call.inputs[0]
    if x.node is None:
        raise ctx.unsupported("the spatial input is not tracked while other inputs are")
    axes = _spatial_axes(ctx, x, k)
    out_shape = ctx.out_shapes[0]
    rules = {}
    for i, axis in enumerate(axes):
        d_in, d_out = len(x.shape) - k + i, len(out_shape) - k + i
        if axis is not None:
            rules[axis] = rule_for_dim(i, x.shape[d_in], out_shape[d_out])
    layout = L.with_sizes(ctx.layout(x), out_shape)
    deps = [Dep(x, rules, channels)]
    deps += [_whole(t, ctx.layout(t)) for t in ctx.call.inputs[1:] if t.node is not None]
    return [Effect(layout, deps) for _ in ctx.out_shapes]


def _windows_rule(windows: Callable[[int], tuple[int, int] | list[int]], ratio: Fraction) -> AxisMap:
    """Periodic rule from an index formula with rational ratio ``in / out = A' / P'``."""
    P, A = ratio.denominator, ratio.numerator
    phases = []
    for phi in range(P):
        w = windows(phi)
        phases.append(Offsets.interval(*w) if isinstance(w, tuple) else Offsets.of(w))
    return AxisMap(P, A, tuple(phases)).normalized()


def _digits(v: np.ndarray, parts: tuple[Part, ...], weights: list[int]) -> np.ndarray:
    """Digit values of indexes ``v`` for the digits of the given (unsplit-axis) weights, one row each."""
    current = dict(zip((p.weight for p in parts), L.current_weights(parts)))
    sizes = {p.weight: p.size for p in parts}
    return (
        np.stack([(v // current[w]) % sizes[w] for w in weights]) if weights else np.zeros((0, len(v)), int)
    )


def digit_rule(src: tuple[Part, ...], out: tuple[Part, ...], free: set[int]) -> AxisRule:
    """Output index ``u`` reads every source index ``v`` that agrees with it on each digit of the source that is
    not ``free`` and that the output also indexes (digits are matched by their weight in the unsplit axis).

    This one relation covers what attention does to split axes: softmax or a matrix product along the tokens of
    a window (``free`` = the in-window digits, kept by the output: each position reads its whole window), a sum
    over a window (the digits are gone from the output: stride w) and the plain global case (the only digit free).
    Windows are not shift invariant: when the top digit is kept, the periodic map has one phase per position in
    the window (period w, stride 1), which the report lists; when the top digit is free, the theoretical map on
    an unbounded input is global while the in-image relation (``finite``) stays exact.
    Raises ValueError when the two tensors split the axis differently.
    """
    out_sizes = {p.weight: p.size for p in out}
    # Only the digits that must agree need the same split: free ones (keys of a shorter sequence) need none.
    for a in (p for p in src if p.weight not in free):
        for b in out:
            same = a.weight == b.weight
            overlap = a.weight < b.weight * b.size and b.weight < a.weight * a.size
            if (same and a.size != b.size) or (overlap and not same):
                raise ValueError("the tensors split a spatial axis into different digits")
    kept = [p.weight for p in src if p.weight not in free and p.weight in out_sizes]
    n_in, n_out = prod(p.size for p in src), prod(p.size for p in out)

    def finite(n_in_: int, n_out_: int) -> np.ndarray:
        key_in = _digits(np.arange(n_in_), src, kept)
        key_out = _digits(np.arange(n_out_), out, kept)
        return (key_out[:, :, None] == key_in[:, None, :]).all(axis=0)

    top = max(p.weight for p in src)
    if top not in kept:
        if not kept:
            return GLOBAL_RULE
        return AxisRule(AxisMap.constant(GLOBAL), finite)
    if top != max(p.weight for p in out):
        raise ValueError("the output indexes a coarser digit than the source")
    period = L.current_weights(out)[[p.weight for p in out].index(top)]
    advance = L.current_weights(src)[[p.weight for p in src].index(top)]
    rel = finite(advance, period)  # below one step of the top digit the relation is the key relation itself
    phases = tuple(Offsets.of(np.flatnonzero(rel[f]).tolist()) for f in range(period))
    periodic = AxisMap(period, advance, phases).normalized()
    if n_in == n_out and periodic == IDENTITY:
        return IDENTITY_RULE
    return AxisRule(periodic, finite)


# ------------------------------------------------------------------------------------------------------------
# Convolution and pooling


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
        _per_dim(a.get(n, 1 if n != "padding" else 0), k) for n in ("stride", "padding", "dilation")
    )
    transposed = bool(a.get("transposed", False))
    groups = int(a.get("groups", 1))

    def per_dim(i: int, n_in: int, n_out: int) -> AxisRule:
        make = transposed_conv_rule if transposed else conv_rule
        return make(kernel[i], stride[i], padding[i], dilation[i])

    channels = Channels("groups", groups) if groups > 1 else MIX
    return _spatial_op(ctx, k, per_dim, channels)


def _rank(packet: str) -> int:
    """Spatial rank from an op name: ``max_pool2d_with_indices`` -> 2."""
    return int(re.search(r"(\d)d", packet).group(1))


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
    k = _rank(ctx.call.packet)
    kernel = _per_dim(a["kernel_size"], k)
    stride = _per_dim(a.get("stride") or kernel, k)
    padding = _per_dim(a.get("padding", 0), k)
    dilation = _per_dim(a.get("dilation", 1), k)
    # ceil_mode only adds a last (partial) window: the index rule is unchanged and the finite pass clips it.
    return _spatial_op(
        ctx, k, lambda i, n_in, n_out: conv_rule(kernel[i], stride[i], padding[i], dilation[i])
    )


def adaptive_rule(n_in: int, n_out: int) -> AxisRule:
    """PyTorch's adaptive windows: ``[floor(u * n_in / n_out), ceil((u + 1) * n_in / n_out))``."""
    if n_out == 1:
        return GLOBAL_RULE
    g = gcd(n_in, n_out)
    ratio = Fraction(n_in // g, n_out // g)
    return AxisRule(
        _windows_rule(lambda f: (floor(f * n_in / n_out), ceil((f + 1) * n_in / n_out) - 1), ratio)
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
    k = _rank(ctx.call.packet)
    effects = _spatial_op(ctx, k, lambda i, n_in, n_out: adaptive_rule(n_in, n_out))
    x = ctx.call.inputs[0]
    axes = _spatial_axes(ctx, x, k)
    out = ctx.out_shapes[0]
    names = AXIS_NAMES.get(len(ctx.layout(x)), ("?",) * 3)
    pooled = [names[a] for i, a in enumerate(axes) if a is not None and out[len(out) - k + i] == 1]
    if pooled:
        for e in effects:
            e.notes.append(f"global: adaptive pooling to size 1 over {', '.join(pooled)} ({ctx.where})")
    return effects


# ------------------------------------------------------------------------------------------------------------
# Resampling


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

    return _windows_rule(taps, r)


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
    k = _rank(packet)
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

    return _spatial_op(ctx, k, per_dim)


@rule("aten.pixel_shuffle")
def _pixel_shuffle(ctx: Ctx) -> list[Effect]:
    r = int(ctx.call.args["upscale_factor"])
    shuffle = AxisRule(AxisMap(r, 1, (Offsets.of([0]),) * r))
    return _spatial_op(ctx, 2, lambda i, n_in, n_out: shuffle, MERGE)


@rule("aten.pixel_unshuffle")
def _pixel_unshuffle(ctx: Ctx) -> list[Effect]:
    r = int(ctx.call.args["downscale_factor"])
    unshuffle = AxisRule(AxisMap.affine(r, Offsets.interval(0, r - 1)))
    return _spatial_op(ctx, 2, lambda i, n_in, n_out: unshuffle, MERGE)


# ------------------------------------------------------------------------------------------------------------
# Padding, slicing, flipping


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
    dim = _dim(a.get("dim", 0), len(x.shape))
    start, _ = _norm_range(a.get("start"), a.get("end"), x.shape[dim])
    return [_slice_effect(ctx, x, dim, start, int(a.get("step", 1)), ctx.out_shapes[0], drop=False)]


@rule("aten.narrow")
def _narrow(ctx: Ctx) -> list[Effect]:
    a, x = ctx.call.args, ctx.call.inputs[0]
    dim = _dim(a["dim"], len(x.shape))
    start = a["start"] + x.shape[dim] if a["start"] < 0 else a["start"]
    return [_slice_effect(ctx, x, dim, start, 1, ctx.out_shapes[0], drop=False)]


@rule("aten.select")
def _select(ctx: Ctx) -> list[Effect]:
    a, x = ctx.call.args, ctx.call.inputs[0]
    dim = _dim(a["dim"], len(x.shape))
    index = a["index"] + x.shape[dim] if a["index"] < 0 else a["index"]
    return [_slice_effect(ctx, x, dim, index, 1, ctx.out_shapes[0], drop=True)]


@rule(
    "aten.split", "aten.split_with_sizes", "aten.unsafe_split", "aten.unsafe_split_with_sizes", "aten.unbind"
)
def _split(ctx: Ctx) -> list[Effect]:
    a, x = ctx.call.args, ctx.call.inputs[0]
    dim = _dim(a.get("dim", 0), len(x.shape))
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
    dim = _dim(ctx.call.args.get("dim", 0), len(out_shape))
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
    dim = _dim(ctx.call.args.get("dim", 0), len(out_shape))
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
    rules = {}
    channels = SAME
    for d in ctx.call.args["dims"]:
        d = _dim(d, len(x.shape))
        axis = L.axis_at_dim(layout, d)
        if axis is not None:
            rules[axis] = AxisRule(AxisMap.affine(-1, Offsets.of([x.shape[d] - 1])))
        elif d == L.channel_dim(layout, x.shape):
            channels = MERGE
    return [Effect(layout, [Dep(x, rules, channels)])]


@rule("aten.roll")
def _roll(ctx: Ctx) -> list[Effect]:
    x = ctx.call.inputs[0]
    layout = ctx.layout(x)
    shifts, dims = list(ctx.call.args["shifts"]), list(ctx.call.args.get("dims") or [])
    if not dims:
        raise ctx.unsupported("roll over the flattened tensor mixes all axes")
    rules = {}
    channels = SAME
    for s, d in zip(shifts, dims):
        d = _dim(d, len(x.shape))
        axis = L.axis_at_dim(layout, d)
        if axis is not None:
            # An unbounded input has no border to wrap around, so the theoretical view sees a plain shift (Swin's
            # shifted windows then show as windows offset by s, per phase); the in-image view wraps exactly, so a
            # corner pixel's support (report.support) includes pixels from the far side of the image.
            rules[axis] = AxisRule(AxisMap.affine(1, Offsets.of([-s])), _pad_finite(s, "circular"))
        elif d == L.channel_dim(layout, x.shape):
            channels = MERGE
    return [Effect(layout, [Dep(x, rules, channels)])]


# ------------------------------------------------------------------------------------------------------------
# Views and copies: the layout moves, the values do not


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
    notes = []
    names = AXIS_NAMES.get(len(layout), ("?",) * 3)
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
            rules[axis] = BROADCAST_RULE
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
    return _permutation_effect(ctx, [_dim(d, len(x.shape)) for d in ctx.call.args["dims"]])


@rule("aten.transpose", "aten.swapaxes", "aten.swapdims", "aten.t")
def _transpose(ctx: Ctx) -> list[Effect]:
    x = ctx.call.inputs[0]
    n = len(x.shape)
    a, b = (ctx.call.args.get("dim0", 0), ctx.call.args.get("dim1", 1)) if n >= 2 else (0, 0)
    perm = list(range(n))
    a, b = _dim(a, n), _dim(b, n)
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
    return _pointwise_over(ctx, [src] if src.node is not None else [])


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


# ------------------------------------------------------------------------------------------------------------
# Elementwise ops (with broadcasting)


def _pointwise_over(ctx: Ctx, inputs: list[TensorArg]) -> list[Effect]:
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
        dep.channels = _channels_of(ctx, dep.source, out_shape, layout)
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
    return _pointwise_over(ctx, ctx.tracked())


# ------------------------------------------------------------------------------------------------------------
# Reductions and ops along one dim


def _free_digits(
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


def _global_note(what: str, names: list[str], ctx: Ctx) -> list[str]:
    return [f"global: {what} over {', '.join(names)} ({ctx.where})"] if names else []


def _reduce(ctx: Ctx, dims: list[int] | None, keepdim: bool, what: str) -> list[Effect]:
    x = ctx.call.inputs[0]
    ndim = len(x.shape)
    dims = list(range(ndim)) if not dims else [_dim(d, ndim) for d in dims]
    layout = ctx.layout(x)
    names = AXIS_NAMES.get(len(layout), ("?",) * 3)
    rules, reduced = {}, []
    new: list[Loc | Split | None] = []
    for axis, loc in enumerate(layout):
        if loc is None or not L.dims_of(loc) & set(dims):
            new.append(loc if keepdim else L.move(loc, lambda d: d - sum(r < d for r in dims)))
            continue
        renumber = (lambda d: d) if keepdim else (lambda d: d - sum(r < d for r in dims))
        kept, rules[axis] = _free_digits(ctx, loc, set(dims), False, renumber)
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
    notes = _global_note(what, reduced, ctx)
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
    d = _dim(ctx.call.args.get("dim", -1), len(x.shape))
    layout = ctx.layout(x)
    names = AXIS_NAMES.get(len(layout), ("?",) * 3)
    rules, along = {}, []
    for axis, loc in enumerate(layout):
        if loc is not None and d in L.dims_of(loc):
            _, rules[axis] = _free_digits(ctx, loc, {d}, keep=True)
            if rules[axis].periodic.is_global:
                along.append(names[axis])
    notes = [f"global: {ctx.call.packet.split('.')[1]} along {n} ({ctx.where})" for n in along]
    channels = MIX if d == L.channel_dim(layout, x.shape) else SAME
    return [Effect(L.with_sizes(layout, s), [Dep(x, rules, channels)], list(notes)) for s in ctx.out_shapes]


# ------------------------------------------------------------------------------------------------------------
# Normalisation


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
        _whole(t, ctx.layout(t)) for t in ctx.call.inputs[1:] if t.node is not None
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
    names = AXIS_NAMES.get(len(layout), ("?",) * 3)
    spatial = [a for a, loc in enumerate(layout) if loc is not None and L.dims_of(loc) & dims]
    channel = L.channel_dim(layout, x.shape)
    if ctx.options.ignore_statistics:
        spatial = []
    # Statistics over normalized dims that hold window digits are per window (a window-local norm).
    rules = {a: _free_digits(ctx, layout[a], dims, keep=True)[1] for a in spatial}
    notes = _global_note(
        "LayerNorm statistics", [names[a] for a in spatial if rules[a].periodic.is_global], ctx
    )
    channels = (
        MIX
        if (channel in dims or any(d not in L.dims_with_axes(layout) for d in dims))
        and not ctx.options.ignore_statistics
        else SAME
    )
    deps = [Dep(x, rules, channels)] + [
        _whole(t, ctx.layout(t)) for t in ctx.call.inputs[1:] if t.node is not None
    ]
    effects = [Effect(L.with_sizes(layout, ctx.out_shapes[0]), deps, notes)]
    effects += [Effect((None,) * len(layout), [_read_all(x, layout)]) for _ in ctx.out_shapes[1:]]
    return effects


# ------------------------------------------------------------------------------------------------------------
# Matrix products (Linear layers, attention)


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
    names = AXIS_NAMES.get(n_axes, ("?",) * 3)
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
        effect.deps += _pointwise_over(ctx, [bias])[0].deps
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


def rule_for(call: OpCall) -> RuleFn | None:
    fn = RULES.get(call.packet)
    if fn is not None:
        return fn
    op = getattr(getattr(torch.ops, call.packet.split(".")[0]), call.packet.split(".", 1)[1], None)
    if call.packet in POINTWISE_EXTRA:
        return pointwise
    if op is not None and any(torch.Tag.pointwise in getattr(op, o).tags for o in op.overloads()):
        return pointwise
    return None
