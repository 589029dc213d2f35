"""The engine's supports equal the gradient oracle's, op by op and on small networks.

Two checks per case: the in-image support (``RFReport.support``) equals the oracle at the centre and at the
corners, borders included; and on an input large enough that no border is reached, the theoretical window of a
central pixel (``RFReport.window``) equals the oracle too.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from atrous.rf import analyze
from nets import Branches, Lambda, seq
from oracle import gradient_support


class ChunkOfCat(nn.Module):
    """cat of a narrow and a wide branch, then keep only the first half: only the narrow branch matters."""

    def __init__(self) -> None:
        super().__init__()
        self.narrow = nn.Conv2d(2, 2, 3, padding=1)
        self.wide = nn.Conv2d(2, 2, 3, padding=6, dilation=6)
        self.out = nn.Conv2d(2, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.cat([self.narrow(x), self.wide(x)], 1)
        first, _ = torch.chunk(y, 2, dim=1)
        return self.out(first)


class SqueezeExcite(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        s = torch.sigmoid(self.fc(y.mean((2, 3))))
        return y * s[:, :, None, None]


class ChannelsLastMLP(nn.Module):
    """ConvNeXt-style: depthwise conv, then Linear layers over channels in NHWC layout, residual."""

    def __init__(self) -> None:
        super().__init__()
        self.dw = nn.Conv2d(4, 4, 5, padding=2, groups=4)
        self.fc1, self.fc2 = nn.Linear(4, 8), nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dw(x).permute(0, 2, 3, 1)
        y = self.fc2(F.gelu(self.fc1(y))).permute(0, 3, 1, 2)
        return x + y


class TinyUNet(nn.Module):
    """Pool, transposed-conv up, pad to the skip's (odd) size, concatenate: the U-Net shape problem."""

    def __init__(self, up: str = "transposed") -> None:
        super().__init__()
        self.enc = nn.Conv2d(2, 2, 3, padding=1)
        self.mid = nn.Conv2d(2, 2, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.up = (
            nn.ConvTranspose2d(2, 2, 2, stride=2) if up == "transposed" else nn.Conv2d(2, 2, 3, padding=1)
        )
        self.mode = up
        self.dec = nn.Conv2d(4, 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = self.enc(x)
        y = self.mid(self.pool(skip))
        if self.mode == "transposed":
            y = self.up(y)
        else:
            y = self.up(F.interpolate(y, size=skip.shape[2:], mode="bilinear", align_corners=False))
        dy, dx = skip.shape[2] - y.shape[2], skip.shape[3] - y.shape[3]
        y = F.pad(y, [dx // 2, dx - dx // 2, dy // 2, dy - dy // 2])
        return self.dec(torch.cat([skip, y], 1))


CASES: dict[str, tuple[Callable[[], nn.Module], tuple, tuple]] = {
    # name: (factory, small input shape, large input shape for the theoretical window)
    "conv_rect_strided_dilated": (
        lambda: nn.Conv2d(2, 2, (3, 5), (2, 1), (1, 2), (2, 3)),
        (2, 13, 11),
        (2, 41, 41),
    ),
    "conv1d": (lambda: seq(nn.Conv1d(2, 2, 4, 3, 0, 2), nn.Conv1d(2, 2, 3, 1, 1)), (2, 29), (2, 97)),
    "conv3d": (
        lambda: seq(nn.Conv3d(2, 2, (3, 1, 5), (1, 2, 1), (1, 0, 4), (1, 1, 2))),
        (2, 7, 6, 9),
        (2, 15, 15, 21),
    ),
    "transposed": (
        lambda: seq(nn.ConvTranspose2d(2, 2, 4, 2, 1), nn.Conv2d(2, 2, 3, padding=1)),
        (2, 6, 7),
        (2, 21, 21),
    ),
    "transposed_outpad": (
        lambda: nn.ConvTranspose2d(2, 2, 3, 2, 1, output_padding=1),
        (2, 5, 6),
        (2, 15, 15),
    ),
    "transposed_dilated": (lambda: nn.ConvTranspose2d(2, 2, 5, 3, 2, dilation=2), (2, 5, 4), (2, 13, 13)),
    "down_up": (
        lambda: seq(nn.Conv2d(2, 2, 3, 2, 1), nn.ConvTranspose2d(2, 2, 2, 2), nn.Conv2d(2, 2, 3, 1, 1)),
        (2, 9, 10),
        (2, 33, 33),
    ),
    "maxpool_ceil": (
        lambda: seq(nn.Conv2d(2, 2, 3, padding=1), nn.MaxPool2d(3, 2, 1, ceil_mode=True), nn.Conv2d(2, 2, 3)),
        (2, 12, 11),
        (2, 41, 41),
    ),
    "avgpool_ceil": (
        lambda: seq(nn.AvgPool2d(2, 2, ceil_mode=True), nn.Conv2d(2, 2, 3, padding=1)),
        (2, 9, 7),
        (2, 31, 31),
    ),
    "maxpool_dilated": (
        lambda: seq(nn.MaxPool2d(3, 1, 1, dilation=2), nn.Conv2d(2, 2, 3, padding=1)),
        (2, 10, 9),
        (2, 31, 31),
    ),
    "adaptive_pool": (
        lambda: seq(nn.Conv2d(2, 2, 3, padding=1), nn.AdaptiveAvgPool2d((3, 5)), nn.Conv2d(2, 2, 1)),
        (2, 13, 17),
        (2, 13, 17),
    ),
    "nearest_x2": (
        lambda: seq(nn.Conv2d(2, 2, 3, 2, 1), nn.Upsample(scale_factor=2, mode="nearest")),
        (2, 8, 9),
        (2, 31, 31),
    ),
    "nearest_odd_size": (
        lambda: seq(nn.Conv2d(2, 2, 3, 2, 1), Lambda(lambda x: F.interpolate(x, size=(17, 13)))),
        (2, 9, 7),
        (2, 9, 7),
    ),
    "bilinear_x2": (
        lambda: seq(nn.Conv2d(2, 2, 3, 2, 1), nn.Upsample(scale_factor=2, mode="bilinear")),
        (2, 10, 9),
        (2, 33, 33),
    ),
    "bilinear_odd_size": (
        lambda: seq(
            nn.Conv2d(2, 2, 3, 2, 1), Lambda(lambda x: F.interpolate(x, size=(19, 11), mode="bilinear"))
        ),
        (2, 10, 7),
        (2, 10, 7),
    ),
    "bilinear_align_corners": (
        lambda: seq(Lambda(lambda x: F.interpolate(x, size=(13, 9), mode="bilinear", align_corners=True))),
        (2, 7, 4),
        (2, 7, 4),
    ),
    "bilinear_downsample": (
        lambda: seq(Lambda(lambda x: F.interpolate(x, scale_factor=0.5, mode="bilinear"))),
        (2, 11, 12),
        (2, 11, 12),
    ),
    "bicubic": (lambda: seq(nn.Upsample(scale_factor=2, mode="bicubic")), (2, 6, 5), (2, 21, 21)),
    "trilinear": (
        lambda: seq(nn.Conv3d(2, 2, 3, 2, 1), nn.Upsample(scale_factor=2, mode="trilinear")),
        (2, 6, 5, 7),
        (2, 17, 17, 17),
    ),
    "nearest_exact": (
        lambda: seq(Lambda(lambda x: F.interpolate(x, size=(11, 7), mode="nearest-exact"))),
        (2, 5, 6),
        (2, 5, 6),
    ),
    "pixel_shuffle": (
        lambda: seq(nn.Conv2d(4, 8, 3, padding=1), nn.PixelShuffle(2), nn.Conv2d(2, 2, 3, padding=1)),
        (4, 5, 6),
        (4, 17, 17),
    ),
    "pixel_unshuffle": (
        lambda: seq(nn.PixelUnshuffle(2), nn.Conv2d(8, 2, 3, padding=1)),
        (2, 10, 8),
        (2, 30, 30),
    ),
    "pad_constant": (
        lambda: seq(Lambda(lambda x: F.pad(x, (2, 0, 1, 3))), nn.Conv2d(2, 2, 3)),
        (2, 7, 8),
        (2, 21, 21),
    ),
    "pad_reflect": (
        lambda: seq(Lambda(lambda x: F.pad(x, (2, 1, 1, 2), mode="reflect")), nn.Conv2d(2, 2, 3)),
        (2, 7, 8),
        (2, 21, 21),
    ),
    "pad_replicate": (
        lambda: seq(Lambda(lambda x: F.pad(x, (2, 2, 3, 1), mode="replicate")), nn.Conv2d(2, 2, 3)),
        (2, 6, 7),
        (2, 21, 21),
    ),
    "crop_negative_pad": (
        lambda: seq(nn.Conv2d(2, 2, 3, padding=1), Lambda(lambda x: F.pad(x, (-1, -2, 0, -1)))),
        (2, 9, 9),
        (2, 21, 21),
    ),
    "slice_step": (
        lambda: seq(nn.Conv2d(2, 2, 3, padding=1), Lambda(lambda x: x[:, :, 2:-3:2, 1:])),
        (2, 15, 9),
        (2, 31, 31),
    ),
    "flip": (
        lambda: seq(
            nn.Conv2d(2, 2, (3, 1), padding=(2, 0)), Lambda(lambda x: torch.flip(x, [2])), nn.Conv2d(2, 2, 3)
        ),
        (2, 9, 8),
        (2, 21, 21),
    ),
    "depthwise": (
        lambda: seq(nn.Conv2d(4, 4, 5, padding=4, dilation=2, groups=4), nn.Conv2d(4, 4, 1)),
        (4, 12, 12),
        (4, 31, 31),
    ),
    "residual_add": (
        lambda: Branches(
            nn.Conv2d(2, 2, 3, 2, 1),
            nn.Identity(),
            seq(nn.Conv2d(2, 2, 3, 1, 1), nn.ReLU(), nn.Conv2d(2, 2, 3, 1, 1)),
            "add",
        ),
        (2, 12, 13),
        (2, 41, 41),
    ),
    "aspp_like": (
        lambda: Branches(
            nn.Conv2d(2, 2, 1),
            nn.Conv2d(2, 2, 3, padding=4, dilation=4),
            nn.Conv2d(2, 2, 3, padding=7, dilation=7),
            "cat",
            nn.Conv2d(4, 2, 1),
        ),
        (2, 15, 15),
        (2, 41, 41),
    ),
    "chunk_of_cat": (ChunkOfCat, (2, 15, 15), (2, 31, 31)),
    "squeeze_excite": (SqueezeExcite, (2, 7, 6), (2, 7, 6)),
    "channels_last_mlp": (ChannelsLastMLP, (4, 9, 8), (4, 21, 21)),
    "unet_transposed_odd": (lambda: TinyUNet("transposed"), (2, 11, 13), (2, 41, 41)),
    "unet_bilinear_odd": (lambda: TinyUNet("bilinear"), (2, 11, 13), (2, 41, 43)),
}


def _probe_pixels(shape: tuple[int, ...]) -> list[tuple[int, ...]]:
    """The centre and every corner of an output's spatial grid."""
    corners = itertools.product(*[(0, n - 1) for n in shape])
    return sorted({tuple(n // 2 for n in shape), *corners})


@pytest.mark.parametrize("name", sorted(CASES))
def test_in_image_support_equals_oracle(name: str) -> None:
    factory, shape, _ = CASES[name]
    torch.manual_seed(0)
    model = factory()
    report = analyze(model, shape)
    out_shape = report.outputs[0].shape[2:]
    for index in _probe_pixels(out_shape):
        expected = gradient_support(model, shape, index)
        got = report.support(index)
        assert np.array_equal(got, expected), (
            f"{name} at output {index}: engine {got.sum()} px, oracle {expected.sum()} px"
        )


@pytest.mark.parametrize("name", sorted(CASES))
def test_theoretical_window_equals_oracle_away_from_borders(name: str) -> None:
    factory, _, big = CASES[name]
    torch.manual_seed(0)
    model = factory()
    report = analyze(model, big)
    out_shape = report.outputs[0].shape[2:]
    centre = tuple(n // 2 for n in out_shape)
    window = report.window(centre)
    expected = gradient_support(model, big, centre)
    if window is None:  # global: every input pixel reaches the output
        assert report.outputs[0].global_ and expected.all()
        return
    origin, mask = window
    inside = all(o >= 0 and o + m <= n for o, m, n in zip(origin, mask.shape, big[1:]))
    # Each case's large input is chosen to hold the whole window; a window that does not fit is a wrong window
    # (or a case to enlarge), never a reason to skip the comparison.
    assert inside, f"{name}: the window {origin}+{mask.shape} does not fit in {big[1:]}"
    placed = np.zeros(big[1:], dtype=bool)
    placed[tuple(slice(o, o + m) for o, m in zip(origin, mask.shape))] = mask
    assert np.array_equal(placed, expected)


def test_chunk_of_concatenation_keeps_only_the_selected_branch() -> None:
    report = analyze(ChunkOfCat(), (2, 31, 31))
    out = report.outputs[0]
    assert out.rf == [3, 3]  # the dilated branch (RF 13) was dropped by the chunk
    assert out.notes == []


def test_aspp_union_is_not_a_product() -> None:
    _, _, big = CASES["aspp_like"]
    report = analyze(CASES["aspp_like"][0](), big)
    out = report.outputs[0]
    assert out.rf == [15, 15]
    # 1 + 9 + 9 pixels of three grids, the centre shared: 17 of the 15 x 15 box.
    assert out.area_coverage == pytest.approx(17 / 225)
    # Per axis the union is {-7, -4, 0, 4, 7}: 10 holes among 15.
    assert [a.hole_count for a in out.axes] == [10, 10]
