"""What every zoo segmentation model shares: logits out at the input's size, a checked input."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from atrous.errors import InputShapeError


class Segmenter(nn.Module):
    """Base of zoo segmentation models.

    ``forward(x)`` takes (N, in_channels, H, W) with H, W >= ``min_size`` and returns logits
    (N, num_classes, H, W). ``output_stride`` is the stride of the coarsest feature map.
    """

    in_channels: int
    num_classes: int
    min_size: int = 1
    output_stride: int = 1

    def check_input(self, x: torch.Tensor) -> None:
        name = type(self).__name__
        if x.dim() != 4:
            raise InputShapeError(
                f"{name} expects (N, {self.in_channels}, H, W) input, got shape {tuple(x.shape)}"
            )
        if x.shape[1] != self.in_channels:
            raise InputShapeError(
                f"{name} was built for {self.in_channels} input channels but got {x.shape[1]} "
                f"(input shape {tuple(x.shape)}); rebuild it with in_channels={x.shape[1]}"
            )
        if min(x.shape[2], x.shape[3]) < self.min_size:
            raise InputShapeError(
                f"{name} needs H and W >= {self.min_size}, got {x.shape[2]}x{x.shape[3]}; "
                "pad or resize the input"
            )


def resize_to(x: torch.Tensor, size: torch.Size | tuple[int, ...], mode: str = "bilinear") -> torch.Tensor:
    """Bilinear (align_corners=False) or nearest resize to an exact size, no "divisible by 32" requirement.

    No shortcut for an equal size: a Python branch on shapes would be frozen by ONNX tracing."""
    if mode == "nearest":
        return F.interpolate(x, size=size, mode="nearest")
    return F.interpolate(x, size=size, mode=mode, align_corners=False)


def match_size(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Pad (or crop, with negative padding) ``x`` to ``ref``'s H x W, split evenly around the centre.

    Always one pad, even of zero: a Python branch on shapes would be frozen by ONNX tracing."""
    dy, dx = ref.shape[2] - x.shape[2], ref.shape[3] - x.shape[3]
    return F.pad(x, [dx // 2, dx - dx // 2, dy // 2, dy - dy // 2])
