"""Statistics for the lab: means with 95 % confidence intervals, paired tests over seeds, and whether a
measurement agrees with the engine's prediction.

Runs of different models with the same seed share the data stream and the validation set, so comparisons
are paired by seed and work on the per-seed differences ``a - b`` (higher is better):

- ``compare_paired(a, b) -> Comparison``: two-sided paired t-test; when it is not significant, the MDD
  (``minimum_detectable``) says which true difference the design would have detected with power ``POWER``.
- ``equivalence_paired(a, b, margin=RELEVANT) -> Equivalence``: two one-sided tests (TOST) that the true
  difference lies within +-margin; equivalent when the ``1 - 2 alpha`` CI lies inside the margin.
- ``judge(predicted, a, b, healthy=True) -> Judgement``: agreement with a predicted "better", "worse" or
  "tie" (rules in ``VERDICT_RULES``); ``Judgement.text`` is "agrees", "disagrees", "undetermined" or
  "undetermined (run did not converge)". It replaces ``agreement(predicted, Comparison)``: a predicted tie
  needs TOST, which needs the samples.
- Design: ``power_paired`` (exact power of the paired t-test, from the noncentral t distribution),
  ``equivalence_power`` (exact power of TOST), ``minimum_detectable`` and ``seeds_needed``.

Student's t is computed here (regularised incomplete beta, continued fraction) and the noncentral t and
TOST power by quadrature over the chi-distributed sample SD, to keep SciPy out of the dependencies; the
tests check them against tables and simulation.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

ALPHA = 0.05
# What the lab calls a difference worth detecting (mIoU, IoU), and the power it designs for. A comparison that
# could only have detected larger differences than RELEVANT says "inconclusive", not "no difference"; a
# predicted tie means "no difference of RELEVANT or more" and is tested as such (TOST at +-RELEVANT).
RELEVANT = 0.05
POWER = 0.8


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, eps = 1e-300, 1e-15
    qab, qap, qam = a + b, a + 1, a - 1
    c, d = 1.0, 1 - qab * x / qap
    d = 1 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1 + aa * d
        d = 1 / (d if abs(d) > tiny else tiny)
        c = 1 + aa / c if abs(1 + aa / c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1 + aa * d
        d = 1 / (d if abs(d) > tiny else tiny)
        c = 1 + aa / c if abs(1 + aa / c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1) < eps:
            break
    return h


def incomplete_beta(a: float, b: float, x: float) -> float:
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    front = math.exp(
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log(1 - x)
    )
    if x < (a + 1) / (a + b + 2):
        return front * _betacf(a, b, x) / a
    return 1 - front * _betacf(b, a, 1 - x) / b


def t_sf_two_sided(t: float, df: int) -> float:
    """P(|T| >= |t|) for Student's t with ``df`` degrees of freedom."""
    if math.isinf(t):
        return 0.0
    return incomplete_beta(df / 2, 0.5, df / (df + t * t))


def t_sf(t: float, df: int) -> float:
    """P(T >= t), the one-sided upper tail of Student's t."""
    if math.isnan(t):
        return math.nan
    half = t_sf_two_sided(t, df) / 2
    return half if t >= 0 else 1 - half


@functools.lru_cache(maxsize=512)  # pure, and the bisection runs 200 incomplete betas
def t_quantile(p: float, df: int) -> float:
    """The ``p`` quantile (p > 0.5) of Student's t, by bisection on the distribution function."""
    target = 2 * (1 - p)  # two-sided tail mass
    lo, hi = 0.0, 1e3
    for _ in range(200):
        mid = (lo + hi) / 2
        if t_sf_two_sided(mid, df) > target:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


@dataclass(frozen=True)
class Estimate:
    mean: float
    half_width: float  # of the 95 % confidence interval (t distribution); 0 for a single value
    n: int

    def __str__(self) -> str:
        return f"{self.mean:.3f} ± {self.half_width:.3f}" if self.n > 1 else f"{self.mean:.3f}"

    def to_json(self) -> dict:
        return {"mean": self.mean, "ci95": self.half_width, "n": self.n}


def mean_ci(values: Sequence[float]) -> Estimate:
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return Estimate(mean, 0.0, n)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return Estimate(mean, t_quantile(0.975, n - 1) * sd / math.sqrt(n), n)


def _finite(v: float) -> float | None:
    """JSON has no NaN or infinity."""
    return v if math.isfinite(v) else None


def _sd(values: Sequence[float]) -> float:
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


