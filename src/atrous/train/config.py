"""Everything that defines a training run, saved as ``RUN_DIR/config.json`` so the run can be reproduced."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from atrous.errors import OptionError, option


class ConfigError(OptionError):
    """A training option that is out of range or inconsistent (named as a parameter in Python, a flag in
    the CLI)."""


OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("poly", "cosine", "step", "constant")
LOSSES = ("dice", "ce", "bce", "dice+ce")
PRECISIONS = ("fp32", "bf16")


@dataclass
class TrainConfig:
    model: str = ""
    data: str = ""
    val: str | None = None  # default: the same synthetic task, split=val, a quarter of its size
    out: str = "runs/train"
    epochs: int | None = None
    steps: int | None = None
    batch_size: int = 16
    eval_batch_size: int | None = None
    lr: float = 1e-3
    optimizer: str = "adamw"
    weight_decay: float = 1e-4
    momentum: float = 0.9
    schedule: str = "poly"
    warmup: int = 0  # linear warm-up steps
    # Largest global gradient norm (L2 over all parameters) an optimizer step may use; larger gradients are
    # scaled down to it (0: off). A bound on the step that a single bad batch can take.
    clip_grad: float = 0.0
    # Exponential moving average of the weights and BatchNorm statistics, decay per step (0: off). Validation
    # and the saved model use the average: a stable end point without a learning-rate decay tied to a budget.
    ema: float = 0.0
    loss: str = "dice+ce"
    dice_per_image: bool = False
    aux_weight: float = 0.5  # DeepLab's auxiliary head, when the model has one
    seed: int = 0
    # Steps; a checkpoint is also written at the end of every epoch (unless ``fit(epoch_checkpoints=False)``).
    checkpoint_every: int | None = None
    device: str = "auto"
    precision: str = "fp32"
    channels_last: bool = True  # 1.17-1.81x faster training on CPU for most zoo models (BENCHMARKS.md)
    compile: bool = False  # torch.compile the training module (tens of seconds once per input shape)
    cpu_data: bool = False  # synthetic data on a GPU: draw the noise on the CPU too (bit-equal to CPU runs)
    workers: int = 0
    augment: bool = True  # real data only: random scale, crop, flip, colour jitter
    crop: int | None = None
    skip_bad: bool = False
    tensorboard: bool = False  # also log scalars to RUN_DIR/tensorboard (needs the tensorboard package)
    model_kwargs: dict[str, Any] = field(default_factory=dict)  # resolved from the data (classes, channels)

    # Fields that may differ between a run and its resumption.
    RESUMABLE = ("out", "workers", "device", "checkpoint_every", "tensorboard")

    def validate(self) -> None:
        if not self.model or not self.data:
            raise ConfigError(
                f"give {option('model')} and {option('data')} (or {option('config')} FILE, or "
                f"{option('resume')} an existing run)"
            )
        if (self.epochs is None) == (self.steps is None):
            raise ConfigError(f"give exactly one of {option('epochs')} or {option('steps')}")
        for name in ("epochs", "steps", "batch_size", "eval_batch_size", "checkpoint_every"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{option(name)} must be >= 1, got {value}")
        if not 0 < self.lr <= 10:
            raise ConfigError(f"{option('lr')} must be in (0, 10], got {self.lr}")
        for name in ("warmup", "weight_decay", "workers", "clip_grad"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{option(name)} must be >= 0, got {getattr(self, name)}")
        for name, allowed in (
            ("optimizer", OPTIMIZERS),
            ("schedule", SCHEDULES),
            ("loss", LOSSES),
            ("precision", PRECISIONS),
        ):
            if getattr(self, name) not in allowed:
                raise ConfigError(
                    f"{option(name)} {getattr(self, name)!r} is not one of {', '.join(allowed)}"
                )
        if self.tensorboard:
            try:
                import tensorboard  # noqa: F401
            except ImportError:
                raise ConfigError(
                    f"{option('tensorboard')} needs the tensorboard package: pip install tensorboard"
                ) from None
        if not 0 <= self.ema < 1:
            raise ConfigError(
                f"{option('ema')} must be in [0, 1) (a decay per step; 0 turns it off), got {self.ema}"
            )
        if self.device not in ("auto", "cpu") and not self.device.startswith("cuda"):
            raise ConfigError(f"{option('device')} {self.device!r}: use auto, cpu or cuda[:N]")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown config key {unknown[0]!r}; keys: {', '.join(sorted(known))}")
        return cls(**data)

    @classmethod
    def from_file(cls, path: str | Path) -> TrainConfig:
        try:
            return cls.from_json(json.loads(Path(path).read_text()))
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except json.JSONDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid JSON: {exc}") from None

    def differences(self, other: TrainConfig) -> list[str]:
        """Keys (outside RESUMABLE) whose values differ."""
        a, b = self.to_json(), other.to_json()
        if not b[
            "model_kwargs"
        ]:  # derived from the data when the run started; not something the user changed
            b["model_kwargs"] = a["model_kwargs"]
        return [k for k in a if k not in self.RESUMABLE and a[k] != b[k]]
