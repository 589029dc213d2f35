"""What a rule returns (:class:`Effect`: per input axis an :class:`AxisRule`, and how channels relate),
the context a rule may ask (:class:`Ctx`), the one registry (``RULES``, filled by ``@rule``), and the helpers that
rules of several families share."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from functools import cache
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


def axis_names(n_axes: int) -> tuple[str, ...]:
    """The axes' names in notes; "?" beyond 3-D (the engine tracks up to 3 spatial axes)."""
    return AXIS_NAMES.get(n_axes, ("?",) * n_axes)


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


MIXED_DIM = "dim {d} mixes a spatial axis with other dims (a view merged them); the spatial op cannot be followed on it"


def spatial_axes(ctx: Ctx, t: TensorArg, k: int) -> list[int | None]:
    """The axes carried by the last ``k`` dims of ``t`` (None where a dim carries no axis); a dim holding one
    digit of a split axis and nothing else counts as that axis."""
    layout, ndim = ctx.layout(t), len(t.shape)
    return [_axis_in_dim(ctx, layout, d, t.shape[d]) for d in range(ndim - k, ndim)]


def _axis_in_dim(ctx: Ctx, layout: Layout, d: int, size: int) -> int | None:
    try:
        return L.axis_at_dim(layout, d)
    except ValueError:
        sole = L.sole_digit(layout, d, size)
        if sole is None:
            raise ctx.unsupported(MIXED_DIM.format(d=d)) from None
        return sole[0]


def channels_of(ctx: Ctx, t: TensorArg, out_shape: tuple, out_layout: Layout) -> Channels:
    """SAME when input and output both have a channel dim of the same size at dim 1, else MIX."""
    cin = L.channel_dim(ctx.layout(t), t.shape)
    cout = L.channel_dim(out_layout, out_shape)
    if cin is not None and cout is not None and t.shape[1] == out_shape[1] and len(t.shape) == len(out_shape):
        return SAME
    return MIX


