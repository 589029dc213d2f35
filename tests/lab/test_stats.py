"""The lab's statistics: t quantiles against tables, and the verdict on constructed inputs."""

from __future__ import annotations

import pytest

from atrous.lab.stats import compare_paired, mean_ci, t_quantile, t_sf_two_sided


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
    overlap = compare_paired([0.80, 0.90, 0.70], [0.82, 0.78, 0.85])
    assert overlap.verdict == "no significant difference" and overlap.p > 0.05
    assert compare_paired([0.5, 0.5], [0.5, 0.5]).p == 1.0
    assert compare_paired([0.6, 0.7, 0.8], [0.5, 0.6, 0.7]).verdict == "better"  # constant +0.1: p = 0
    assert compare_paired([0.9], [0.8]).verdict == "not enough seeds"
