"""Dilation schedules: exact hole check, the HDC rule as an explanation, and hole-free suggestions.

A chain of stride-1 convolutions with kernel ``k`` and rates ``r_1..r_n`` sees the Minkowski sum of the sets
``{0, r_i, ..., (k-1) r_i}``. Sums commute, so the support depends on the multiset of rates, not their order.
Sorted ascending, the support is gap-free exactly when every prefix is: adding rate ``r`` to a gap-free
prefix of total ``R`` stays gap-free iff ``r <= (k-1) R + 1`` (a smaller later rate could fill the first gap
only if it were smaller than the rate that opened it). That makes the search in :func:`suggest` exact.

The HDC rule of Wang et al. (2018) is order-dependent and, on its own, unsound ((2, 2, 2) passes it yet has
holes); it is reported next to the exact answer as an explanation, with its ``r_1 = 1`` condition.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass

from atrous.errors import ScheduleError
from atrous.rf.support import Offsets


def _validate(rates: Sequence[int], kernel: int) -> tuple[int, ...]:
    if kernel < 1:
        raise ScheduleError(f"kernel size must be >= 1, got {kernel}")
    if not rates:
        raise ScheduleError("a dilation schedule needs at least one rate")
    bad = [r for r in rates if not isinstance(r, int) or r < 1]
    if bad:
        raise ScheduleError(f"dilation rates must be positive integers, got {bad[0]!r} in {tuple(rates)}")
    return tuple(rates)


def support(rates: Sequence[int], kernel: int = 3) -> Offsets:
    """Input offsets (from the first pixel of the window) that reach one output pixel."""
    rates = _validate(rates, kernel)
    acc = Offsets.of([0])
    for r in rates:
        acc = acc.minkowski(Offsets.of(r * j for j in range(kernel)))
    return acc


@dataclass(frozen=True)
class HDCResult:
    m: tuple[int, ...]  # M_1..M_n as in the paper (M_1 is not used by the rule)
    passes_rule: bool  # M_2 <= kernel
    first_rate_is_one: bool
    verdict: str


def hdc(rates: Sequence[int], kernel: int = 3) -> HDCResult:
    """``M_i = max(M_{i+1} - 2 r_i, M_{i+1} - 2 (M_{i+1} - r_i), r_i)``, ``M_n = r_n``; want ``M_2 <= k``."""
    rates = _validate(rates, kernel)
    n = len(rates)
    m = [0] * n
    m[-1] = rates[-1]
    for i in range(n - 2, -1, -1):
        nxt = m[i + 1]
        m[i] = max(nxt - 2 * rates[i], nxt - 2 * (nxt - rates[i]), rates[i])
    passes = n >= 2 and m[1] <= kernel
    first_one = rates[0] == 1
    if n < 2:
        verdict = "the HDC rule needs two or more layers"
    elif passes and first_one:
        verdict = f"HDC rule satisfied (M_2 = {m[1]} <= {kernel}, r_1 = 1)"
    elif passes:
        verdict = f"M_2 = {m[1]} <= {kernel}, but r_1 = {rates[0]} != 1, so the rule does not apply"
    else:
        verdict = f"HDC rule violated: M_2 = {m[1]} > {kernel}"
    return HDCResult(tuple(m), passes, first_one, verdict)


@dataclass(frozen=True)
class ScheduleCheck:
    rates: tuple[int, ...]
    kernel: int
    rf: int
    holes: tuple[int, ...]  # offsets from the first pixel of the window that no path reaches
    hdc: HDCResult

    @property
    def hole_free(self) -> bool:
        return not self.holes

    @property
    def coverage(self) -> float:
        return 1 - len(self.holes) / self.rf

    def to_json(self) -> dict:
        return {
            "rates": list(self.rates),
            "kernel": self.kernel,
            "rf": self.rf,
            "holes": list(self.holes),
            "hole_free": self.hole_free,
            "coverage": round(self.coverage, 6),
            "hdc": {
                "m": list(self.hdc.m),
                "passes_rule": self.hdc.passes_rule,
                "first_rate_is_one": self.hdc.first_rate_is_one,
                "verdict": self.hdc.verdict,
            },
        }


def check(rates: Sequence[int], kernel: int = 3) -> ScheduleCheck:
    """Exact hole check of a schedule, with the HDC rule's verdict beside it."""
    s = support(rates, kernel)
    return ScheduleCheck(tuple(rates), kernel, s.extent, tuple(s.holes()), hdc(rates, kernel))


