"""The periodic-map algebra against brute-force evaluation on integers."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from atrous.rf.support import EMPTY, GLOBAL, AxisMap, Offsets, compose


def offsets(max_size: int = 4, span: int = 6) -> st.SearchStrategy[Offsets]:
    return st.lists(st.integers(-span, span), min_size=1, max_size=max_size).map(Offsets.of)


@st.composite
def axis_maps(draw: st.DrawFn) -> AxisMap:
    period = draw(st.integers(1, 4))
    advance = draw(st.integers(-3, 5))
    return AxisMap(period, advance, tuple(draw(offsets()) for _ in range(period)))


def brute(m: AxisMap, v: int) -> set[int]:
    q, phase = divmod(v, m.period)
    return {q * m.advance + d for d in m.phases[phase]}


def test_offsets_basics() -> None:
    s = Offsets.of([3, -2, 5, 3])
    assert list(s) == [-2, 3, 5] and (s.lo, s.hi, s.extent, len(s)) == (-2, 5, 8, 3)
    assert s.holes() == [1, 2, 3, 4, 6]
    assert (s | Offsets.of([4])) == Offsets.of([-2, 3, 4, 5])
    assert Offsets.of([0, 1]).minkowski(Offsets.of([0, 4])) == Offsets.of([0, 1, 4, 5])
    assert Offsets.of([1]).issubset(s) is False and Offsets.of([3, 5]).issubset(s)
    assert (EMPTY | s) == s and (s | GLOBAL) is GLOBAL and GLOBAL.minkowski(s) is GLOBAL
    assert EMPTY.minkowski(s).empty and Offsets.interval(2, 1).empty


@settings(max_examples=300, deadline=None)
@given(axis_maps(), axis_maps(), st.integers(-20, 20))
def test_compose_matches_brute_force(inner: AxisMap, rule: AxisMap, u: int) -> None:
    expected = set().union(*[brute(inner, v) for v in brute(rule, u)])
    assert set(compose(inner, rule).at(u)) == expected


@settings(max_examples=300, deadline=None)
@given(axis_maps(), st.integers(-20, 20))
def test_normalized_is_the_same_map(m: AxisMap, v: int) -> None:
    assert set(m.normalized().at(v)) == brute(m, v)


@settings(max_examples=200, deadline=None)
@given(axis_maps(), axis_maps(), st.integers(-20, 20))
def test_union_and_subset(a: AxisMap, b: AxisMap, v: int) -> None:
    u = a.union(b)
    if a.stride == b.stride:
        assert u is not None and set(u.at(v)) == brute(a, v) | brute(b, v)
        assert a.issubset(u) and b.issubset(u)
    else:
        assert u is None


def test_period_reduction_recognises_an_aligned_map() -> None:
    # Upsample x2 then stride-2 conv with taps {0, 1}: phases (D, D + 1) at advance 2 is just "u -> u + D".
    m = AxisMap(2, 2, (Offsets.of([0, 3]), Offsets.of([1, 4])))
    assert m.normalized() == AxisMap(1, 1, (Offsets.of([0, 3]),))
