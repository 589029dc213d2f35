"""The context module of Yu & Koltun (2016), "Multi-scale context aggregation by dilated convolutions".

Seven 3x3 layers with dilation 1, 1, 2, 4, 8, 16, 1, each followed by ReLU, then a 1x1 layer; C channels in
and out (C = number of classes: it refines class-score maps). The basic variant keeps C channels throughout;
the large one widens to 2C, 2C, 4C, 8C, 16C, 32C, 32C. Identity initialisation is what makes it train: a
freshly built basic module passes non-negative input (what the ReLUs let through) unchanged; the large one does
up to the small noise the paper adds.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from atrous.errors import ModelError
from atrous.models.base import Segmenter
from atrous.models.blocks import ConvStack
from atrous.models.deeplab import BackboneSegmenter, build_backbone
from atrous.models.registry import register

RATES = (1, 1, 2, 4, 8, 16, 1)
LARGE_MULTIPLIERS = (2, 2, 4, 8, 16, 32, 32)
SCORES = ("raw", "norm")  # what the stand-alone net feeds its context module (ContextNet)
# The module's nonlinearity. ``leaky`` (slope LEAKY_SLOPE) is ours, not the paper's: with one channel per class
# a ReLU cuts a class off from every gradient wherever its score is negative, and a class can die (ContextNet).
ACTIVATIONS = ("relu", "leaky")
LEAKY_SLOPE = 0.1


class ContextModule(nn.Module):
    def __init__(
        self,
        channels: int,
        variant: str = "basic",
        noise: float = 1e-2,
        seed: int = 0,
        rates: Sequence[int] = RATES,
        act: str = "relu",
        width: int = 1,
    ) -> None:
        """``rates`` other than the paper's (e.g. all 1: the same module without dilation, at the same cost)
        are for experiments; seven rates, one per 3x3 layer. ``act``: ``relu`` (the paper's) or ``leaky``
        (slope ``LEAKY_SLOPE``: negative input passes, scaled, so that no channel is ever cut off). ``width``
        (basic only; ours, not the paper's): ``width x channels`` channels in the 3x3 layers. The paper's C
        channels are 21 on VOC; with the lab's 3 classes a module of 3 channels per layer learns slowly what it
        can see (ContextNet)."""
        super().__init__()
        if variant not in ("basic", "large"):
            raise ModelError(f"unknown context module variant {variant!r}; use basic or large")
        if act not in ACTIVATIONS:
            raise ModelError(f"context module act={act!r}: use one of {', '.join(ACTIVATIONS)}")
        if len(rates) != len(RATES) or any(int(r) < 1 for r in rates):
            raise ModelError(f"context module rates {tuple(rates)}: give {len(RATES)} rates >= 1")
        if width < 1 or (width > 1 and variant != "basic"):
            raise ModelError(
                f"context module width={width}: give an integer >= 1, for the basic variant only"
            )
        widths = [width * channels] * 7 if variant == "basic" else [m * channels for m in LARGE_MULTIPLIERS]
        layers: list[nn.Module] = []
        cin = channels
        for rate, cout in zip(map(int, rates), widths):
            nonlinearity = nn.ReLU(inplace=True) if act == "relu" else nn.LeakyReLU(LEAKY_SLOPE, inplace=True)
            layers += [nn.Conv2d(cin, cout, 3, padding=rate, dilation=rate), nonlinearity]
            cin = cout
        layers.append(nn.Conv2d(cin, channels, 1))
        self.layers = nn.Sequential(*layers)
        self.channels, self.variant = channels, variant
        # Wider layers repeat each class's identity path: noise breaks the symmetry between the copies.
        self.identity_init(noise if variant == "large" or width > 1 else 0.0, seed)

    @torch.no_grad()
    def identity_init(self, noise: float = 0.0, seed: int = 0) -> None:
        """``k(t, a -> b) = C / c_out`` at the centre tap when ``floor(a C / c_in) == floor(b C / c_out)``,
        else ``N(0, (noise * C / c_out)^2)``; biases zero. With equal widths this is the identity."""
        gen = torch.Generator().manual_seed(seed)
        C = self.channels
        for conv in (m for m in self.layers if isinstance(m, nn.Conv2d)):
            c_out, c_in, kh, kw = conv.weight.shape
            scale = C / c_out
            weight = torch.randn(conv.weight.shape, generator=gen) * (noise * scale)
            a = torch.arange(c_in) * C // c_in
            b = torch.arange(c_out) * C // c_out
            same = b[:, None] == a[None, :]
            weight[:, :, kh // 2, kw // 2] = torch.where(
                same, torch.full_like(weight[:, :, 0, 0], scale), weight[:, :, kh // 2, kw // 2]
            )
            conv.weight.copy_(weight)
            conv.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


@register("context", "conv front end + Yu-Koltun basic context module (identity init)")
@register("context_large", "conv front end + Yu-Koltun large context module", variant="large")
class ContextNet(Segmenter):
    """Stand-alone: a small conv front end producing class scores, refined by the context module.

    ``scores="norm"`` batch-normalises the class scores before the module. The module's first ReLU passes only
    a score's positive part, so a class whose score is negative wherever it is present gets no gradient through
    the module's identity path, and with one channel per class it can stay unpredicted for the whole run (seen
    in the lab's regime (b) on seed 45 of 43-50); a normalised score is positive on about half of the pixels
    (of the batch, not of each class), so each class's channel passes a gradient somewhere from the start.
    ``raw`` (the paper's wiring) feeds the front end's scores as they are.

    ``act="leaky"`` puts leaky ReLUs in the module (``ContextModule``): where a class's score is negative, its
    gradient is scaled down (by the slope, per layer) rather than cut to exactly zero, and Adam's step damps such a
    gradient rather than ignoring it. Normalised scores alone still let a class die: on the lab's check seeds
    130-132 (session 11) the undilated module in regime (b) ended at 0.61 mIoU with a class never predicted; with
    ``act=leaky`` the same run reached 0.988 by epoch 10 (and the dilated module in regime (a), seed 131, which
    had crept to 0.91 in 48 epochs, 0.991 by epoch 8).

    The lab uses both (``presets.py``). ``width=3`` (three channels per class in the module's 3x3 layers) was
    tried against the undilated module's plateaus in the lab's regime (a) and not adopted: it reached 0.90-0.91 by
    epochs 14-21 on the six seeds it was tried on, three of which had stopped on a plateau with one channel, but
    on new seeds it still stopped on plateaus in 3 of 5 runs (session 12, BENCHMARKS.md)."""

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 2,
        variant: str = "basic",
        front_width: int = 32,
        front_rates: Sequence[int] = (1, 1, 1),
        norm: str | None = "batch",
        context_rates: Sequence[int] = RATES,
        scores: str = "raw",
        act: str = "relu",
        width: int = 1,
    ) -> None:
        super().__init__()
        self.in_channels, self.num_classes = in_channels, num_classes
        self.front = ConvStack(in_channels, num_classes, front_width, 3, front_rates, norm)
        if scores not in SCORES:
            raise ModelError(f"scores={scores!r}: use one of {', '.join(SCORES)}")
        self.scores = nn.BatchNorm2d(num_classes) if scores == "norm" else nn.Identity()
        self.context = ContextModule(num_classes, variant, rates=context_rates, act=act, width=width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return self.context(self.scores(self.front(x)))


class ContextHead(nn.Sequential):
    """The context module as a head on any backbone: 1x1 conv to class scores, then the module."""

    def __init__(self, in_channels: int, num_classes: int, variant: str = "basic") -> None:
        super().__init__(nn.Conv2d(in_channels, num_classes, 1), ContextModule(num_classes, variant))


@register("context_resnet18", "dilated ResNet-18 (stride 8) + context module head")
def context_on_backbone(
    backbone: str = "resnet18",
    num_classes: int = 2,
    in_channels: int = 3,
    output_stride: int = 8,
    variant: str = "basic",
) -> Segmenter:
    """The context module as a head on a dilated ResNet (as Yu & Koltun put it on a dilated VGG)."""
    body = build_backbone(backbone, output_stride, in_channels, None)
    return BackboneSegmenter(
        body, ContextHead(body.channels["layer4"], num_classes, variant), None, num_classes, in_channels
    )
