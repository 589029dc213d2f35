"""Statistics for the lab: means with 95 % confidence intervals and paired tests over seeds.

Runs of different models with the same seed share the data stream and the validation set, so comparisons
are paired by seed: a two-sided paired t-test on the per-seed differences. Student's t distribution is
computed here (regularised incomplete beta, continued fraction) to keep SciPy out of the dependencies; the
tests check it against tabulated quantiles.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

ALPHA = 0.05


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


# What the lab calls a difference worth detecting (mIoU, IoU), and the power it designs for. A comparison that
# could only have detected larger differences than RELEVANT says "inconclusive", not "no difference".
RELEVANT = 0.05
POWER = 0.8


def minimum_detectable(sd_diff: float, n: int, alpha: float = ALPHA, power: float = POWER) -> float:
    """Smallest true mean difference a two-sided paired t-test over ``n`` seeds detects with probability
    ``power`` at level ``alpha``, given the observed SD of the per-seed differences:
    ``(t_{1-alpha/2, n-1} + t_{power, n-1}) * sd / sqrt(n)`` (about 3.1 sd for n = 3)."""
    return (t_quantile(1 - alpha / 2, n - 1) + t_quantile(power, n - 1)) * sd_diff / math.sqrt(n)


# The verdict rules, in one place. Outcome (what the verdict says about a vs b) -> verdict text.
#   p < alpha                      -> "better" / "worse"
#   not significant, MDD <= RELEVANT -> "no difference larger than MDD detected"   (outcome "tie")
#   not significant, MDD >  RELEVANT -> "inconclusive"                              (outcome "undetermined")
#   one seed                       -> "inconclusive"                                (outcome "undetermined")
OUTCOMES = ("better", "worse", "tie", "undetermined")
VERDICT_RULES = (
    f"Verdicts: a two-sided paired t-test over seeds at alpha {ALPHA}; not significant, it says which difference "
    f"the design could have detected with power {POWER} (the MDD, from the observed spread over seeds): "
    f"'no difference larger than MDD detected' when MDD <= {RELEVANT}, otherwise 'inconclusive'. A predicted tie "
    f"means no difference of {RELEVANT} or more: it agrees with a significant difference whose 95 % CI lies "
    f"within +-{RELEVANT}."
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
        finite = lambda v: v if math.isfinite(v) else None  # noqa: E731  JSON has no NaN or infinity
        return {
            "diff": self.diff.to_json(),
            "t": finite(self.t),
            "p": finite(self.p),
            "mdd": finite(self.mdd),
            "outcome": self.outcome,
            "verdict": self.verdict,
            "test": self.test,
        }


def compare_paired(a: Sequence[float], b: Sequence[float], alpha: float = ALPHA) -> Comparison:
    """Is ``a`` better than ``b`` (higher is better), paired by seed?"""
    if len(a) != len(b):
        raise ValueError("paired samples need the same seeds")
    n = len(a)
    diffs = [x - y for x, y in zip(a, b)]
    diff = mean_ci(diffs)
    test = f"two-sided paired t-test over {n} seeds, alpha {alpha}, power {POWER} for the MDD"
    if n < 2:
        return Comparison(diff, math.nan, math.nan, math.nan, "undetermined", test)
    sd = math.sqrt(sum((d - diff.mean) ** 2 for d in diffs) / (n - 1))
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


def agreement(predicted: str, measured: Comparison) -> str:
    """``agrees`` / ``disagrees`` with the engine's prediction (better, worse or tie), or ``undetermined``
    when the measurement could not decide. A predicted tie means "no difference of RELEVANT or more": a
    significant difference whose whole 95 % CI lies within +-RELEVANT agrees with it (an equivalence test)."""
    within = abs(measured.diff.mean) + measured.diff.half_width < RELEVANT
    if predicted == "tie" and measured.outcome in ("better", "worse") and within:
        return "agrees"
    if measured.outcome == "undetermined":
        return "undetermined"
    return "agrees" if measured.outcome == predicted else "disagrees"