def suggest(target_rf: int, kernel: int = 3, limit: int = 5, max_layers: int = 12) -> list[ScheduleCheck]:
    """The shortest hole-free schedules whose RF reaches ``target_rf``: fewest layers first, then the RF
    closest to the target, then the smallest largest rate (rates listed ascending; any order is equivalent)."""
    if kernel < 2:
        raise ScheduleError(f"kernel size must be >= 2 to grow the receptive field, got {kernel}")
    if target_rf < 1:
        raise ScheduleError(f"target receptive field must be >= 1, got {target_rf}")
    need = -(-(target_rf - 1) // (kernel - 1))  # total rate sum needed: rf = 1 + (k - 1) * sum(rates)
    if need == 0:
        return [check([1], kernel)]
    grow = kernel - 1
    # Fewest layers: the largest reachable sum after n layers is reached greedily with r = grow * R + 1.
    n, total = 0, 0
    while total < need:
        total += grow * total + 1
        n += 1
        if n > max_layers:
            raise ScheduleError(f"no hole-free schedule of <= {max_layers} layers reaches RF {target_rf}")
    best: list[tuple[int, int, tuple[int, ...]]] = []  # max-heap on (sum, max rate) via negation

    def bound_full() -> tuple[int, int] | None:
        return (-best[0][0], -best[0][1]) if len(best) >= limit else None

    def dfs(prefix: list[int], total: int) -> None:
        left = n - len(prefix)
        if left == 0:
            if total >= need:
                item = (-total, -prefix[-1], tuple(prefix))
                if len(best) < limit:
                    heapq.heappush(best, item)
                elif item > best[0]:
                    heapq.heapreplace(best, item)
            return
        full = bound_full()
        if full is not None and total > full[0]:
            return
        reach = total  # the most this prefix can still grow to, greedily
        for _ in range(left):
            reach += grow * reach + 1
        if reach < need:
            return
        lo = prefix[-1] if prefix else 1
        hi = grow * total + 1
        if left == 1:
            lo = max(lo, need - total)
        if full is not None:
            hi = min(hi, full[0] - total)
        for r in range(lo, hi + 1):
            dfs([*prefix, r], total + r)

    dfs([], 0)
    ranked = sorted((-s, -m, rates) for s, m, rates in best)
    return [check(list(rates), kernel) for _, _, rates in ranked]


def fixed_depth(target_rf: int, depth: int, kernel: int = 3) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(kernels, rates) of exactly ``depth`` layers reaching RF ``target_rf`` exactly and hole-free.

    Below ``1 + (kernel - 1) * depth`` the RF is reached with rate-1 layers and the remaining layers are 1x1
    (they add depth, not RF). Above it every layer is ``kernel`` wide, with ascending rates as balanced as the
    prefix rule allows (the smallest largest rate)."""
    grow = kernel - 1
    if target_rf < 1 or (target_rf - 1) % grow:
        raise ScheduleError(f"RF {target_rf} is not reachable with kernel {kernel}: need 1 + {grow} * k")
    total = (target_rf - 1) // grow
    if total <= depth:
        kernels = (kernel,) * total + (1,) * (depth - total)
        return kernels, (1,) * depth
    best: list[int] | None = None

    def dfs(prefix: list[int], acc: int) -> None:
        nonlocal best
        left = depth - len(prefix)
        if left == 0:
            if acc == total and (best is None or prefix[-1] < best[-1]):
                best = list(prefix)
            return
        lo = prefix[-1] if prefix else 1
        hi = min(grow * acc + 1, total - acc - (left - 1) * lo)
        if best is not None:
            hi = min(hi, best[-1])
        for r in range(lo, hi + 1):
            if acc + r + (left - 1) * r <= total:  # later rates are at least r
                dfs([*prefix, r], acc + r)

    dfs([], 0)
    if best is None:
        raise ScheduleError(f"no hole-free schedule of {depth} layers reaches RF {target_rf} exactly")
    return (kernel,) * depth, tuple(best)
