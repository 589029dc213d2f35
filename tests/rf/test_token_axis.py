"""Reductions and normalisations along the token axis inside attention (timm XCiT's cross-covariance attention):
tokens transposed to the last dim of (B, heads, C / heads, N), normalised or summed over, broadcast back.

A statistic over every token reads every position the tokens cover: global over the grid, and only over the
window when the tokens are one window's (Swin-style partition). The oracle is the gradient support with
distinct random positive weights over three inputs, as for attention (normalisation Jacobians have both signs).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from attention_nets import grid, tokens, window_partition, window_reverse
from torch import nn

from atrous.rf import analyze
from oracle import gradient_support


def probes(shape: tuple[int, ...]) -> list[tuple[int, ...]]:
    return sorted({tuple(n // 2 for n in shape), (1, 1), *itertools.product(*[(0, n - 1) for n in shape])})


def assert_oracle(model: nn.Module, shape: tuple[int, ...]) -> None:
    report = analyze(model, shape)
    for index in probes(report.outputs[0].shape[2:]):
        expected = gradient_support(model, shape, index, random_weights=True, inputs=3)
        got = report.support(index)
        assert np.array_equal(got, expected), f"at {index}: engine {got.sum()} px, oracle {expected.sum()} px"


class AlongTokens(nn.Module):
    """Patch embedding, tokens, heads as (B, heads, C / heads, N), ``op`` along the last (token) dim, back."""

    def __init__(self, op: Callable[[torch.Tensor], torch.Tensor], heads: int = 2, dim: int = 4) -> None:
        super().__init__()
        self.op, self.heads = op, heads
        self.embed = nn.Conv2d(2, dim, 2, stride=2)
        self.qkv, self.proj = nn.Linear(dim, dim), nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.embed(x)
        B, C, h, w = y.shape
        t = self.qkv(tokens(y)).reshape(B, h * w, self.heads, C // self.heads).permute(0, 2, 3, 1)
        t = self.op(t)
        return grid(self.proj(t.permute(0, 3, 1, 2).reshape(B, h * w, C)), h, w)


OPS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "normalize": lambda t: F.normalize(t, dim=-1),  # norm, clamp_min, expand_as, div
    "sum_scale": lambda t: t * t.sum(-1, keepdim=True),
    "divide_by_expanded_sum": lambda t: t / t.sum(-1, keepdim=True).expand_as(t),
    "softmax": lambda t: torch.softmax(t, dim=-1),
    "standardize": lambda t: (t - t.mean(-1, keepdim=True)) / t.std(-1, keepdim=True),
    "layer_norm_over_tokens": lambda t: F.layer_norm(t, t.shape[-1:]),
}


@pytest.mark.parametrize("op", sorted(OPS))
def test_statistics_over_tokens_match_the_oracle(op: str) -> None:
    torch.manual_seed(0)
    model = AlongTokens(OPS[op])
    assert_oracle(model, (2, 8, 12))
    out = analyze(model, (2, 8, 12)).outputs[0]
    assert out.global_ and out.rf == [None, None]


@pytest.mark.parametrize("op", ["amax", "subtract_sum"])
def test_statistics_the_oracle_cannot_see_are_global(op: str) -> None:
    # A max has a gradient only at its argmax, and t - sum(t) cancels its own diagonal term, so the gradient
    # oracle under-counts both; the values still depend on every token, which is what the engine must say.
    fn = {
        "amax": lambda t: t - t.amax(-1, keepdim=True),
        "subtract_sum": lambda t: t - t.sum(-1, keepdim=True),
    }
    report = analyze(AlongTokens(fn[op]), (2, 8, 12))
    assert report.outputs[0].global_ and report.support((0, 0)).all()
    assert any(n.startswith("global") for n in report.outputs[0].notes)


class WindowNormalize(nn.Module):
    """Tokens of each 4x4 window transposed to (windows, C, 16) and normalised over the window's tokens."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.out = nn.Conv2d(2, 4, 1), nn.Conv2d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.embed(x).permute(0, 2, 3, 1)
        H, W = y.shape[1:3]
        t = F.normalize(window_partition(y, 4).transpose(1, 2), dim=-1).transpose(1, 2)
        return self.out(window_reverse(t, 4, H, W).permute(0, 3, 1, 2))


def test_normalising_over_a_windows_tokens_reads_that_window() -> None:
    torch.manual_seed(0)
    assert_oracle(WindowNormalize(), (2, 8, 12))
    report = analyze(WindowNormalize(), (2, 8, 12))
    expected = np.zeros((8, 12), dtype=bool)
    expected[4:8, 8:12] = True
    assert np.array_equal(report.support((5, 9)), expected)
    assert report.outputs[0].rf == [4, 4] and not report.outputs[0].global_


class XCA(nn.Module):
    """timm XCiT's cross-covariance attention: attention between channels, statistics over tokens."""

    def __init__(self, dim: int = 4, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.temperature = nn.Parameter(torch.ones(heads, 1, 1))
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 4, 1)
        q, k, v = qkv.unbind(0)  # (B, heads, C / heads, N)
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        attn = ((q @ k.transpose(-2, -1)) * self.temperature).softmax(dim=-1)
        return self.proj((attn @ v).permute(0, 3, 1, 2).reshape(B, N, C))


class XCiTBlock(nn.Module):
    """Patch embedding, then XCiT's block: XCA, and local patch interaction (a depthwise conv on the grid)."""

    def __init__(self, dim: int = 4) -> None:
        super().__init__()
        self.embed = nn.Conv2d(2, dim, 2, stride=2)
        self.norm, self.attn = nn.LayerNorm(dim), XCA(dim)
        self.lpi = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.embed(x)
        h, w = y.shape[2:]
        t = tokens(y)
        t = t + self.attn(self.norm(t))
        t = t + tokens(self.lpi(grid(t, h, w)))
        return grid(t, h, w)


def test_xca_replica_is_global_and_exact() -> None:
    torch.manual_seed(0)
    assert_oracle(XCiTBlock(), (2, 8, 12))
    out = analyze(XCiTBlock(), (2, 8, 12)).outputs[0]
    assert out.global_ and any("global" in n for n in out.notes)


class PatchGrid(nn.Module):
    """XCiT's patch tokens after its first blocks, as a map (B, C, Hp, Wp): probes at positions, not logits."""

    def __init__(self, model: nn.Module, blocks: int) -> None:
        super().__init__()
        self.model, self.blocks = model, blocks

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.model
        t, (hp, wp) = m.patch_embed(x)
        t = t + m.pos_embed(x.shape[0], hp, wp).reshape(x.shape[0], -1, t.shape[1]).permute(0, 2, 1)
        for block in m.blocks[: self.blocks]:
            t = block(t, hp, wp)
        return t.transpose(1, 2).reshape(x.shape[0], -1, hp, wp)


def _xcit() -> nn.Module:
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    return timm.create_model("xcit_nano_12_p16_224", pretrained=False, img_size=64).eval()


def test_real_xcit_blocks_are_exact() -> None:
    model, shape = PatchGrid(_xcit(), 2), (3, 64, 64)
    assert_oracle(model, shape)
    assert analyze(model, shape).outputs[0].global_


def test_real_xcit_logits_are_global() -> None:
    model, shape = _xcit(), (3, 64, 64)
    report = analyze(model, shape)
    expected = gradient_support(model, shape, (), random_weights=True, inputs=2)
    assert expected.all() and report.support((0, 0)).all()
