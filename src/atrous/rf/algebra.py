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

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from atrous.rf.rules import AxisRule
from atrous.rf.support import IDENTITY, AxisMap, compose


class Algebra(Protocol):
    """What the propagation needs from a per-axis set type (``Any`` stands for that type)."""

    def identity(self, axis: int) -> Any: ...
    def compose(self, m: Any, rule: AxisRule, n_in: int, n_out: int) -> Any: ...
    def union(self, a: Any, b: Any) -> Any | None: ...
    def subset(self, a: Any, b: Any) -> bool: ...
    def equal(self, a: Any, b: Any) -> bool: ...
    def empty(self, m: Any) -> bool: ...


class PeriodicAlgebra:
    def identity(self, axis: int) -> AxisMap:
        return IDENTITY

    def compose(self, m: AxisMap, rule: AxisRule, n_in: int, n_out: int) -> AxisMap:
        return m if rule.periodic is IDENTITY else compose(m, rule.periodic)

    def union(self, a: AxisMap, b: AxisMap) -> AxisMap | None:
        return a.union(b)

    def subset(self, a: AxisMap, b: AxisMap) -> bool:
        return a.issubset(b)

    def equal(self, a: AxisMap, b: AxisMap) -> bool:
        return a == b

    def empty(self, m: AxisMap) -> bool:
        return m.is_empty


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


Term = tuple  # one map per input axis; the support is the product of the per-axis sets


def union_terms(alg: Algebra, terms: Sequence[Term]) -> tuple[Term, ...]:
    """A union of products, without terms contained in others, merging pairs that differ in one axis
    (``A x B  |  A x C  =  A x (B | C)``, exact)."""
    # Why the result reaches exactly the same pixels as ``terms`` (at every output position, a term reaches the
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

    def contained(t: Term, r: Term) -> bool:
        return all(alg.subset(a, b) for a, b in zip(t, r))

    def add(out: list[Term], t: Term) -> list[Term]:
        if any(alg.empty(m) for m in t) or any(contained(t, r) for r in out):
            return out
        return [r for r in out if not contained(r, t)] + [t]

    out: list[Term] = []
    for t in terms:
        out = add(out, t)
    merged = True
    while merged and len(out) > 1:
        merged = False
        for i in range(len(out)):
            for j in range(i + 1, len(out)):
                diff = [ax for ax in range(len(out[i])) if not alg.equal(out[i][ax], out[j][ax])]
                if len(diff) != 1:
                    continue
                u = alg.union(out[i][diff[0]], out[j][diff[0]])
                if u is None:
                    continue
                new = tuple(u if ax == diff[0] else m for ax, m in enumerate(out[i]))
                rest = [t for k, t in enumerate(out) if k not in (i, j)]
                out = add(rest, new)
                merged = True
                break
            if merged:
                break
    return tuple(out)


def same_terms(alg: Algebra, a: Sequence[Term], b: Sequence[Term]) -> bool:
    """Whether two outputs of :func:`union_terms` hold the same terms (in any order); False may be a miss."""
    if len(a) != len(b):
        return False
    return all(any(all(alg.equal(x, y) for x, y in zip(s, t)) for t in b) for s in a)