# --- The noncentral t distribution and exact power, by quadrature over the chi variable -----------------------

_NODES, _WEIGHTS = np.polynomial.legendre.leggauss(16)
_erfc = np.frompyfunc(math.erfc, 1, 1)  # numpy has no erf; erfc keeps the far tails accurate


def _phi(z: np.ndarray) -> np.ndarray:
    """Standard normal distribution function, elementwise."""
    return 0.5 * _erfc(-np.asarray(z, dtype=float) / math.sqrt(2)).astype(float)


def _chi_expectation(
    g: Callable[[np.ndarray], np.ndarray], df: int, knots: Sequence[float], width: float, upper: float
) -> float:
    """E[g(X); X < upper] for X chi-distributed with ``df`` degrees of freedom (X^2 ~ chi2_df).

    Composite 16-point Gauss-Legendre over the range holding all but ~1e-30 of X's mass (X is within about
    0.7 of sqrt(df) and has a Gaussian tail), with panels of ``width / 2`` for 10 widths around each knot:
    ``g`` is a normal distribution function of a linear function of X there, and its step can be much narrower
    than X's spread when the t value is large."""
    lo, hi = max(0.0, math.sqrt(df) - 12), min(math.sqrt(df) + 12, upper)
    if hi <= lo:
        return 0.0
    edges = [np.linspace(lo, hi, 65)]
    if math.isfinite(width):
        edges += [k + width * np.linspace(-10, 10, 41) for k in knots if math.isfinite(k)]
    e = np.unique(np.clip(np.concatenate(edges), lo, hi))
    mid, half = (e[1:] + e[:-1]) / 2, (e[1:] - e[:-1]) / 2
    x = (mid[:, None] + half[:, None] * _NODES).ravel()
    w = (half[:, None] * _WEIGHTS).ravel()
    log_pdf = (df - 1) * np.log(x) - x * x / 2 - (df / 2 - 1) * math.log(2) - math.lgamma(df / 2)
    return float(np.sum(w * np.exp(log_pdf) * g(x)))


def noncentral_t_cdf(t: float, df: int, ncp: float) -> float:
    """P(T' <= t) for the noncentral t with ``df`` degrees of freedom and noncentrality ``ncp``.

    T' = (Z + ncp) / sqrt(V / df) with Z standard normal and V ~ chi2_df, so conditioning on X = sqrt(V):
    P(T' <= t) = E[Phi(t X / sqrt(df) - ncp)]. Agrees with SciPy's nct to ~1e-12 for df 1..1000 and
    |ncp| <= 40 (checked by hand; SciPy is no dependency)."""
    slope = t / math.sqrt(df)
    knot, width = (ncp / slope, 1 / abs(slope)) if t != 0 else (math.inf, math.inf)
    return _chi_expectation(lambda x: _phi(slope * x - ncp), df, [knot], width, math.inf)


def power_paired(delta: float, sd: float, n: int, alpha: float = ALPHA) -> float:
    """Exact power of the two-sided paired t-test over ``n`` seeds at level ``alpha`` when the per-seed
    differences are normal with mean ``delta`` and SD ``sd``: P(|T'| > t_{1-alpha/2, n-1}) for the
    noncentral t with n - 1 degrees of freedom and noncentrality delta sqrt(n) / sd."""
    if n < 2:
        raise ValueError("a paired t-test needs at least two seeds")
    if sd <= 0:  # every seed gives the same difference: the test rejects exactly when it is not zero
        return 1.0 if delta != 0 else 0.0
    df, ncp = n - 1, abs(delta) * math.sqrt(n) / sd
    crit = t_quantile(1 - alpha / 2, df)
    return 1 - noncentral_t_cdf(crit, df, ncp) + noncentral_t_cdf(-crit, df, ncp)


@functools.lru_cache(maxsize=256)
def _detectable_effect(n: int, alpha: float, power: float) -> float:
    """The mean difference, in units of the SD of the differences, at which the two-sided paired t-test has
    the given power, by bisection (power grows with it). Depends on n, alpha and power only, so the lab
    computes it once per design."""
    if not 0 < power < 1:
        raise ValueError(f"power must lie in (0, 1), not {power}")
    lo, hi = 0.0, 4.0
    while power_paired(hi, 1.0, n, alpha) < power:
        lo, hi = hi, 2 * hi
    while hi - lo > 1e-9 * hi:
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if power_paired(mid, 1.0, n, alpha) < power else (lo, mid)
    return (lo + hi) / 2