def channel_digit(p: Part, c_in: int, c_out: int, channels: Channels) -> tuple[Part | None, bool]:
    """What becomes of digit ``p`` living in the channel dim (space-to-depth moved it there) when output
    channels read input channels per ``channels``: (its place in the output's channel dim, or None when every
    output channel reads all its values; whether that is exact). A grouped convolution keeps the digits that
    pick the group and reads whole those that vary within a group; a digit cut by group boundaries is read
    whole, an over-approximation."""
    if channels.kind == "same" and c_in == c_out:
        return p, True
    if channels.kind == "groups":
        g_in, g_out = c_in // channels.a, c_out // channels.a
        if p.inner % g_in == 0:
            return Part(p.dim, p.inner // g_in * g_out, p.size, p.weight), True
        return None, g_in % (p.inner * p.size) == 0
    return None, channels.kind == "mix"


def spatial_op(
    ctx: Ctx, k: int, rule_for_dim: Callable[[int, int, int], AxisRule], channels: Channels = SAME
) -> list[Effect]:
    """A per-axis op on the last ``k`` dims of the first input; every output gets the same effect.

    An axis that owns one of those dims gets the op's rule. An axis split into digits (space-to-depth by views,
    windows in the batch dim) is followed digit by digit (:func:`digits_rule`): a digit owning an operated dim
    gets the op's rule, one in the channel dim the channel relation (kept by a depthwise op, read whole by a
    convolution that mixes channels), one in the batch dim is kept. Along a dim where the op is the identity
    (a 1x1 convolution) every digit is kept, however many axes share the dim."""
    x = ctx.call.inputs[0]
    if x.node is None:
        raise ctx.unsupported("the spatial input is not tracked while other inputs are")
    layout, shape, out_shape = ctx.layout(x), x.shape, ctx.out_shapes[0]
    first = len(shape) - k
    out_size = {d: out_shape[d + len(out_shape) - len(shape)] for d in range(first, len(shape))}
    op_rules = {d: rule_for_dim(d - first, shape[d], out_size[d]) for d in out_size}
    # Along a dim where the op is the identity (a 1x1 convolution) every digit stays, however many share it
    # (MobileViTv2's unfolded patches): nothing to follow there.
    still = {
        d
        for d, r in op_rules.items()
        if r.finite is None and r.periodic == IDENTITY and shape[d] == out_size[d]
    }
    # Channels that stay where they are keep any axis living there (tokens as channels of a pooling).
    keeps_channels = first < 1 or (channels.kind == "same" and shape[first - 1] == out_shape[first - 1])
    blocks: dict[int, tuple[L.Loc | L.Split | None, AxisRule, bool]] = {}
    for d in sorted(set(op_rules) - still):
        if not _mixes_axes(layout, d, shape[d]):
            continue
        reach = (set(op_rules) - still - {d}) | (set() if keeps_channels else {first - 1})
        blocks.update(_block_digits(ctx, layout, shape, d, op_rules[d], reach))

    def op_rule(d: int) -> AxisRule:
        return op_rules[d]

    rules, new, notes = {}, [], []
    for axis, loc in enumerate(layout):
        dims = L.dims_of(loc) if loc is not None else set()
        moved = dims & (set(op_rules) - still) or (first - 1 in dims and not keeps_channels)
        if axis in blocks:
            placed, rules[axis], exact = blocks[axis]
            new.append(placed)
            notes += _block_notes(ctx, axis_names(len(layout))[axis], rules[axis], exact)
        elif not moved:
            new.append(loc)
        elif isinstance(loc, L.Loc) and loc.plain and loc.dim >= first:
            rules[axis] = op_rule(loc.dim)
            new.append(loc)
        else:
            placed, rules[axis], exact = _follow_digits(ctx, axis, first, still, op_rule, channels)
            new.append(placed)
            name = axis_names(len(layout))[axis]
            if rules[axis].periodic.is_global:
                notes.append(
                    f"global: {ctx.where} reads digits of {name} whole (positions carried in channels)"
                )
            if not exact:
                notes.append(
                    f"approximate: {ctx.where} regroups channels that carry digits of axis {name} "
                    "(space-to-depth); those digits are read whole"
                )
    out_layout = L.with_sizes(tuple(new), out_shape)
    if first > 1 and 1 in L.dims_with_axes(layout):
        # The input's channel dim carries digits, so the propagation keeps it as one segment: an output
        # that still carries digits there reads it channel for channel (the "groups" relation of one group
        # says so, and notes when channels of different reach were merged into it), any other reads it whole.
        channels = Channels("groups", 1) if 1 in L.dims_with_axes(out_layout) else MIX
    deps = [Dep(x, rules, channels)]
    deps += [reads_whole(t, ctx.layout(t)) for t in ctx.call.inputs[1:] if t.node is not None]
    return [Effect(out_layout, deps, list(notes)) for _ in ctx.out_shapes]


def _mixes_axes(layout: Layout, d: int, size: int) -> bool:
    """Whether ``d`` holds an axis together with other dims' indexes (a view merged them), so that an op along
    ``d`` cannot be read as an op along one axis."""
    try:
        L.axis_at_dim(layout, d)
    except ValueError:
        return L.sole_digit(layout, d, size) is None
    return False


def _block_digits(
    ctx: Ctx, layout: Layout, shape: tuple[int, ...], d: int, op: AxisRule, reach: set[int]
) -> dict[int, tuple[L.Loc | L.Split | None, AxisRule, bool]]:
    """An op along a dim that a view merged from several (NextViT's spatial reduction: an average pooling of
    kernel = stride = k over flattened tokens). When the op reads disjoint blocks of ``k`` indexes it is the view
    ``n -> (n // k, n % k)`` followed by a reduction over ``n % k``, which the digits follow exactly: a block of
    whole rows pools the row digit and reads the column digit whole. An axis whose digits a block boundary cuts
    off-grid is read whole. Per axis living in ``d``: its output placement, its rule and whether it is exact."""
    n, m = shape[d], ctx.out_shapes[0][d + len(ctx.out_shapes[0]) - len(shape)]
    k = n // m
    if op.finite is not None or n != k * m or op.periodic != AxisMap.affine(k, Offsets.of(range(k))):
        raise ctx.unsupported(MIXED_DIM.format(d=d) + " (only disjoint blocks of it can be followed)")
    split = (*shape[:d], m, k, *shape[d + 1 :])
    moved, dropped, lost = L.reshape(layout, shape, split)
    found = {}
    for axis, loc in enumerate(layout):
        if loc is None or d not in L.dims_of(loc):
            continue
        if L.dims_of(loc) & reach:
            raise ctx.unsupported(MIXED_DIM.format(d=d))
        if axis in dropped:
            found[axis] = (None, BROADCAST_RULE, True)
        elif axis in lost:
            found[axis] = (None, GLOBAL_RULE, False)
        else:
            parts = L.parts_of(moved[axis])
            kept = tuple(p for p in parts if p.dim != d + 1)
            rule_ = digit_rule(parts, kept, {p.weight for p in parts if p.dim == d + 1})
            placed = [Part(p.dim - (p.dim > d), p.inner, p.size, p.weight) for p in kept]
            found[axis] = (L.from_parts(placed, ctx.out_shapes[0]), rule_, True)
    return found


def _block_notes(ctx: Ctx, name: str, rule_: AxisRule, exact: bool) -> list[str]:
    if not exact:
        return [
            f"approximate: {ctx.where} reads blocks of a dim that merges axis {name} with other dims, and the "
            "blocks do not line up with its rows; every block is taken to read the whole axis"
        ]
    if rule_.periodic.is_global:
        return [f"global: {ctx.where} reads whole rows of {name} (blocks of flattened positions)"]
    return []


def _follow_digits(
    ctx: Ctx, axis: int, first: int, still: set[int], op_rule: Callable[[int], AxisRule], channels: Channels
) -> tuple[L.Loc | L.Split | None, AxisRule, bool]:
    """One axis through :func:`spatial_op` digit by digit: (its output layout, its rule, whether exact)."""
    x = ctx.call.inputs[0]
    layout, shape, out_shape = ctx.layout(x), x.shape, ctx.out_shapes[0]
    loc = layout[axis]
    if len(out_shape) != len(shape) or (isinstance(loc, L.Loc) and loc.offset):
        raise ctx.unsupported(MIXED_DIM.format(d=min(L.dims_of(loc))))
    how: dict[int, AxisRule | str] = {}
    out: list[Part] = []
    exact = True
    for p in L.parts_of(loc):
        if p.dim in still:
            out.append(p)
        elif p.dim >= first:
            if L.sole_digit(layout, p.dim, shape[p.dim]) != (axis, p):
                raise ctx.unsupported(MIXED_DIM.format(d=p.dim))
            how[p.weight] = op_rule(p.dim)
            out.append(Part(p.dim, 1, out_shape[p.dim], p.weight))
        elif p.dim == first - 1:  # channels: dim 1, or dim 0 of an unbatched (C, H, W) tensor
            kept, ok = channel_digit(p, shape[p.dim], out_shape[p.dim], channels)
            exact = exact and ok
            if kept is None:
                how[p.weight] = FREE
            else:
                out.append(kept)
        else:  # batch dim (windows in it): every spatial op keeps it
            out.append(p)
    return L.from_parts(out, out_shape), digits_rule(L.parts_of(loc), tuple(out), how), exact


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


FREE = "free"  # in digits_rule: a digit read whole


def fixed_finite(kind: str, relation: Callable[[], np.ndarray]) -> Callable[[int, int], np.ndarray]:
    """The in-image relation of a rule built for one pair of sizes: asked for another, it is a bug, not a guess."""

    def finite(n_in: int, n_out: int) -> np.ndarray:
        rel = relation()
        if rel.shape != (n_out, n_in):
            raise AssertionError(f"{kind} of shape {rel.shape} was asked for {(n_out, n_in)}")
        return rel

    return finite


def digits_rule(src: tuple[Part, ...], out: tuple[Part, ...], how: dict[int, AxisRule | str]) -> AxisRule:
    """The rule of an op that treats each digit of a split axis on its own. ``how[weight]`` says, per source
    digit: absent, the output indexes it unchanged (or, when the output lacks it, reads it whole); ``FREE``, it
    is read whole (the output may still index it, as softmax within a window does); an :class:`AxisRule`, the
    output's digit of the same weight reads it through that rule (a convolution along the dim holding it, which
    may change its size). Output digits the source lacks are unconstrained.

    Output index ``u`` reads source index ``v`` when every digit pair is related. The periodic map follows from
    the top digit: kept or convolved, the lower digits repeat at every step of it (period: the output's lower
    positions, advance: the source's); read whole, the unbounded map is global and only ``finite`` is exact.
    """
    src = tuple(sorted(src, key=lambda p: p.weight))
    out = tuple(sorted(out, key=lambda p: p.weight))
    out_size = {p.weight: p.size for p in out}
    top = src[-1]

    def per_digit(p: Part) -> np.ndarray:
        n_out, h = out_size.get(p.weight, 1), how.get(p.weight)
        if h == FREE or p.weight not in out_size:
            return np.ones((n_out, p.size), dtype=bool)
        if h is None:
            return np.eye(p.size, dtype=bool)
        from atrous.rf.algebra import relation  # algebra imports the rule types from this module

        return relation(h, p.size, n_out)

    def related(digits: tuple[Part, ...], outs: tuple[Part, ...]) -> np.ndarray:
        """(output, source) relation of the indexes made of ``outs`` and of ``digits``."""
        n_in, n_out = prod(p.size for p in digits), prod(q.size for q in outs)
        v_in = digit_values(np.arange(n_in), digits, [p.weight for p in digits])
        v_out = digit_values(np.arange(n_out), outs, [q.weight for q in outs])
        row = {q.weight: i for i, q in enumerate(outs)}
        rel = np.ones((n_out, n_in), dtype=bool)
        for i, p in enumerate(digits):
            u = v_out[row[p.weight]] if p.weight in row else np.zeros(n_out, dtype=int)
            rel &= per_digit(p)[u][:, v_in[i]]
        return rel

    @cache
    def whole() -> np.ndarray:
        return related(src, out)

    finite = fixed_finite("a digit rule", whole)
    h = how.get(top.weight)
    if h == FREE or top.weight not in out_size:
        return GLOBAL_RULE if whole().all() else AxisRule(AxisMap.constant(GLOBAL), finite)
    if any(w > top.weight for w in out_size):
        return _above_top(src, out, related, finite)
    step = h.periodic if isinstance(h, AxisRule) else IDENTITY
    low = related(src[:-1], tuple(q for q in out if q.weight < top.weight))
    w_out, w_in = low.shape
    lows = [np.flatnonzero(row).tolist() for row in low]
    phases = [
        GLOBAL
        if step.phases[f].is_global
        else Offsets.of(w_in * o + v for o in step.phases[f] for v in lows[r])
        for f in range(step.period)
        for r in range(w_out)
    ]
    periodic = AxisMap(w_out * step.period, w_in * step.advance, tuple(phases)).normalized()
    if periodic == IDENTITY and np.array_equal(whole(), np.eye(len(whole()), dtype=bool)):
        return IDENTITY_RULE
    return AxisRule(periodic, finite)


def _above_top(
    src: tuple[Part, ...],
    out: tuple[Part, ...],
    related: Callable[[tuple[Part, ...], tuple[Part, ...]], np.ndarray],
    finite: Callable[[int, int], np.ndarray],
) -> AxisRule:
    """The output also indexes digits coarser than any of the source's (a window index taken from another
    operand, while the source is a window-sized map such as GCViT's global query): those digits leave the source
    index alone, so the map repeats with the output's finer positions as its period and never advances."""
    finer = tuple(q for q in out if q.weight <= src[-1].weight)
    low = related(src, finer)
    phases = tuple(Offsets.of(np.flatnonzero(row).tolist()) for row in low)
    return AxisRule(AxisMap(len(phases), 0, phases).normalized(), finite)


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
    # Only the digits that must agree need the same split: free ones (keys of a shorter sequence) need none.
    for a in (p for p in src if p.weight not in free):
        for b in out:
            same = a.weight == b.weight
            overlap = a.weight < b.weight * b.size and b.weight < a.weight * a.size
            if (same and a.size != b.size) or (overlap and not same):
                raise ValueError("the tensors split a spatial axis into different digits")
    return digits_rule(src, out, {w: FREE for w in free})


def packet_rank(packet: str) -> int:
    """Spatial rank from an op name: ``max_pool2d_with_indices`` -> 2."""
    return int(re.search(r"(\d)d", packet).group(1))
