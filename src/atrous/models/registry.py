"""One factory for every model: ``create_model("name:key=value,...", **kwargs)``.

Each model factory registers itself where it is defined, with the :func:`register` decorator (as timm's
``register_model`` and torchvision's ``register_model``). This module imports no model module: importing the
``atrous.models`` package does, so every ``@register`` has run before anyone can reach the registry.

The CLI also accepts an import path ``package.module:factory:key=value,...`` so users can point every tool at
their own models, or at a library's
(``torchvision.models.segmentation:fcn_resnet50:weights=None,weights_backbone=None``).
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
from typing import Any, TypeVar

from torch import nn

from atrous.errors import AtrousError, ModelError, did_you_mean, one_line
from atrous.spec import ModelSpec, parse_model_spec


@dataclass(frozen=True)
class ModelInfo:
    name: str
    factory: Callable[..., nn.Module]
    summary: str
    task: str  # "segmentation" (logits at the input's size) or "backbone" (features of the last stage)
    defaults: dict[str, Any]


_REGISTRY: dict[str, ModelInfo] = {}


Factory = TypeVar("Factory", bound=Callable[..., nn.Module])


def register(
    name: str, summary: str, task: str = "segmentation", **defaults: Any
) -> Callable[[Factory], Factory]:
    """Decorator: register the decorated factory (function or class) under ``name``, unchanged; ``defaults``
    are keyword arguments this name presets. Stack it to register one factory under several names."""

    def add(factory: Factory) -> Factory:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} registered twice")
        _REGISTRY[name] = ModelInfo(name, factory, summary, task, defaults)
        return factory

    return add


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def model_info(name: str) -> ModelInfo:
    if name not in _REGISTRY:
        raise ModelError(
            f"unknown model {name!r}{did_you_mean(name, _REGISTRY)} (list them with `atrous models`)"
        )
    return _REGISTRY[name]


def model_spec(spec: str | ModelSpec) -> ModelSpec:
    """``spec`` parsed against the registry; a :class:`ModelSpec` is returned as it is, so the functions below
    take either and a spec parsed at the edge is never parsed again."""
    if isinstance(spec, ModelSpec):
        return spec
    return parse_model_spec(spec, lambda name: _REGISTRY[name].defaults if name in _REGISTRY else None)


def _wants_sequence(annotation: Any) -> bool:
    text = annotation if isinstance(annotation, str) else str(annotation)
    return any(word in text for word in ("Sequence", "tuple", "list"))


def _parameters(factory: Callable) -> dict[str, inspect.Parameter] | None:
    try:
        return dict(inspect.signature(factory).parameters)
    except (TypeError, ValueError):
        return None


def _coerce(factory: Callable, name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Check keyword names against the factory and turn scalars into 1-tuples where a sequence is expected."""
    params = _parameters(factory)
    if params is None:  # a callable without a signature (a builtin): the call itself will judge the names
        return kwargs
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


def create_model(spec: str | ModelSpec, **kwargs: Any) -> nn.Module:
    """Build a zoo model from ``"name"`` or ``"name:key=value,..."``; keyword arguments override the spec."""
    s = model_spec(spec)
    name = s.name
    info = model_info(name)  # not a zoo name: refused here, by name
    merged = _coerce(info.factory, name, s.arguments(kwargs))
    try:
        return info.factory(**merged)
    except ModelError:
        raise
    except (TypeError, ValueError) as exc:
        raise ModelError(f"cannot build {name!r} with {merged}: {exc}") from exc


# Keyword arguments through which the factories of torchvision, timm and segmentation_models_pytorch
# download pretrained weights; None switches each off.
WEIGHT_ARGUMENTS = ("weights", "weights_backbone", "pretrained", "pretrained_backbone", "encoder_weights")
# How an offline download attempt shows itself: urllib's URLError, socket/requests connection errors,
# huggingface_hub's LocalEntryNotFoundError / OfflineModeIsEnabled, timeouts; or a message that says so.
_DOWNLOAD_TYPES = ("URLError", "Connection", "LocalEntryNotFound", "OfflineMode", "Timeout", "gaierror")
_DOWNLOAD_WORDS = re.compile(
    r"download|https?://|urlopen|internet|check your connection|offline|huggingface|hf_hub", re.IGNORECASE
)


