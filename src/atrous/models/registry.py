"""One factory for every model: ``create_model("name:key=value,...", **kwargs)``.

Models register themselves with :func:`register` (see ``zoo.py``). The CLI also accepts an import path
``package.module:factory`` so users can point every tool at their own models.
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
import sys
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from atrous.errors import ModelError, did_you_mean
from atrous.spec import parse_kwargs, split_spec


@dataclass(frozen=True)
class ModelInfo:
    name: str
    factory: Callable[..., nn.Module]
    summary: str
    task: str  # "segmentation" (logits at the input's size) or "backbone" (features of the last stage)
    defaults: dict[str, Any]


_REGISTRY: dict[str, ModelInfo] = {}


def register(
    name: str, factory: Callable[..., nn.Module], summary: str, task: str = "segmentation", **defaults: Any
) -> None:
    """Register ``factory`` under ``name``; ``defaults`` are keyword arguments this name presets."""
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} registered twice")
    _REGISTRY[name] = ModelInfo(name, factory, summary, task, defaults)


def _load_zoo() -> None:
    importlib.import_module("atrous.models.zoo")


def list_models() -> list[str]:
    _load_zoo()
    return sorted(_REGISTRY)


def model_info(name: str) -> ModelInfo:
    _load_zoo()
    if name not in _REGISTRY:
        raise ModelError(
            f"unknown model {name!r}{did_you_mean(name, _REGISTRY)} (list them with `atrous models`)"
        )
    return _REGISTRY[name]


def _wants_sequence(annotation: Any) -> bool:
    text = annotation if isinstance(annotation, str) else str(annotation)
    return any(word in text for word in ("Sequence", "tuple", "list"))


def _coerce(factory: Callable, name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Check keyword names against the factory and turn scalars into 1-tuples where a sequence is expected."""
    params = inspect.signature(factory).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        unknown = [k for k in kwargs if k not in params]
        if unknown:
            valid = [p for p in params if not p.startswith("_")]
            raise ModelError(
                f"model {name!r} has no argument {unknown[0]!r}{did_you_mean(unknown[0], valid)}; "
                f"arguments: {', '.join(valid)}"
            )
    try:
        hints = typing.get_type_hints(factory.__init__ if inspect.isclass(factory) else factory)
    except Exception:  # unresolvable annotations: fall back to the raw strings
        hints = {k: p.annotation for k, p in params.items()}
    out = {}
    for key, value in kwargs.items():
        if key in hints and _wants_sequence(hints[key]) and not isinstance(value, (tuple, list, type(None))):
            value = (value,)
        out[key] = value
    return out


def create_model(spec: str, **kwargs: Any) -> nn.Module:
    """Build a zoo model from ``"name"`` or ``"name:key=value,..."``; keyword arguments override the spec."""
    name, rest = split_spec(spec)
    info = model_info(name)
    merged = {**info.defaults, **parse_kwargs(rest, f"model spec {spec!r}"), **kwargs}
    merged = _coerce(info.factory, name, merged)
    try:
        return info.factory(**merged)
    except ModelError:
        raise
    except (TypeError, ValueError) as exc:
        raise ModelError(f"cannot build {name!r} with {merged}: {exc}") from exc


_IMPORT_PATH = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")


def resolve_model(spec: str) -> nn.Module:
    """A zoo spec, or ``package.module:factory`` (a callable returning an ``nn.Module``, or the class)."""
    name = split_spec(spec)[0]
    _load_zoo()
    if name in _REGISTRY:
        return create_model(spec)
    if not _IMPORT_PATH.fullmatch(spec):
        raise ModelError(
            f"unknown model {name!r}{did_you_mean(name, _REGISTRY)}: give a zoo name (`atrous models`) "
            "or an import path package.module:factory"
        )
    module_name, _, attr = spec.partition(":")
    if os.getcwd() not in sys.path:  # console scripts do not put the working directory on the path
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise ModelError(f"cannot import {module_name!r} from model path {spec!r}: {exc}") from exc
    target: Any = module
    for part in attr.split("."):
        if not hasattr(target, part):
            raise ModelError(f"{module_name!r} has no attribute {attr!r} (model path {spec!r})")
        target = getattr(target, part)
    model = target() if callable(target) and not isinstance(target, nn.Module) else target
    if not isinstance(model, nn.Module):
        raise ModelError(f"{spec!r} returned {type(model).__name__}, not a torch.nn.Module")
    return model
