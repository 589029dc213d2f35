"""The grid a segmenter's logits come from, and the narrowest object that grid still segments. Shared by the
lab's stride predictions (``atrous.lab.design``) and ``atrous suggest``."""

from __future__ import annotations

from torch import nn

STRIDES_ACROSS = 2  # an object must span this many output strides to keep most of its pixels


def min_width(stride: int) -> int:
    """The narrowest object (px) that logits resized from a grid ``stride`` pixels apart still segment: the
    upsampled boundary band is about a stride wide on each side, so an object narrower than two strides is
    mostly band (the rule behind the lab's stride predictions, :func:`atrous.lab.design.predict_stride`)."""
    return STRIDES_ACROSS * stride


def logit_stride(model: nn.Module) -> int:
    """The stride of the grid a model's logits are resized from: a U-Net's decoder brings them back to full
    resolution (its ``output_stride`` is its bottleneck's); the others resize from their output stride."""
    from atrous.models.unet import UNet

    return 1 if isinstance(model, UNet) else int(getattr(model, "output_stride", 1))
