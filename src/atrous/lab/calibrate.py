"""How long the lab will take on this machine, measured on the lab's own models before training starts.

Each distinct model and task of the lab trains a few steps in the lab's own worker processes (all of them busy
at once, as during the lab): that gives its seconds per training step, per validation pass and per job (data,
model, checkpoints, the job's own bookkeeping). A job's cost is then its steps, epochs and fixed part at those
rates. The previous calibration timed two probe models and scaled their cost by FLOPs; the probes' speed
relative to the lab's models moved by 1.4x between two rounds on the same kind of machine (BENCHMARKS.md), and
so did the estimate.
"""

from __future__ import annotations

import math
import statistics
import tempfile
import time
from collections.abc import Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

from atrous.lab.jobs import Job, run_jobs

# Steps timed per model and task; the first is left out of the per-step rate (allocations, first calls). With 6,
# the rate came out 1.05-1.21x the runs' own in four of five runs of session 11 (0.97 in the fifth): the next few
# steps are still warming up. With 12, 0.99 and 0.99 in the two runs after (seeds 160-162, 170-172; BENCHMARKS.md),
# for under a second more of calibration (the lab's time before training: 6.1-6.2 s, against 6.0-7.8 s with 6).
STEPS = 12
# No correction factor: on the quick preset's design seeds (10, 11, 12; runs/lab-design3) the training took
# 302 s from the first run's start to the last run's end against 307 s modelled; checked on other seed sets in
# BENCHMARKS.md. (The probes' estimate needed a factor of 1.8, fitted on one run.)
# The report's share of each run: loading its model, ERFs (Exercise 1), accuracy by needed RF (Exercise 4),
# figures. The quick preset on its design seeds (runs/lab-design4, -design5): 8.5 s and 6.2 s after the last run,
# for 76 runs; 6.4-7.5 s on the check and figures runs.
REPORT_SECONDS_PER_RUN = 0.1


@dataclass(frozen=True)
class Speed:
    """Seconds per training step, per validation pass, and per job whatever its length."""

    step: float
    validation: float
    fixed: float


def kind(job: Job) -> Job:
    """The short job that times ``job``: same model, task, batch, loss and averaging; what only changes the
    numbers (seed, learning rate, warm-up) is fixed, so jobs that differ only there share one timing."""
    return replace(job, seed=0, steps=STEPS, warmup=0, lr=1e-3, stop_early=True, label="timing")


def measure(
    jobs: list[Job], workers: int, device: str = "cpu", pool: Executor | None = None
) -> dict[str, Speed]:
    """Speeds of the jobs' kinds, keyed by ``kind(job).key``, from short runs in the lab's workers."""
    kinds = list({kind(j).key: kind(j) for j in jobs}.values())
    if not kinds:
        return {}
    with tempfile.TemporaryDirectory(prefix="atrous-calibration-") as tmp:
        results = run_jobs(kinds, Path(tmp), workers, device=device, pool=pool)
    rates = {key: _rates(r) for key, r in results.items()}
    # A job's fixed part hardly depends on its model, but the first job in a process also pays for lazy imports
    # and first calls (up to seconds): the median over the kinds leaves those out.
    fixed = statistics.median(f for _, _, f in rates.values())
    return {key: Speed(step, validation, fixed) for key, (step, validation, _) in rates.items()}


def _rates(result: dict) -> tuple[float, float, float]:
    """(seconds per step after the first, seconds per validation pass, the rest of the job's seconds). A task
    of fewer than STEPS steps per epoch validates more than once."""
    t, steps, passes = result["timing"], result["steps"], len(result["history"])
    step = (t["train_seconds"] - t["first_step_seconds"]) / max(1, steps - 1)
    return step, t["val_seconds"] / passes, max(0.0, t["job_seconds"] - steps * step - t["val_seconds"])


@lru_cache(maxsize=512)
def _train_images(data: str) -> int:
    from atrous.data import build_dataset

    return len(build_dataset(data))


