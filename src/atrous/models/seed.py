"""The seed lesson's three models, with its defects fixed and its architecture kept.

* ``seed_unet``: the 64-wide two-level U-Net (conv biases before BatchNorm, transposed 4x4 up-sampling, one
  output channel), 2,356,929 parameters as in the seed. Fixed: logits instead of a sigmoid inside forward;
  odd input sizes (decoder padded to its skip).
* ``seed_dilated_unet``: the same with a 3-conv dilated bottleneck, rates 1, 2, 4.
* ``seed_deeplab``: 7x7 stem, max-pool, two convs to 256 channels at stride 8, ASPP (6, 12, 18 + image
  pooling), x4 up-sampling and a conv decoder. Fixed: the output is resized to the input's size (the seed
  returned 32x32 for 64x64 input and its loss crashed), the pooling branch trains at batch 1, logits out. Its
  ASPP convolutions drop the bias before BatchNorm (the seed kept them: 1,536 parameters more).
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from atrous.models.base import Segmenter, resize_to
from atrous.models.blocks import conv_norm_act
from atrous.models.deeplab import ASPP
from atrous.models.registry import register
from atrous.models.unet import UNet


@register("seed_unet", "the seed's 64-wide U-Net, fixed (logits, any size)")
def seed_unet(in_channels: int = 3, num_classes: int = 1) -> UNet:
    return UNet(
        in_channels, num_classes, width=64, depth=2, norm="batch", up="transposed", up_kernel=4, bias=True
    )


@register("seed_dilated_unet", "the seed's dilated U-Net (bottleneck 1,2,4), fixed")
def seed_dilated_unet(in_channels: int = 3, num_classes: int = 1) -> UNet:
    return UNet(
        in_channels,
        num_classes,
        width=64,
        depth=2,
        norm="batch",
        up="transposed",
        up_kernel=4,
        bias=True,
        bottleneck_rates=(1, 2, 4),
    )


# The seed's convolutions kept their bias before BatchNorm; its parameter count is part of what we reproduce.
_conv_bn_relu = partial(conv_norm_act, bias=True)


class SeedDeepLab(Segmenter):
    output_stride = 8
    min_size = 16

    def __init__(self, in_channels: int = 3, num_classes: int = 1) -> None:
        super().__init__()
        self.in_channels, self.num_classes = in_channels, num_classes
        self.stem = nn.Sequential(*_conv_bn_relu(in_channels, 64, 7, 2), nn.MaxPool2d(3, 2, 1))
        self.backbone = nn.Sequential(*_conv_bn_relu(64, 128, 3, 2), *_conv_bn_relu(128, 256, 3))
        self.aspp = ASPP(256, (6, 12, 18), 256, image_pooling=True)
        self.decoder = nn.Sequential(
            *_conv_bn_relu(256, 128, 3), *_conv_bn_relu(128, 64, 3), nn.Conv2d(64, num_classes, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        y = self.aspp(self.backbone(self.stem(x)))
        y = F.interpolate(y, scale_factor=4, mode="bilinear", align_corners=False)
        return resize_to(self.decoder(y), x.shape[2:])


@register("seed_deeplab", "the seed's small DeepLab (ASPP 6,12,18), fixed (output at input size)")
def seed_deeplab(in_channels: int = 3, num_classes: int = 1) -> SeedDeepLab:
    return SeedDeepLab(in_channels, num_classes)
