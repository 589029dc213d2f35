"""Space-to-depth and depth-to-space written with view / permute / reshape (TResNet's stem, hand-written pixel
shuffle): the low digits of each axis move into the channel dim and back, and the engine follows them exactly.

A convolution that mixes channels after space-to-depth reads the whole ``bs x bs`` block of each of its taps; a
depthwise convolution keeps each block position apart, which only shows once depth-to-space brings the digits
back out of the channels (the report indexes output pixels by their grid position, so every exactness check
here ends on an ordinary grid).
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from atrous.errors import UnsupportedOpError
from atrous.rf import analyze
from nets import seq
from oracle import gradient_support


def space_to_depth(x: torch.Tensor, bs: int) -> torch.Tensor:
    """timm's ``SpaceToDepth``: (B, C, H, W) -> (B, C * bs * bs, H / bs, W / bs), block position outermost."""
    B, C, H, W = x.shape
    x = x.view(B, C, H // bs, bs, W // bs, bs).permute(0, 3, 5, 1, 2, 4)
    return x.reshape(B, C * bs * bs, H // bs, W // bs)


def depth_to_space(x: torch.Tensor, bs: int) -> torch.Tensor:
    """The inverse of :func:`space_to_depth` (a pixel shuffle written by hand, in that channel order)."""
    B, C, H, W = x.shape
    x = x.view(B, bs, bs, C // (bs * bs), H, W).permute(0, 3, 4, 1, 5, 2)
    return x.reshape(B, C // (bs * bs), H * bs, W * bs)


class S2D(nn.Module):
    """A 3x3 convolution, space-to-depth, then ``follow``: what comes after the channels took the digits."""

    def __init__(self, bs: int, follow: str, c: int = 2) -> None:
        super().__init__()
        self.bs, self.follow = bs, follow
        n = c * bs * bs
        self.pre = nn.Conv2d(c, c, 3, padding=1)
        self.conv = nn.Conv2d(n, 3, 3, padding=1)
        self.depthwise = nn.Conv2d(n, n, 3, padding=1, groups=n)
        self.grouped = nn.Conv2d(n, n, 3, padding=1, groups=bs)  # the groups pick the row digit
        self.mix = nn.Conv2d(n, n, 1)
        self.linear = nn.Linear(n, 3)
        self.post = nn.Conv2d(c, 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = space_to_depth(self.pre(x), self.bs)
        if self.follow == "conv":
            return self.conv(y)
        if self.follow == "linear":  # channels-last Linear over the block's channels
            return self.linear(y.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        if self.follow == "depthwise":
            y = self.depthwise(y)
        elif self.follow == "depthwise_pool":  # stride 2 on the coarse digit, block positions kept
            y = F.avg_pool2d(F.gelu(self.depthwise(y)) + y, 2)
        elif self.follow == "grouped":
            y = self.grouped(y)
        elif self.follow == "mix":
            y = self.mix(y)
        return self.post(depth_to_space(y, self.bs))


def _probes(shape: tuple[int, ...]) -> list[tuple[int, ...]]:
    return sorted({tuple(n // 2 for n in shape), (1, 1), *itertools.product(*[(0, n - 1) for n in shape])})


def assert_oracle(model: nn.Module, shape: tuple[int, ...], **oracle) -> None:
    report = analyze(model, shape)
    for index in _probes(report.outputs[0].shape[2:]):
        expected = gradient_support(model, shape, index, **oracle)
        got = report.support(index)
        assert np.array_equal(got, expected), f"at {index}: engine {got.sum()} px, oracle {expected.sum()} px"


SHAPES = {2: (2, 8, 12), 4: (2, 16, 24)}  # rectangular, several blocks per axis


@pytest.mark.parametrize("bs", [2, 4])
@pytest.mark.parametrize("follow", ["conv", "linear", "depthwise", "depthwise_pool", "grouped", "mix"])
def test_space_to_depth_matches_the_oracle(bs: int, follow: str) -> None:
    torch.manual_seed(0)
    assert_oracle(S2D(bs, follow), SHAPES[bs])


@pytest.mark.parametrize("bs", [2, 4])
def test_a_channel_mixing_conv_reads_whole_blocks(bs: int) -> None:
    # Output (i, j) reads blocks i-1..i+1: 3 * bs pixels, in steps of bs.
    model = seq(lambda x: space_to_depth(x, bs), nn.Conv2d(2 * bs * bs, 2, 3, padding=1))
    out = analyze(model, SHAPES[bs]).outputs[0]
    assert out.rf == [3 * bs, 3 * bs] and out.stride == [bs, bs] and out.aligned


def test_depthwise_keeps_each_block_position_apart() -> None:
    # Space-to-depth by 2, a depthwise 3x3, back: pixel (4, 4) reads the same block position of the three
    # neighbouring blocks, rows and columns 2, 4, 6 -- a dilation-2 pattern, not the 6x6 of whole blocks.
    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.dw = nn.Conv2d(4, 4, 3, padding=1, groups=4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return depth_to_space(self.dw(space_to_depth(x, 2)), 2)

    report = analyze(Model(), (1, 8, 8))
    expected = np.zeros((8, 8), dtype=bool)
    expected[np.ix_([2, 4, 6], [2, 4, 6])] = True
    assert np.array_equal(report.support((4, 4)), expected)
    assert report.outputs[0].rf == [5, 5]


def test_groups_that_cut_a_block_over_approximate_and_say_so() -> None:
    # 16 channels = (row digit 4, column digit 4, C 1) in 8 groups of 2: each group holds half of the column
    # digit's range, which one digit cannot express; the engine reads the whole digit and notes it.
    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(16, 16, 1, groups=8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return depth_to_space(self.conv(space_to_depth(x, 4)), 4)

    model, shape = Model(), (1, 8, 8)
    report = analyze(model, shape)
    assert any(n.startswith("approximate") and "space-to-depth" in n for n in report.outputs[0].notes)
    for index in _probes((8, 8)):
        expected = gradient_support(model, shape, index)
        got = report.support(index)
        assert (got >= expected).all() and got.sum() > expected.sum()


class DepthToSpace(nn.Module):
    """A convolution to 4x the channels, depth-to-space by views, then ``tail``."""

    def __init__(self, tail: str) -> None:
        super().__init__()
        self.up = nn.Conv2d(2, 8, 3, padding=1)
        self.post = nn.Conv2d(2, 2, 3, padding=1)
        self.tail = tail

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = depth_to_space(self.up(x), 2)
        if self.tail == "conv":
            return self.post(y)
        if self.tail == "skip":  # an elementwise sum with an ordinary upsampled map
            return self.post(y + F.interpolate(x, scale_factor=2.0))
        return y


@pytest.mark.parametrize("tail", ["conv", "skip", "none"])
def test_depth_to_space_by_views_matches_the_oracle(tail: str) -> None:
    torch.manual_seed(0)
    assert_oracle(DepthToSpace(tail), (2, 6, 7))


def test_depth_to_space_by_views_is_a_pixel_shuffle() -> None:
    # The same field as nn.PixelShuffle: a 3x3 conv at half resolution (3 pixels there), output stride 1/2.
    hand = analyze(DepthToSpace("none"), (2, 6, 7)).outputs[0]
    torch_model = nn.Sequential(nn.Conv2d(2, 8, 3, padding=1), nn.PixelShuffle(2))
    builtin = analyze(torch_model, (2, 6, 7)).outputs[0]
    assert hand.rf == builtin.rf == [3, 3] and hand.stride == builtin.stride == [0.5, 0.5]


def test_nearest_upsampling_by_expand_and_reshape() -> None:
    def up(x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        return x[:, :, :, None, :, None].expand(B, C, H, 2, W, 2).reshape(B, C, 2 * H, 2 * W)

    model = seq(nn.Conv2d(2, 2, 3, padding=1), up, nn.Conv2d(2, 2, 3, padding=1))
    assert_oracle(model, (2, 5, 6))


class SpaceToDepthModule(nn.Module):
    """timm's SpaceToDepth, as TResNet's stem uses it."""

    def __init__(self, bs: int = 4) -> None:
        super().__init__()
        self.bs = bs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return space_to_depth(x, self.bs)


class BasicBlock(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c), nn.LeakyReLU(1e-3))
        self.conv2 = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(self.conv2(self.conv1(x)) + x, 1e-3)


def tresnet_stem() -> nn.Module:
    """TResNet's stem at small width: space-to-depth by 4, conv-BN-leaky ReLU, then a residual basic block."""
    return nn.Sequential(
        SpaceToDepthModule(4),
        nn.Sequential(nn.Conv2d(3 * 16, 8, 3, padding=1), nn.BatchNorm2d(8), nn.LeakyReLU(1e-3)),
        BasicBlock(8),
    )


def test_tresnet_stem_replica() -> None:
    torch.manual_seed(0)
    model, shape = tresnet_stem().eval(), (3, 32, 48)
    assert_oracle(model, shape)
    out = analyze(model, shape).outputs[0]
    # 3 blocks of 4 pixels, then two 3x3 convolutions at stride 4: 12 + 2 * 2 * 4.
    assert out.rf == [28, 28] and out.stride == [4, 4]


def _timm(name: str, **kwargs: object) -> nn.Module:
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, **kwargs).eval()


def test_real_tresnet_stem_is_exact() -> None:
    body = _timm("tresnet_m", num_classes=0, global_pool="").body
    stem, shape = body[:2], (3, 64, 64)  # space-to-depth and the first ConvNormAct
    assert_oracle(stem, shape)
    out = analyze(stem, shape).outputs[0]
    assert out.rf == [12, 12] and out.stride == [4, 4]


def test_real_tresnet_is_exact() -> None:
    # Global from the first squeeze-excite on (a spatial mean), which the oracle confirms at every probe.
    model = _timm("tresnet_m", num_classes=0, global_pool="")
    shape = (3, 64, 64)
    assert_oracle(model, shape)
    assert analyze(model, shape).outputs[0].global_


def test_a_pointwise_conv_on_a_dim_that_merges_both_axes_keeps_them() -> None:
    # MobileViTv2 runs 1x1 convolutions on (B, C, pixels-in-patch, patches): dims that hold digits of H and W
    # together. Along them the convolution is the identity, so every digit stays where it is.
    def patches(x: torch.Tensor) -> torch.Tensor:  # (B, C, 8, 12) -> (B, C, 2 * 2, 4 * 6)
        B, C, H, W = x.shape
        x = x.reshape(B, C, H // 2, 2, W // 2, 2).permute(0, 1, 3, 5, 2, 4)
        return x.reshape(B, C, 4, H * W // 4)

    def image(x: torch.Tensor) -> torch.Tensor:
        B, C = x.shape[:2]
        return x.reshape(B, C, 2, 2, 4, 6).permute(0, 1, 4, 2, 5, 3).reshape(B, C, 8, 12)

    torch.manual_seed(0)
    model = seq(
        nn.Conv2d(2, 3, 3, padding=1), patches, nn.Conv2d(3, 3, 1), image, nn.Conv2d(3, 2, 3, padding=1)
    )
    assert_oracle(model, (2, 8, 12))
    assert analyze(model, (2, 8, 12)).outputs[0].rf == [5, 5]


def test_a_real_kernel_on_a_dim_that_merges_both_axes_is_refused_by_name() -> None:
    # (8, 12) viewed as (4, 24): dim 2 holds H's high digit alone, dim 3 H's low digit with all of W.
    model = seq(lambda x: x.reshape(1, 2, 4, 24), nn.Conv2d(2, 2, 3, padding=1))
    with pytest.raises(
        UnsupportedOpError, match=r"aten\.convolution at module '1': dim 3 mixes a spatial axis"
    ):
        analyze(model, (2, 8, 12))


@pytest.mark.parametrize(
    ("name", "shape"),
    [
        ("space-to-depth of a 2-row image (grid height 1)", (4, 2, 8)),
        ("space-to-depth, then a global mean", (2, 6, 8)),
    ],
)
def test_a_grid_dim_of_size_one_still_holds_the_digits_in_channels(name: str, shape: tuple[int, ...]) -> None:
    """Was an under-reach: when the grid dim an axis left shrank to size 1, the output was addressed by axis
    coordinates, and its one grid pixel was taken to hold block position 0 only (1 px for 4; 12 px for 48)."""
    model = _Lambda(
        lambda x: space_to_depth(x, 2).mean((2, 3), keepdim=True) if "mean" in name else space_to_depth(x, 2)
    )
    report = analyze(model, shape)
    out_hw = report.outputs[0].shape[2:]
    for index in itertools.product(*(range(n) for n in out_hw)):
        got, want = report.support(index), gradient_support(model, shape, index)
        assert not (want & ~got).any(), f"{name}: under-reach at {index}"
        assert np.array_equal(got, want), f"{name}: {int(got.sum())} px, oracle {int(want.sum())} at {index}"


class _Lambda(nn.Module):
    def __init__(self, fn) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)
