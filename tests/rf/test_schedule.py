"""Dilation schedules: exact holes, the HDC rule beside them, and the search for hole-free schedules."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from atrous.errors import ScheduleError
from atrous.rf import schedule


@pytest.mark.parametrize(
    ("rates", "rf", "holes"),
    [
        ((1, 1, 1), 7, ()),
        ((1, 2, 4), 15, ()),
        ((1, 2, 4, 8), 31, ()),
        ((1, 2, 5), 17, ()),
        ((2, 2, 2), 13, (1, 3, 5, 7, 9, 11)),
        ((1, 2, 9), 25, (7, 8, 16, 17)),
        ((1, 1, 2, 4, 8, 16, 1), 67, ()),
    ],
)
def test_exact_support(rates: tuple[int, ...], rf: int, holes: tuple[int, ...]) -> None:
    c = schedule.check(rates)
    assert (c.rf, c.holes, c.hole_free) == (rf, holes, not holes)
    counts = path_counts(rates, 3)  # the reference the brute force below relies on, checked by hand here
    assert (len(counts), tuple(np.flatnonzero(counts == 0))) == (rf, holes)


def path_counts(rates: tuple[int, ...], kernel: int) -> np.ndarray:
    """How many paths join each input offset of the window to one output pixel, built without the module under
    test: the 1-D dilated kernels (``kernel`` taps, ``rate - 1`` zeros between taps) convolved together. Its
    length is the RF; its zeros are the holes."""
    counts = np.ones(1, dtype=np.int64)
    for r in rates:
        taps = np.zeros(r * (kernel - 1) + 1, dtype=np.int64)
        taps[::r] = 1
        counts = np.convolve(counts, taps)
    return counts


def test_hdc_rule_is_unsound_without_r1_equal_one() -> None:
    gridded = schedule.check((2, 2, 2))
    assert gridded.hdc.passes_rule and not gridded.hdc.first_rate_is_one and not gridded.hole_free
    assert "does not apply" in gridded.hdc.verdict
    hdc = schedule.hdc((1, 2, 5))
    assert hdc.m[1] == 2 and hdc.passes_rule and hdc.first_rate_is_one
    assert not schedule.hdc((1, 2, 9)).passes_rule  # M_2 = 5 > 3


def test_support_does_not_depend_on_the_order_of_rates() -> None:
    for perm in itertools.permutations((1, 2, 5, 9)):
        assert schedule.support(perm) == schedule.support((1, 2, 5, 9))


def _brute_force_best(target: int, kernel: int, max_rate: int, max_layers: int) -> tuple[int, int]:
    """(fewest layers, smallest RF >= target among them) over every multiset of rates, judged by
    ``path_counts``. Within a depth, multisets are tried by rate sum, which orders them by RF (each layer adds
    (kernel - 1) x rate to the extent), so the first hole-free one that reaches the target is the answer."""
    for n in range(1, max_layers + 1):
        by_sum = sorted(
            (sum(r), r) for r in itertools.combinations_with_replacement(range(1, max_rate + 1), n)
        )
        for total, rates in by_sum:
            if 1 + (kernel - 1) * total < target:
                continue
            counts = path_counts(rates, kernel)
            if counts.all():
                return n, len(counts)
    raise AssertionError("no schedule found")


@pytest.mark.parametrize("kernel", [3, 5])
@pytest.mark.parametrize("target", [2, 7, 13, 20, 31, 45])
def test_suggest_matches_brute_force(target: int, kernel: int) -> None:
    found = schedule.suggest(target, kernel)
    assert found and all(path_counts(s.rates, kernel).all() for s in found)  # hole-free by the reference
    assert [s.rf for s in found] == [len(path_counts(s.rates, kernel)) for s in found]
    assert all(s.rf >= target for s in found)
    n, rf = _brute_force_best(target, kernel, max_rate=target, max_layers=4)
    assert len(found[0].rates) == n and found[0].rf == rf
    assert [s.rf for s in found] == sorted(s.rf for s in found)


def test_suggest_reaches_large_targets_quickly() -> None:
    best = schedule.suggest(1000)[0]
    assert best.hole_free and best.rf >= 1000 and len(best.rates) == 7


@pytest.mark.parametrize("rates", [(), (0, 1), (1, -2)])
def test_bad_rates(rates: tuple[int, ...]) -> None:
    with pytest.raises(ScheduleError):
        schedule.check(rates)
