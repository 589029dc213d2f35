"""Conv stacks: the plain, dilated, large-kernel and HDC stacks of Exercises 1 and 5."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from atrous.errors import ModelError
from atrous.models.base import Segmenter
from atrous.models.registry import register

PRESETS: dict[str, tuple[int, tuple[int, ...]]] = {
    "standard": (3, (1, 1, 1)),
    "dilated": (3, (1, 2, 4)),
    "dilated4": (3, (1, 2, 4, 8)),
    "large": (7, (1, 1, 1)),
    "hdc": (3, (1, 2, 5)),
    "gridded": (3, (2, 2, 2)),
}


def norm_layer(kind: str | None, channels: int) -> nn.Module:
    """``batch``, ``group`` (8 groups or fewer), or none."""
    if kind in (None, "none", False):
        return nn.Identity()
    if kind in ("batch", True):
        return nn.BatchNorm2d(channels)
    if kind == "group":
        groups = next(g for g in (8, 4, 2, 1) if channels % g == 0)
        return nn.GroupNorm(groups, channels)
    raise ModelError(f"unknown norm {kind!r}; use batch, group or none")


class ConvStack(Segmenter):
    """One convolution per rate (dilation ``r``, 'same' padding) with optional norm and ReLU, then a 1x1
    classifier when ``num_classes`` is given (logits out). ``kernel`` is one odd size for every layer or one per
    layer (1x1 layers add depth without receptive field, which keeps stacks of equal depth comparable)."""

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int | None = 2,
        width: int = 64,
        kernel: int | Sequence[int] = 3,
        rates: Sequence[int] = (1, 1, 1),
        norm: str | None = "batch",
        bias: bool | None = None,
    ) -> None:
        super().__init__()
        self.in_channels, self.num_classes = in_channels, num_classes or width
        if not rates or any(int(r) < 1 for r in rates):
            raise ModelError(f"convstack rates must be positive integers, got {tuple(rates)}")
        kernels = [int(kernel)] * len(rates) if isinstance(kernel, int) else [int(k) for k in kernel]
        if len(kernels) != len(rates):
            raise ModelError(f"convstack got {len(kernels)} kernel sizes for {len(rates)} rates")
        if any(k < 1 or k % 2 == 0 for k in kernels):
            raise ModelError(
                f"convstack kernels must be odd and >= 1 (symmetric 'same' padding), got {kernels}"
            )
        self.kernels, self.rates = tuple(kernels), tuple(int(r) for r in rates)
        use_bias = (norm in (None, "none", False)) if bias is None else bias  # a bias before a norm is wasted
        layers: list[nn.Module] = []
        c = in_channels
        for k, r in zip(self.kernels, self.rates):
            layers += [
                nn.Conv2d(c, width, k, padding=r * (k - 1) // 2, dilation=r, bias=use_bias),
                norm_layer(norm, width),
                nn.ReLU(inplace=True),
            ]
            c = width
        self.body = nn.Sequential(*layers)
        self.head = nn.Conv2d(width, num_classes, 1) if num_classes else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        x = self.body(x)
        return self.head(x) if self.head is not None else x


@register("convstack", "conv stack; preset=standard|dilated|dilated4|large|hdc|gridded or rates=...")
def convstack(
    preset: str = "standard",
    in_channels: int = 3,
    num_classes: int | None = 2,
    width: int = 64,
    kernel: int | Sequence[int] | None = None,
    rates: Sequence[int] | None = None,
    norm: str | None = "batch",
    bias: bool | None = None,
) -> ConvStack:
    """A preset (standard, dilated, dilated4, large, hdc, gridded), with kernel/rates overridable."""
    if preset not in PRESETS:
        raise ModelError(f"unknown convstack preset {preset!r}; presets: {', '.join(PRESETS)}")
    k, r = PRESETS[preset]
    return ConvStack(in_channels, num_classes, width, kernel or k, rates or r, norm, bias)
