"""The lab's statistics: t quantiles against tables, and the verdict on constructed inputs."""

from __future__ import annotations

import pytest

from atrous.lab.stats import (
    RELEVANT,
    agreement,
    compare_paired,
    mean_ci,
    minimum_detectable,
    t_quantile,
    t_sf_two_sided,
)


@pytest.mark.parametrize(
    ("df", "q975"), [(1, 12.706), (2, 4.303), (4, 2.776), (10, 2.228), (30, 2.042), (1000, 1.962)]
)
def test_t_quantiles_match_tables(df: int, q975: float) -> None:
    assert t_quantile(0.975, df) == pytest.approx(q975, abs=1e-3)
    assert t_sf_two_sided(q975, df) == pytest.approx(0.05, abs=2e-4)


def test_mean_ci() -> None:
    est = mean_ci([1.0, 2.0, 3.0])  # sd 1, n 3: half width 4.303 / sqrt(3)
    assert est.mean == 2.0 and est.half_width == pytest.approx(4.303 / 3**0.5, abs=1e-3)
    assert mean_ci([0.7]).half_width == 0.0


def test_verdicts() -> None:
    win = compare_paired([0.90, 0.92, 0.91], [0.80, 0.81, 0.79])
    assert win.verdict == "better" and win.p < 0.01
    assert compare_paired([0.80, 0.81, 0.79], [0.90, 0.92, 0.91]).verdict == "worse"
    assert compare_paired([0.6, 0.7, 0.8], [0.5, 0.6, 0.7]).verdict == "better"  # constant +0.1: p = 0
    assert compare_paired([0.9], [0.8]).verdict == "inconclusive (one seed)"


def test_minimum_detectable_difference_is_3_1_sd_for_three_seeds() -> None:
    # (t_0.975,2 + t_0.8,2) / sqrt(3) = (4.303 + 1.061) / 1.732, the design note's "about 3.1 sd_diff"
    assert t_quantile(0.8, 2) == pytest.approx(1.061, abs=1e-3)
    assert minimum_detectable(0.1, 3) == pytest.approx(0.3097, abs=1e-3)
    assert minimum_detectable(0.01, 10) == pytest.approx((2.262 + 0.883) * 0.01 / 10**0.5, abs=1e-4)


def test_wide_intervals_are_inconclusive_not_no_difference() -> None:
    # The case from the issue: -0.066 +- 0.188 was reported as "no significant difference".
    wide = compare_paired([0.70, 0.95, 0.75], [0.90, 0.85, 0.85])
    assert wide.outcome == "undetermined" and wide.verdict.startswith("inconclusive (only differences above")
    assert wide.mdd > RELEVANT
    # Seeds that agree closely: a real "no difference", with the size it could have detected.
    tight = compare_paired([0.901, 0.899, 0.900], [0.900, 0.900, 0.901])
    assert tight.outcome == "tie" and tight.mdd < 0.01
    assert tight.verdict == f"no difference larger than {tight.mdd:.3f} detected"
    same = compare_paired([1.0, 1.0, 1.0], [1.0, 1.0, 1.0])
    assert same.p == 1.0 and same.verdict == "no difference larger than 0.000 detected"


@pytest.mark.parametrize(
    ("predicted", "a", "b", "expected"),
    [
        ("better", [0.9, 0.92, 0.91], [0.5, 0.52, 0.49], "agrees"),
        ("tie", [0.9, 0.92, 0.91], [0.5, 0.52, 0.49], "disagrees"),
        ("tie", [0.901, 0.899, 0.9], [0.9, 0.9, 0.901], "agrees"),
        ("better", [0.70, 0.95, 0.75], [0.90, 0.85, 0.85], "undetermined"),
        ("tie", [0.960, 0.962, 0.961], [0.965, 0.966, 0.967], "agrees"),  # worse by 0.005: within +-0.05
        ("tie", [0.80, 0.81, 0.79], [0.90, 0.92, 0.91], "disagrees"),
    ],
)
def test_agreement_with_the_prediction(predicted: str, a: list, b: list, expected: str) -> None:
    assert agreement(predicted, compare_paired(a, b)) == expected