def download_failure(exc: BaseException) -> BaseException | None:
    """``exc``, or the exception it was raised from, that looks like a failed download; None if none does."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        names = [t.__name__ for t in type(current).__mro__]
        if any(word in name for name in names for word in _DOWNLOAD_TYPES) or _DOWNLOAD_WORDS.search(
            str(current)
        ):
            return current
        current = current.__cause__ or current.__context__
    return None


def _weights_fix(factory: Callable, spec: ModelSpec, kwargs: dict[str, Any]) -> str:
    """The arguments that would stop the download, spelled as the spec to type instead."""
    params = _parameters(factory) or {}
    names = [n for n in WEIGHT_ARGUMENTS if n in params and kwargs.get(n, "") is not None]
    if not names:
        return (
            "pass its weights argument as None (torchvision: weights=None, weights_backbone=None; "
            "segmentation_models_pytorch: encoder_weights=None)"
        )
    fixed = spec.with_kwargs(dict.fromkeys(names))
    return f"pass {', '.join(f'{n}=None' for n in names)}, e.g. {fixed!r}"


def _factory_failure(
    factory: Callable, spec: ModelSpec, name: str, kwargs: dict[str, Any], exc: Exception
) -> str:
    called = f"{name}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())})"
    cause = download_failure(exc)
    if cause is None:
        return f"{called} raised {one_line(exc)}; check its arguments (run it in Python for the traceback)"
    # A library often wraps the network error in its own: name both, the user searches for either.
    via = "" if cause is exc else f" (from {one_line(cause)})"
    return (
        f"{called} raised {one_line(exc)}{via}; it tried to download weights (offline?): "
        f"{_weights_fix(factory, spec, kwargs)}"
    )


def _import_target(module_name: str, attr: str, spec: str) -> Any:
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
    return target


def factory_parameters(spec: str | ModelSpec) -> dict[str, inspect.Parameter] | None:
    """The parameters of an import path's factory (None where its signature cannot be read)."""
    s = model_spec(spec)
    if s.factory is None:
        return None
    return _parameters(_import_target(*s.factory, s.text))


def resolve_model(spec: str | ModelSpec, **kwargs: Any) -> nn.Module:
    """A zoo spec, or ``package.module:factory[:key=value,...]`` (a callable returning an ``nn.Module``, the
    class, or a module instance); ``kwargs`` override the spec's arguments. A factory that raises becomes one
    ``ModelError`` line naming it, the exception, and the arguments that stop a download when it tried one."""
    s = model_spec(spec)
    if s.zoo:
        return create_model(s, **kwargs)
    if s.factory is None:
        raise ModelError(
            f"unknown model {s.name!r}{did_you_mean(s.name, _REGISTRY)}: give a zoo name (`atrous models`) "
            "or an import path package.module:factory[:key=value,...]"
        )
    module_name, attr = s.factory
    target = _import_target(module_name, attr, s.text)
    factory_name = f"{module_name}:{attr}"
    merged = s.arguments(kwargs)
    if isinstance(target, nn.Module):
        if merged:
            raise ModelError(
                f"{factory_name} is a module instance, not a factory: it takes no arguments "
                f"({', '.join(merged)} given); point at a function or class instead"
            )
        return target
    if not callable(target):
        raise ModelError(
            f"{factory_name} is a {type(target).__name__}, not a model factory or torch.nn.Module"
        )
    merged = _coerce(target, factory_name, merged)
    try:
        model = target(**merged)
    except AtrousError:
        raise
    except Exception as exc:  # the user's factory: its failure is the user's to fix, said in one line
        raise ModelError(_factory_failure(target, s, factory_name, merged, exc)) from exc
    if not isinstance(model, nn.Module):
        raise ModelError(f"{factory_name} returned {type(model).__name__}, not a torch.nn.Module")
    return model
