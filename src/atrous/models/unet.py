"""U-Net and dilated U-Net for any input size (odd sizes included)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from atrous.errors import ModelError
from atrous.models.base import Segmenter, match_size
from atrous.models.blocks import conv_norm_act
from atrous.models.registry import register
from atrous.rf import schedule


class GriddingWarning(UserWarning):
    """A dilation schedule leaves holes in the receptive field."""


class DoubleConv(nn.Sequential):
    def __init__(
        self, cin: int, cout: int, norm: str | None, rates: Sequence[int] = (1, 1), bias: bool | None = None
    ):
        layers = []
        for i, r in enumerate(rates):
            layers += conv_norm_act(cin if i == 0 else cout, cout, 3, dilation=r, norm=norm, bias=bias)
        super().__init__(*layers)


class Up(nn.Module):
    """Double the resolution (transposed conv, or bilinear to the skip's size + 3x3 conv), match the skip's
    size exactly, concatenate, double conv."""

    def __init__(
        self, cin: int, cout: int, norm: str | None, mode: str, kernel: int = 2, bias: bool | None = None
    ):
        super().__init__()
        self.mode = mode
        if mode == "transposed":
            self.up = nn.ConvTranspose2d(cin, cout, kernel, stride=2, padding=(kernel - 2) // 2)
        elif mode == "bilinear":
            self.up = nn.Conv2d(cin, cout, 3, padding=1)
        else:
            raise ModelError(f"unknown up-sampling {mode!r}; use transposed or bilinear")
        self.conv = DoubleConv(2 * cout, cout, norm, bias=bias)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        if self.mode == "transposed":
            x = match_size(self.up(x), skip)
        else:
            x = self.up(F.interpolate(x, size=skip.shape[2:], mode="bilinear", align_corners=False))
        return self.conv(torch.cat([skip, x], dim=1))


@register("unet", "U-Net (depth 4, width 32, transposed up-sampling); any size >= 2^(depth+1)")
class UNet(Segmenter):
    """U-Net with ``depth`` poolings and ``width`` channels at full resolution (doubling per level).

    Any H, W >= 2**(depth + 1) works: decoder features are padded or cropped to their skip's size, so odd sizes
    need no resizing by the user. ``bottleneck_rates`` makes it a dilated U-Net: the bottleneck becomes one
    3x3 conv per rate with that dilation.
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 2,
        width: int = 32,
        depth: int = 4,
        norm: str | None = "batch",
        up: str = "transposed",
        bottleneck_rates: Sequence[int] | None = None,
        up_kernel: int = 2,
        bias: bool | None = None,
    ) -> None:
        super().__init__()
        if depth < 1 or width < 1:
            raise ModelError(f"U-Net needs depth >= 1 and width >= 1, got depth={depth}, width={width}")
        self.in_channels, self.num_classes = in_channels, num_classes
        # Batch 1 trains only if the bottleneck keeps >= 2 pixels (BatchNorm needs two values per channel).
        self.min_size = 2 ** (depth + 1)
        self.output_stride = 2**depth
        widths = [width * 2**i for i in range(depth + 1)]
        self.enc = nn.ModuleList(
            [
                DoubleConv(in_channels if i == 0 else widths[i - 1], widths[i], norm, bias=bias)
                for i in range(depth)
            ]
        )
        self.pool = nn.MaxPool2d(2)
        if bottleneck_rates is None:
            self.bottleneck = DoubleConv(widths[-2], widths[-1], norm, bias=bias)
        else:
            rates = tuple(int(r) for r in bottleneck_rates)
            check = schedule.check(rates, 3)
            if not check.hole_free:
                warnings.warn(
                    f"bottleneck rates {rates} leave {len(check.holes)} holes per axis in a {check.rf}-pixel "
                    f"window (offsets {list(check.holes)}); `atrous schedule --suggest {check.rf}` lists "
                    "hole-free schedules",
                    GriddingWarning,
                    stacklevel=2,
                )
            self.bottleneck = DoubleConv(widths[-2], widths[-1], norm, rates, bias=bias)
        self.bottleneck_rates = bottleneck_rates
        self.dec = nn.ModuleList(
            [Up(widths[i + 1], widths[i], norm, up, up_kernel, bias) for i in reversed(range(depth))]
        )
        self.head = nn.Conv2d(width, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        skips = []
        for block in self.enc:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottleneck(x)
        for up, skip in zip(self.dec, reversed(skips)):
            x = up(x, skip)
        return self.head(x)


@register("dilated_unet", "U-Net with a dilated bottleneck (rates 1,2,4, hole-free)")
def dilated_unet(bottleneck_rates: Sequence[int] = (1, 2, 4), **kwargs: object) -> UNet:
    """U-Net whose bottleneck is a dilated stack (default 1, 2, 4: hole-free, RF 15 at the bottleneck)."""
    return UNet(bottleneck_rates=bottleneck_rates, **kwargs)
