"""Stand-ins for the factories users bring (torchvision, segmentation_models_pytorch), so that the tests of
the bring-your-own-model front door need neither library: keyword-only arguments, defaults that would
download weights (and fail offline the way those libraries do), and dict / tuple / dataclass outputs.

Importable as ``byo_models`` because pytest's ``pythonpath`` holds ``tests/``.
"""

from __future__ import annotations

import urllib.error
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

OFFLINE = "[Errno -3] Temporary failure in name resolution"
HUB_MESSAGE = (
    "An error happened while trying to locate the file on the Hub and we cannot find the requested files in "
    "the local cache. Please check your connection and try again or make sure your Internet connection is on."
)


class LocalEntryNotFoundError(FileNotFoundError):
    """Named like huggingface_hub's offline error (which is also a FileNotFoundError)."""


def _conv(c_in: int, c_out: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=dilation, dilation=dilation)


class SegNet(nn.Module):
    """torchvision-like segmentation net: stem (stride 2), two stages (stride 2 each unless dilated), a 3x3
    classifier, and an auxiliary 1x1 head on stage 1; returns ``{"out": ..., "aux": ...}``."""

    def __init__(self, num_classes: int, replace_stride_with_dilation: Sequence[bool]) -> None:
        super().__init__()
        self.stem = _conv(3, 8, stride=2)
        stages, dilation = [], 1
        # torchvision semantics: a dilated stage's first conv keeps the previous dilation, the rest double it.
        for dilate in replace_stride_with_dilation:
            stages.append(_conv(8, 8, stride=1 if dilate else 2, dilation=dilation))
            dilation *= 2 if dilate else 1
        self.layer1, self.layer2 = stages
        self.classifier = _conv(8, num_classes, dilation=dilation)
        self.aux_classifier = nn.Conv2d(8, num_classes, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        f1 = self.layer1(self.stem(x))
        return {"out": self.classifier(self.layer2(f1)), "aux": self.aux_classifier(f1)}


def seg_net(
    *,
    weights: str | None = "DEFAULT",
    progress: bool = True,
    num_classes: int = 3,
    weights_backbone: str | None = "DEFAULT",
    replace_stride_with_dilation: list[bool] | None = None,
) -> SegNet:
    """Like ``torchvision.models.segmentation.fcn_resnet50``: keyword-only, and its default weights download."""
    if weights is not None or weights_backbone is not None:
        raise urllib.error.URLError(OFFLINE)
    return SegNet(num_classes, replace_stride_with_dilation or [False, False])


class PairNet(nn.Module):
    """Like an smp model class: ``encoder_weights`` defaults to a hub download; returns a (mask, edges) tuple."""

    def __init__(
        self, encoder_name: str = "tiny", encoder_weights: str | None = "imagenet", classes: int = 2
    ):
        super().__init__()
        if encoder_weights is not None:
            raise LocalEntryNotFoundError(HUB_MESSAGE)
        self.mask = nn.Conv2d(1, classes, 3, padding=1)
        self.edges = nn.Conv2d(1, 1, 5, padding=2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.mask(x), self.edges(x)


@dataclass
class Prediction:
    logits: torch.Tensor
    hidden: torch.Tensor
    score: float


class DataclassNet(nn.Module):
    """Returns a dataclass (as Hugging Face models do): two tensor fields and a number, which is skipped."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Conv2d(1, 2, 3, padding=1)
        self.head = nn.Conv2d(2, 2, 3, padding=2, dilation=2)

    def forward(self, x: torch.Tensor) -> Prediction:
        hidden = self.body(x)
        return Prediction(self.head(hidden), hidden, 0.5)


def broken(*, depth: int = 3) -> nn.Module:
    """A factory that refuses its arguments for a reason of its own (not a download)."""
    raise ValueError(f"depth must be even, got {depth}")


def chained_download() -> nn.Module:
    """A download failure wrapped in the library's own error, whose message does not say so."""
    try:
        raise ConnectionResetError(104, "Connection reset by peer")
    except ConnectionResetError as exc:
        raise RuntimeError("could not load the encoder") from exc


instance = nn.Conv2d(1, 1, 3)  # a module object, not a factory


class HalfResNet(nn.Module):
    """Like an smp model class with its data arguments (``in_channels``, ``classes``), but its logits come out
    at half the input's resolution (as many transformer decoders do); the encoder weights download."""

    def __init__(
        self,
        encoder_name: str = "tiny",
        encoder_weights: str | None = "imagenet",
        in_channels: int = 3,
        classes=1,
    ) -> None:
        super().__init__()
        if encoder_weights is not None:
            raise LocalEntryNotFoundError(HUB_MESSAGE)
        self.body = nn.Sequential(_conv(in_channels, 8, stride=2), nn.BatchNorm2d(8), nn.ReLU())
        self.head = nn.Conv2d(8, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


class PooledContext(nn.Module):
    """Image-level context through BatchNorm after global pooling, as torchvision's ASPP pooling branch: it
    cannot train on a batch of one sample."""

    def __init__(self, num_classes: int = 2) -> None:
        super().__init__()
        self.conv = _conv(3, num_classes)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.BatchNorm2d(num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return y + self.pool(y)
