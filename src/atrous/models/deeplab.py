"""DeepLabv3 and DeepLabv3+ on dilated ResNets, with torchvision's module and parameter names.

``deeplabv3_resnet50(num_classes=21, aux_loss=True)`` has the same state_dict keys and parameter count
(42,004,074) as torchvision's, so a state_dict saved from torchvision loads strictly
(:func:`load_torchvision_weights`) and gives the same outputs. Differences that torchvision users hit:

* ASPP rates follow the output stride (6, 12, 18 at 16; doubled at 8) unless given explicitly.
* The image-pooling branch trains at batch 1: its BatchNorm normalises a single value per channel there, which
  crashes in torchvision, smp and mmseg; ours uses the running statistics in that one case.
* Logits are resized to the input's exact size, odd sizes included.
* ``forward`` returns the main logits (a tensor); ``forward_aux`` returns (main, aux) for training.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from atrous.errors import ModelError
from atrous.models.base import Segmenter, resize_to
from atrous.models.blocks import conv_norm_act
from atrous.models.registry import register
from atrous.models.resnet import ResNet, check_output_stride, resnet, resnet_small


def aspp_rates(output_stride: int) -> tuple[int, ...]:
    """DeepLabv3's rates (6, 12, 18) at output stride 16, scaled with the stride (a known bug elsewhere is
    using 12, 24, 36 at stride 16)."""
    return tuple(r * 16 // check_output_stride(output_stride) for r in (6, 12, 18))


# torchvision's DeepLab heads use ``nn.ReLU()``, not in place: kept, so our modules print as theirs do.
_conv_bn_relu = partial(conv_norm_act, inplace=False)


class PoolingBatchNorm(nn.BatchNorm2d):
    """BatchNorm for the 1x1 pooled branch: with a single value per channel (batch 1) batch statistics are
    undefined, so the running statistics are used for that step (and not updated)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.shape[0] * x.shape[2] * x.shape[3] == 1:
            return F.batch_norm(
                x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps
            )
        return super().forward(x)


class ASPPConv(nn.Sequential):
    def __init__(self, cin: int, cout: int, rate: int) -> None:
        super().__init__(*_conv_bn_relu(cin, cout, 3, dilation=rate))


class ASPPPooling(nn.Sequential):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(nn.AdaptiveAvgPool2d(1), *_conv_bn_relu(cin, cout, 1, norm=PoolingBatchNorm))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        for module in self:
            x = module(x)
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class ASPP(nn.Module):
    """1x1 branch, one 3x3 branch per rate, optional image pooling; concat -> 1x1 -> BN -> ReLU -> dropout."""

    def __init__(
        self,
        in_channels: int,
        rates: Sequence[int],
        out_channels: int = 256,
        image_pooling: bool = True,
        conv1x1: bool = True,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        branches: list[nn.Module] = []
        if conv1x1:
            branches.append(nn.Sequential(*_conv_bn_relu(in_channels, out_channels, 1)))
        branches += [ASPPConv(in_channels, out_channels, int(r)) for r in rates]
        if image_pooling:
            branches.append(ASPPPooling(in_channels, out_channels))
        if not branches:
            raise ModelError("an ASPP needs at least one branch (rates, the 1x1 conv or image pooling)")
        self.convs = nn.ModuleList(branches)
        self.project = nn.Sequential(
            *_conv_bn_relu(len(branches) * out_channels, out_channels, 1), nn.Dropout(dropout)
        )
        self.rates, self.image_pooling = tuple(int(r) for r in rates), image_pooling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([branch(x) for branch in self.convs], dim=1))


class DeepLabHead(nn.Sequential):
    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        rates: Sequence[int],
        channels: int = 256,
        image_pooling: bool = True,
        conv1x1: bool = True,
    ) -> None:
        super().__init__(
            ASPP(in_channels, rates, channels, image_pooling, conv1x1),
            *_conv_bn_relu(channels, channels, 3),
            nn.Conv2d(channels, num_classes, 1),
        )


