"""The training loop: deterministic, resumable after SIGKILL, and the same code on one CPU, one GPU or many.

Exact resumption rests on three things. (1) The order of samples is a pure function of (seed, epoch)
(``batches.epoch_batches``), and a resumed run skips the batches its checkpoint had done. (2) Samples and
augmentations are pure functions of (seed, epoch, index) (``atrous.data``). (3) A checkpoint holds the weights,
optimizer, scheduler, RNG states (dropout) and the partial sums of the epoch's training loss;
``metrics.jsonl`` is cut back to the checkpoint's step on resume, so a line written after the last checkpoint
is recomputed, identically, rather than lost or duplicated.

On a GPU nothing waits for the device inside a step: the loss is summed on the device and the divergence check
keeps the first non-finite step on the device too; both are read at log points (progress refresh, checkpoint,
end of epoch), and a diverged run stops there, before anything is saved. On a CPU, where reading a value
costs nothing, the check runs before every step, so a divergence stops the run before its optimizer step.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from atrous.data.synthetic import SyntheticTask
from atrous.device import autocast, check_compile, check_precision, synchronize
from atrous.errors import OptionError, option
from atrous.fileio import write_atomic
from atrous.train import checkpoint as ckpt
from atrous.train.averaging import WeightAverage
from atrous.train.batches import BatchStream, epoch_batches, rank_slice
from atrous.train.config import TrainConfig
from atrous.train.distributed import Dist, all_reduce_min, all_reduce_sum, setup, teardown
from atrous.train.evaluate import evaluate
from atrous.train.logbook import Logbook, truncate_metrics
from atrous.train.losses import make_loss
from atrous.train.metrics import AGGREGATION
from atrous.train.setup import (
    WithAux,
    build_model,
    check_last_batch,
    load_datasets,
    make_optimizer,
    make_schedule,
    plan_steps,
    prepare_run_dir,
)

TIMING_KEYS = (
    "seconds",
    "img_per_s",
    "val_seconds",
)  # measured: excluded when runs are compared for equality

__all__ = ["TIMING_KEYS", "FitResult", "TrainingDiverged", "evaluate", "fit"]


class TrainingDiverged(OptionError):
    """The loss became NaN or infinite."""


@dataclass
class LoopState:
    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0  # global batches already done in ``epoch``
    loss_sum: float = 0.0  # training loss summed over the epoch's images so far (all ranks)
    loss_count: int = 0
    seconds: float = 0.0
    best_miou: float = -1.0
    best_step: int = -1
    # Times the schedule's rate; set by ``fit``'s ``lr_scale`` callback (the lab audit's final anneal).
    lr_scale: float = 1.0


@dataclass
class FitResult:
    run_dir: Path
    history: list[dict[str, Any]]
    best_miou: float
    steps: int
    first_step_seconds: float | None = None  # wall time of the first step: start-up, autotuning, compilation

    @property
    def steady_img_per_s(self) -> float | None:
        """Training images per second after the first step (one-epoch runs: the epoch's time less that step)."""
        if len(self.history) != 1 or self.first_step_seconds is None or self.steps < 2:
            return None
        rec = self.history[0]
        per_step = rec["img_per_s"] * rec["seconds"] / self.steps
        return per_step * (self.steps - 1) / (rec["seconds"] - self.first_step_seconds)


def fit(
    cfg: TrainConfig,
    resume: bool = False,
    overwrite: bool = False,
    console: Console | None = None,
    until: Callable[[dict], bool] | None = None,
    lr_scale: Callable[[dict], float] | None = None,
    epoch_checkpoints: bool = True,
) -> FitResult:
    """Train per ``cfg`` (see the module docstring); ``resume`` continues ``cfg.out`` from its last checkpoint;
    ``until(record)`` ends training after the first epoch whose metrics record satisfies it; ``lr_scale(record)``,
    asked after each epoch before ``until``, multiplies the schedule's learning rate from the next step on.
    ``epoch_checkpoints=False``: one checkpoint (``last``) when training ends, none per epoch and no ``best``: for
    runs that are never resumed (the lab's, whose per-epoch writes with their fsyncs took ~13 ms an epoch, 3-4 % of
    a small model's run). It holds what the last epoch's would, but for a learning-rate scale that ``lr_scale``
    changed after the last epoch; a run that diverges writes none."""
    console = console or Console()
    d = setup(cfg.device)
    finished = False
    try:
        result = Trainer(cfg, resume, overwrite, console, d, epoch_checkpoints).run(until, lr_scale)
        finished = True
        return result
    finally:
        teardown(d, finished)


@dataclass
class _DeviceSums:
    """Per-epoch sums kept on the device: the training loss (float64, like the host sum it replaces) and the
    first step whose loss was not finite (inf while there is none)."""

    device: torch.device
    loss: torch.Tensor = field(init=False)
    first_bad: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        self.reset(0.0)
        self.first_bad = torch.full((), math.inf, dtype=torch.float64, device=self.device)

    def reset(self, loss: float) -> None:
        self.loss = torch.full((), loss, dtype=torch.float64, device=self.device)


class Trainer:
    """One run: built (every check passed, nothing written) in ``__init__``, trained by ``run``."""

    def __init__(
        self,
        cfg: TrainConfig,
        resume: bool,
        overwrite: bool,
        console: Console,
        d: Dist,
        epoch_checkpoints: bool = True,
    ) -> None:
        self.epoch_checkpoints = epoch_checkpoints
        self.run_dir, cfg = prepare_run_dir(cfg, resume, overwrite, d.main)
        cfg.validate()
        check_precision(cfg.precision, d.device)
        if cfg.compile:
            check_compile(d.device)
        self.d, self.console, self.resume = d, console, resume
        self.train_set, self.val_set = load_datasets(cfg)
        self.model, self.cfg = build_model(cfg, self.train_set)
        cfg = self.cfg
        if cfg.precision == "bf16" and d.device.type == "cpu":
            console.print(
                "note: bf16 convolutions fall back to slow kernels on this CPU (no AVX512-BF16/AMX)"
            )
        self.ignore = getattr(self.train_set, "ignore_index", 255)
        self.loss_fn = make_loss(cfg.loss, self.model.num_classes, cfg.dice_per_image, self.ignore)
        self.total, self.epochs, self.drop_last = plan_steps(cfg, len(self.train_set), d.world)
        check_last_batch(self.model, cfg, self.train_set, self.drop_last)
        self.model.to(d.device)
        if cfg.channels_last:
            self.model.to(memory_format=torch.channels_last)
        # The averaged copy (when cfg.ema) is what validation sees and checkpoints hold; the raw weights train.
        self.ema = WeightAverage(self.model, cfg.ema) if cfg.ema else None
        self.evaluated = self.ema.module if self.ema is not None else self.model
        self.optimizer = make_optimizer(cfg, self.model)
        self.state = LoopState()
        schedule = make_schedule(cfg, self.total)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: schedule(step) * self.state.lr_scale
        )
        self.sums = _DeviceSums(d.device)
        self.history: list[dict] = []
        # On a CPU a value is read at no cost, so the divergence check runs before every optimizer step.
        self.eager_checks = d.device.type == "cpu"
        on_device = None if not cfg.cpu_data else False
        self.stream = BatchStream(self.train_set, d.device, cfg.workers, on_device)
        self.val_stream = (
            BatchStream(self.val_set, d.device, cfg.workers, on_device) if self.val_set is not None else None
        )
        self.first_step_seconds: float | None = None

    # -- the run ----------------------------------------------------------------------------------------------
    def run(
        self, until: Callable[[dict], bool] | None, lr_scale: Callable[[dict], float] | None = None
    ) -> FitResult:
        if self.resume:
            self._restore()
        elif self.d.main:
            self._start_run_dir()
        self.net = self._wrap()
        self.net.train()
        done = self.state.step
        with Logbook(self.run_dir, self.console, self.d.main, self.cfg.tensorboard, self.total, done) as log:
            while self.state.step < self.total and self.state.epoch < self.epochs:
                self._train_epoch(log)
                record = self._end_epoch(log)
                if lr_scale is not None:
                    self._rescale_lr(lr_scale(record))
                if until is not None and until(record):
                    break
        if not self.epoch_checkpoints:
            self._save(("last",))
        return FitResult(
            self.run_dir, self.history, self.state.best_miou, self.state.step, self.first_step_seconds
        )

    def _rescale_lr(self, scale: float) -> None:
        """From the next step on, the schedule's learning rate times ``scale`` (the scheduler would apply it only
        after that step)."""
        if scale == self.state.lr_scale:
            return
        self.state.lr_scale = scale
        sched = self.scheduler
        for group, rule, base in zip(
            self.optimizer.param_groups, sched.lr_lambdas, sched.base_lrs, strict=True
        ):
            group["lr"] = base * rule(sched.last_epoch)
        sched._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def _wrap(self) -> torch.nn.Module:
        """The module that trains: main and auxiliary logits, DDP (SyncBatchNorm on GPUs), torch.compile."""
        net: torch.nn.Module = WithAux(self.model)
        d = self.d
        if d.enabled:
            if d.device.type == "cuda":
                net = torch.nn.SyncBatchNorm.convert_sync_batchnorm(net)
            net = torch.nn.parallel.DistributedDataParallel(
                net, device_ids=[d.device] if d.device.type == "cuda" else None
            )
        return torch.compile(net) if self.cfg.compile else net

    def _train_epoch(self, log: Logbook) -> None:
        cfg, state, d = self.cfg, self.state, self.d
        batches = epoch_batches(
            len(self.train_set), cfg.batch_size, cfg.seed, state.epoch, drop_last=self.drop_last
        )
        todo = [rank_slice(b, d.rank, d.world) for b in batches[state.batch_in_epoch :]]
        todo = todo[: self.total - state.step]
        start = time.perf_counter()
        for x, y in self.stream(todo, state.epoch):
            first = self.first_step_seconds is None
            loss = self._step(x, y)
            if first:
                synchronize(d.device)
                self.first_step_seconds = time.perf_counter() - start
                if d.main and cfg.compile:
                    self.console.print(
                        f"torch.compile: the first step (compilation) took {self.first_step_seconds:.1f} s"
                    )
            state.step += 1
            state.batch_in_epoch += 1
            state.loss_count += len(x) * d.world
            log.step(loss, state.epoch + 1, self.epochs)
            mid_epoch = state.batch_in_epoch < len(batches)
            if cfg.checkpoint_every and state.step % cfg.checkpoint_every == 0 and mid_epoch:
                synchronize(d.device)
                state.seconds += time.perf_counter() - start
                start = time.perf_counter()
                self._save(("last",))
            if state.step >= self.total:
                break
        synchronize(d.device)
        state.seconds += time.perf_counter() - start

    def _step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(self.d.device, self.cfg.precision):
            out, aux = self.net(x)
            loss = self.loss_fn(out.float(), y)
            if aux is not None:
                loss = loss + self.cfg.aux_weight * self.loss_fn(aux.float(), y)
        value = loss.detach().float()
        self.sums.loss += (value * len(x)).double()
        if self.eager_checks:
            self._raise_if_diverged(value)
        else:
            step = torch.full_like(self.sums.first_bad, self.state.step + 1)
            bad = torch.where(torch.isfinite(value), math.inf, step)
            torch.minimum(self.sums.first_bad, bad, out=self.sums.first_bad)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.clip_grad:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.clip_grad)
        self.optimizer.step()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        return value

    # -- divergence ---------------------------------------------------------------------------------------------
    def _raise_if_diverged(self, value: torch.Tensor | None = None) -> None:
        """Eager (CPU): ``value`` is this step's loss. Deferred (GPU): read the first bad step kept on the device."""
        if value is not None:
            total = all_reduce_sum(value.clone(), self.d)
            if torch.isfinite(total):
                return
            what, step = f"loss became {total.item()}", self.state.step + 1
        else:
            first = float(all_reduce_min(self.sums.first_bad.clone(), self.d))
            if math.isinf(first):
                return
            what, step = "loss became non-finite (nan or inf)", int(first)
        last = self.run_dir / "last"
        where = (
            f"the last good checkpoint is {last} (step {ckpt.verify(last)['step']})"
            if last.exists()
            else "no checkpoint had been written yet"
        )
        raise TrainingDiverged(
            f"{what} at step {step} (epoch {self.state.epoch + 1}); {where}; "
            f"lower {option('lr')} or add {option('warmup')}"
        )

    # -- epochs, checkpoints --------------------------------------------------------------------------------
    def _end_epoch(self, log: Logbook) -> dict:
        state = self.state
        loss_sum = self._synced_loss_sum()
        record = {
            "epoch": state.epoch + 1,
            "step": state.step,
            "train_loss": loss_sum / max(1, state.loss_count),
            "lr": self.scheduler.get_last_lr()[0],
            "seconds": state.seconds,
            "img_per_s": state.loss_count / max(state.seconds, 1e-9),
        }
        if self.val_set is not None:
            cfg = self.cfg
            started = time.perf_counter()
            record["val"] = evaluate(
                self.evaluated,
                self.val_set,
                cfg.eval_batch_size or cfg.batch_size,
                self.d.device,
                self.d,
                cfg.channels_last,
                precision=cfg.precision,
                stream=self.val_stream,
            )
            synchronize(self.d.device)
            record["val_seconds"] = time.perf_counter() - started
        record["aggregation"] = AGGREGATION
        miou = record.get("val", {}).get("miou", -state.step)
        improved = miou > state.best_miou
        if improved:
            state.best_miou, state.best_step = miou, state.step
        state.epoch += 1
        state.batch_in_epoch = 0
        state.loss_sum, state.loss_count, state.seconds = 0.0, 0, 0.0
        self.sums.reset(0.0)
        if self.d.main:
            self.history.append(record)
        log.epoch(record, self.epochs)
        if self.epoch_checkpoints:
            self._save(("last", "best") if improved else ("last",), check=False)
        return record

    def _synced_loss_sum(self) -> float:
        """The epoch's loss sum over all ranks, read from the device (a log point: divergence is checked)."""
        self._raise_if_diverged()
        total = float(all_reduce_sum(self.sums.loss.clone(), self.d))
        # Under DDP each rank restarts its device sum from its share; rank 0 carries a resumed partial sum.
        self.state.loss_sum = total
        return total

    def _save(self, links: tuple[str, ...], check: bool = True) -> None:
        if check:
            self._synced_loss_sum()
        if not self.d.main:
            return
        rng = {"rng_torch": torch.get_rng_state()}
        if self.d.device.type == "cuda":
            rng["rng_cuda"] = torch.cuda.get_rng_state(self.d.device)
        payload = {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            **rng,
            "loop": asdict(self.state),
        }
        if self.ema is not None:  # the checkpoint's model file holds the average; training resumes from these
            payload["raw_model"] = self.model.state_dict()
            payload["ema_n_averaged"] = self.ema.n_averaged.clone()
        meta = {"model": self.cfg.model, "model_kwargs": self.cfg.model_kwargs, "epoch": self.state.epoch}
        meta.update(self._data_meta())
        ckpt.save_checkpoint(self.run_dir, self.state.step, self.evaluated.state_dict(), payload, meta, links)

    def _data_meta(self) -> dict[str, Any]:
        ds = self.train_set
        return {
            "data": self.cfg.data,
            "class_names": list(ds.class_names),
            "palette": [list(c) for c in getattr(ds, "palette", None) or []] or None,
            "ignore_index": self.ignore,
            "normalization": "imagenet" if not isinstance(ds, SyntheticTask) else "none",
            "in_channels": self.model.in_channels,
        }

    # -- starting and resuming -------------------------------------------------------------------------------
    def _start_run_dir(self) -> None:
        run = self.run_dir
        if run.exists():
            shutil.rmtree(run)
        run.mkdir(parents=True)
        write_atomic(run / "config.json", json.dumps(self.cfg.to_json(), indent=2))
        skipped = getattr(self.train_set, "skipped", [])
        if skipped:
            self.console.print(f"--skip-bad: left out {len(skipped)} file(s):")
            for p in skipped:
                self.console.print(f"  {p.line()}")

    def _restore(self) -> None:
        last = self.run_dir / "last"
        if last.exists():
            ckpt.load_into(self.evaluated, last)
            saved = ckpt.load_state(last)
            if self.ema is not None:
                self.model.load_state_dict(saved["raw_model"])
                self.ema.n_averaged.copy_(saved["ema_n_averaged"])
            self.optimizer.load_state_dict(saved["optimizer"])
            self.scheduler.load_state_dict(saved["scheduler"])
            torch.set_rng_state(saved["rng_torch"])
            if self.d.device.type == "cuda" and "rng_cuda" in saved:
                torch.cuda.set_rng_state(saved["rng_cuda"], self.d.device)
            self.state = LoopState(**saved["loop"])
            # The saved sum covers all ranks: rank 0 carries it on, the others restart from zero.
            self.sums.reset(self.state.loss_sum if self.d.main else 0.0)
        if self.d.main:
            self.history = truncate_metrics(self.run_dir / "metrics.jsonl", self.state.step)
            self.console.print(
                f"resuming {self.run_dir} at step {self.state.step} (epoch {self.state.epoch + 1})"
            )
