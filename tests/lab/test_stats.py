"""The lab's statistics: t quantiles against tables, the noncentral t, power, MDD and TOST against closed forms
and Monte-Carlo simulation, and the verdicts and agreement rules on constructed inputs.

Simulations draw paired experiments as rows of normal per-seed differences (fixed RNG seeds) and apply the
tests vectorised; an exact probability must lie within 3 standard errors of the simulated rate."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from atrous.lab.stats import (
    ALPHA,
    NOT_CONVERGED,
    RELEVANT,
    VERDICT_RULES,
    compare_paired,
    equivalence_paired,
    equivalence_power,
    judge,
    mean_ci,
    minimum_detectable,
    noncentral_t_cdf,
    power_paired,
    seeds_needed,
    t_quantile,
    t_sf,
    t_sf_two_sided,
)

REPS = 200_000


def _draws(mean: float, sd: float, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard error of REPS simulated experiments of n normal per-seed differences."""
    d = np.random.default_rng(seed).normal(mean, sd, size=(REPS, n))
    return d.mean(axis=1), d.std(axis=1, ddof=1) / math.sqrt(n)


def simulated_t_power(delta: float, sd: float, n: int, seed: int, alpha: float = ALPHA) -> float:
    m, se = _draws(delta, sd, n, seed)
    return float(np.mean(np.abs(m / se) > t_quantile(1 - alpha / 2, n - 1)))


def simulated_tost_power(
    true_diff: float, sd: float, n: int, seed: int, margin: float = RELEVANT, alpha: float = ALPHA
) -> float:
    m, se = _draws(true_diff, sd, n, seed)
    half = t_quantile(1 - alpha, n - 1) * se
    return float(np.mean((m - half > -margin) & (m + half < margin)))


def assert_within_3_se(exact: float, simulated: float) -> None:
    se = math.sqrt(max(exact * (1 - exact), 1e-6) / REPS)
    assert abs(exact - simulated) < 3 * se, (exact, simulated, se)


# --- Student's t -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("df", "q975"), [(1, 12.706), (2, 4.303), (4, 2.776), (10, 2.228), (30, 2.042), (1000, 1.962)]
)
def test_t_quantiles_match_tables(df: int, q975: float) -> None:
    assert t_quantile(0.975, df) == pytest.approx(q975, abs=1e-3)
    assert t_sf_two_sided(q975, df) == pytest.approx(0.05, abs=2e-4)


def test_one_sided_t_tail_has_the_closed_form_for_two_degrees_of_freedom() -> None:
    # df 2: P(T >= t) = 1/2 - t / (2 sqrt(t^2 + 2))
    for t in (-3.0, -0.4, 0.0, 1.0, 2.92, 10.0):
        assert t_sf(t, 2) == pytest.approx(0.5 - t / (2 * math.sqrt(t * t + 2)), abs=1e-12)


def test_mean_ci() -> None:
    est = mean_ci([1.0, 2.0, 3.0])  # sd 1, n 3: half width 4.303 / sqrt(3)
    assert est.mean == 2.0 and est.half_width == pytest.approx(4.303 / 3**0.5, abs=1e-3)
    assert mean_ci([0.7]).half_width == 0.0


# --- Noncentral t and the power of the paired t-test ------------------------------------------------------------


@pytest.mark.parametrize("df", [1, 2, 5, 30, 500])
def test_noncentral_t_with_zero_noncentrality_is_students_t(df: int) -> None:
    for t in (-40.0, -4.3, -1.0, 0.0, 0.5, 2.0, 12.7, 300.0):
        assert noncentral_t_cdf(t, df, 0.0) == pytest.approx(1 - t_sf(t, df), abs=1e-9)


@pytest.mark.parametrize(("df", "ncp"), [(1, 2.0), (2, 5.0), (4, 0.7), (9, 3.16), (29, 20.0)])
def test_noncentral_t_cdf_matches_simulation(df: int, ncp: float) -> None:
    rng = np.random.default_rng(df)
    draws = (rng.standard_normal(REPS) + ncp) / np.sqrt(rng.chisquare(df, REPS) / df)
    for q in (0.1, 0.5, 0.9):
        t = float(np.quantile(draws, q))
        assert_within_3_se(noncentral_t_cdf(t, df, ncp), float(np.mean(draws <= t)))


