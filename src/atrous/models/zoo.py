"""The zoo: every model ``atrous.create_model`` knows (imported lazily by the registry)."""

from __future__ import annotations

from atrous.models import deeplab, seed
from atrous.models.blocks import convstack
from atrous.models.context import ContextNet, context_on_backbone
from atrous.models.deeplab import deeplabv3, deeplabv3plus
from atrous.models.registry import register
from atrous.models.resnet import resnet_backbone
from atrous.models.unet import UNet, dilated_unet

register(
    "convstack", convstack, "conv stack; preset=standard|dilated|dilated4|large|hdc|gridded or rates=..."
)
register("unet", UNet, "U-Net (depth 4, width 32, transposed up-sampling); any size >= 2^(depth+1)")
register("dilated_unet", dilated_unet, "U-Net with a dilated bottleneck (rates 1,2,4, hole-free)")
register("context", ContextNet, "conv front end + Yu-Koltun basic context module (identity init)")
register("context_large", ContextNet, "conv front end + Yu-Koltun large context module", variant="large")
register("context_resnet18", context_on_backbone, "dilated ResNet-18 (stride 8) + context module head")
register("deeplabv3", deeplabv3, "DeepLabv3, backbone=resnet18|34|50|101|resnet_small, output_stride 8/16/32")
register(
    "deeplabv3_resnet50",
    deeplabv3,
    "torchvision-compatible DeepLabv3-ResNet50 (stride 8)",
    backbone="resnet50",
)
register("deeplabv3_resnet101", deeplabv3, "torchvision-compatible DeepLabv3-ResNet101", backbone="resnet101")
register(
    "deeplabv3_small",
    deeplabv3,
    "DeepLabv3 on a narrow ResNet for small images",
    backbone="resnet_small",
    num_classes=2,
    aspp_channels=64,
)
register("deeplabv3plus", deeplabv3plus, "DeepLabv3+ (stride 16, decoder on stride-4 features)")
register(
    "deeplabv3plus_small",
    deeplabv3plus,
    "DeepLabv3+ on a narrow ResNet for small images",
    backbone="resnet_small",
    num_classes=2,
    aspp_channels=64,
)
for depth in (18, 34, 50, 101):
    register(
        f"resnet{depth}",
        resnet_backbone,
        f"ResNet-{depth} backbone (torchvision names), output_stride 8/16/32",
        task="backbone",
        depth=depth,
    )
register("resnet_small", resnet_backbone, "narrow ResNet backbone for small images", task="backbone", depth=0)
register("seed_unet", seed.seed_unet, "the seed's 64-wide U-Net, fixed (logits, any size)")
register("seed_dilated_unet", seed.seed_dilated_unet, "the seed's dilated U-Net (bottleneck 1,2,4), fixed")
register(
    "seed_deeplab", seed.seed_deeplab, "the seed's small DeepLab (ASPP 6,12,18), fixed (output at input size)"
)
register("aspp_net", deeplab.ASPPNet, "shallow stride-2 stem + ASPP head (rates=..., image_pooling=...)")
