"""ResNet backbones with torchvision's module and parameter names, dilation for any block type.

``norm_layer`` (default ``nn.BatchNorm2d``) builds every norm, as in torchvision. :meth:`ResNet.features` names
the stages by module (``layer1``..``layer4``), as torchvision's ``IntermediateLayerGetter`` and timm do.

A state_dict saved from torchvision's ``resnet18/34/50/101`` loads strictly into ours and gives the same
outputs. ``output_stride`` 8/16/32 follows torchvision's ``replace_stride_with_dilation`` semantics: a dilated
stage replaces its stride by dilation, and its first block keeps the previous stage's dilation. Unlike
torchvision, basic blocks accept dilation (ResNet-18/34 at output stride 8 are common in segmentation).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from atrous.errors import ModelError
from atrous.models.registry import register


def conv3x3(cin: int, cout: int, stride: int = 1, groups: int = 1, dilation: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride, padding=dilation, groups=groups, bias=False, dilation=dilation)


def conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1, stride, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        groups: int = 1,
        base_width: int = 64,
        dilation: int = 1,
        first_dilation: int | None = None,
        norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        if groups != 1 or base_width != 64:
            raise ModelError("BasicBlock supports only groups=1 and base_width=64 (as in torchvision)")
        d1 = first_dilation if first_dilation is not None else dilation
        self.conv1 = conv3x3(inplanes, planes, stride, dilation=d1)
        self.bn1 = norm_layer(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes, dilation=dilation)
        self.bn2 = norm_layer(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        groups: int = 1,
        base_width: int = 64,
        dilation: int = 1,
        first_dilation: int | None = None,
        norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        width = int(planes * (base_width / 64.0)) * groups
        self.conv1 = conv1x1(inplanes, width)
        self.bn1 = norm_layer(width)
        d = first_dilation if first_dilation is not None else dilation  # the block's only 3x3 conv
        self.conv2 = conv3x3(width, width, stride, groups, d)
        self.bn2 = norm_layer(width)
        self.conv3 = conv1x1(width, planes * self.expansion)
        self.bn3 = norm_layer(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


# torchvision's ``replace_stride_with_dilation`` for layer2..layer4, per supported output stride.
_DILATE = {32: [False, False, False], 16: [False, False, True], 8: [False, True, True]}
STAGES = ("layer1", "layer2", "layer3", "layer4")


def check_output_stride(output_stride: int) -> int:
    """``output_stride`` if a ResNet (and so a DeepLab head's rates) supports it; else a ModelError."""
    if output_stride not in _DILATE:
        raise ModelError(f"output_stride={output_stride} is not supported; use 8, 16 or 32")
    return output_stride


def dilation_flags(output_stride: int) -> list[bool]:
    """torchvision's ``replace_stride_with_dilation`` for layer2..layer4 at an output stride."""
    return list(_DILATE[check_output_stride(output_stride)])


class ResNet(nn.Module):
    """torchvision's ResNet layout (conv1, bn1, relu, maxpool, layer1-4, avgpool, fc).

    ``forward`` classifies; :meth:`features` returns the stage outputs used by segmentation heads, by stage name
    (``channels`` gives each stage's width by the same names). With
    ``num_classes=None`` there is no avgpool/fc, matching the backbone inside torchvision's DeepLabV3.
    ``widths`` scales the four stages (torchvision: 64, 128, 256, 512); ``multi_grid`` multiplies the
    dilation of each block of layer4 (DeepLabv3's multi-grid, e.g. (1, 2, 4)).
    """

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: Sequence[int],
        num_classes: int | None = 1000,
        output_stride: int = 32,
        widths: Sequence[int] = (64, 128, 256, 512),
        in_channels: int = 3,
        multi_grid: Sequence[int] | None = None,
        groups: int = 1,
        width_per_group: int = 64,
        norm_layer: Callable[[int], nn.Module] | None = None,
    ) -> None:
        super().__init__()
        if len(layers) != 4:
            raise ModelError(
                f"layers={','.join(map(str, layers))}: a ResNet needs four stages, one block count each"
            )
        if len(widths) != 4 or not all(
            isinstance(w, int) and not isinstance(w, bool) and w > 0 for w in widths
        ):
            shown = ",".join(map(str, widths))
            raise ModelError(
                f"widths={shown}: give four positive integers, one per stage, e.g. widths=8,16,32,64"
            )
        self.inplanes = widths[0]
        self.dilation = 1
        self.groups = groups
        self.base_width = width_per_group
        self._norm_layer = norm_layer or nn.BatchNorm2d
        self.output_stride = output_stride
        dilate = dilation_flags(output_stride)
        self.conv1 = nn.Conv2d(in_channels, self.inplanes, 7, 2, 3, bias=False)
        self.bn1 = self._norm_layer(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = self._make_layer(block, widths[0], layers[0])
        self.layer2 = self._make_layer(block, widths[1], layers[1], 2, dilate[0])
        self.layer3 = self._make_layer(block, widths[2], layers[2], 2, dilate[1])
        self.layer4 = self._make_layer(block, widths[3], layers[3], 2, dilate[2], multi_grid)
        if num_classes is not None:  # a segmentation backbone has no classifier (as torchvision's DeepLab)
            self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
            self.fc = nn.Linear(widths[3] * block.expansion, num_classes)
        self.channels = {name: w * block.expansion for name, w in zip(STAGES, widths)}  # for heads
        self.in_channels = in_channels
        self.min_size = 2 * output_stride  # BatchNorm in training needs >= 2 values per channel at batch 1
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):  # as torchvision
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _make_layer(
        self,
        block: type,
        planes: int,
        blocks: int,
        stride: int = 1,
        dilate: bool = False,
        multi_grid: Sequence[int] | None = None,
    ) -> nn.Sequential:
        previous = self.dilation
        if dilate:
            self.dilation *= stride
            stride = 1
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                conv1x1(self.inplanes, planes * block.expansion, stride),
                self._norm_layer(planes * block.expansion),
            )
        if multi_grid is not None and len(multi_grid) != blocks:
            raise ModelError(f"multi_grid {tuple(multi_grid)} needs one rate per block of layer4 ({blocks})")
        rates = [self.dilation * g for g in multi_grid] if multi_grid else [self.dilation] * blocks
        # torchvision: the first 3x3 conv of a dilated stage keeps the previous dilation (unless multi-grid);
        # a basic block's second conv already runs at the stage's dilation.
        first = rates[0] if multi_grid else previous
        extra = {"groups": self.groups, "base_width": self.base_width, "norm_layer": self._norm_layer}
        layers = [
            block(self.inplanes, planes, stride, downsample, dilation=rates[0], first_dilation=first, **extra)
        ]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes, dilation=rates[i], **extra) for i in range(1, blocks)]
        return nn.Sequential(*layers)

    def features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Outputs of ``layer1``..``layer4`` by name (strides 4, 8, 16, 32 before dilation)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        feats = {}
        for name in STAGES:
            x = feats[name] = getattr(self, name)(x)
        return feats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)["layer4"]
        if not hasattr(self, "fc"):
            return x  # a backbone: the last stage's features
        return self.fc(torch.flatten(self.avgpool(x), 1))


