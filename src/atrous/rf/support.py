"""Exact index maps along one spatial axis: the algebra under the receptive-field engine.

A feature map's pixel ``v`` (along one axis) is influenced by a set of input pixels. For every network built from
convolutions, pooling, resampling, padding and slicing that set follows a periodic pattern:

    m(v) = { q * advance + d  :  d in phases[v mod period] },   q = v // period

``period`` is 1 for ordinary (aligned) feature maps; transposed convolutions and upsampling make even and odd
output pixels see different windows, which gives ``period > 1`` and one offset set per phase. The effective
stride is ``advance / period``. Offset sets are exact (a Python integer used as a bitset), so holes left by
dilation survive every composition: nothing is approximated by an interval.

The same structure describes what one operation does (output index -> the op-input indices it reads), so
propagating through an op is a composition of two such maps (:func:`compose`). Branches meet by set union.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from math import gcd

import numpy as np

# The most phases one index map may have. A resampling to a size its input does not divide (pool 97 -> 48,
# resize back to 97) has period 97; stacked, such periods multiply (GhostNetV2 at 193x193: 97, 4753, 118825, ...)
# and so do time and memory. Legitimate periods stay near the image size (one resize to the input size), or
# near its square for two resizes in a row: this limit passes those for images up to about 180 pixels a side
# without a second thought, and above that still any single resize up to 32,768 pixels.
PHASE_LIMIT = 1 << 15


class GrowthError(ValueError):
    """An index map would need more than :data:`PHASE_LIMIT` phases; raised before the work is done, so the
    propagation can name the module and stop (:mod:`atrous.rf.propagate` turns it into an AtrousError)."""

    def __init__(self, phases: int, limit: int = PHASE_LIMIT) -> None:
        super().__init__(f"an index map would need {phases:,} phases (limit {limit:,})")
        self.phases = phases
        self.limit = limit


def check_period(period: int) -> int:
    """``period``, or :class:`GrowthError` when it is over the budget."""
    if period > PHASE_LIMIT:
        raise GrowthError(period)
    return period


class Offsets:
    """A finite set of integers, stored as ``lo`` plus a bitset (bit ``i`` means ``lo + i``)."""

    __slots__ = ("bits", "lo")

    def __init__(self, lo: int, bits: int) -> None:
        if bits:
            # Canonical form: bit 0 is set, so equal sets compare equal field by field.
            low = (bits & -bits).bit_length() - 1
            lo, bits = lo + low, bits >> low
        else:
            lo = 0
        self.lo = lo
        self.bits = bits

    @classmethod
    def of(cls, values: Iterable[int]) -> Offsets:
        vals = sorted(set(values))
        if not vals:
            return EMPTY
        bits = 0
        for v in vals:
            bits |= 1 << (v - vals[0])
        return cls(vals[0], bits)

    @classmethod
    def interval(cls, lo: int, hi: int) -> Offsets:
        """The contiguous set ``lo..hi`` (empty when ``hi < lo``)."""
        return cls(lo, (1 << (hi - lo + 1)) - 1) if hi >= lo else EMPTY

    is_global = False

    @property
    def empty(self) -> bool:
        return self.bits == 0

    @property
    def hi(self) -> int:
        return self.lo + self.bits.bit_length() - 1

    @property
    def extent(self) -> int:
        """Number of pixels from the first to the last member (0 for the empty set)."""
        return self.bits.bit_length()

    def __len__(self) -> int:
        return self.bits.bit_count()

    def __iter__(self) -> Iterator[int]:
        bits, i = self.bits, self.lo
        while bits:
            low = bits & -bits
            yield i + low.bit_length() - 1
            bits ^= low

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Offsets)
            and not other.is_global
            and (self.lo, self.bits)
            == (
                other.lo,
                other.bits,
            )
        )

    def __hash__(self) -> int:
        return hash((self.lo, self.bits))

    def __repr__(self) -> str:
        members = list(self)
        if len(members) > 12:
            return f"Offsets({members[0]}..{members[-1]}, {len(members)} members)"
        return f"Offsets({members})"

    def shift(self, k: int) -> Offsets:
        return Offsets(self.lo + k, self.bits) if self.bits else EMPTY

    def __or__(self, other: Offsets) -> Offsets:
        if other.is_global:
            return other
        if not other.bits:
            return self
        if not self.bits:
            return other
        lo = min(self.lo, other.lo)
        return Offsets(lo, (self.bits << (self.lo - lo)) | (other.bits << (other.lo - lo)))

    def issubset(self, other: Offsets) -> bool:
        if other.is_global or not self.bits:
            return True
        if not other.bits or self.lo < other.lo:
            return False
        return (self.bits << (self.lo - other.lo)) & ~other.bits == 0

    def minkowski(self, shifts: Offsets) -> Offsets:
        """``{a + s : a in self, s in shifts}``: the offsets seen through a kernel whose taps are ``shifts``."""
        if shifts.is_global:
            return GLOBAL if self.bits else EMPTY
        if not self.bits or not shifts.bits:
            return EMPTY
        # Loop over the smaller set; each step is one shift-and-or of a Python integer.
        small, large = (self, shifts) if len(self) <= len(shifts) else (shifts, self)
        acc = 0
        base = small.lo
        for s in small:
            acc |= large.bits << (s - base)
        return Offsets(large.lo + base, acc)

    def _flags(self) -> np.ndarray:
        """One bool per position of ``[lo, hi]``: unpacked in C, since windows of deep networks span thousands
        of pixels and a bit-by-bit Python loop over every window of every layer took most of a report."""
        n = self.bits.bit_length()
        raw = np.frombuffer(self.bits.to_bytes((n + 7) // 8, "little"), dtype=np.uint8)
        return np.unpackbits(raw, bitorder="little")[:n].astype(bool)

    def members(self) -> np.ndarray:
        """The members, ascending, as an int64 array."""
        return np.flatnonzero(self._flags()).astype(np.int64) + self.lo

    @property
    def is_interval(self) -> bool:
        """Whether the set is ``lo..hi`` without holes (the empty set counts as one)."""
        return self.bits & (self.bits + 1) == 0

    def holes(self) -> list[int]:
        """Positions inside ``[lo, hi]`` that are not members, relative to ``lo``."""
        if self.is_interval:
            return []
        return np.flatnonzero(~self._flags()).tolist()


class _Global(Offsets):
    """Every input position along the axis (global pooling, batch statistics, flattening)."""

    is_global = True

    def __init__(self) -> None:
        self.lo = 0
        self.bits = -1

    @property
    def empty(self) -> bool:
        return False

    def __len__(self) -> int:
        raise ValueError("a global offset set has no finite size")

    def __iter__(self) -> Iterator[int]:
        raise ValueError("a global offset set cannot be enumerated")

    def __eq__(self, other: object) -> bool:
        return other is self

    def __hash__(self) -> int:
        return hash("GLOBAL")

    def __repr__(self) -> str:
        return "GLOBAL"

    def shift(self, k: int) -> Offsets:
        return self

    def __or__(self, other: Offsets) -> Offsets:
        return self

    def issubset(self, other: Offsets) -> bool:
        return other.is_global

    def minkowski(self, shifts: Offsets) -> Offsets:
        return self if not shifts.empty else EMPTY

    @property
    def is_interval(self) -> bool:
        return False

    def members(self) -> np.ndarray:
        raise ValueError("a global offset set cannot be enumerated")

    def holes(self) -> list[int]:
        return []


EMPTY = Offsets(0, 0)
GLOBAL: Offsets = _Global()


@dataclass(frozen=True)
class AxisMap:
    """``v -> {(v // period) * advance + d : d in phases[v % period]}`` (see the module docstring)."""

    period: int
    advance: int
    phases: tuple[Offsets, ...]

    def __post_init__(self) -> None:
        if self.period < 1 or len(self.phases) != self.period:
            raise ValueError(f"an AxisMap needs period >= 1 and one offset set per phase, got {self!r}")

    def __hash__(self) -> int:
        # Maps key the propagation's caches, where the same map is looked up many times: the hash a frozen
        # dataclass generates would hash every phase's bitset again on each lookup (a third of MaxViT's time).
        cached = self.__dict__.get("_hash")
        if cached is None:
            cached = hash((self.period, self.advance, self.phases))
            object.__setattr__(self, "_hash", cached)
        return cached

    # -- constructors ---------------------------------------------------------------------------------------
    @staticmethod
    def affine(stride: int, offsets: Offsets) -> AxisMap:
        """Output ``u`` reads ``u * stride + offsets`` (convolution, pooling, slicing, padding)."""
        return AxisMap(1, stride, (offsets,))

    @staticmethod
    def identity() -> AxisMap:
        return IDENTITY

    @staticmethod
    def constant(offsets: Offsets) -> AxisMap:
        """Every index reads the same set (broadcasting, a reduced or selected axis)."""
        return AxisMap(1, 0, (offsets,))

    # -- queries --------------------------------------------------------------------------------------------
    @property
    def stride(self) -> Fraction:
        return Fraction(self.advance, self.period)

    @property
    def is_empty(self) -> bool:
        return all(p.empty for p in self.phases)

    @property
    def is_global(self) -> bool:
        return all(p.is_global for p in self.phases)

    @property
    def has_global(self) -> bool:
        return any(p.is_global for p in self.phases)

    def at(self, v: int) -> Offsets:
        q, phase = divmod(v, self.period)
        return self.phases[phase].shift(q * self.advance)

    # -- algebra --------------------------------------------------------------------------------------------
    def lift(self, period: int) -> AxisMap:
        """The same map written with a larger period (a multiple of the current one)."""
        if period == self.period:
            return self
        if period % self.period:
            raise ValueError(f"cannot lift period {self.period} to {period}")
        phases = tuple(self.at(v) for v in range(period))
        return AxisMap(period, self.advance * (period // self.period), phases)

    def normalized(self) -> AxisMap:
        """The smallest period describing the same map, so equal maps compare equal."""
        if self.is_empty:
            return EMPTY_MAP
        if self.is_global:
            return GLOBAL_MAP
        P = self.period
        for p in range(1, P):
            if P % p or (self.advance * p) % P:
                continue
            step = self.advance * p // P
            if all(self.phases[f + p] == self.phases[f].shift(step) for f in range(P - p)):
                return AxisMap(p, step, self.phases[:p])
        return self

    def union(self, other: AxisMap) -> AxisMap | None:
        """The map ``v -> self(v) | other(v)``, or None when the strides differ (then no period exists)."""
        if other.is_empty or self.is_global:
            return self
        if self.is_empty or other.is_global:
            return other
        if self.stride != other.stride:
            return None
        P = check_period(self.period * other.period // gcd(self.period, other.period))
        a, b = self.lift(P), other.lift(P)
        return AxisMap(P, a.advance, tuple(x | y for x, y in zip(a.phases, b.phases))).normalized()

    def issubset(self, other: AxisMap) -> bool:
        if self.period == 1 == other.period:
            # The same answers as below without Fractions or lifting: unions of terms ask this of nearly every
            # pair of their terms, and almost all maps have one phase (then the stride is the advance).
            mine, theirs = self.phases[0], other.phases[0]
            if mine.empty or theirs.is_global:
                return True
            return self.advance == other.advance and mine.issubset(theirs)
        if self.is_empty or other.is_global:
            return True
        if self.stride != other.stride:
            return False
        P = check_period(self.period * other.period // gcd(self.period, other.period))
        a, b = self.lift(P), other.lift(P)
        return all(x.issubset(y) for x, y in zip(a.phases, b.phases))

    def endpoints(self) -> AxisMap:
        """Each phase reduced to its first and last member (the extent, without holes)."""
        return AxisMap(
            self.period,
            self.advance,
            tuple(p if p.is_global or p.empty else Offsets.of((p.lo, p.hi)) for p in self.phases),
        )


IDENTITY = AxisMap(1, 1, (Offsets(0, 1),))
EMPTY_MAP = AxisMap(1, 0, (EMPTY,))
GLOBAL_MAP = AxisMap(1, 0, (GLOBAL,))


def compose(inner: AxisMap, rule: AxisMap) -> AxisMap:
    """The map of an op's output given the map of its input (``inner``) and the op's own ``rule``.

    ``rule(u)`` lists the op-input indices read by output ``u``; ``inner(v)`` the network-input pixels behind
    op-input ``v``. Write ``u = q' P' + f'``. A whole number ``k`` of rule periods moves the op-input index by
    ``k A'``, a multiple of the inner period ``P`` once ``k = P / gcd(A', P)``; so the result has period
    ``k P'`` and advance ``k A' A / P``, and each of its phases is a finite union of shifted inner phases
    (a Minkowski sum of an inner phase and a whole number of inner advances is that phase shifted), built on
    the bitsets themselves, in a few integer operations per tap: maps of a few thousand phases (GhostNetV2 at
    193x193) made the set-by-set version a third of the analysis.
    """
    if inner.is_empty or rule.is_empty:
        return EMPTY_MAP
    P, A = inner.period, inner.advance
    k = P // gcd(rule.advance, P)
    check_period(k * rule.period)
    t = k * rule.advance // P
    ends = [None if p.is_global else (p.lo, p.bits) for p in inner.phases]
    phases: list[Offsets] = []
    for j in range(k):
        base = j * rule.advance
        for taps in rule.phases:
            if taps.is_global:
                phases.append(GLOBAL)
                continue
            lo = bits = 0
            whole = False
            for e in taps:
                q, r = divmod(base + e, P)
                found = ends[r]
                if found is None:  # a global inner phase: the union is global
                    whole = True
                    break
                plo, pbits = found
                if not pbits:
                    continue
                plo += q * A
                if not bits:
                    lo, bits = plo, pbits
                elif plo >= lo:
                    bits |= pbits << (plo - lo)
                else:
                    lo, bits = plo, (bits << (lo - plo)) | pbits
            phases.append(GLOBAL if whole else Offsets(lo, bits) if bits else EMPTY)
    return AxisMap(k * rule.period, t * A, tuple(phases)).normalized()


def compose_endpoints(inner: AxisMap, rule: AxisMap) -> AxisMap:
    """``compose(inner, rule).endpoints().normalized()``, without building the offset sets in between.

    A phase of :func:`compose` is a union of Minkowski sums ``inner.phases[r] + {q * A}`` over the rule's taps;
    its first member is the least ``inner.phases[r].lo + q * A`` and its last the greatest ``hi + q * A``, so
    window ends follow from the ends alone (the path classes of the alignment check keep nothing else), and per
    inner phase ``r`` only the least and greatest ``q`` matter (:func:`_tap_plan`). Both results describe the
    same function of the output index, and ``normalized`` gives one spelling per function.
    """
    if inner.is_empty or rule.is_empty:
        return EMPTY_MAP
    P, A = inner.period, inner.advance
    check_period(P // gcd(rule.advance, P) * rule.period)
    k, t, plan = _tap_plan(rule, P)
    ends = [None if p.empty else (p.lo, p.hi) for p in inner.phases]
    glob = [p.is_global for p in inner.phases]
    phases = []
    for groups in plan:
        if groups is None or any(glob[r] for r, _, _ in groups):
            phases.append(GLOBAL)
            continue
        lo = hi = None
        for r, q_lo, q_hi in groups:
            if ends[r] is None:
                continue
            a, b = q_lo * A, q_hi * A
            first, last = ends[r][0] + min(a, b), ends[r][1] + max(a, b)  # A < 0 after a flip swaps the ends
            lo = first if lo is None or first < lo else lo
            hi = last if hi is None or last > hi else hi
        phases.append(EMPTY if lo is None else _ends(lo, hi))
    return AxisMap(k * rule.period, t * A, tuple(phases)).normalized()


def _ends(lo: int, hi: int) -> Offsets:
    return Offsets(lo, 1 | (1 << (hi - lo)))


@lru_cache(maxsize=4096)
def _tap_plan(rule: AxisMap, P: int) -> tuple[int, int, tuple]:
    """For :func:`compose_endpoints` with an inner period ``P``: ``k``, ``t`` and, per output phase, None (a
    global rule phase) or the inner phases ``r`` its taps land in, each with the least and greatest whole
    number of inner periods ``q`` (tap ``w = q * P + r``). It depends on the rule and ``P`` only, and rules
    repeat (every 3x3 convolution of a network), so it is computed once per pair."""
    k = P // gcd(rule.advance, P)
    t = k * rule.advance // P
    plan = []
    for j in range(k):
        for taps in rule.phases:
            if taps.is_global:
                plan.append(None)
                continue
            span: dict[int, tuple[int, int]] = {}
            for e in taps:
                q, r = divmod(j * rule.advance + e, P)
                q_lo, q_hi = span.get(r, (q, q))
                span[r] = (min(q_lo, q), max(q_hi, q))
            plan.append(tuple((r, q_lo, q_hi) for r, (q_lo, q_hi) in span.items()))
    return k, t, tuple(plan)
