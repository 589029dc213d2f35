"""Small test networks shared by the receptive-field tests."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


class Lambda(nn.Module):
    def __init__(self, fn: Callable) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


def seq(*layers: nn.Module | Callable) -> nn.Module:
    return nn.Sequential(*[layer if isinstance(layer, nn.Module) else Lambda(layer) for layer in layers])


class Branches(nn.Module):
    """Two branches from one stem, merged by add or channel concatenation after cropping to a common size."""

    def __init__(
        self, stem: nn.Module, a: nn.Module, b: nn.Module, merge: str, tail: nn.Module | None = None
    ):
        super().__init__()
        self.stem, self.a, self.b, self.merge = stem, a, b, merge
        self.tail = tail or nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        ya, yb = self.a(x), self.b(x)
        size = [min(p, q) for p, q in zip(ya.shape[2:], yb.shape[2:])]
        crop = (slice(None), slice(None), *[slice(0, n) for n in size])
        ya, yb = ya[crop], yb[crop]
        return self.tail(ya + yb if self.merge == "add" else torch.cat([ya, yb], 1))