def job_seconds(job: Job, speeds: dict[str, Speed], share: float = 1.0) -> float:
    """One job's seconds if it takes ``share`` of its step limit (1: all of it)."""
    speed = speeds[kind(job).key]
    steps = max(1, round(share * job.steps))
    epochs = math.ceil(steps / math.ceil(_train_images(job.data) / job.batch_size))
    return steps * speed.step + epochs * speed.validation + speed.fixed


Shares = float | Mapping[str, float]  # of the step caps the runs are expected to take: one, or by Job.key


def _share(shares: Shares, job: Job) -> float:
    return shares if isinstance(shares, (int, float)) else shares.get(job.key, 1.0)


def expected_seconds(
    jobs: list[Job], speeds: dict[str, Speed], workers: int, shares: Shares = 1.0, report: bool = False
) -> float:
    """Wall time of the jobs on ``workers`` single-threaded processes if the runs take ``shares`` of their step
    limits; with ``report``, and of the report on them (one process)."""
    training = sum(job_seconds(j, speeds, _share(shares, j)) for j in jobs) / max(1, workers)
    return training + (REPORT_SECONDS_PER_RUN * len(jobs) if report else 0.0)


def longest_first(jobs: list[Job], speeds: dict[str, Speed]) -> list[Job]:
    """Distinct jobs, the most expensive first, so that no worker is left with a long run at the end."""
    unique = list({j.key: j for j in jobs}.values())
    return sorted(unique, key=lambda j: -job_seconds(j, speeds))


class Forecast:
    """The time left, corrected as runs finish. The machine's speed drifts: on this 2-core class of machine
    the same convolution's median time over 2 s windows moved between 29 and 67 ms within 40 s, so a few seconds
    of timing before the start can be off by a fifth whatever they measure. The runs that have finished say how
    fast this machine is now running the lab: their measured seconds over their modelled seconds (at the steps
    they took) scale what is left. And they say how many of the expected steps are used up: what is left takes
    the expected steps not yet taken, spread over the runs left in proportion to their own expected steps."""

    def __init__(
        self, jobs: list[Job], speeds: dict[str, Speed], workers: int, shares: Shares, start: float
    ) -> None:
        """``start``: ``time.perf_counter()`` when the lab started."""
        self.speeds, self.workers, self.start, self.shares = speeds, max(1, workers), start, shares
        self.pending = {j.key: j for j in jobs}
        self.runs = len(self.pending)
        self.steps_left = sum(_share(shares, j) * j.steps for j in self.pending.values())
        self.modelled = self.measured = 0.0
        self.at_quarter: float | None = (
            None  # the total wall time forecast once a quarter of the work was done
        )

    def finish(self, job: Job, result: dict) -> None:
        self.pending.pop(job.key, None)
        self.steps_left -= result["steps"]
        self.modelled += job_seconds(job, self.speeds, result["steps"] / job.steps)
        self.measured += result["timing"]["job_seconds"]
        if self.at_quarter is None and self.done_share >= 0.25:
            self.at_quarter = time.perf_counter() - self.start + self.seconds_left()

    def _modelled_left(self) -> float:
        """The runs left at their own shares, all scaled by one factor so that they take the steps left."""
        expected = sum(_share(self.shares, j) * j.steps for j in self.pending.values())
        factor = max(0.0, self.steps_left / expected) if expected else 0.0
        return sum(
            job_seconds(j, self.speeds, min(1.0, factor * _share(self.shares, j)))
            for j in self.pending.values()
        )

    @property
    def done_share(self) -> float:
        """The finished runs' share of the modelled work (theirs at the steps they took)."""
        return self.modelled / max(1e-9, self.modelled + self._modelled_left())

    def seconds_left(self) -> float:
        """Wall seconds until the report is written."""
        speed = self.measured / self.modelled if self.modelled else 1.0
        busy = max(1, min(self.workers, len(self.pending)))  # the last runs leave workers idle
        return speed * self._modelled_left() / busy + REPORT_SECONDS_PER_RUN * self.runs