class Trunk(nn.Module):
    """The convolutional trunk of a ResNet (up to layer4), for receptive-field analysis."""

    def __init__(self, resnet: ResNet) -> None:
        super().__init__()
        self.resnet = resnet

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.resnet.features(x)["layer4"]


DEPTHS = {
    18: (BasicBlock, [2, 2, 2, 2]),
    34: (BasicBlock, [3, 4, 6, 3]),
    50: (Bottleneck, [3, 4, 6, 3]),
    101: (Bottleneck, [3, 4, 23, 3]),
}


def resnet(depth: int, **kwargs: object) -> ResNet:
    if depth not in DEPTHS:
        raise ModelError(f"ResNet depth {depth} is not available; use one of {sorted(DEPTHS)}")
    block, layers = DEPTHS[depth]
    return ResNet(block, layers, **kwargs)


def resnet_small(**kwargs: object) -> ResNet:
    """A narrow ResNet for small images: basic blocks, one per stage, widths 16-128."""
    kwargs.setdefault("widths", (16, 32, 64, 128))
    return ResNet(BasicBlock, [1, 1, 1, 1], **kwargs)


@register("resnet_small", "narrow ResNet backbone for small images", task="backbone", depth=0)
def resnet_backbone(
    depth: int = 50,
    output_stride: int = 32,
    in_channels: int = 3,
    multi_grid: Sequence[int] | None = None,
    num_classes: int | None = None,
) -> ResNet:
    """A zoo backbone: returns layer4 features (``num_classes`` adds torchvision's classifier); depth 0 is
    the small ResNet."""
    kwargs = {
        "output_stride": output_stride,
        "in_channels": in_channels,
        "multi_grid": multi_grid,
        "num_classes": num_classes,
    }
    return resnet_small(**kwargs) if depth == 0 else resnet(depth, **kwargs)


for _depth in DEPTHS:
    register(
        f"resnet{_depth}",
        f"ResNet-{_depth} backbone (torchvision names), output_stride 8/16/32",
        task="backbone",
        depth=_depth,
    )(resnet_backbone)
