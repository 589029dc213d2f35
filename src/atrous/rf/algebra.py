"""The two set algebras the propagation runs in, and unions of products of their per-axis sets.

* :class:`PeriodicAlgebra`: per-axis sets are periodic index maps (:mod:`atrous.rf.support`) on an unbounded
  input, which give the theoretical receptive field (extent, stride, padding, holes, phases);
* :class:`FiniteAlgebra`: per-axis sets are boolean relations on the real tensor sizes, where borders and zero
  padding cut paths, which give the in-image support of one output pixel.

Both answer the same questions (identity, compose with an op's rule, union, subset, equal, empty), so one
propagation (:mod:`atrous.rf.propagate`) serves both. A tensor's influence is a union of :data:`Term` products:
branches with different dilations meet as a union, which is not a product.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Protocol

import numpy as np

from atrous.rf.rules import AxisRule
from atrous.rf.support import (
    EMPTY,
    GLOBAL,
    IDENTITY,
    AxisMap,
    GrowthError,
    Offsets,
    compose,
)


class Algebra(Protocol):
    """What the propagation needs from a per-axis set type (``Any`` stands for that type)."""

    def identity(self, axis: int) -> Any: ...
    def compose(self, m: Any, rule: AxisRule, n_in: int, n_out: int) -> Any: ...
    def union(self, a: Any, b: Any) -> Any | None: ...
    def subset(self, a: Any, b: Any) -> bool: ...
    def equal(self, a: Any, b: Any) -> bool: ...
    def empty(self, m: Any) -> bool: ...
    def bounds(self, m: Any) -> tuple | None: ...


class PeriodicAlgebra:
    def __init__(self) -> None:
        # Compositions by (map, rule), for one run: the terms of a union share their maps axis by axis, so the
        # same pairs come again and again (Inception-NeXt: 547 distinct among 7,748).
        self._composed: dict[tuple[AxisMap, AxisMap], AxisMap] = {}

    def identity(self, axis: int) -> AxisMap:
        return IDENTITY

    def compose(self, m: AxisMap, rule: AxisRule, n_in: int, n_out: int) -> AxisMap:
        if rule.periodic is IDENTITY:
            return m
        key = (m, rule.periodic)
        found = self._composed.get(key)
        if found is None:
            found = self._composed[key] = compose(m, rule.periodic)
        return found

    def union(self, a: AxisMap, b: AxisMap) -> AxisMap | None:
        # Over the phase budget the union is not built: None keeps the two terms apart, which loses nothing
        # (see union_of); the propagation then coarsens the maps (:func:`fold`).
        try:
            return a.union(b)
        except GrowthError:
            return None

    def subset(self, a: AxisMap, b: AxisMap) -> bool:
        try:
            return a.issubset(b)
        except GrowthError:
            return False  # "not known to be included": a term kept that could have gone, never a pixel lost

    def equal(self, a: AxisMap, b: AxisMap) -> bool:
        return a == b

    def empty(self, m: AxisMap) -> bool:
        return m.is_empty

    def bounds(self, m: AxisMap) -> tuple[int, int, int] | None:
        """``(advance, lo, hi)`` of a map with one phase, neither empty nor global; else None. Of two such maps
        one is a subset of the other only if the advances agree and its window lies in the other's, and equal
        maps have equal bounds: a cheap first look for the unions of terms (:func:`union_of`)."""
        if m.period != 1:
            return None
        p = m.phases[0]
        return None if p.empty or p.is_global else (m.advance, p.lo, p.hi)


def composed_at(inner: AxisMap, rule: AxisMap) -> Callable[[int], Offsets]:
    """``u -> compose(inner, rule).at(u)`` for one position at a time, without the map of every phase (whose
    period may be far over the budget): the union of ``inner`` at every tap the rule reads at ``u``."""

    def at(u: int) -> Offsets:
        taps = rule.at(u)
        if taps.is_global:
            return EMPTY if inner.is_empty else GLOBAL
        acc = EMPTY
        for e in taps:
            acc = acc | inner.at(e)
        return acc

    return at


FOLD_PERIODS = (1, 2, 3, 4)  # the small periods a folded map is always tried with


def _convergent_periods(stride: Fraction, most: int) -> list[int]:
    """The denominators, up to ``most``, of the continued-fraction convergents of ``stride``: the periods whose
    rounded stride drifts least from the exact one over a range of positions."""
    x, found = abs(stride), []
    k0, k1 = 1, 0  # denominators k(n-2), k(n-1)
    while True:
        a = x.numerator // x.denominator
        k0, k1 = k1, a * k1 + k0
        if k1 > most:
            return found
        found.append(k1)
        x -= a
        if x == 0:
            return found
        x = 1 / x


def fold(at: Callable[[int], Offsets], stride: Fraction, lo: int, hi: int, small: bool = False) -> AxisMap:
    """A map of few phases that contains ``at(u)`` at every position ``u`` in ``lo..hi``: the sound
    coarsening of an index map whose exact period is over the budget.

    For a period ``b`` and an advance ``a`` (``stride * b`` rounded), phase ``f`` is the union over the
    positions ``u = q * b + f`` of the range of ``at(u)`` shifted back by ``q * a``; the folded map at ``u``
    is that phase shifted by ``q * a`` again, so it contains ``at(u)``. Outside ``lo..hi`` nothing is
    claimed: the propagation folds over every position that the tensor has or that a later op reads
    (``Propagation._reach``). Unions keep the holes the exact windows share. The periods tried are 1 to 4
    and, unless ``small``, the denominators of the convergents of the exact stride up to the length of the
    range (their windows drift least from the exact ones) and that length itself (one position per phase:
    exact on the range); of those the one whose windows hold the fewest pixels over the range wins (ties:
    the smaller period). ``small`` keeps the period at most 4, so that paths of nearby strides share one
    and merge."""
    sets = [at(u) for u in range(lo, hi + 1)]
    periods = set(FOLD_PERIODS)
    if not small:
        # One phase per position of the range is exact there; a convergent's period may be as exact, and less.
        periods.update(_convergent_periods(stride, hi - lo + 1), [hi - lo + 1])
    if stride != 0 and abs(stride) < Fraction(1, FOLD_PERIODS[-1]):
        periods.add(min(round(1 / abs(stride)), hi - lo + 1))  # a strong upsampling: stride 1 / b
    best: tuple[int, int, AxisMap] | None = None
    for b in sorted(periods):
        a = round(stride * b)
        phases = [EMPTY] * b
        counts = [0] * b
        for u, s in zip(range(lo, hi + 1), sets):
            q, f = divmod(u, b)
            phases[f] = phases[f] | s.shift(-q * a)
            counts[f] += 1
        cost = sum(c * (1 << 62 if p.is_global else len(p)) for c, p in zip(counts, phases))
        if best is None or (cost, b) < best[:2]:
            best = (cost, b, AxisMap(b, a, tuple(phases)))
    assert best is not None
    return best[2].normalized()


def relation(rule: AxisRule, n_in: int, n_out: int) -> np.ndarray:
    """Boolean (n_out, n_in) matrix: which input indices output index ``u`` reads on real tensor sizes."""
    if rule.finite is not None:
        return rule.finite(n_in, n_out)
    m = rule.periodic
    rel = np.zeros((n_out, n_in), dtype=bool)
    for phase, offsets in enumerate(m.phases):
        us = np.arange(phase, n_out, m.period)
        if offsets.is_global:
            rel[us, :] = True
            continue
        if offsets.empty or us.size == 0:
            continue
        cols = (us // m.period)[:, None] * m.advance + np.fromiter(offsets, dtype=np.int64)[None, :]
        rows = np.broadcast_to(us[:, None], cols.shape)
        ok = (cols >= 0) & (cols < n_in)
        rel[rows[ok], cols[ok]] = True
    return rel


class FiniteAlgebra:
    """Maps are boolean matrices (index along the tensor's axis, input pixel); one row means "same for all"."""

    def __init__(self, sizes: Sequence[int]) -> None:
        self.sizes = list(sizes)

    def identity(self, axis: int) -> np.ndarray:
        return np.eye(self.sizes[axis], dtype=bool)

    def compose(self, m: np.ndarray, rule: AxisRule, n_in: int, n_out: int) -> np.ndarray:
        if rule.periodic is IDENTITY and rule.finite is None and m.shape[0] in (n_out, 1) and n_in == n_out:
            return m
        rel = relation(rule, n_in, n_out)
        if m.shape[0] != n_in:
            m = np.broadcast_to(m, (n_in, m.shape[1]))
        # Counting paths in float32 is exact far beyond any tensor size here; > 0 keeps the reachable set.
        return (rel.astype(np.float32) @ m.astype(np.float32)) > 0

    @staticmethod
    def _pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if a.shape[0] != b.shape[0]:
            n = max(a.shape[0], b.shape[0])
            a, b = np.broadcast_to(a, (n, a.shape[1])), np.broadcast_to(b, (n, b.shape[1]))
        return a, b

    def union(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        a, b = self._pair(a, b)
        return a | b

    def subset(self, a: np.ndarray, b: np.ndarray) -> bool:
        a, b = self._pair(a, b)
        return not (a & ~b).any()

    def equal(self, a: np.ndarray, b: np.ndarray) -> bool:
        a, b = self._pair(a, b)
        return bool(np.array_equal(a, b))

    def empty(self, m: np.ndarray) -> bool:
        return not m.any()

    def bounds(self, m: np.ndarray) -> None:
        return None  # no cheap test: every pair is compared


Term = tuple  # one map per input axis; the support is the product of the per-axis sets


class Union(tuple):
    """Terms as :func:`union_of` returns them: no term contains another and no pair merges. Such a tuple is
    returned as it is, and its terms are not compared with one another again (see :func:`union_of`)."""


def union_of(alg: Algebra, unions: Sequence[Sequence[Term]]) -> Union:
    """The union of products of all the terms of ``unions``, in order, without terms contained in others,
    merging pairs that differ in one axis (``A x B  |  A x C  =  A x (B | C)``, exact)."""
    # Why the result reaches exactly the same pixels as the terms (at every output position, a term reaches the
    # product of its per-axis sets there):
    # * a term with an empty factor is an empty product, so dropping it loses nothing;
    # * ``contained`` is the per-axis subset test, and per-axis inclusion implies inclusion of the products,
    #   so a dropped term's pixels are all reached by the term that contains it;
    # * a merge replaces two terms equal on every axis but one by their union on that axis: the product
    #   distributes over the union, so the pixels are the same. The periodic union is None when the two strides
    #   differ (no periodic map is that union); then the pair just stays as two terms.
    # Only soundness is needed from the algebra: ``subset`` and ``equal`` may answer False where the sets are
    # in fact included or equal (different strides, two spellings of one map); that costs a merge or a
    # drop, never a pixel. Each merge removes at least one term, so the loop ends after at most
    # ``len(terms) - 1`` merges. Per-axis unions (a product of unions) would be wrong: two ASPP branches
    # {-6,0,6}^2 | {-12,0,12}^2 are no product, and (-6, 12) is in the product of the unions yet reached by
    # neither branch. Dropping and merging keep the union short: without them every residual add would
    # double the terms (its skip path's window usually lies inside the conv path's, and is dropped).
    #
    # Speed, with the same result: Inception-NeXt's unions hold ~90 terms (its 1x11 and 11x1 band convolutions
    # make windows no one contains), and comparing every pair took 10-30 s. Three shortcuts change no answer:
    # * a :class:`Union` alone is returned as it is: on its own result the one-by-one loop (``_Found.add``, then
    #   ``_Found.merge_first``) keeps every term in place (each pair was compared, both ways, when the later term
    #   came in) and merges nothing (its last pass compared every pair): it is idempotent, and a 1x1
    #   convolution or an activation after a union changes no map, so its Union passes through (propagate);
    # * for the same reason two terms of one :class:`Union` are not compared again: the answers are known;
    # * ``alg.bounds`` rejects most pairs from a few integers before the exact test (``_Found.contained``);
    #   where every map has bounds, all pairs are looked at at once (``_Found.maximal``) and merges are found
    #   by key (``_Found._first_keyed``), with the answers of the one-by-one loop.
    # ``tests/rf/test_speed_unions.py`` checks those answers against the plain loop on random unions.
    if len(unions) == 1 and isinstance(unions[0], Union):
        return unions[0]
    found = _Found(alg)
    # By position, not identity: a tensor read twice (``x + x``) brings the same Union twice, whose copies must
    # meet (and the second be dropped).
    entries = [
        found.entry(t, k if isinstance(ts, Union) else None) for k, ts in enumerate(unions) for t in ts
    ]
    if len(entries) > _FEW and all(b is not None for e in entries for b in e.bounds):
        found.entries = found.maximal(entries)
    else:
        for e in entries:
            found.add(e)
    while len(found.entries) > 1 and found.merge_first():
        pass
    return Union(e.term for e in found.entries)


_FEW = 8  # up to this many terms, adding them one by one costs less than the arrays of ``_Found.maximal``


@dataclass(frozen=True)
class _Entry:
    term: Term
    bounds: tuple  # per axis, ``alg.bounds`` of the term's map
    source: int | None  # which of the unions the term came from, when that one was a Union


class _Found:
    """The terms of a union being built, in order: none contained in another (:func:`union_of`)."""

    def __init__(self, alg: Algebra) -> None:
        self.alg = alg
        self.entries: list[_Entry] = []

    def entry(self, t: Term, source: int | None) -> _Entry:
        return _Entry(t, tuple(self.alg.bounds(m) for m in t), source)

    def add(self, new: _Entry) -> None:
        """Add ``new`` unless it is empty or contained in a term already there; drop the terms it contains."""
        if any(self.alg.empty(m) for m in new.term):
            return
        if any(self.contained(new, e) for e in self.entries if not _known(new, e)):
            return
        self.entries = [e for e in self.entries if _known(e, new) or not self.contained(e, new)]
        self.entries.append(new)

    def maximal(self, entries: list[_Entry]) -> list[_Entry]:
        """The entries that :meth:`add`, one by one, would keep, when every map has bounds (then ``contained``
        is exact inclusion, and never raises): in order, the first of each set of equal terms that no other
        term strictly contains. (A term is dropped when one containing it is there or comes later, and of equal
        terms the first stays.) The bounds of all pairs are compared at once; few pairs pass to the exact test."""
        b = np.array([e.bounds for e in entries], dtype=np.int64)  # (terms, axes, 3)
        adv, lo, hi = b[..., 0], b[..., 1], b[..., 2]
        may = ((adv[:, None] == adv[None]) & (lo[:, None] >= lo[None]) & (hi[:, None] <= hi[None])).all(-1)
        np.fill_diagonal(may, False)
        memo: dict[tuple[int, int], bool] = {}

        def inside(i: int, j: int) -> bool:
            if (i, j) not in memo:
                a, c = entries[i], entries[j]
                memo[i, j] = not _known(a, c) and self.contained(a, c)
            return memo[i, j]

        def dropped(i: int) -> bool:
            return any(
                inside(i, j) and (j < i or not (may[j, i] and inside(j, i)))
                for j in np.flatnonzero(may[i]).tolist()
            )

        return [e for i, e in enumerate(entries) if not dropped(i)]

    def merge_first(self) -> bool:
        """Merge the first pair (in order) equal on all axes but one where the union exists; whether one was."""
        es = self.entries
        simple = all(b is not None for e in es for b in e.bounds)
        found = self._first_keyed() if simple else self._first_scanned()
        if found is None:
            return False
        i, j, axis, u = found
        self.entries = [e for k, e in enumerate(es) if k not in (i, j)]
        self.add(self.entry(tuple(u if ax == axis else m for ax, m in enumerate(es[i].term)), None))
        return True

    def _first_scanned(self) -> tuple | None:
        """``(i, j, axis, union)`` of the first pair that merges, from a scan of every pair."""
        es = self.entries
        for i, a in enumerate(es):
            for j in range(i + 1, len(es)):
                b = es[j]
                if _known(a, b):
                    continue
                axis = self._only_difference(a, b)
                if axis is None:
                    continue
                u = self.alg.union(a.term[axis], b.term[axis])
                if u is not None:
                    return i, j, axis, u
        return None

    def _first_keyed(self) -> tuple | None:
        """What :meth:`_first_scanned` finds, when every map has bounds: two such terms merge on ``axis`` exactly
        when their other maps are equal and their advances on ``axis`` agree (then the union exists). No two
        terms are equal, so the terms sharing that key are the candidates, and the first pair in scan order is
        the first two of one of those groups."""
        es = self.entries
        best = None
        for axis in range(len(es[0].term)):
            first: dict = {}
            for pos, e in enumerate(es):
                i = first.setdefault((e.bounds[axis][0], e.term[:axis], e.term[axis + 1 :]), pos)
                if i != pos and (best is None or (i, pos) < best[:2]):
                    best = (i, pos, axis)
        if best is None:
            return None
        i, j, axis = best
        return i, j, axis, self.alg.union(es[i].term[axis], es[j].term[axis])

    def contained(self, a: _Entry, b: _Entry) -> bool:
        """Whether ``a.term`` lies in ``b.term``, axis by axis. Different bounds answer False for an axis
        exactly where ``alg.subset`` would, so the axes are asked in the same order and stop at the same one."""
        for x, y, bx, by in zip(a.term, b.term, a.bounds, b.bounds):
            if bx is not None and by is not None and (bx[0] != by[0] or bx[1] < by[1] or bx[2] > by[2]):
                return False
            if not self.alg.subset(x, y):
                return False
        return True

    def _only_difference(self, a: _Entry, b: _Entry) -> int | None:
        """The one axis where the maps differ, or None (none or several). Equal maps have equal bounds, so two
        axes with different bounds settle it without comparing maps."""
        if sum(x != y for x, y in zip(a.bounds, b.bounds)) > 1:
            return None
        diff = [ax for ax, (x, y) in enumerate(zip(a.term, b.term)) if not self.alg.equal(x, y)]
        return diff[0] if len(diff) == 1 else None


def _known(a: _Entry, b: _Entry) -> bool:
    """Whether ``a`` and ``b`` came from one :class:`Union`: neither contains the other, and they do not merge."""
    return a.source is not None and a.source == b.source


def same_terms(alg: Algebra, a: Sequence[Term], b: Sequence[Term]) -> bool:
    """Whether two outputs of :func:`union_of` hold the same terms (in any order); False may be a miss."""
    if len(a) != len(b):
        return False
    return all(any(all(alg.equal(x, y) for x, y in zip(s, t)) for t in b) for s in a)