def minimum_detectable(sd_diff: float, n: int, alpha: float = ALPHA, power: float = POWER) -> float:
    """Smallest true mean difference a two-sided paired t-test over ``n`` seeds detects with probability
    ``power`` at level ``alpha``, given the SD of the per-seed differences: the root of ``power_paired``
    (exact, noncentral t; about 3.3 sd for n = 3, where the usual ``(t_{1-alpha/2} + t_power) sd / sqrt(n)``
    gives 3.1 sd and only power 0.77). NaN with fewer than two seeds."""
    if n < 2:
        return math.nan
    return _detectable_effect(n, alpha, power) * sd_diff


def equivalence_power(
    sd: float, n: int, margin: float = RELEVANT, alpha: float = ALPHA, true_diff: float = 0.0
) -> float:
    """Exact probability that TOST over ``n`` seeds shows equivalence within +-``margin`` at level ``alpha``
    when the per-seed differences are normal with mean ``true_diff`` and SD ``sd``.

    TOST succeeds when -margin + c S / sqrt(n) < mean < margin - c S / sqrt(n), with c = t_{1-alpha, n-1}
    and S the sample SD; the mean is normal and independent of S = sd X / sqrt(n - 1), X chi with n - 1
    degrees of freedom, so the power is E[Phi(M - kX - d) - Phi(-M + kX - d); kX < M] in units of the mean's
    standard error (M = margin sqrt(n) / sd, d = true_diff sqrt(n) / sd, k = c / sqrt(n - 1))."""
    if n < 2:
        raise ValueError("TOST needs at least two seeds")
    if sd <= 0:  # every seed gives the same difference: the interval is that point
        return 1.0 if abs(true_diff) < margin else 0.0
    df = n - 1
    m, d = margin * math.sqrt(n) / sd, true_diff * math.sqrt(n) / sd
    k = t_quantile(1 - alpha, df) / math.sqrt(df)

    def shown(x: np.ndarray) -> np.ndarray:
        return _phi(m - k * x - d) - _phi(-m + k * x - d)

    return _chi_expectation(shown, df, [(m - d) / k, (m + d) / k], 1 / k, m / k)


KINDS = ("difference", "equivalence")


