"""The shortcuts of ``algebra.union_of`` (issue 19: Inception-NeXt took 10-30 s) change no answer: the same terms
in the same order as the plain loop of adds and merges, on random unions, and the exact support on a network of
band convolutions whose unions hold many terms."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from atrous.rf import analyze
from atrous.rf.algebra import FiniteAlgebra, PeriodicAlgebra, Union, union_of
from atrous.rf.support import GLOBAL, AxisMap, Offsets
from oracle import gradient_support


def plain_union(alg: object, terms: list) -> tuple:
    """The one-by-one loop of adds and merges that ``union_of`` must agree with, term for term."""

    def contained(t: tuple, r: tuple) -> bool:
        return all(alg.subset(a, b) for a, b in zip(t, r))

    def add(out: list, t: tuple) -> list:
        if any(alg.empty(m) for m in t) or any(contained(t, r) for r in out):
            return out
        return [r for r in out if not contained(r, t)] + [t]

    out: list = []
    for t in terms:
        out = add(out, t)
    merged = True
    while merged and len(out) > 1:
        merged = False
        pairs = ((i, j) for i in range(len(out)) for j in range(i + 1, len(out)))
        for i, j in pairs:
            diff = [ax for ax in range(len(out[i])) if not alg.equal(out[i][ax], out[j][ax])]
            u = alg.union(out[i][diff[0]], out[j][diff[0]]) if len(diff) == 1 else None
            if u is not None:
                new = tuple(u if ax == diff[0] else m for ax, m in enumerate(out[i]))
                out = add([t for k, t in enumerate(out) if k not in (i, j)], new)
                merged = True
                break
    return tuple(out)


@st.composite
def axis_map(draw: st.DrawFn, simple: bool) -> AxisMap:
    """Mostly windows with holes and strides 1 or 2; unless ``simple``, also two phases, empty and global."""
    kind = "window" if simple else draw(st.sampled_from(["window"] * 6 + ["phases", "empty", "global"]))
    if kind == "empty":
        return AxisMap.constant(Offsets.of([]))
    if kind == "global":
        return AxisMap.constant(GLOBAL)
    window = st.builds(Offsets.of, st.sets(st.integers(-4, 4), min_size=1, max_size=5))
    if kind == "phases":
        return AxisMap(2, draw(st.sampled_from([1, 2])), (draw(window), draw(window))).normalized()
    return AxisMap.affine(draw(st.sampled_from([1, 1, 2])), draw(window))


@st.composite
def unions(draw: st.DrawFn) -> list:
    """Groups of terms as propagation brings them: plain lists, Unions, and a Union read twice."""
    simple = draw(st.booleans())
    axes = draw(st.integers(1, 2))
    term = st.tuples(*[axis_map(simple) for _ in range(axes)])
    alg = PeriodicAlgebra()
    groups = []
    for _ in range(draw(st.integers(1, 4))):
        terms = draw(st.lists(term, max_size=14))
        groups.append(union_of(alg, [terms]) if draw(st.booleans()) else terms)
    if draw(st.booleans()):
        groups.append(groups[0])
    return groups


@settings(max_examples=300, deadline=None)
@given(unions())
def test_union_of_gives_the_terms_of_the_plain_loop(groups: list) -> None:
    alg = PeriodicAlgebra()
    want = plain_union(alg, [t for g in groups for t in g])
    got = union_of(alg, groups)
    assert tuple(got) == want
    assert union_of(alg, [got]) is got  # idempotent: a Union comes back as it is


def test_a_union_of_unions_drops_the_copies_of_one_read_twice() -> None:
    alg = PeriodicAlgebra()
    a, b = AxisMap.affine(1, Offsets.interval(-1, 1)), AxisMap.affine(1, Offsets.of([-5, 5]))
    u = union_of(alg, [[(a, b), (b, a)]])
    assert len(u) == 2 and isinstance(u, Union)
    assert union_of(alg, [u, u]) == u


def test_the_finite_algebra_gives_the_terms_of_the_plain_loop() -> None:
    rng = np.random.default_rng(0)
    alg = FiniteAlgebra([6, 5])
    terms = [(rng.random((6, 6)) < 0.3, rng.random((5, 5)) < 0.3) for _ in range(12)]
    terms += [(t[0] | (rng.random((6, 6)) < 0.2), t[1]) for t in terms[:6]]
    want = plain_union(alg, terms)
    got = union_of(alg, [terms[:9], union_of(alg, [terms[9:]])])
    assert len(got) == len(want)
    assert all(all(np.array_equal(x, y) for x, y in zip(s, t)) for s, t in zip(got, want))


class Bands(nn.Module):
    """Inception-NeXt's token mixer: channels split into identity, 3x3, 1x11 and 11x1 depthwise branches, then a
    1x1 mix and a residual: every block multiplies the windows no other contains."""

    def __init__(self, c: int = 4) -> None:
        super().__init__()
        self.square = nn.Conv2d(1, 1, 3, padding=1)
        self.wide = nn.Conv2d(1, 1, (1, 11), padding=(0, 5))
        self.tall = nn.Conv2d(1, 1, (11, 1), padding=(5, 0))
        self.mix = nn.Conv2d(c, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        keep, sq, w, h = torch.split(x, 1, dim=1)
        y = torch.cat([keep, self.square(sq), self.wide(w), self.tall(h)], dim=1)
        return x + self.mix(y)


def test_band_convolutions_many_terms_exact_support() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 1), *[Bands() for _ in range(4)]).eval()
    shape = (1, 41, 41)
    report = analyze(model, shape)
    assert report.rf == [41, 41]  # 4 blocks of 11-pixel bands, clipped by nothing: 1 + 4 * 10 per axis
    for index in [(20, 20), (0, 0), (3, 30)]:
        assert np.array_equal(report.support(index), gradient_support(model, shape, index)), index
