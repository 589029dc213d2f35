"""What a rule returns (:class:`Effect`: per input axis an :class:`AxisRule`, and how channels relate),
the context a rule may ask (:class:`Ctx`), the one registry (``RULES``, filled by ``@rule``), and the helpers that
rules of several families share."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from math import prod

import numpy as np

from atrous.errors import UnsupportedOpError
from atrous.rf import layout as L
from atrous.rf.graph import OpCall, TensorArg
from atrous.rf.layout import Layout, Part
from atrous.rf.support import GLOBAL, IDENTITY, AxisMap, Offsets


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


def dim_index(d: int, ndim: int) -> int:
    return d + ndim if d < 0 else d


def per_axis_values(value, k: int) -> list:
    if isinstance(value, (list, tuple)):
        value = list(value)
        return value * k if len(value) == 1 else value
    return [value] * k


def reads_whole(t: TensorArg, layout: Layout) -> Dep:
    """Every output element reads every element of ``t`` (tracked weights, statistics)."""
    return Dep(t, {a: GLOBAL_RULE for a, loc in enumerate(layout) if loc is not None}, MIX)


def spatial_axes(ctx: Ctx, t: TensorArg, k: int) -> list[int | None]:
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


def channels_of(ctx: Ctx, t: TensorArg, out_shape: tuple, out_layout: Layout) -> Channels:
    """SAME when input and output both have a channel dim of the same size at dim 1, else MIX."""
    cin = L.channel_dim(ctx.layout(t), t.shape)
    cout = L.channel_dim(out_layout, out_shape)
    if cin is not None and cout is not None and t.shape[1] == out_shape[1] and len(t.shape) == len(out_shape):
        return SAME
    return MIX


def spatial_op(
    ctx: Ctx, k: int, rule_for_dim: Callable[[int, int, int], AxisRule], channels: Channels = SAME
):
    """A per-axis op on the last ``k`` dims of the first input; every output gets the same effect."""
    x = ctx.call.inputs[0]
    if x.node is None:
        raise ctx.unsupported("the spatial input is not tracked while other inputs are")
    axes = spatial_axes(ctx, x, k)
    out_shape = ctx.out_shapes[0]
    rules = {}
    for i, axis in enumerate(axes):
        d_in, d_out = len(x.shape) - k + i, len(out_shape) - k + i
        if axis is not None:
            rules[axis] = rule_for_dim(i, x.shape[d_in], out_shape[d_out])
    layout = L.with_sizes(ctx.layout(x), out_shape)
    deps = [Dep(x, rules, channels)]
    deps += [reads_whole(t, ctx.layout(t)) for t in ctx.call.inputs[1:] if t.node is not None]
    return [Effect(layout, deps) for _ in ctx.out_shapes]


def windows_rule(windows: Callable[[int], tuple[int, int] | list[int]], ratio: Fraction) -> AxisMap:
    """Periodic rule from an index formula with rational ratio ``in / out = A' / P'``."""
    P, A = ratio.denominator, ratio.numerator
    phases = []
    for phi in range(P):
        w = windows(phi)
        phases.append(Offsets.interval(*w) if isinstance(w, tuple) else Offsets.of(w))
    return AxisMap(P, A, tuple(phases)).normalized()


def digit_values(v: np.ndarray, parts: tuple[Part, ...], weights: list[int]) -> np.ndarray:
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
        key_in = digit_values(np.arange(n_in_), src, kept)
        key_out = digit_values(np.arange(n_out_), out, kept)
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


def packet_rank(packet: str) -> int:
    """Spatial rank from an op name: ``max_pool2d_with_indices`` -> 2."""
    return int(re.search(r"(\d)d", packet).group(1))