def seeds_needed(
    sd: float, delta_or_margin: float, kind: str, power: float = POWER, alpha: float = ALPHA, max_n: int = 20
) -> int:
    """Smallest number of seeds (at least 2) at which the design reaches ``power``: for ``kind`` "difference"
    the two-sided paired t-test detecting a true difference ``delta_or_margin``, for "equivalence" TOST
    showing equivalence within +-``delta_or_margin`` when the true difference is 0. ``sd`` is the SD of the
    per-seed differences. Raises ValueError when ``max_n`` seeds are not enough."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
    reached = math.nan
    for n in range(2, max_n + 1):
        if kind == "difference":
            reached = power_paired(delta_or_margin, sd, n, alpha)
        else:
            reached = equivalence_power(sd, n, delta_or_margin, alpha)
        if reached >= power:
            return n
    raise ValueError(
        f"{max_n} seeds give power {reached:.3f} < {power} for a {kind} test at {delta_or_margin} with SD {sd}"
    )


# --- Tests on measured seeds, and their verdicts ---------------------------------------------------------------

# The verdict rules, in one place. Outcome (what the verdict says about a vs b) -> verdict text.
#   p < alpha                      -> "better" / "worse"
#   not significant, MDD <= RELEVANT -> "no difference larger than MDD detected"   (outcome "tie")
#   not significant, MDD >  RELEVANT -> "inconclusive"                              (outcome "undetermined")
#   one seed                       -> "inconclusive"                                (outcome "undetermined")
OUTCOMES = ("better", "worse", "tie", "undetermined")
PREDICTIONS = ("better", "worse", "tie")
VERDICT_RULES = (
    f"Verdicts: a two-sided paired t-test over seeds at alpha {ALPHA}. Not significant, it says which difference "
    f"the design could have detected with power {POWER}: the MDD, from the exact noncentral t distribution and "
    f"the observed SD of the per-seed differences; 'no difference larger than MDD detected' when "
    f"MDD <= {RELEVANT}, otherwise 'inconclusive'. A predicted difference (better, worse) agrees when the paired "
    f"t-test is significant in the predicted direction, disagrees when it is significant in the other, and is "
    f"undetermined otherwise. A predicted tie means no difference of {RELEVANT} or more and is tested as such, "
    f"by TOST (two one-sided t-tests) at +-{RELEVANT} with alpha {ALPHA}, i.e. the {100 * (1 - 2 * ALPHA):.0f} % CI "
    f"within +-{RELEVANT}: equivalent agrees; a significant paired t-test with |mean difference| >= {RELEVANT} "
    f"disagrees; anything else is undetermined. A run that did not converge is undetermined whatever the numbers."
)


@dataclass(frozen=True)
class Comparison:
    diff: Estimate  # mean of (a - b) over seeds, with its CI
    t: float
    p: float
    mdd: float  # minimum detectable difference at ALPHA and POWER (nan with one seed)
    outcome: str  # one of OUTCOMES: better, worse (a relative to b), tie, undetermined
    test: str

    @property
    def verdict(self) -> str:
        if self.outcome in ("better", "worse"):
            return self.outcome
        if self.outcome == "tie":
            return f"no difference larger than {self.mdd:.3f} detected"
        if math.isnan(self.mdd):
            return "inconclusive (one seed)"
        return f"inconclusive (only differences above {self.mdd:.3f} were detectable)"

    def summary(self) -> str:
        """Short form for a table cell."""
        return self.verdict if math.isnan(self.p) else f"{self.verdict} (p = {self.p:.3g})"

    def describe(self) -> str:
        """Sentence form: the difference, its CI and the test."""
        if math.isnan(self.p):
            return f"{self.diff.mean:+.3f} ({self.diff.n} seed: no test): {self.verdict}"
        ci = f"{self.diff.mean:+.3f} ± {self.diff.half_width:.3f} (95 % CI)"
        return f"{ci}, p = {self.p:.3g} ({self.test}): {self.verdict}"

    def to_json(self) -> dict:
        return {
            "diff": self.diff.to_json(),
            "t": _finite(self.t),
            "p": _finite(self.p),
            "mdd": _finite(self.mdd),
            "outcome": self.outcome,
            "verdict": self.verdict,
            "test": self.test,
        }


def _paired(a: Sequence[float], b: Sequence[float]) -> list[float]:
    if len(a) != len(b):
        raise ValueError("paired samples need the same seeds")
    if not a:
        raise ValueError("no seeds")
    return [x - y for x, y in zip(a, b)]


def compare_paired(a: Sequence[float], b: Sequence[float], alpha: float = ALPHA) -> Comparison:
    """Is ``a`` better than ``b`` (higher is better), paired by seed?"""
    diffs = _paired(a, b)
    n, diff = len(diffs), mean_ci(diffs)
    test = f"two-sided paired t-test over {n} seeds, alpha {alpha}; MDD at power {POWER} (noncentral t)"
    if n < 2:
        return Comparison(diff, math.nan, math.nan, math.nan, "undetermined", test)
    sd = _sd(diffs)
    if sd == 0:
        t = 0.0 if diff.mean == 0 else math.copysign(math.inf, diff.mean)
    else:
        t = diff.mean / (sd / math.sqrt(n))
    p = 1.0 if t == 0 else t_sf_two_sided(t, n - 1)
    mdd = minimum_detectable(sd, n, alpha)
    if p < alpha:
        outcome = "better" if diff.mean > 0 else "worse"
    else:
        outcome = "tie" if mdd <= RELEVANT else "undetermined"
    return Comparison(diff, t, p, mdd, outcome, test)


@dataclass(frozen=True)
class Equivalence:
    diff: Estimate  # mean of (a - b) over seeds, with its 95 % CI
    p: float  # TOST: the larger of the two one-sided p-values (nan with one seed)
    margin: float
    alpha: float
    lower: float  # the 1 - 2 alpha CI of the mean difference (90 % at alpha 0.05): equivalent iff inside +-margin
    upper: float
    outcome: str  # "equivalent" or "not shown"
    test: str

    @property
    def level(self) -> str:
        return f"{100 * (1 - 2 * self.alpha):.0f} %"

    def describe(self) -> str:
        """Sentence form: the difference, its 1 - 2 alpha CI against the margin, and the TOST p-value."""
        if math.isnan(self.p):
            return f"{self.diff.mean:+.3f} ({self.diff.n} seed: no test): {self.outcome}"
        inside = "within" if self.outcome == "equivalent" else "not within"
        ci = f"{self.diff.mean:+.3f}, {self.level} CI [{self.lower:+.3f}, {self.upper:+.3f}]"
        return f"{ci} {inside} ±{self.margin:g}, p = {self.p:.3g} ({self.test}): {self.outcome}"

    def to_json(self) -> dict:
        return {
            "diff": self.diff.to_json(),
            "p": _finite(self.p),
            "margin": self.margin,
            "alpha": self.alpha,
            "ci": [_finite(self.lower), _finite(self.upper)],
            "ci_level": 1 - 2 * self.alpha,
            "outcome": self.outcome,
            "test": self.test,
        }


def equivalence_paired(
    a: Sequence[float], b: Sequence[float], margin: float = RELEVANT, alpha: float = ALPHA
) -> Equivalence:
    """Is the true difference of ``a`` and ``b``, paired by seed, within +-``margin``? Two one-sided t-tests
    (TOST): H0 mean <= -margin and H0 mean >= margin, both rejected at ``alpha``."""
    diffs = _paired(a, b)
    n, diff = len(diffs), mean_ci(diffs)
    test = f"TOST at ±{margin:g} over {n} seeds, alpha {alpha}"
    if n < 2:
        return Equivalence(diff, math.nan, margin, alpha, math.nan, math.nan, "not shown", test)
    se = _sd(diffs) / math.sqrt(n)
    if se == 0:  # every seed gives the same difference: both tests decide with certainty
        p = 0.0 if abs(diff.mean) < margin else 1.0
    else:
        p = max(t_sf((diff.mean + margin) / se, n - 1), t_sf((margin - diff.mean) / se, n - 1))
    half = t_quantile(1 - alpha, n - 1) * se
    outcome = "equivalent" if p < alpha else "not shown"
    return Equivalence(diff, p, margin, alpha, diff.mean - half, diff.mean + half, outcome, test)


# --- Agreement with the engine's prediction ---------------------------------------------------------------------

NOT_CONVERGED = "undetermined (run did not converge)"


@dataclass(frozen=True)
class Judgement:
    predicted: str  # one of PREDICTIONS
    text: str  # "agrees", "disagrees", "undetermined" or NOT_CONVERGED
    comparison: Comparison  # the paired t-test: decides a predicted better or worse
    equivalence: Equivalence  # TOST at +-RELEVANT: decides a predicted tie (with the t-test for "disagrees")
    healthy: bool

    @property
    def rule(self) -> str:
        """The test that decided."""
        return self.equivalence.test if self.predicted == "tie" else self.comparison.test

    def summary(self) -> str:
        """Short form for a table cell: the result of the deciding test."""
        eq = self.equivalence
        if self.predicted != "tie":
            return self.comparison.summary()
        if math.isnan(eq.p):
            return f"equivalence {eq.outcome} (one seed)"
        return f"equivalence {eq.outcome} (TOST p = {eq.p:.3g}, {eq.level} CI [{eq.lower:+.3f}, {eq.upper:+.3f}])"

    def describe(self) -> str:
        """Sentence form: the deciding test's description, then the agreement."""
        measured = self.equivalence if self.predicted == "tie" else self.comparison
        return f"predicted {self.predicted}: {measured.describe()}; {self.text}"

    def to_json(self) -> dict:
        return {
            "predicted": self.predicted,
            "agreement": self.text,
            "healthy": self.healthy,
            "rule": self.rule,
            "comparison": self.comparison.to_json(),
            "equivalence": self.equivalence.to_json(),
        }


