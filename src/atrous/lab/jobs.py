"""Training jobs of the lab, run in parallel single-threaded processes.

A job's result depends only on its fields (the seed drives data, initialisation and order), so the lab's
numbers do not depend on how many processes run or which finishes first. One thread per job keeps float
reductions identical between runs; two processes use both cores.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Job:
    model: str
    data: str
    seed: int
    steps: int
    batch_size: int
    lr: float
    loss: str = "dice+ce"
    warmup: int = 0
    label: str = ""  # for the progress display only

    @property
    def key(self) -> str:
        fields = {k: v for k, v in asdict(self).items() if k != "label"}
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def run_job(job: Job, root: str, device: str = "cpu") -> dict[str, Any]:
    """Train one model (one thread) on ``device`` and return its curves, final metrics and costs."""
    import torch
    from rich.console import Console

    from atrous.flops import count_flops, count_params
    from atrous.train.config import TrainConfig
    from atrous.train.inference import load
    from atrous.train.loop import TIMING_KEYS, fit

    torch.set_num_threads(1)
    if device != "cpu":  # the same algorithms every run (atomics in some backward kernels still differ)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    run_dir = Path(root) / job.key
    cfg = TrainConfig(
        model=job.model,
        data=job.data,
        steps=job.steps,
        batch_size=job.batch_size,
        lr=job.lr,
        loss=job.loss,
        seed=job.seed,
        warmup=job.warmup,
        out=str(run_dir),
        device=device,
    )
    result = fit(cfg, overwrite=True, console=Console(quiet=True))
    model = load(run_dir / "last")
    from atrous.data import build_dataset

    sample = build_dataset(job.data)[0][0]
    history = [
        {k: v for k, v in r.items() if k not in TIMING_KEYS and k != "aggregation"} for r in result.history
    ]
    images = sum(r["img_per_s"] * r["seconds"] for r in result.history)
    seconds = sum(r["seconds"] for r in result.history)
    return {
        "key": job.key,
        "job": asdict(job),
        "history": history,
        "final": history[-1]["val"],
        "params": count_params(model),
        "flops": count_flops(model, tuple(sample.shape)),
        "timing": {"train_img_s": images / seconds if seconds else 0.0, "train_seconds": seconds},
        "run_dir": str(run_dir),
    }


def run_jobs(
    jobs: list[Job],
    root: Path,
    workers: int,
    on_done: Callable[[Job, int, int], None] | None = None,
    device: str = "cpu",
) -> dict[str, dict[str, Any]]:
    """Run every distinct job once; results keyed by ``Job.key``."""
    unique = list({j.key: j for j in jobs}.values())
    root.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, Any]] = {}
    if workers <= 1:
        for i, job in enumerate(unique):
            results[job.key] = run_job(job, str(root), device)
            if on_done:
                on_done(job, i + 1, len(unique))
        return results
    # spawn: fresh interpreters, no OpenMP state inherited from this process.
    ctx = multiprocessing.get_context("spawn")
    env_threads = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            pending = {pool.submit(run_job, job, str(root), device): job for job in unique}
            done_count = 0
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    job = pending.pop(future)
                    results[job.key] = future.result()
                    done_count += 1
                    if on_done:
                        on_done(job, done_count, len(unique))
    finally:
        if env_threads is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = env_threads
    return results