@pytest.mark.parametrize(
    ("n", "effect", "power"),
    # exact values: this noncentral t agrees with SciPy's nct to 1e-12 on these (checked by hand, not a dependency)
    [(2, 5.0, 0.420961), (3, 1.0, 0.179255), (5, 1.5, 0.710703), (10, 1.0, 0.803097), (20, 0.5, 0.564504)],
)
def test_power_of_the_paired_t_test_matches_simulation(n: int, effect: float, power: float) -> None:
    assert power_paired(effect * 0.02, 0.02, n) == pytest.approx(power, abs=1e-6)
    assert power_paired(-effect * 0.02, 0.02, n) == pytest.approx(power, abs=1e-6)  # two-sided: symmetric
    assert_within_3_se(power, simulated_t_power(effect * 0.02, 0.02, n, seed=n))


def test_power_of_the_paired_t_test_matches_the_table() -> None:
    # The textbook value (e.g. G*Power): n = 10 pairs, delta / sd = 1, alpha 0.05 two-sided -> 0.8031
    assert power_paired(1.0, 1.0, 10) == pytest.approx(0.8031, abs=1e-4)
    assert power_paired(0.0, 1.0, 10) == pytest.approx(ALPHA, abs=1e-9)  # no difference: the level
    assert power_paired(0.1, 0.0, 3) == 1.0 and power_paired(0.0, 0.0, 3) == 0.0
    with pytest.raises(ValueError):
        power_paired(1.0, 1.0, 1)


def test_mdd_for_three_seeds_has_exactly_the_design_power() -> None:
    mdd = minimum_detectable(1.0, 3)
    assert mdd == pytest.approx(3.26404, abs=1e-4)  # 3.26 sd, not the approximation's 3.10 sd
    assert power_paired(mdd, 1.0, 3) == pytest.approx(0.8, abs=1e-6)
    simulated = simulated_t_power(mdd, 1.0, 3, seed=11)
    assert abs(simulated - 0.8) < 0.01
    assert_within_3_se(0.8, simulated)
    # The old (t_{1-alpha/2} + t_power) sd / sqrt(n) falls short with three seeds: power about 0.77
    old = (t_quantile(0.975, 2) + t_quantile(0.8, 2)) / math.sqrt(3)
    assert old == pytest.approx(3.0965, abs=1e-3)
    assert power_paired(old, 1.0, 3) == pytest.approx(0.76627, abs=1e-4)
    assert abs(simulated_t_power(old, 1.0, 3, seed=12) - 0.766) < 0.01


def test_minimum_detectable_difference() -> None:
    assert minimum_detectable(0.1, 3) == pytest.approx(0.326404, abs=1e-5)
    assert minimum_detectable(0.01, 10) == pytest.approx(0.0099600, abs=1e-6)
    assert minimum_detectable(0.02, 5) == pytest.approx(2 * minimum_detectable(0.01, 5), rel=1e-12)
    assert minimum_detectable(0.0, 3) == 0.0
    assert math.isnan(minimum_detectable(0.1, 1))
    stricter = minimum_detectable(0.01, 5, alpha=0.01, power=0.9)
    assert power_paired(stricter, 0.01, 5, alpha=0.01) == pytest.approx(0.9, abs=1e-6)


# --- Equivalence (TOST) -----------------------------------------------------------------------------------------


def test_tost_p_value_by_hand() -> None:
    # Differences 0.02, 0.03, 0.04: mean 0.03, sd 0.01, se 0.01 / sqrt(3). Against +0.05 the one-sided t is
    # 0.02 / se = 2 sqrt(3), and for 2 degrees of freedom P(T >= t) = 1/2 - t / (2 sqrt(t^2 + 2)), so
    # p = 1/2 - sqrt(3 / 14) = 0.0371 (the test against -0.05, t = 8 sqrt(3), is far smaller).
    eq = equivalence_paired([0.92, 0.93, 0.94], [0.90, 0.90, 0.90])
    assert eq.p == pytest.approx(0.5 - math.sqrt(3 / 14), abs=1e-9)
    assert eq.outcome == "equivalent"
    half = 2.919986 * 0.01 / math.sqrt(3)  # t_{0.95, 2}: the 90 % CI
    assert (eq.lower, eq.upper) == (
        pytest.approx(0.03 - half, abs=1e-6),
        pytest.approx(0.03 + half, abs=1e-6),
    )
    assert eq.describe().startswith("+0.030, 90 % CI [+0.013, +0.047] within ±0.05, p = 0.0371")
    # The same differences at margin 0.045: t = 0.015 / se, p = 1/2 - t / (2 sqrt(t^2 + 2)) > alpha
    narrow = equivalence_paired([0.92, 0.93, 0.94], [0.90, 0.90, 0.90], margin=0.045)
    t = 0.015 / (0.01 / math.sqrt(3))
    assert narrow.p == pytest.approx(0.5 - t / (2 * math.sqrt(t * t + 2)), abs=1e-9)
    assert narrow.outcome == "not shown" and "not within ±0.045" in narrow.describe()


