"""The training loop: deterministic, resumable after SIGKILL, and the same code on one CPU or many GPUs.

Exact resumption rests on three things. (1) The order of samples is a pure function of (seed, epoch): each
epoch's global batches come from ``randperm`` with a generator seeded by both, and a resumed run skips the batches
its checkpoint had done. (2) Samples and augmentations are pure functions of (seed, epoch, index)
(``atrous.data``). (3) A checkpoint holds the weights, optimizer, scheduler, torch RNG (dropout) and the partial
sums of the epoch's training loss; ``metrics.jsonl`` is cut back to the checkpoint's step on resume, so a line
written after the last checkpoint is recomputed, identically, rather than lost or duplicated.

Under torchrun each global batch is split into equal contiguous slices, one per rank, so N processes with
per-rank batch B/N see exactly the samples one process with batch B sees.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from atrous.data import build_dataset
from atrous.data.synthetic import SyntheticTask
from atrous.errors import AtrousError, ModelError
from atrous.models.registry import create_model
from atrous.spec import parse_kwargs, split_spec
from atrous.train import checkpoint as ckpt
from atrous.train.config import ConfigError, TrainConfig
from atrous.train.distributed import Dist, all_reduce_sum, setup, teardown
from atrous.train.losses import make_loss
from atrous.train.metrics import AGGREGATION, SegmentationMetrics

TIMING_KEYS = ("seconds", "img_per_s")  # measured, so excluded when runs are compared for equality


class TrainingDiverged(AtrousError):
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


@dataclass
class FitResult:
    run_dir: Path
    history: list[dict[str, Any]]
    best_miou: float
    steps: int


# ------------------------------------------------------------------------------------------------------------
# Data order


def epoch_batches(
    n: int, batch: int, seed: int, epoch: int, shuffle: bool = True, drop_last: bool = False
) -> list[list[int]]:
    """The global batches of one epoch, a pure function of (n, batch, seed, epoch)."""
    if shuffle:
        gen = torch.Generator().manual_seed((seed * 1_000_003 + epoch) % (2**63))
        order = torch.randperm(n, generator=gen).tolist()
    else:
        order = list(range(n))
    batches = [order[i : i + batch] for i in range(0, n, batch)]
    if drop_last and batches and len(batches[-1]) < batch:
        batches.pop()
    return batches


def rank_slice(batch: list[int], d: Dist) -> list[int]:
    per = len(batch) // d.world
    return batch[d.rank * per : (d.rank + 1) * per]


def pad_collate(
    samples: list[tuple[torch.Tensor, torch.Tensor]], ignore_index: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack samples; different sizes (real data without crop) are padded: image 0, mask ``ignore_index``."""
    h = max(x.shape[1] for x, _ in samples)
    w = max(x.shape[2] for x, _ in samples)
    images, masks = [], []
    for x, y in samples:
        images.append(F.pad(x, [0, w - x.shape[2], 0, h - x.shape[1]]))
        masks.append(F.pad(y, [0, w - y.shape[1], 0, h - y.shape[0]], value=ignore_index))
    return torch.stack(images), torch.stack(masks)


def iterate(dataset, batches: list[list[int]], workers: int, ignore_index: int):
    collate = lambda s: pad_collate(s, ignore_index)  # noqa: E731
    if workers == 0:
        for idx in batches:
            yield collate([dataset[i] for i in idx])
        return
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=batches, num_workers=workers, collate_fn=collate
    )
    yield from loader


# ------------------------------------------------------------------------------------------------------------
# Setup