class FCNHead(nn.Sequential):
    """torchvision's auxiliary head (on layer3)."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        inter = in_channels // 4
        super().__init__(
            *_conv_bn_relu(in_channels, inter, 3),
            nn.Dropout(0.1),
            nn.Conv2d(inter, num_classes, 1),
        )


def build_backbone(
    name: str,
    output_stride: int,
    in_channels: int,
    multi_grid: Sequence[int] | None,
    widths: Sequence[int] | None = None,
) -> ResNet:
    """``widths``: the four stages' channels (per block before a bottleneck's expansion); None keeps the
    backbone's own (resnet_small 16-128, torchvision's 64-512)."""
    kwargs: dict[str, object] = {
        "num_classes": None,
        "output_stride": output_stride,
        "in_channels": in_channels,
        "multi_grid": multi_grid,
    }
    if widths is not None:  # checked by ResNet
        kwargs["widths"] = tuple(widths)
    if name == "resnet_small":
        return resnet_small(**kwargs)
    depths = {"resnet18": 18, "resnet34": 34, "resnet50": 50, "resnet101": 101}
    if name not in depths:
        raise ModelError(f"unknown backbone {name!r}; use one of resnet_small, {', '.join(depths)}")
    return resnet(depths[name], **kwargs)


class BackboneSegmenter(Segmenter):
    """backbone (dilated ResNet) -> classifier head on the last stage -> logits resized to the input."""

    def __init__(
        self,
        backbone: ResNet,
        classifier: nn.Module,
        aux_classifier: nn.Module | None,
        num_classes: int,
        in_channels: int,
        upsample: str = "bilinear",
    ) -> None:
        super().__init__()
        if upsample not in ("bilinear", "nearest"):
            raise ModelError(f"upsample={upsample!r}: use bilinear or nearest")
        self.upsample = upsample
        self.backbone, self.classifier, self.aux_classifier = backbone, classifier, aux_classifier
        self.in_channels, self.num_classes = in_channels, num_classes
        self.output_stride = backbone.output_stride
        self.min_size = backbone.min_size

    def _heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        self.check_input(x)
        feats = self.backbone.features(x)
        out = resize_to(self.classify(feats), x.shape[2:], self.upsample)
        aux = (
            resize_to(self.aux_classifier(feats["layer3"]), x.shape[2:], self.upsample)
            if self.aux_classifier is not None
            else None
        )
        return out, aux

    def classify(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.classifier(feats["layer4"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._heads(x)[0]

    def forward_aux(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(main logits, auxiliary logits or None), both at the input's size."""
        return self._heads(x)


@register("deeplabv3", "DeepLabv3, backbone=resnet18|34|50|101|resnet_small, output_stride 8/16/32")
@register("deeplabv3_resnet50", "torchvision-compatible DeepLabv3-ResNet50 (stride 8)", backbone="resnet50")
@register("deeplabv3_resnet101", "torchvision-compatible DeepLabv3-ResNet101", backbone="resnet101")
@register(
    "deeplabv3_small",
    "DeepLabv3 on a narrow ResNet for small images",
    backbone="resnet_small",
    num_classes=2,
    aspp_channels=64,
)
def deeplabv3(
    backbone: str = "resnet50",
    num_classes: int = 21,
    in_channels: int = 3,
    output_stride: int = 8,
    rates: Sequence[int] | None = None,
    aux_loss: bool = False,
    aspp_channels: int = 256,
    image_pooling: bool = True,
    conv1x1: bool = True,
    multi_grid: Sequence[int] | None = None,
    upsample: str = "bilinear",
    widths: Sequence[int] | None = None,
) -> BackboneSegmenter:
    """DeepLabv3 (defaults as torchvision's deeplabv3_resnet50: output stride 8, ASPP rates 12, 24, 36).

    ``upsample="nearest"`` resizes the logits by repeating each one over its stride x stride block, so that the
    output stride is a hard limit: with bilinear logits a model can still place a boundary between grid points,
    and learns to, slowly (the lab's DeepLab was still improving after 48 epochs on its design seed).
    ``widths`` sets the backbone's four stage widths (e.g. ``widths=8,16,32,64``, half of resnet_small's)."""
    body = build_backbone(backbone, output_stride, in_channels, multi_grid, widths)
    rates = tuple(rates) if rates is not None else aspp_rates(output_stride)
    head = DeepLabHead(body.channels["layer4"], num_classes, rates, aspp_channels, image_pooling, conv1x1)
    aux = FCNHead(body.channels["layer3"], num_classes) if aux_loss else None
    return BackboneSegmenter(body, head, aux, num_classes, in_channels, upsample)