def _agreement(predicted: str, cmp: Comparison, eq: Equivalence) -> str:
    if predicted == "tie":
        if eq.outcome == "equivalent":
            return "agrees"
        significant = cmp.outcome in ("better", "worse")
        return "disagrees" if significant and abs(cmp.diff.mean) >= RELEVANT else "undetermined"
    if cmp.outcome in ("better", "worse"):
        return "agrees" if cmp.outcome == predicted else "disagrees"
    return "undetermined"  # not significant: the comparison's MDD says what could have been detected


def judge(predicted: str, a: Sequence[float], b: Sequence[float], healthy: bool = True) -> Judgement:
    """Does the measurement of ``a`` against ``b`` (paired by seed, higher is better) agree with the predicted
    "better", "worse" or "tie" of ``a`` relative to ``b``? Rules in VERDICT_RULES. Both tests are computed and
    reported; when the runs are not ``healthy`` (did not converge) the text is NOT_CONVERGED whatever they say."""
    if predicted not in PREDICTIONS:
        raise ValueError(f"prediction must be one of {PREDICTIONS}, not {predicted!r}")
    cmp, eq = compare_paired(a, b), equivalence_paired(a, b)
    text = _agreement(predicted, cmp, eq) if healthy else NOT_CONVERGED
    return Judgement(predicted, text, cmp, eq, healthy)