def default_val_spec(data: str) -> str | None:
    name, rest = split_spec(data)
    from atrous.data.synthetic import TASKS

    if name in TASKS:
        opts = parse_kwargs(rest, f"data spec {data!r}")
        n = int(opts.get("n", TASKS[name].__dataclass_fields__["n"].default))
        opts.update(split="val", n=max(32, n // 4))
        return f"{name}:" + ",".join(
            f"{k}={v}" if not isinstance(v, tuple) else f"{k}={','.join(map(str, v))}"
            for k, v in opts.items()
        )
    if name == "voc":
        return data if "split=" in data else f"{data}:split=val"
    return None


def resolve_model_kwargs(
    cfg: TrainConfig, num_classes: int, in_channels: int, probe: torch.nn.Module
) -> dict[str, Any]:
    """Fill in num_classes / in_channels from the data where the spec leaves them; refuse a mismatch.
    ``probe`` is the model as the spec alone builds it."""
    _, rest = split_spec(cfg.model)
    given = {**parse_kwargs(rest, f"model spec {cfg.model!r}"), **cfg.model_kwargs}
    kwargs = dict(cfg.model_kwargs)
    if probe.in_channels != in_channels:
        if "in_channels" in given:
            raise ModelError(
                f"model {cfg.model!r} takes {probe.in_channels} input channels but the data has "
                f"{in_channels}; drop in_channels from the spec or set it to {in_channels}"
            )
        kwargs["in_channels"] = in_channels
    compatible = probe.num_classes == num_classes or (probe.num_classes == 1 and num_classes == 2)
    if not compatible:
        if "num_classes" in given:  # the user asked for it: a mismatch is an error, not something to fix
            raise ModelError(
                f"model {cfg.model!r} predicts {probe.num_classes} classes but the data has {num_classes}; "
                f"set num_classes={num_classes} in the model spec"
            )
        kwargs["num_classes"] = num_classes
    return kwargs


def make_schedule(cfg: TrainConfig, total: int) -> Callable[[int], float]:
    """LR multiplier per step: linear warm-up, then poly (power 0.9), cosine, step (x0.1 at 1/2 and 3/4) or
    constant."""

    def factor(step: int) -> float:
        if step < cfg.warmup:
            return (step + 1) / cfg.warmup
        t = min(1.0, (step - cfg.warmup) / max(1, total - cfg.warmup))
        if cfg.schedule == "poly":
            return (1 - t) ** 0.9
        if cfg.schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * t))
        if cfg.schedule == "step":
            return 0.1 ** ((t >= 0.5) + (t >= 0.75))
        return 1.0

    return factor


