"""A model's outputs by name: every tensor in its return value, wherever it sits (dict, dataclass, tuple)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from atrous.errors import ModelError


def named_outputs(out: Any, prefix: str = "") -> list[tuple[str, torch.Tensor]]:
    """Every tensor in a model's return value, named by where it sits: ``out`` for a lone tensor; the key of a
    dict (``out``, ``aux``), the field of a dataclass or named tuple (``logits``), the index of a tuple or list
    (``0``, ``1``); nested places joined by dots (``aux.0``). Other values (None, numbers) are skipped."""
    if isinstance(out, torch.Tensor):
        return [(prefix or "out", out)]
    if dataclasses.is_dataclass(out) and not isinstance(out, type):
        items: Any = ((f.name, getattr(out, f.name)) for f in dataclasses.fields(out))
    elif isinstance(out, Mapping):
        items = out.items()
    elif isinstance(out, tuple) and hasattr(out, "_fields"):
        items = zip(out._fields, out)
    elif isinstance(out, (list, tuple)):
        items = enumerate(out)
    else:
        return []
    return [
        leaf
        for key, value in items
        for leaf in named_outputs(value, f"{prefix}.{key}" if prefix else str(key))
    ]


def unknown_output(name: str, names: Sequence[str]) -> ModelError:
    return ModelError(
        f"the model has no output {name!r}; its outputs are {', '.join(names)} (pick one of these)"
    )


def as_named_dict(module: nn.Module, args: Any, out: Any) -> Any:
    """Forward hook: a structured return value becomes a flat ``{name: tensor}`` dict, so that the recorder
    names each output as :func:`named_outputs` does (it understands dicts, not dataclasses)."""
    return None if isinstance(out, torch.Tensor) else dict(named_outputs(out))


def select_output(model: nn.Module, name: str | None = None) -> nn.Module:
    """Make ``model`` return only its output ``name`` (the first when None), for tools that need one tensor
    (the ERF). Installs a forward hook on ``model`` itself, so module names (and messages) stay as they were;
    a model that returns one tensor is left untouched when ``name`` is None or ``"out"``."""

    def pick(module: nn.Module, args: Any, out: Any) -> torch.Tensor:
        if isinstance(out, torch.Tensor) and name in (None, "out"):
            return out
        leaves = dict(named_outputs(out))
        if not leaves:
            raise ModelError(f"the model returned {type(out).__name__}, which holds no tensor")
        if name is None:
            return next(iter(leaves.values()))
        if name not in leaves:
            raise unknown_output(name, list(leaves))
        return leaves[name]

    model.register_forward_hook(pick)
    return model