def test_tost_edge_cases_and_json() -> None:
    assert equivalence_paired([0.9, 0.9], [0.88, 0.88]).outcome == "equivalent"  # no spread, inside
    assert equivalence_paired([0.9, 0.9], [0.8, 0.8]).p == 1.0  # no spread, outside
    one = equivalence_paired([0.9], [0.9])
    assert one.outcome == "not shown" and math.isnan(one.p)
    assert json.loads(json.dumps(one.to_json(), allow_nan=False))["p"] is None
    with pytest.raises(ValueError):
        equivalence_paired([0.9, 0.8], [0.9])


@pytest.mark.parametrize(("sd", "n"), [(0.02, 10), (0.01, 3), (0.1, 3)])
def test_tost_type_one_error_at_the_margin(sd: float, n: int) -> None:
    # A true difference of exactly the margin is "not equivalent": TOST shows equivalence at most alpha of
    # the time, exactly alpha when the other bound is far away in standard errors, less when it is not.
    exact = equivalence_power(sd, n, RELEVANT, ALPHA, true_diff=RELEVANT)
    assert exact <= ALPHA + 1e-9
    assert_within_3_se(exact, simulated_tost_power(RELEVANT, sd, n, seed=n))
    if sd <= 0.02:
        assert exact == pytest.approx(ALPHA, abs=1e-6)
    else:
        assert exact < 0.02  # conservative: 3 seeds, sd twice the margin


@pytest.mark.parametrize(
    ("sd", "n", "true_diff", "power"),
    [
        (0.02, 2, 0.0, 0.334095),
        (0.02, 3, 0.0, 0.751499),
        (0.05, 6, 0.0, 0.409044),
        (0.03, 10, 0.01, 0.987074),
    ],
)
def test_tost_power_matches_simulation(sd: float, n: int, true_diff: float, power: float) -> None:
    assert equivalence_power(sd, n, true_diff=true_diff) == pytest.approx(power, abs=1e-6)
    assert_within_3_se(power, simulated_tost_power(true_diff, sd, n, seed=100 + n))


def test_the_simulations_apply_the_same_tests_as_the_module() -> None:
    rng = np.random.default_rng(5)
    for _ in range(200):
        n = int(rng.integers(2, 8))
        b = rng.uniform(0.7, 0.9, n)
        a = b + rng.normal(0.03, 0.03, n)
        d = a - b
        m, se = d.mean(), d.std(ddof=1) / math.sqrt(n)
        tost = abs(m) + t_quantile(1 - ALPHA, n - 1) * se < RELEVANT
        assert (equivalence_paired(list(a), list(b)).outcome == "equivalent") == tost
        significant = abs(m / se) > t_quantile(1 - ALPHA / 2, n - 1)
        assert (compare_paired(list(a), list(b)).outcome in ("better", "worse")) == significant


# --- Choosing the number of seeds ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sd", "difference", "equivalence"), [(0.01, 3, 3), (0.02, 4, 4), (0.03, 6, 5), (0.05, 10, 11)]
)
def test_seeds_needed(sd: float, difference: int, equivalence: int) -> None:
    assert seeds_needed(sd, RELEVANT, "difference") == difference
    assert seeds_needed(sd, RELEVANT, "equivalence") == equivalence
    # The smallest such n: one seed fewer falls short
    if difference > 2:
        assert power_paired(RELEVANT, sd, difference - 1) < 0.8 <= power_paired(RELEVANT, sd, difference)
    if equivalence > 2:
        assert equivalence_power(sd, equivalence - 1) < 0.8 <= equivalence_power(sd, equivalence)


def test_seeds_needed_is_monotone() -> None:
    for kind in ("difference", "equivalence"):
        by_sd = [seeds_needed(sd, RELEVANT, kind) for sd in np.linspace(0.005, 0.05, 10)]
        assert by_sd == sorted(by_sd) and by_sd[0] < by_sd[-1]
        by_size = [seeds_needed(0.03, size, kind) for size in np.linspace(0.03, 0.1, 8)]
        assert by_size == sorted(by_size, reverse=True) and by_size[0] > by_size[-1]
        assert seeds_needed(0.03, RELEVANT, kind, power=0.9) >= seeds_needed(0.03, RELEVANT, kind)