def make_optimizer(cfg: TrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
    return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


class WithAux(torch.nn.Module):
    """Routes DDP's forward to ``forward_aux`` so the auxiliary head's gradients are synchronised too."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        if hasattr(self.model, "forward_aux"):
            return self.model.forward_aux(x)
        return self.model(x), None


def prepare_run_dir(cfg: TrainConfig, resume: bool, overwrite: bool, main: bool) -> tuple[Path, TrainConfig]:
    """Decide what RUN_DIR becomes without touching it yet; returns (run dir, effective config)."""
    run = Path(cfg.out)
    saved = run / "config.json"
    if resume:
        if not saved.is_file():
            raise ConfigError(f"--resume: {run} holds no run (no config.json); start it without --resume")
        old = TrainConfig.from_file(saved)
        if cfg.model or cfg.data:
            diff = old.differences(cfg)
            if diff:
                raise ConfigError(
                    f"--resume with a changed config: {', '.join(diff)} differ from {saved}; resume "
                    "with the same options (or none), or start a new run with another --out"
                )
        merged = TrainConfig.from_json(
            {**old.to_json(), **{k: getattr(cfg, k) for k in TrainConfig.RESUMABLE}}
        )
        return run, merged
    if run.exists() and any(run.iterdir()) and not overwrite:
        what = "another run" if saved.is_file() else "files that are not an atrous run"
        raise ConfigError(
            f"{run} already holds {what}; pass --overwrite to replace it, --resume to continue "
            "it, or choose another --out"
        )
    return run, cfg


def _truncate_metrics(path: Path, step: int) -> list[dict]:
    """Keep the complete lines up to ``step``: later ones are recomputed identically after a resume."""
    if not path.exists():
        return []
    kept = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            break  # a line cut by the kill
        if rec["step"] > step:
            break
        kept.append(rec)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
    os.replace(tmp, path)
    return kept


def _scalars(record: dict) -> list[tuple[str, float]]:
    out = [
        ("train/loss", record["train_loss"]),
        ("train/lr", record["lr"]),
        ("train/img_per_s", record["img_per_s"]),
    ]
    for key in ("miou", "mdice", "pixel_acc"):
        if "val" in record:
            out.append((f"val/{key}", record["val"][key]))
    return out


def _append_line(path: Path, record: dict) -> None:
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


# ------------------------------------------------------------------------------------------------------------
# Evaluation


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    dataset,
    batch_size: int,
    device: torch.device,
    d: Dist | None = None,
    channels_last: bool = False,
    workers: int = 0,
) -> dict[str, Any]:
    """Metrics of ``model`` on ``dataset`` (this rank's share of the batches; torchmetrics syncs the matrix)."""
    d = d or Dist()
    was_training = model.training
    model.eval()
    metrics = SegmentationMetrics(dataset.num_classes, getattr(dataset, "ignore_index", 255), device)
    batches = epoch_batches(len(dataset), batch_size, 0, 0, shuffle=False)[d.rank :: d.world]
    for x, y in iterate(dataset, batches, workers, getattr(dataset, "ignore_index", 255)):
        x = x.to(device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        metrics.update(model(x).float(), y.to(device))
    model.train(was_training)
    return metrics.compute().to_json()


# ------------------------------------------------------------------------------------------------------------
# The loop


def fit(
    cfg: TrainConfig,
    resume: bool = False,
    overwrite: bool = False,
    console: Console | None = None,
    until: Callable[[dict], bool] | None = None,
) -> FitResult:
    """Train per ``cfg`` (see the module docstring); ``resume`` continues ``cfg.out`` from its last checkpoint;
    ``until(record)`` ends training after the first epoch whose metrics record satisfies it."""
    console = console or Console()
    d = setup(cfg.device)
    try:
        return _fit(cfg, resume, overwrite, console, d, until)
    finally:
        teardown(d)


def _fit(
    cfg: TrainConfig,
    resume: bool,
    overwrite: bool,
    console: Console,
    d: Dist,
    until: Callable[[dict], bool] | None = None,
) -> FitResult:
    run, cfg = prepare_run_dir(cfg, resume, overwrite, d.main)
    cfg.validate()
    if d.enabled and cfg.batch_size % d.world:
        raise ConfigError(
            f"--batch-size {cfg.batch_size} is the global batch: it must divide by the {d.world} ranks"
        )
    train_set = build_dataset(
        cfg.data,
        split="train",
        seed=cfg.seed,
        augment=cfg.augment,
        crop=cfg.crop,
        check=True,
        skip_bad=cfg.skip_bad,
    )
    val_spec = cfg.val if cfg.val is not None else default_val_spec(cfg.data)
    if val_spec is None:
        raise ConfigError(
            f"give --val for {split_spec(cfg.data)[0]} data (or --val none to train without one)"
        )
    val_set = (
        None
        if val_spec == "none"
        else build_dataset(val_spec, split="val", seed=cfg.seed, check=True, skip_bad=cfg.skip_bad)
    )
    if val_set is not None and val_set.num_classes != train_set.num_classes:
        raise ConfigError(
            f"validation data has {val_set.num_classes} classes, training data {train_set.num_classes}"
        )
    # Built once after seeding; rebuilt (reseeded, so initial weights stay a function of the seed) only when
    # the data changes its class count or input channels.
    torch.manual_seed(cfg.seed)
    model = create_model(cfg.model, **cfg.model_kwargs)
    if not cfg.model_kwargs:
        cfg.model_kwargs = resolve_model_kwargs(cfg, train_set.num_classes, train_set.in_channels, model)
        if cfg.model_kwargs:
            torch.manual_seed(cfg.seed)
            model = create_model(cfg.model, **cfg.model_kwargs)
    if cfg.precision == "bf16" and d.device.type == "cpu":
        console.print("note: bf16 convolutions fall back to slow kernels on this CPU (no AVX512-BF16/AMX)")
    ignore = getattr(train_set, "ignore_index", 255)
    loss_fn = make_loss(cfg.loss, model.num_classes, cfg.dice_per_image, ignore)
    drop_last = d.enabled
    steps_per_epoch = len(epoch_batches(len(train_set), cfg.batch_size, cfg.seed, 0, drop_last=drop_last))
    if steps_per_epoch == 0:
        raise ConfigError(
            f"{len(train_set)} training samples make no full batch of {cfg.batch_size} across ranks"
        )
    total = cfg.steps if cfg.steps is not None else cfg.epochs * steps_per_epoch
    epochs = math.ceil(total / steps_per_epoch)

    model.to(d.device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(cfg, model)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, make_schedule(cfg, total))
    state = LoopState()
    metrics_path = run / "metrics.jsonl"
    history: list[dict] = []
    last = run / "last"
    if resume:
        if last.exists():
            ckpt.load_into(model, last)
            saved = ckpt.load_state(last)
            optimizer.load_state_dict(saved["optimizer"])
            scheduler.load_state_dict(saved["scheduler"])
            torch.set_rng_state(saved["rng_torch"])
            state = LoopState(**saved["loop"])
        if d.main:
            history = _truncate_metrics(metrics_path, state.step)
            console.print(f"resuming {run} at step {state.step} (epoch {state.epoch + 1})")
    elif d.main:
        if run.exists():
            shutil.rmtree(run)
        run.mkdir(parents=True)
        tmp = run / ".config.json.tmp"
        tmp.write_text(json.dumps(cfg.to_json(), indent=2))
        os.replace(tmp, run / "config.json")
        skipped = getattr(train_set, "skipped", [])
        if skipped:
            console.print(f"--skip-bad: left out {len(skipped)} file(s):")
            for p in skipped:
                console.print(f"  {p.line()}")

    net: torch.nn.Module = WithAux(model)
    if d.enabled:
        if d.device.type == "cuda":
            net = torch.nn.SyncBatchNorm.convert_sync_batchnorm(net)
        net = torch.nn.parallel.DistributedDataParallel(
            net, device_ids=[d.device] if d.device.type == "cuda" else None
        )
    has_aux = getattr(model, "aux_classifier", None) is not None
    data_meta = {
        "data": cfg.data,
        "class_names": list(train_set.class_names),
        "palette": [list(c) for c in getattr(train_set, "palette", None) or []] or None,
        "ignore_index": ignore,
        "normalization": "imagenet" if not isinstance(train_set, SyntheticTask) else "none",
    }
    eval_bs = cfg.eval_batch_size or cfg.batch_size

    def save(links: tuple[str, ...]) -> None:
        if not d.main:
            return
        payload = {
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng_torch": torch.get_rng_state(),
            "loop": asdict(state),
        }
        meta = {"model": cfg.model, "model_kwargs": cfg.model_kwargs, "epoch": state.epoch, **data_meta}
        ckpt.save_checkpoint(run, state.step, model.state_dict(), payload, meta, links)

    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeRemainingColumn(),
        console=console,
        disable=not (d.main and console.is_terminal),
    )
    autocast = torch.autocast(d.device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16")
    writer = None
    if cfg.tensorboard and d.main:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(run / "tensorboard"))
    net.train()
    with progress:
        task = progress.add_task("train", total=total, completed=state.step, info="")
        while state.step < total and state.epoch < epochs:
            batches = epoch_batches(
                len(train_set), cfg.batch_size, cfg.seed, state.epoch, drop_last=drop_last
            )
            if hasattr(train_set, "set_epoch"):
                train_set.set_epoch(state.epoch)
            todo = [rank_slice(b, d) for b in batches[state.batch_in_epoch :]]
            todo = todo[: total - state.step]
            start = time.perf_counter()
            for x, y in iterate(train_set, todo, cfg.workers, ignore):
                x, y = x.to(d.device), y.to(d.device)
                if cfg.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                with autocast:
                    out, aux = net(x)
                    loss = loss_fn(out.float(), y)
                    if has_aux and aux is not None:
                        loss = loss + cfg.aux_weight * loss_fn(aux.float(), y)
                totals = all_reduce_sum(
                    torch.stack([loss.detach().float() * len(x), torch.tensor(float(len(x)))]), d
                )
                if not torch.isfinite(totals[0]):
                    where = (
                        f"the last good checkpoint is {last} (step {ckpt.verify(last)['step']})"
                        if last.exists()
                        else "no checkpoint had been written yet"
                    )
                    raise TrainingDiverged(
                        f"loss became {totals[0].item()} at step {state.step + 1} (epoch "
                        f"{state.epoch + 1}); {where}; lower --lr or add --warmup"
                    )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                state.step += 1
                state.batch_in_epoch += 1
                state.loss_sum += float(totals[0])
                state.loss_count += int(totals[1])
                progress.update(
                    task, advance=1, info=f"epoch {state.epoch + 1}/{epochs} loss {float(loss.detach()):.4f}"
                )
                if (
                    cfg.checkpoint_every
                    and state.step % cfg.checkpoint_every == 0
                    and state.batch_in_epoch < len(batches)
                ):
                    state.seconds += time.perf_counter() - start
                    start = time.perf_counter()
                    save(("last",))
                if state.step >= total:
                    break
            state.seconds += time.perf_counter() - start
            record = {
                "epoch": state.epoch + 1,
                "step": state.step,
                "train_loss": state.loss_sum / max(1, state.loss_count),
                "lr": scheduler.get_last_lr()[0],
                "seconds": state.seconds,
                "img_per_s": state.loss_count / max(state.seconds, 1e-9),
            }
            if val_set is not None:
                record["val"] = evaluate(model, val_set, eval_bs, d.device, d, cfg.channels_last, cfg.workers)
            record["aggregation"] = AGGREGATION
            miou = record.get("val", {}).get("miou", -state.step)
            improved = miou > state.best_miou
            if improved:
                state.best_miou, state.best_step = miou, state.step
            state.epoch += 1
            state.batch_in_epoch = 0
            state.loss_sum, state.loss_count, state.seconds = 0.0, 0, 0.0
            if d.main:
                _append_line(metrics_path, record)
                if writer is not None:
                    for name, value in _scalars(record):
                        writer.add_scalar(name, value, state.step)
                history.append(record)
                val = record.get("val")
                console.print(
                    f"epoch {record['epoch']}/{epochs} step {record['step']} loss {record['train_loss']:.4f}"
                    + (f" val mIoU {val['miou']:.4f} mDice {val['mdice']:.4f}" if val else "")
                    + f" ({record['img_per_s']:.1f} img/s)"
                )
            save(("last", "best") if improved else ("last",))
            if until is not None and until(record):
                break
    if writer is not None:
        writer.close()
    return FitResult(run, history, state.best_miou, state.step)
