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


@dataclass(frozen=True)
class Comparison:
    diff: Estimate  # mean of (a - b) over seeds, with its CI
    t: float
    p: float
    verdict: str  # "better", "worse", "no significant difference" (a relative to b), or "not enough seeds"
    test: str

    def summary(self) -> str:
        """Short form for a table cell."""
        return self.verdict if math.isnan(self.p) else f"{self.verdict} (p = {self.p:.3g})"

    def describe(self) -> str:
        """Sentence form: the difference, its CI and the test."""
        if math.isnan(self.p):
            return f"{self.diff.mean:+.3f} ({self.diff.n} seed: no test)"
        ci = f"{self.diff.mean:+.3f} ± {self.diff.half_width:.3f} (95 % CI)"
        return f"{ci}, p = {self.p:.3g} ({self.test}): {self.verdict}"

    def to_json(self) -> dict:
        return {
            "diff": self.diff.to_json(),
            "t": self.t if math.isfinite(self.t) else None,  # JSON has no NaN or infinity
            "p": self.p if math.isfinite(self.p) else None,
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
    test = f"two-sided paired t-test over {n} seeds, alpha {alpha}"
    if n < 2:
        return Comparison(diff, float("nan"), float("nan"), "not enough seeds", test)
    sd = math.sqrt(sum((d - diff.mean) ** 2 for d in diffs) / (n - 1))
    if sd == 0:
        t = 0.0 if diff.mean == 0 else math.copysign(math.inf, diff.mean)
    else:
        t = diff.mean / (sd / math.sqrt(n))
    p = 1.0 if t == 0 else t_sf_two_sided(t, n - 1)
    if p < alpha:
        verdict = "better" if diff.mean > 0 else "worse"
    else:
        verdict = "no significant difference"
    return Comparison(diff, t, p, verdict, test)
