"""Training jobs of the lab, run in parallel single-threaded processes.

A job's result depends only on its fields (the seed drives data, initialisation and order), so the lab's
numbers do not depend on how many processes run or which finishes first. One thread per job keeps float
reductions identical between runs; two processes use both cores.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import multiprocessing
import os
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Executor, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from atrous.lab import convergence

if TYPE_CHECKING:
    from atrous.train.config import TrainConfig

# Validation batches of 32: a model in eval mode gives each image the same logits whatever the batch (up to float
# rounding), and per image it ran 1.1-1.7x faster than at the training batch of 8 on the lab's models.
EVAL_BATCH = 32


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
    schedule: str = "constant"  # constant after warm-up: a stopped run is the prefix of a longer one
    ema: float = 0.0  # weight averaging: a stable end point at a constant learning rate
    clip_grad: float = 0.0  # largest global gradient norm of a step (0: off)
    # The convergence rule; False: train all ``steps``, the last epochs annealed (the audit's long runs).
    stop_early: bool = True
    label: str = ""  # for the progress display only

    @property
    def key(self) -> str:
        fields = {k: v for k, v in asdict(self).items() if k != "label"}
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def run_job(job: Job, root: str, device: str = "cpu") -> dict[str, Any]:
    """Train one model (one thread) on ``device`` and return its curves, final metrics and costs."""
    import torch
    from rich.console import Console

    from atrous.models.unet import GriddingWarning
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
        schedule=job.schedule,
        ema=job.ema,
        clip_grad=job.clip_grad,
        out=str(run_dir),
        device=device,
        eval_batch_size=max(job.batch_size, EVAL_BATCH),
    )
    start = time.perf_counter()
    render_splits(cfg)
    reach = reach_for(job.model, job.data, job.seed)
    seen: list[dict] = []

    def stop(record: dict) -> bool:
        seen.append(record)
        return convergence.should_stop(*curves(seen), record["val"]["iou"], reach)

    def anneal(record: dict) -> float:
        return convergence.final_anneal(record["step"], record["step"] // record["epoch"], job.steps)

    with warnings.catch_warnings():
        # A dilated U-Net's bottleneck alone may be gridded; the lab chose its rates because the whole network
        # is hole-free (design.py), which the warning about the bottleneck cannot know.
        warnings.simplefilter("ignore", GriddingWarning)
        # Lab runs are never resumed (a rerun trains again): one checkpoint at the end, none per epoch.
        fit_args = {"overwrite": True, "console": Console(quiet=True), "epoch_checkpoints": False}
        if job.stop_early:
            result = fit(cfg, until=stop, **fit_args)
        else:
            result = fit(cfg, lr_scale=anneal, **fit_args)
        model = load(run_dir / "last")
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
        "health": convergence.health(*curves(history), history[-1]["val"]["iou"], reach),
        "out_of_reach": sorted(reach.out_of_reach),  # classes the health check excused
        # Per class, the IoU its RF guarantees (the health check holds a class to it where it is under 1).
        "floors": list(reach.floors),
        **model_costs(job.model, job.data, model),
        "steps": result.steps,
        "timing": {
            "train_img_s": images / seconds if seconds else 0.0,
            "train_seconds": seconds,
            "first_step_seconds": result.first_step_seconds or 0.0,
            "val_seconds": sum(r.get("val_seconds", 0.0) for r in result.history),
            "job_seconds": time.perf_counter() - start,
        },
        "run_dir": str(run_dir),
    }


def render_splits(cfg: TrainConfig) -> None:
    """Draw the run's synthetic splits into this process's store (``data.synthetic``) before training starts, so
    that the training steps' time is the model's alone. Drawn lazily, a split's images were drawn during the first
    steps that used them: the calibration's 12 timed steps then measured small models at up to 2x their
    rate in the runs (the quick lab's estimate 25 % high, BENCHMARKS.md). A run pays the same either way. On a GPU
    the images are composed on the device (``BatchStream``) and the store is not read: nothing to draw."""
    from atrous.train.setup import load_datasets

    if cfg.device.startswith("cuda") and not cfg.cpu_data:
        return
    for split in load_datasets(cfg):
        if split is not None and getattr(split, "cached", False):
            for index in range(len(split)):
                split[index]


def reach_for(model: str, data: str, seed: int) -> convergence.Reach:
    """What ``model``'s RF lets it decide of ``data``'s classes, as a run with ``seed`` is judged."""
    return convergence.Reach(out_of_reach(model, data, seed), floors(model, data, seed))


def reach_of(result: dict) -> convergence.Reach:
    """The ``Reach`` a finished run's health was judged with."""
    return convergence.Reach(frozenset(result["out_of_reach"]), tuple(result["floors"]))


def curves(history: list[dict]) -> tuple[list[float], list[float]]:
    """The validation mIoU and training loss per epoch of a run's history: what the stopping rule reads."""
    return [h["val"]["miou"] for h in history], [h["train_loss"] for h in history]


_COSTS: dict[tuple[str, str], dict[str, float]] = {}


def model_costs(model: str, data: str, net) -> dict[str, float]:
    """Parameters and FLOPs per image of ``net`` (built from ``model`` for ``data``): counted once per process,
    as every seed's model has the same ones (counting FLOPs takes ~0.1 s)."""
    if (model, data) not in _COSTS:
        from atrous.data import build_dataset
        from atrous.flops import count_flops, count_params

        shape = tuple(build_dataset(data)[0][0].shape)
        _COSTS[model, data] = {"params": count_params(net), "flops": count_flops(net, shape)}
    return _COSTS[model, data]


def out_of_reach(model: str, data: str, seed: int = 0) -> frozenset[int]:
    """Labels of the size classes of a task of squares that the model cannot decide anywhere: even the centre of
    their squares (the pixels that need the least context, ``need_block``) needs more than the model's RF; or,
    for a model whose logits are repeated over stride x stride blocks (nearest resize), the class is the most
    frequent label of no such block of the run's training images (``seed``: the run's), so the model is never
    taught to output it."""
    from atrous.data import build_dataset
    from atrous.data.synthetic import class_need_blocks
    from atrous.lab.design import describe

    ds = build_dataset(data, seed=seed)
    extents = getattr(ds, "extents", None)
    if not extents or getattr(ds, "shape", None) != "square":
        return frozenset()
    described = describe("", model, ds.size)
    blocky = block_outvoted(ds, described.output_stride) if nearest_logits(model) else frozenset()
    if described.rf is None:  # global: sees everything
        return blocky
    blocks = class_need_blocks(extents)
    # size class k is label k + 1 (size_class_objects)
    return blocky | frozenset(k + 1 for k, e in enumerate(extents) if int(blocks[e].min()) > described.rf)


# The largest stride of the grid a model's logits are resized from for which it has floors. The floor assumes
# that the model can label each pixel on its own. The lab's stride-2 heads (bilinear) do: they solved their tasks
# with every class at 0.97-1.0 IoU on the design seeds. A model whose logits come from a grid 8 px apart cannot
# draw a square's edges to the pixel (``stride.min_width``: its boundary band is about a stride wide), so it has
# none, whether its logits are resized bilinearly (``full``'s DeepLab) or repeated (``quick``'s).
FLOOR_MAX_STRIDE = 2


def floors(model: str, data: str, seed: int = 0) -> tuple[float | None, ...]:
    """Per class, the IoU that ``model`` reaches at least on the validation split of ``data`` (as a run with
    ``seed`` draws it) if it labels every pixel within its RF correctly (``bands.iou_floors``; None for a class
    with no pixel in the split). Empty where that is unknown: tasks without per-pixel needs (shapes, discs), and
    models whose logits are resized from a grid more than ``FLOOR_MAX_STRIDE`` pixels apart."""
    from atrous.data import build_dataset
    from atrous.lab.bands import iou_floors, need_counts
    from atrous.lab.design import describe

    ds = build_dataset(data, seed=seed)
    if getattr(ds, "shape", None) != "square" or not getattr(ds, "extents", None):
        return ()
    described = describe("", model, ds.size)
    if described.output_stride > FLOOR_MAX_STRIDE or nearest_logits(model):
        return ()
    return iou_floors(need_counts(data, seed), described.rf)


@functools.lru_cache(maxsize=64)  # as design.describe: one build per spec and process
def nearest_logits(model: str) -> bool:
    from atrous.models.registry import create_model
    from atrous.models.unet import GriddingWarning

    with warnings.catch_warnings():  # as in run_job: the lab's dilated U-Nets are hole-free as a whole
        warnings.simplefilter("ignore", GriddingWarning)
        return getattr(create_model(model), "upsample", None) == "nearest"


def block_outvoted(ds, stride: int) -> frozenset[int]:
    """Labels that are the most frequent label (ties count for every label tied) of no ``stride`` x ``stride``
    block of any image of ``ds``: logits repeated over the blocks cannot win on them. Empty when the image side
    is not a multiple of the stride (the blocks would not be aligned with the image)."""
    import torch

    if stride <= 1 or ds.size % stride:
        return frozenset()
    won = torch.zeros(ds.num_classes, dtype=torch.bool)
    for i in range(len(ds)):
        y = ds[i][1]
        g = ds.size // stride
        counts = torch.nn.functional.one_hot(y.reshape(g, stride, g, stride), ds.num_classes).sum((1, 3))
        won |= (counts == counts.amax(-1, keepdim=True)).reshape(-1, ds.num_classes).any(0)
    return frozenset(int(c) for c in torch.nonzero(~won).flatten())


def exit_with_parent(parent: int) -> None:
    """In each worker: leave when the lab's process is gone. A lab killed by SIGTERM or SIGKILL cannot shut its
    pool down, and its workers would otherwise wait for work forever."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


@contextlib.contextmanager
def worker_pool(workers: int) -> Iterator[Executor | None]:
    """The lab's worker processes (None for one worker: jobs then run in this process). One pool serves the
    calibration and the training runs, so the workers start (spawn, imports: seconds each) once."""
    if workers <= 1:
        yield None
        return
    # spawn: fresh interpreters, no OpenMP state inherited from this process.
    ctx = multiprocessing.get_context("spawn")
    env_threads = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        pool_args = {"initializer": exit_with_parent, "initargs": (os.getpid(),)}
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, **pool_args) as pool:
            try:
                yield pool
            except BaseException:
                # A failed run or Ctrl-C: the runs still queued are cancelled (not those already started).
                pool.shutdown(wait=True, cancel_futures=True)
                raise
    finally:
        if env_threads is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = env_threads


def run_jobs(
    jobs: list[Job],
    root: Path,
    workers: int,
    on_done: Callable[[Job, dict, int, int], None] | None = None,
    device: str = "cpu",
    pool: Executor | None = None,
) -> dict[str, dict[str, Any]]:
    """Run every distinct job once, in the order given (longest first keeps the workers busy to the end);
    results keyed by ``Job.key``. ``on_done(job, result, done, total)`` after each. ``pool``: a
    :func:`worker_pool` to run them in (default: one of ``workers`` processes, for these jobs only)."""
    unique = list({j.key: j for j in jobs}.values())
    root.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, Any]] = {}
    if pool is None and workers > 1:
        with worker_pool(workers) as own:
            return run_jobs(unique, root, workers, on_done, device, own)
    if pool is None:
        for i, job in enumerate(unique):
            results[job.key] = run_job(job, str(root), device)
            if on_done:
                on_done(job, results[job.key], i + 1, len(unique))
        return results
    pending = {pool.submit(run_job, job, str(root), device): job for job in unique}
    done_count = 0
    while pending:
        done, _ = wait(pending, return_when=FIRST_COMPLETED)
        for future in done:
            job = pending.pop(future)
            results[job.key] = future.result()
            done_count += 1
            if on_done:
                on_done(job, results[job.key], done_count, len(unique))
    return results
