"""How long the lab will take on this machine, measured before it starts.

Two short timings on one thread fit the cost of a training step as ``a + b * FLOPs``: ``a`` is what a step
costs whatever the model (Python, dispatch, the optimizer), ``b`` the machine's speed on convolutions. Each
job's cost is then its steps and validation passes under that line. Machines of the same kind differ by 2x and
more, so the estimate comes from the machine itself, not from a table.
"""

from __future__ import annotations

import math
import statistics
import time
import warnings
from functools import lru_cache

import torch

from atrous.data import build_dataset
from atrous.flops import count_flops
from atrous.lab.jobs import Job
from atrous.models.registry import create_model
from atrous.models.unet import GriddingWarning

PROBES = (("convstack:width=4", 16), ("unet:width=16,depth=1", 48))  # (model, image side): cheap and typical
PER_JOB_SECONDS = 1.0  # building data and model, checkpoints, the job's process hand-over (measured: ~1 s)
# What the two probes leave out: two processes sharing the cores, the loss, validation every epoch, weight
# averaging, checkpoints. Measured once as wall time / modelled time of the quick preset on its design seeds
# (10, 11, 12; runs/lab-design: 441 s against 244 s modelled for the steps the runs took); checked on the other
# seed sets in BENCHMARKS.md.
OVERHEAD = 1.8


@lru_cache(maxsize=512)
def _shape_and_flops(model: str, data: str) -> tuple[int, int, float]:
    """(training images, validation images, forward FLOPs per image) of a job; builds both, so a bad spec fails
    here, before any training."""
    ds = build_dataset(data)
    with warnings.catch_warnings():  # see jobs.run_job: the lab's dilated U-Nets are hole-free as a whole
        warnings.simplefilter("ignore", GriddingWarning)
        net = create_model(model, num_classes=ds.num_classes)
    shape = tuple(ds[0][0].shape)
    return len(ds), max(32, len(ds) // 4), float(count_flops(net, shape))


def job_steps_flops(job: Job) -> tuple[int, float]:
    """(optimizer steps, FLOPs) of a job run to its step limit: forward + backward ~ 3 forwards, plus one
    validation pass per epoch."""
    n, n_val, fwd = _shape_and_flops(job.model, job.data)
    epochs = math.ceil(job.steps / math.ceil(n / job.batch_size))
    return job.steps, 3 * fwd * job.batch_size * job.steps + fwd * n_val * epochs


def job_cost(job: Job) -> float:
    """A relative cost, for ordering the jobs (longest first)."""
    steps, flops = job_steps_flops(job)
    return flops + 2e6 * steps


def _step_seconds(model: str, side: int, device: str, steps: int = 12) -> tuple[float, float]:
    """(seconds per training step at batch 16, FLOPs per step) on one thread: the median of ``steps`` timed
    steps. With the mean of four, as before, the fixed cost per step that ``machine_speed`` fits moved between
    6.4 and 9.4 ms in four calls in a row on an idle machine (one slow step in four is enough); with the median
    of twelve, between 6.4 and 7.6 ms."""
    net = create_model(model, num_classes=3).to(device)
    x = torch.randn(16, 3, side, side, device=device)
    y = torch.randint(0, 3, (16, side, side), device=device)
    opt = torch.optim.AdamW(net.parameters(), 1e-3)

    def step() -> float:
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
        if device != "cpu":  # the step's kernels must finish inside its timed window
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    step()  # warm-up: allocations and first-call dispatch
    return statistics.median(step() for _ in range(steps)), 3 * count_flops(net, (3, side, side)) * 16


@lru_cache(maxsize=4)
def machine_speed(device: str = "cpu") -> tuple[float, float]:
    """(seconds per step whatever the model, seconds per FLOP) on one thread, from the two probes; measured once
    per process."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        (t0, f0), (t1, f1) = (_step_seconds(m, side, device) for m, side in PROBES)
    finally:
        torch.set_num_threads(threads)
    per_flop = max((t1 - t0) / (f1 - f0), 0.0)
    return max(t0 - per_flop * f0, 0.0), per_flop


def expected_seconds(jobs: list[Job], workers: int, device: str = "cpu", share: float = 1.0) -> float:
    """Wall time of the jobs on ``workers`` single-threaded processes if the runs take ``share`` of their step
    limits (1: every run to its cap)."""
    per_step, per_flop = machine_speed(device)
    total = 0.0
    for job in jobs:
        steps, flops = job_steps_flops(job)
        total += share * OVERHEAD * (per_step * steps + per_flop * flops) + PER_JOB_SECONDS
    return total / max(1, workers)
