"""F.unfold / F.fold (aten.im2col, aten.col2im): exact supports against the gradient oracle.

The layers people build from them (unfold -> Linear -> fold, a convolution written as unfold + matmul, CARAFE,
involution, local attention, VOLO's outlooker) are checked at the centre and every corner, on small inputs where
borders, padding and the gaps of a stride larger than the kernel all matter. The one known over-approximation
(offsets read one by one: a fold straight after an unfold) is pinned down as such, with its note.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from atrous.errors import UnsupportedOpError
from atrous.rf import analyze
from oracle import gradient_support

# (kernel, stride, padding, dilation) per case: square, rectangular with per-axis values, stride > kernel (gaps
# between blocks, output pixels no block reaches), dilated and strided (holes), a 1 x 1 kernel that only subsamples.
GEOMETRIES = {
    "k3_s1_p1": ((3, 3), (1, 1), (1, 1), (1, 1)),
    "rect_k3x2_s2x1_p1x0_d1x2": ((3, 2), (2, 1), (1, 0), (1, 2)),
    "gaps_k2_s3": ((2, 2), (3, 3), (0, 0), (1, 1)),
    "dilated_k3_s2_p2_d2": ((3, 3), (2, 2), (2, 2), (2, 2)),
    "k1_s2": ((1, 1), (2, 2), (0, 0), (1, 1)),
}


def probes(shape: tuple[int, ...]) -> list[tuple[int, ...]]:
    """The centre and every corner of an output's spatial grid."""
    return sorted({tuple(n // 2 for n in shape), *itertools.product(*[(0, n - 1) for n in shape])})


def _blocks(n: int, k: int, s: int, p: int, d: int) -> int:
    """Sliding-window positions along one axis (PyTorch's formula)."""
    return (n + 2 * p - d * (k - 1) - 1) // s + 1


def assert_exact(model: nn.Module, shape: tuple[int, ...], random_weights: bool = False) -> None:
    """The engine's in-image support equals the oracle's at the centre and every corner of the output."""
    report = analyze(model, shape)
    for index in probes(report.outputs[0].shape[2:]):
        got = report.support(index)
        expected = gradient_support(model, shape, index, random_weights=random_weights, inputs=2)
        assert not (expected & ~got).any(), f"under-reach at {index}"
        assert np.array_equal(got, expected), f"at {index}: engine {got.sum()} px, oracle {expected.sum()} px"


def channels_last_linear(layer: nn.Linear, t: torch.Tensor) -> torch.Tensor:
    """A Linear over dim 1 of (N, C, L): how unfold-based layers mix the channels of each block."""
    return layer(t.transpose(1, 2)).transpose(1, 2)


class UnfoldLinearFold(nn.Module):
    """unfold -> Linear over the C * kh * kw channels of each block -> fold back to the input size."""

    def __init__(self, geometry: tuple, channels: int = 2) -> None:
        super().__init__()
        self.kernel, self.stride, self.padding, self.dilation = geometry
        self.mix = nn.Linear(channels * math.prod(self.kernel), channels * math.prod(self.kernel))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = F.unfold(x, self.kernel, self.dilation, self.padding, self.stride)
        u = channels_last_linear(self.mix, u)
        return F.fold(u, x.shape[2:], self.kernel, self.dilation, self.padding, self.stride)


class UnfoldConv(nn.Module):
    """A convolution written as unfold + Linear + view, followed by a real convolution."""

    def __init__(self, geometry: tuple) -> None:
        super().__init__()
        self.kernel, self.stride, self.padding, self.dilation = geometry
        self.weight = nn.Linear(2 * math.prod(self.kernel), 3)
        self.after = nn.Conv2d(3, 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = F.unfold(x, self.kernel, self.dilation, self.padding, self.stride)
        h, w = (
            (n + 2 * p - d * (k - 1) - 1) // s + 1
            for n, k, s, p, d in zip(x.shape[2:], self.kernel, self.stride, self.padding, self.dilation)
        )
        y = channels_last_linear(self.weight, u).reshape(x.shape[0], 3, h, w)
        return self.after(y)


class FoldOfConv(nn.Module):
    """A convolution predicts C * kh * kw channels per block; fold scatters them (a transposed convolution)."""

    def __init__(self, geometry: tuple, out_size: tuple[int, int]) -> None:
        super().__init__()
        self.kernel, self.stride, self.padding, self.dilation = geometry
        self.out_size = out_size
        self.conv = nn.Conv2d(2, 2 * math.prod(self.kernel), 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x).flatten(2)
        return F.fold(y, self.out_size, self.kernel, self.dilation, self.padding, self.stride)


@pytest.mark.parametrize("name", sorted(GEOMETRIES))
def test_unfold_linear_fold_is_exact(name: str) -> None:
    torch.manual_seed(0)
    assert_exact(UnfoldLinearFold(GEOMETRIES[name]), (2, 9, 8))


def random_geometry(rng: np.random.Generator, size: tuple[int, int]) -> tuple:
    """Kernel, stride, padding, dilation drawn per axis, redrawn until at least one block fits."""
    while True:
        k, s, d = (tuple(int(v) for v in rng.integers(1, 4, 2)) for _ in range(3))
        p = tuple(int(rng.integers(0, d_ * (k_ - 1) + 2)) for k_, d_ in zip(k, d))
        if all(_blocks(n, *g) >= 1 for n, *g in zip(size, k, s, p, d)):
            return k, s, p, d


@pytest.mark.parametrize("seed", range(10))
def test_random_geometries_are_exact(seed: int) -> None:
    """Random per-axis kernels, strides (gaps included), paddings (up to past the kernel) and dilations."""
    rng = np.random.default_rng(seed)
    size = tuple(int(v) for v in rng.integers(5, 10, 2))
    torch.manual_seed(seed)
    assert_exact(UnfoldLinearFold(random_geometry(rng, size)), (2, *size))


@pytest.mark.parametrize("name", sorted(GEOMETRIES))
def test_convolution_written_with_unfold_is_exact(name: str) -> None:
    torch.manual_seed(0)
    assert_exact(UnfoldConv(GEOMETRIES[name]), (2, 10, 9))


@pytest.mark.parametrize("name", sorted(GEOMETRIES))
def test_fold_of_a_conv_output_is_exact(name: str) -> None:
    kernel, stride, padding, dilation = GEOMETRIES[name]
    out_size = (11, 9)
    # The conv keeps the input size, so the input must hold exactly the blocks fold expects.
    grid = tuple(_blocks(n, k, s, p, d) for n, k, s, p, d in zip(out_size, kernel, stride, padding, dilation))
    torch.manual_seed(0)
    assert_exact(FoldOfConv(GEOMETRIES[name], out_size), (2, *grid))


def test_unfold_alone_reads_one_window_per_block() -> None:
    """The unfolded tensor itself: block (h', w') of the L dim reads the window at (h' s - p, w' s - p); the
    oracle indexes the flat L dim, the report the two axes it carries."""
    kernel, stride, padding, dilation = GEOMETRIES["rect_k3x2_s2x1_p1x0_d1x2"]
    model = nn.Unfold(kernel, dilation, padding, stride)
    shape = (2, 9, 8)
    report = analyze(model, shape)
    grid = [_blocks(n, *g) for n, *g in zip(shape[1:], kernel, stride, padding, dilation)]
    assert report.outputs[0].rf == [3, 3]  # kh = 3; kw = 2 taps 2 apart span 3
    assert report.outputs[0].stride == [2, 1]
    for h, w in probes(tuple(grid)):
        expected = gradient_support(model, shape, (h * grid[1] + w,))
        assert np.array_equal(report.support((h, w)), expected), (h, w)


def test_theoretical_window_of_unfold_linear_fold() -> None:
    """On an input larger than the window, the periodic maps give the oracle's support of a central pixel:
    a 3 x 3 unfold mixed and folded back reaches 5 x 5 pixels."""
    torch.manual_seed(0)
    model = UnfoldLinearFold(GEOMETRIES["k3_s1_p1"])
    shape = (2, 21, 21)
    report = analyze(model, shape)
    origin, mask = report.window((10, 10))
    assert origin == (8, 8) and mask.shape == (5, 5) and mask.all()
    expected = gradient_support(model, shape, (10, 10))
    placed = np.zeros(shape[1:], dtype=bool)
    placed[8:13, 8:13] = mask
    assert np.array_equal(placed, expected)
    assert report.outputs[0].rf == [5, 5]


def test_fold_straight_after_unfold_over_approximates_and_says_so() -> None:
    """fold(unfold(x)) puts every offset back where it came from: each pixel reads only itself. The engine keeps
    the whole window per channel, so it reports the 3 x 3 neighbourhood: never less than the oracle, and a
    note says why."""
    model = nn.Sequential(nn.Unfold(3, padding=1), nn.Fold((7, 6), 3, padding=1))
    shape = (2, 7, 6)
    report = analyze(model, shape)
    got, expected = report.support((3, 3)), gradient_support(model, shape, (3, 3))
    assert expected.sum() == 1 and got.sum() == 25  # 5 x 5: the window of every block within reach
    assert not (expected & ~got).any()
    assert any("moves kernel offsets into channels" in n for n in report.outputs[0].notes)


class Unbatched(nn.Module):
    """unfold / fold on a (C, H, W) tensor: PyTorch's unbatched form, channels in dim 0."""

    def __init__(self) -> None:
        super().__init__()
        self.mix = nn.Linear(18, 18)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = F.unfold(x[0], 3, padding=1, stride=2)
        u = self.mix(u.t()).t()
        return F.fold(u, x.shape[2:], 3, padding=1, stride=2)[None]


class UnfoldTransposed(nn.Module):
    """unfold of an image with H and W swapped (W in dim 2): the row blocks then index W."""

    def __init__(self) -> None:
        super().__init__()
        self.mix = nn.Linear(12, 12)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xt = x.transpose(2, 3)
        u = channels_last_linear(self.mix, F.unfold(xt, (3, 2), dilation=(1, 2), stride=(1, 2)))
        return F.fold(u, xt.shape[2:], (3, 2), dilation=(1, 2), stride=(1, 2)).transpose(2, 3)


@pytest.mark.parametrize("factory", [Unbatched, UnfoldTransposed], ids=lambda f: f.__name__)
def test_unbatched_and_transposed_unfold_are_exact(factory: type[nn.Module]) -> None:
    torch.manual_seed(0)
    assert_exact(factory(), (2, 9, 8))


class OneBlockRow(nn.Module):
    """A (2, 3) kernel every 4 rows on a 5-row image: one block row, which reaches output rows 0-1 only."""

    def __init__(self) -> None:
        super().__init__()
        self.mix = nn.Linear(12, 12)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = channels_last_linear(self.mix, F.unfold(x, (2, 3), stride=(4, 1)))
        return F.fold(u, x.shape[2:], (2, 3), stride=(4, 1))


def test_single_block_row_with_uncovered_rows_over_approximates_and_says_so() -> None:
    """With one block row the block dim does not index H, so the engine cannot tell rows 2-4 (no block) from
    rows 0-1: they are shown with the block's support (the oracle: nothing), and a note says so."""
    torch.manual_seed(0)
    model, shape = OneBlockRow(), (2, 5, 8)
    report = analyze(model, shape)
    assert np.array_equal(report.support((1, 4)), gradient_support(model, shape, (1, 4)))
    assert not gradient_support(model, shape, (3, 4)).any() and report.support((3, 4)).any()
    assert any("no block reaches" in n for n in report.outputs[0].notes)


class Carafe(nn.Module):
    """CARAFE upsampling (x2): a conv predicts a softmax-normalised k x k kernel per output pixel (pixel
    shuffle), and each output pixel is that kernel applied to the unfolded neighbourhood of its source pixel."""

    def __init__(self, channels: int = 2, k: int = 3, up: int = 2) -> None:
        super().__init__()
        self.k, self.up = k, up
        self.encoder = nn.Conv2d(channels, k * k * up * up, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        kernels = F.pixel_shuffle(self.encoder(x), self.up).softmax(dim=1)  # (N, k*k, up*H, up*W)
        patches = F.unfold(x, self.k, padding=self.k // 2).view(n, c * self.k * self.k, h, w)
        patches = F.interpolate(patches, scale_factor=self.up, mode="nearest")
        patches = patches.view(n, c, self.k * self.k, h * self.up, w * self.up)
        return (patches * kernels.unsqueeze(1)).sum(2)


class Involution(nn.Module):
    """Involution (Li et al. 2021): a per-pixel k x k kernel shared by the channels of each group, generated from
    the pixel itself, applied to the unfolded neighbourhood (dilated here to leave holes)."""

    def __init__(self, channels: int = 4, k: int = 3, groups: int = 2, dilation: int = 2) -> None:
        super().__init__()
        self.k, self.g, self.d = k, groups, dilation
        self.reduce = nn.Conv2d(channels, 2, 1)
        self.span = nn.Conv2d(2, k * k * groups, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        weight = self.span(torch.relu(self.reduce(x))).view(n, self.g, self.k * self.k, h, w).unsqueeze(2)
        pad = self.d * (self.k - 1) // 2
        patches = F.unfold(x, self.k, self.d, pad).view(n, self.g, c // self.g, self.k * self.k, h, w)
        return (weight * patches).sum(dim=3).view(n, c, h, w)


class LocalAttention(nn.Module):
    """Stand-alone self-attention (Ramachandran et al. 2019) over a k x k neighbourhood, written with unfold:
    each query attends to the keys of its window."""

    def __init__(self, channels: int = 4, k: int = 3, heads: int = 2) -> None:
        super().__init__()
        self.k, self.heads = k, heads
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        q, k, v = self.qkv(x).chunk(3, dim=1)
        q = q.reshape(n, self.heads, c // self.heads, 1, h * w)
        k, v = (
            F.unfold(t, self.k, padding=self.k // 2).view(n, self.heads, c // self.heads, self.k**2, h * w)
            for t in (k, v)
        )
        attn = (q * k).sum(2, keepdim=True).softmax(dim=3)
        return (attn * v).sum(3).reshape(n, c, h, w)


class Outlooker(nn.Module):
    """VOLO's outlook attention (timm ``OutlookAttention``): the values of each k x k window are unfolded, mixed
    by attention weights that a Linear predicts from the window's centre token (pooled when strided), and
    folded back, overlapping windows summed."""

    def __init__(self, dim: int = 4, heads: int = 2, k: int = 3, padding: int = 1, stride: int = 1) -> None:
        super().__init__()
        self.heads, self.k, self.padding, self.stride = heads, k, padding, stride
        self.v = nn.Linear(dim, dim)
        self.attn = nn.Linear(dim, k**4 * heads)
        self.proj = nn.Linear(dim, dim)
        self.unfold = nn.Unfold(k, padding=padding, stride=stride)
        self.pool = nn.AvgPool2d(stride, stride, ceil_mode=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)  # (N, H, W, C) as VOLO keeps its tokens
        n, h, w, c = x.shape
        kk = self.k * self.k
        v = self.v(x).permute(0, 3, 1, 2)
        bh, bw = math.ceil(h / self.stride), math.ceil(w / self.stride)
        v = self.unfold(v).reshape(n, self.heads, c // self.heads, kk, bh * bw).permute(0, 1, 4, 3, 2)
        a = self.pool(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        a = self.attn(a).reshape(n, bh * bw, self.heads, kk, kk).permute(0, 2, 1, 3, 4).softmax(dim=-1)
        y = (a @ v).permute(0, 1, 4, 3, 2).reshape(n, c * kk, bh * bw)
        y = F.fold(y, (h, w), self.k, padding=self.padding, stride=self.stride)
        return self.proj(y.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


LAYERS = {
    # name: (factory, input shape); softmax Jacobians have both signs, so these use distinct random weights.
    "carafe": (Carafe, (2, 6, 5)),
    "involution_dilated": (Involution, (4, 9, 8)),
    "local_attention": (LocalAttention, (4, 7, 8)),
    "outlooker": (Outlooker, (4, 9, 8)),
    "outlooker_strided": (lambda: Outlooker(stride=2), (4, 9, 8)),
    "outlooker_twice": (lambda: nn.Sequential(Outlooker(), Outlooker()), (4, 11, 10)),
}


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_layers_built_on_unfold_are_exact(name: str) -> None:
    factory, shape = LAYERS[name]
    torch.manual_seed(0)
    assert_exact(factory(), shape, random_weights=True)


def test_outlooker_receptive_field_values() -> None:
    """One outlooker: a token reads the windows of every block whose window holds it: 5 x 5 tokens; two: 9 x 9."""
    torch.manual_seed(0)
    assert analyze(Outlooker(), (4, 21, 21)).rf == [5, 5]
    assert analyze(nn.Sequential(Outlooker(), Outlooker()), (4, 21, 21)).rf == [9, 9]


class TransposeByFold(nn.Module):
    """Blocks reordered column-major before the fold: the folded image is the transpose (W along rows)."""

    def __init__(self) -> None:
        super().__init__()
        self.mix = nn.Linear(18, 18)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        u = channels_last_linear(self.mix, F.unfold(x, 3, padding=1))
        u = u.view(n, c * 9, h, w).transpose(2, 3).reshape(n, c * 9, h * w)
        return F.fold(u, (w, h), 3, padding=1)


def test_fold_of_column_major_blocks_transposes_exactly() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(TransposeByFold(), nn.Conv2d(2, 2, (1, 3), padding=(0, 1)))
    shape = (2, 7, 6)
    report = analyze(model, shape)
    # Supports are indexed like the output's dims: pixel (r, c) of the transposed map (W index r, H index c).
    for r, c in probes(report.outputs[0].shape[2:]):
        assert np.array_equal(report.support((r, c)), gradient_support(model, shape, (r, c))), (r, c)
    # The conv's 3 taps along output columns run along the input's rows.
    assert report.rf == [7, 5]


def test_fold_that_regrids_the_blocks_is_refused() -> None:
    """Blocks of a 7 x 6 grid folded as a 6 x 7 grid: block r * 7 + c is no product of a row and a column of
    the input grid, so no per-axis rule exists; refused by name, with the fix."""

    class Regrid(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.fold(F.unfold(x, 3, padding=1), (6, 7), 3, padding=1)

    with pytest.raises(UnsupportedOpError, match=r"aten\.col2im .*raster order"):
        analyze(Regrid(), (2, 7, 6))


def test_unfold_of_merged_spatial_dims_is_refused() -> None:
    class Merged(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.unfold(x.reshape(1, 2, 1, 42), (1, 3), padding=(0, 1))

    with pytest.raises(UnsupportedOpError, match=r"aten\.im2col .*mixes a spatial axis"):
        analyze(Merged(), (2, 7, 6))


class VoloStage(nn.Module):
    """timm VOLO's patch embedding and first ``blocks`` outlooker blocks, as an (N, C, H, W) feature map."""

    def __init__(self, model: nn.Module, blocks: int) -> None:
        super().__init__()
        self.patch_embed, self.blocks = model.patch_embed, model.network[0][:blocks]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.patch_embed(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def test_timm_volo_outlooker_is_exact() -> None:
    """The real VOLO-D1 (random weights): its stem and first outlooker block, exact at every probe; the whole
    classifier analyses (global, through its class-attention head)."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("volo_d1_224", pretrained=False, img_size=64).eval()
    stage = VoloStage(model, 1)
    report = analyze(stage, (3, 64, 64))
    assert report.rf == [53, 53]  # stem RF 21 at stride 8, plus 2 tokens each side: 21 + 4 * 8
    assert_exact(stage, (3, 64, 64), random_weights=True)
    assert analyze(model, (3, 64, 64)).outputs[0].global_
