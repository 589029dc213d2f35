"""Everything a training run decides before its first step: run directory, datasets, model, optimizer and
learning-rate schedule. Nothing here writes to disk; ``loop.fit`` does, once every check has passed."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from atrous.data import build_dataset
from atrous.errors import ModelError, one_line, option
from atrous.models.foreign import batch_of_one_failure, build_foreign, data_arguments
from atrous.models.registry import create_model, model_spec
from atrous.spec import ModelSpec, parse_kwargs, split_spec
from atrous.train.config import ConfigError, TrainConfig


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


def classes_fit(outputs: int, classes: int) -> bool:
    """A model with ``outputs`` logit channels can learn ``classes`` (one logit serves a binary task)."""
    return outputs == classes or (outputs == 1 and classes == 2)


def resolve_model_kwargs(
    cfg: TrainConfig, spec: ModelSpec, num_classes: int, in_channels: int, probe: torch.nn.Module
) -> dict[str, Any]:
    """Fill in num_classes / in_channels from the data where the spec leaves them; refuse a mismatch.
    ``spec`` is ``cfg.model`` parsed; ``probe`` is the model as the spec alone builds it."""
    given = spec.given(cfg.model_kwargs)
    kwargs = dict(cfg.model_kwargs)
    if probe.in_channels != in_channels:
        if "in_channels" in given:
            raise ModelError(
                f"model {cfg.model!r} takes {probe.in_channels} input channels but the data has "
                f"{in_channels}; drop in_channels from the spec or set it to {in_channels}"
            )
        kwargs["in_channels"] = in_channels
    if not classes_fit(probe.num_classes, num_classes):
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
    """SGD (momentum) or AdamW, with the fused kernels (one call for all parameters) on a CPU or a GPU: the lab's
    small models spend a large share of each step in the optimizer, and the default implementation's per-tensor
    Python loop took 4.0 ms a step on deeplabv3_small against 0.6 ms fused (one thread)."""
    fused = {"fused": True} if next(model.parameters()).device.type in ("cpu", "cuda") else {}
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, **fused
        )
    return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, **fused)


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
            raise ConfigError(
                f"{option('resume')}: {run} holds no run (no config.json); start it without {option('resume')}"
            )
        old = TrainConfig.from_file(saved)
        if cfg.model or cfg.data:
            diff = old.differences(cfg)
            if diff:
                raise ConfigError(
                    f"{option('resume')} with a changed config: {', '.join(diff)} differ from {saved}; resume "
                    f"with the same options (or none), or start a new run with another {option('out')}"
                )
        merged = TrainConfig.from_json(
            {**old.to_json(), **{k: getattr(cfg, k) for k in TrainConfig.RESUMABLE}}
        )
        return run, merged
    if run.exists() and any(run.iterdir()) and not overwrite:
        what = "another run" if saved.is_file() else "files that are not an atrous run"
        raise ConfigError(
            f"{run} already holds {what}; pass {option('overwrite')} to replace it, {option('resume')} to "
            f"continue it, or choose another {option('out')}"
        )
    return run, cfg


def load_datasets(cfg: TrainConfig):
    """(training set, validation set or None), checked: a dataset with problems is refused unless skip_bad."""
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
            f"give {option('val')} for {split_spec(cfg.data)[0]} data (or {option('val')} none to train "
            "without one)"
        )
    if val_spec == "none":
        return train_set, None
    val_set = build_dataset(val_spec, split="val", seed=cfg.seed, check=True, skip_bad=cfg.skip_bad)
    if val_set.num_classes != train_set.num_classes:
        raise ConfigError(
            f"validation data has {val_set.num_classes} classes, training data {train_set.num_classes}"
        )
    return train_set, val_set


def build_model(cfg: TrainConfig, train_set) -> tuple[torch.nn.Module, TrainConfig]:
    """The model, seeded so its initial weights are a function of the seed, and the config with the model
    arguments the data implied (a new config: the caller's is left as it was). Built once; rebuilt, reseeded,
    only when the data changes its class count or input channels. The model spec is parsed here, once."""
    spec = model_spec(cfg.model)
    torch.manual_seed(cfg.seed)
    if not spec.zoo:
        return build_foreign_model(cfg, spec, train_set)
    model = create_model(spec, **cfg.model_kwargs)
    if cfg.model_kwargs:
        return model, cfg
    kwargs = resolve_model_kwargs(cfg, spec, train_set.num_classes, train_set.in_channels, model)
    if not kwargs:
        return model, cfg
    torch.manual_seed(cfg.seed)
    return create_model(spec, **kwargs), replace(cfg, model_kwargs=kwargs)


def build_foreign_model(cfg: TrainConfig, spec: ModelSpec, train_set) -> tuple[torch.nn.Module, TrainConfig]:
    """An import-path model: the data's class count and channels go through the factory's own arguments (the
    config records them, so ``atrous.load`` rebuilds the same model); a class count that still differs from the
    data's is refused."""
    n = train_set.num_classes
    kwargs = data_arguments(spec, cfg.model_kwargs, n, train_set.in_channels)
    side = min(train_set[0][0].shape[-2:])
    model = build_foreign(spec, kwargs, train_set.in_channels, side)
    if not classes_fit(model.num_classes, n):
        raise ModelError(
            f"model {cfg.model!r} predicts {model.num_classes} classes but the data has {n}; give its factory "
            f"{n} classes in the spec (torchvision: num_classes={n}, segmentation_models_pytorch: classes={n})"
        )
    return model, cfg if kwargs == cfg.model_kwargs else replace(cfg, model_kwargs=kwargs)


def check_last_batch(model: torch.nn.Module, cfg: TrainConfig, train_set, drop_last: bool) -> None:
    """Refuse, before anything is written, a run whose epochs end on a batch of one sample that the model
    cannot train on (zoo models can; torchvision's DeepLab cannot)."""
    n = len(train_set)
    if drop_last or n % cfg.batch_size != 1:
        return
    failure = batch_of_one_failure(model, model.in_channels, min(train_set[0][0].shape[-2:]))
    if failure is not None:
        raise ConfigError(
            f"{n} training samples at {option('batch_size')} {cfg.batch_size} end every epoch on a batch of 1, "
            f"which model {cfg.model!r} cannot train on ({one_line(failure)}); choose a batch size that leaves "
            "0 or at least 2 samples over"
        )


def plan_steps(cfg: TrainConfig, n_train: int, world: int) -> tuple[int, int, bool]:
    """(total steps, epochs, drop_last): under DDP a partial last batch would not split evenly across ranks."""
    if world > 1 and cfg.batch_size % world:
        raise ConfigError(
            f"{option('batch_size')} {cfg.batch_size} is the global batch: it must divide by the {world} ranks"
        )
    drop_last = world > 1
    steps_per_epoch = n_train // cfg.batch_size if drop_last else math.ceil(n_train / cfg.batch_size)
    if steps_per_epoch == 0:
        raise ConfigError(f"{n_train} training samples make no full batch of {cfg.batch_size} across ranks")
    total = cfg.steps if cfg.steps is not None else cfg.epochs * steps_per_epoch
    return total, math.ceil(total / steps_per_epoch), drop_last