class DeepLabV3Plus(BackboneSegmenter):
    """DeepLabv3+: ASPP output upsampled to the stride-4 features (reduced to 48 channels), concatenated,
    two 3x3 convs, 1x1 to classes."""

    def __init__(
        self, backbone: ResNet, aspp: ASPP, num_classes: int, in_channels: int, channels: int
    ) -> None:
        low = backbone.channels["layer1"]
        super().__init__(backbone, aspp, None, num_classes, in_channels)
        self.reduce = nn.Sequential(*_conv_bn_relu(low, 48, 1))
        self.decoder = nn.Sequential(
            *_conv_bn_relu(channels + 48, channels, 3),
            *_conv_bn_relu(channels, channels, 3),
            nn.Conv2d(channels, num_classes, 1),
        )

    def classify(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        low = self.reduce(feats["layer1"])
        high = resize_to(self.classifier(feats["layer4"]), low.shape[2:])
        return self.decoder(torch.cat([high, low], dim=1))


@register("deeplabv3plus", "DeepLabv3+ (stride 16, decoder on stride-4 features)")
@register(
    "deeplabv3plus_small",
    "DeepLabv3+ on a narrow ResNet for small images",
    backbone="resnet_small",
    num_classes=2,
    aspp_channels=64,
)
def deeplabv3plus(
    backbone: str = "resnet50",
    num_classes: int = 21,
    in_channels: int = 3,
    output_stride: int = 16,
    rates: Sequence[int] | None = None,
    aspp_channels: int = 256,
    image_pooling: bool = True,
    multi_grid: Sequence[int] | None = None,
    widths: Sequence[int] | None = None,
) -> DeepLabV3Plus:
    """DeepLabv3+ (output stride 16, ASPP rates 6, 12, 18 by default); ``widths`` as for :func:`deeplabv3`."""
    body = build_backbone(backbone, output_stride, in_channels, multi_grid, widths)
    rates = tuple(rates) if rates is not None else aspp_rates(output_stride)
    aspp = ASPP(body.channels["layer4"], rates, aspp_channels, image_pooling)
    return DeepLabV3Plus(body, aspp, num_classes, in_channels, aspp_channels)


def load_torchvision_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a state_dict file saved from torchvision (``torch.save(tv_model.state_dict(), path)``) strictly.

    Works for our ResNets (vs ``torchvision.models.resnetNN``) and DeepLabv3-ResNets (vs
    ``deeplabv3_resnetNN(aux_loss=...)``; build ours with the same ``num_classes`` and ``aux_loss``). The file is
    read with ``weights_only=True``: no pickled code runs.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ModelError(f"weights file {str(path)!r} does not exist") from None
    except Exception as exc:
        raise ModelError(f"cannot read weights file {str(path)!r} as a state_dict: {exc}") from exc
    if not isinstance(state, dict):
        raise ModelError(f"{str(path)!r} holds a {type(state).__name__}, not a state_dict")
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches raise even when strict=False
        raise ModelError(
            f"{str(path)!r} does not fit this model: {str(exc).splitlines()[-1].strip()}"
        ) from None
    if result.missing_keys or result.unexpected_keys:
        raise ModelError(
            f"{str(path)!r} does not match this model: {len(result.missing_keys)} missing keys "
            f"(e.g. {result.missing_keys[:2]}), {len(result.unexpected_keys)} unexpected "
            f"(e.g. {result.unexpected_keys[:2]}); build the model with the same depth, num_classes and aux_loss"
        )
    return model


@register("aspp_net", "shallow stride-2 stem + ASPP head (rates=..., image_pooling=...)")
class ASPPNet(Segmenter):
    """A shallow stem (two 3x3 convs, stride 2) and an ASPP head: the receptive field comes from the ASPP
    rates, not from a deep backbone, so the lab can see which rates serve which object sizes."""

    output_stride = 2

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 2,
        width: int = 32,
        rates: Sequence[int] = (1, 6, 12),
        image_pooling: bool = False,
        conv1x1: bool = False,
    ) -> None:
        super().__init__()
        self.in_channels, self.num_classes = in_channels, num_classes
        self.min_size = 4
        self.stem = nn.Sequential(
            *conv_norm_act(in_channels, width, 3, stride=2), *conv_norm_act(width, width, 3)
        )
        self.aspp = ASPP(width, rates, width, image_pooling, conv1x1, dropout=0.0)
        self.classifier = nn.Conv2d(width, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return resize_to(self.classifier(self.aspp(self.stem(x))), x.shape[2:])
