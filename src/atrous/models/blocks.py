"""The conv-norm-activation builder every model uses, and the conv stacks (plain, dilated, large-kernel, HDC) of
Exercises 1 and 5."""

from __future__ import annotations

from collections.abc import Callable, Sequence

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


# A norm by name (batch, group; None, "none" or False for none; True for batch) or, as torchvision's
# ``norm_layer``, a callable taking the channel count (``nn.BatchNorm2d``).
Norm = str | bool | None | Callable[[int], nn.Module]


def norm_layer(kind: Norm, channels: int) -> nn.Module:
    """``batch``, ``group`` (8 groups or fewer), none (``nn.Identity``), or ``kind(channels)``."""
    if callable(kind):
        return kind(channels)
    if kind in (None, "none", False):
        return nn.Identity()
    if kind in ("batch", True):
        return nn.BatchNorm2d(channels)
    if kind == "group":
        groups = next(g for g in (8, 4, 2, 1) if channels % g == 0)
        return nn.GroupNorm(groups, channels)
    raise ModelError(f"unknown norm {kind!r}; use batch, group or none")


def conv_norm_act(
    cin: int,
    cout: int,
    kernel: int = 3,
    stride: int = 1,
    dilation: int = 1,
    norm: Norm = "batch",
    bias: bool | None = None,
    inplace: bool = True,
) -> list[nn.Module]:
    """Conv ('same' padding for odd kernels), norm (``nn.Identity`` when none), ReLU: torchvision's
    ``Conv2dNormActivation``. A list, not a module, so callers splice it into their own ``nn.Sequential`` and keep
    the flat parameter names torchvision's state_dicts use (``classifier.1.weight``).

    ``bias=None`` applies the one bias rule: a conv bias only where no norm follows. BatchNorm subtracts each
    channel's mean, which cancels a constant bias (wasted parameters; GroupNorm is treated alike); without a norm
    the bias is the layer's only offset. Decided from the built norm so that every spelling of "no norm" (None,
    "none", False) agrees."""
    norm_module = norm_layer(norm, cout)
    use_bias = isinstance(norm_module, nn.Identity) if bias is None else bias
    padding = dilation * (kernel - 1) // 2
    conv = nn.Conv2d(cin, cout, kernel, stride, padding, dilation=dilation, bias=use_bias)
    return [conv, norm_module, nn.ReLU(inplace=inplace)]


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
        layers: list[nn.Module] = []
        c = in_channels
        for k, r in zip(self.kernels, self.rates):
            layers += conv_norm_act(c, width, k, dilation=r, norm=norm, bias=bias)
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