def test_seeds_needed_matches_simulation() -> None:
    n = seeds_needed(0.03, RELEVANT, "difference")  # 6: power 0.899; 5 seeds give 0.793
    assert simulated_t_power(RELEVANT, 0.03, n, seed=21) > 0.8
    assert simulated_t_power(RELEVANT, 0.03, n - 1, seed=22) < 0.8
    n = seeds_needed(0.03, RELEVANT, "equivalence")  # 5: power 0.836; 4 seeds give 0.654
    assert simulated_tost_power(0.0, 0.03, n, seed=23) > 0.8
    assert simulated_tost_power(0.0, 0.03, n - 1, seed=24) < 0.8


def test_seeds_needed_says_when_the_cap_is_too_low() -> None:
    with pytest.raises(ValueError, match="4 seeds give power"):
        seeds_needed(0.05, RELEVANT, "difference", max_n=4)
    with pytest.raises(ValueError, match="kind"):
        seeds_needed(0.05, RELEVANT, "tie")


# --- Verdicts and agreement --------------------------------------------------------------------------------------


def test_verdicts() -> None:
    win = compare_paired([0.90, 0.92, 0.91], [0.80, 0.81, 0.79])
    assert win.verdict == "better" and win.p < 0.01
    assert compare_paired([0.80, 0.81, 0.79], [0.90, 0.92, 0.91]).verdict == "worse"
    assert compare_paired([0.6, 0.7, 0.8], [0.5, 0.6, 0.7]).verdict == "better"  # constant +0.1: p = 0
    assert compare_paired([0.9], [0.8]).verdict == "inconclusive (one seed)"


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


def _shifted(diffs: list[float]) -> tuple[list[float], list[float]]:
    """Paired samples whose per-seed differences are ``diffs``."""
    return [0.8 + d for d in diffs], [0.8] * len(diffs)


@pytest.mark.parametrize(
    ("predicted", "diffs", "expected"),
    [
        ("better", [0.40, 0.40, 0.42], "agrees"),
        ("worse", [0.40, 0.40, 0.42], "disagrees"),
        ("worse", [-0.10, -0.11, -0.12], "agrees"),
        (
            "better",
            [-0.20, 0.10, -0.10],
            "undetermined",
        ),  # not significant: the MDD says what it could detect
        ("tie", [0.40, 0.40, 0.42], "disagrees"),  # significant and >= RELEVANT
        ("tie", [0.055, 0.060, 0.065], "disagrees"),
        ("tie", [0.001, -0.001, -0.001], "agrees"),  # 90 % CI inside +-RELEVANT
        ("tie", [-0.005, -0.004, -0.006], "agrees"),
        ("tie", [0.02, 0.03, 0.04], "agrees"),  # significant, but equivalent: a tie is about RELEVANT
        ("tie", [0.040, 0.045, 0.050], "undetermined"),  # significant, below RELEVANT, not shown equivalent
        ("tie", [-0.20, 0.10, -0.10], "undetermined"),  # too noisy to say either way
        ("tie", [0.30, -0.10, 0.20], "undetermined"),  # large mean, not significant
        ("tie", [0.01], "undetermined"),  # one seed
        ("better", [0.3], "undetermined"),
    ],
)
def test_agreement_with_the_prediction(predicted: str, diffs: list[float], expected: str) -> None:
    j = judge(predicted, *_shifted(diffs))
    assert j.text == expected
    assert j.rule == (j.equivalence.test if predicted == "tie" else j.comparison.test)
    assert j.describe().endswith(f"; {expected}")
    assert json.loads(json.dumps(j.to_json(), allow_nan=False))["agreement"] == expected


def test_unconverged_runs_are_undetermined_whatever_the_numbers() -> None:
    for predicted in ("better", "worse", "tie"):
        j = judge(predicted, *_shifted([0.40, 0.40, 0.42]), healthy=False)
        assert j.text == NOT_CONVERGED == "undetermined (run did not converge)"
        assert j.comparison.outcome == "better" and j.equivalence.outcome == "not shown"  # still reported
        assert j.to_json()["healthy"] is False


def test_judge_rejects_unknown_predictions() -> None:
    with pytest.raises(ValueError, match="prediction"):
        judge("same", [0.9, 0.9], [0.9, 0.9])


def test_verdict_rules_name_the_tests() -> None:
    for phrase in (
        "two-sided paired t-test",
        "TOST",
        f"+-{RELEVANT}",
        "noncentral t",
        "power 0.8",
        "90 % CI",
    ):
        assert phrase in VERDICT_RULES
