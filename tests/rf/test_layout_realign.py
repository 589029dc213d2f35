"""Tensors that meet with an axis in different places: replicas of the three real models the engine refused.

* GCViT's global query: one window-sized query map shared by every window, keys and values per window. The
  attention output's row index is the in-window position (from the query) plus the window (from the keys),
  which the product rule now assembles, so the residual add meets an ordinary axis again.
* NextViT's efficient attention: an average pooling over flattened tokens (kernel = stride = k). Blocks of
  whole rows pool the row axis and read the column axis whole; blocks inside a row pool the column axis.
* MAnet's position attention: the (B, HW, C) attention output reshaped row-major to (B, C, H, W) (not
  transposed), so its positions land in the channels, then added to the input.

The oracle is the gradient support with distinct random positive weights over three inputs (softmax Jacobians
have both signs, so one input can miss a pixel by accident).
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from attention_nets import tokens, window_partition, window_reverse
from torch import nn

from atrous.errors import UnsupportedOpError
from atrous.rf import analyze
from atrous.rf.layout import Part
from atrous.rf.rules.base import digit_rule
from atrous.rf.support import AxisMap, Offsets
from oracle import gradient_support


def probes(shape: tuple[int, ...]) -> list[tuple[int, ...]]:
    corners = itertools.product(*[(0, n - 1) for n in shape])
    return sorted({tuple(n // 2 for n in shape), tuple(min(1, n - 1) for n in shape), *corners})


def oracle_checks(model: nn.Module, shape: tuple[int, ...]) -> tuple[object, int]:
    """The report, after checking at every probe that it never misses a pixel the oracle reaches; returns how
    many probes the engine over-reached at."""
    report = analyze(model, shape)
    over = 0
    for index in probes(tuple(report.outputs[0].shape[2:])):
        expected = gradient_support(model, shape, index, random_weights=True, inputs=3)
        got = report.support(index)
        assert not (expected & ~got).any(), (
            f"under-reach at {index}: engine {got.sum()}, oracle {expected.sum()}"
        )
        over += int((got & ~expected).any())
    return report, over


# --- GCViT: a global query shared by all windows -----------------------------------------------------------------


class GlobalQueryWindows(nn.Module):
    """Windows of 2x2 tokens on an 8x8 map; the query of in-window position p is token p of a 2x2 map pooled
    from the whole grid (GCViT's global query), keys and values are the window's own tokens."""

    def __init__(self, dim: int = 4, w: int = 2) -> None:
        super().__init__()
        self.w = w
        self.embed, self.out = nn.Conv2d(2, dim, 1), nn.Conv2d(dim, 2, 1)
        self.kv, self.proj = nn.Linear(dim, 2 * dim), nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.embed(x)
        B, _, H, W = y.shape
        q_map = F.avg_pool2d(y, H // self.w)  # (B, C, w, w): each query token pools one quarter of the map
        t = y.permute(0, 2, 3, 1)
        win = window_partition(t, self.w)  # (B * windows, w * w, C)
        k, v = self.kv(win).chunk(2, dim=-1)
        q = tokens(q_map).repeat_interleave(win.shape[0] // B, dim=0)
        attn = (q @ k.transpose(-2, -1)).softmax(dim=-1)
        a = window_reverse(self.proj(attn @ v), self.w, H, W)
        return self.out((t + a).permute(0, 3, 1, 2))


def test_a_global_query_shared_by_windows_is_exact() -> None:
    torch.manual_seed(0)
    report, over = oracle_checks(GlobalQueryWindows(), (2, 8, 8))
    assert over == 0
    # Output (5, 2): window rows 4..5, cols 2..3; in-window position (1, 0) reads the query pooled from the
    # quarter rows 4..7, cols 0..3.
    expected = np.zeros((8, 8), dtype=bool)
    expected[4:6, 2:4] = True
    expected[4:8, 0:4] = True
    assert np.array_equal(report.support((5, 2)), expected)
    assert not report.outputs[0].global_


def test_a_rule_whose_output_adds_coarser_digits_repeats_without_advancing() -> None:
    # Source: a 2-position map (the query); output: 2 in-window positions in dim 1 and 8 windows in dim 0.
    rule = digit_rule((Part(1, 1, 2, 1),), (Part(1, 1, 2, 1), Part(0, 1, 8, 2)), set())
    assert rule.periodic == AxisMap(2, 0, (Offsets.of([0]), Offsets.of([1])))
    relation = rule.finite(2, 16)
    assert np.array_equal(relation, np.eye(2, dtype=bool)[np.arange(16) % 2])


# --- NextViT: pooling blocks of flattened tokens -----------------------------------------------------------------


class TokenPool(nn.Module):
    """Tokens flattened row-major to (B, C, H * W), average-pooled in blocks of ``k``, and viewed back as a
    (B, C, rows, cols) map of the blocks."""

    def __init__(self, k: int, rows: int) -> None:
        super().__init__()
        self.k, self.rows = k, rows
        self.embed = nn.Conv2d(2, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.avg_pool1d(self.embed(x).flatten(2), self.k)
        return y.view(y.shape[0], y.shape[1], self.rows, -1)


def test_blocks_of_whole_rows_pool_rows_and_read_columns_whole() -> None:
    report, over = oracle_checks(TokenPool(16, 4), (2, 8, 8))  # a block is two rows
    assert over == 0
    expected = np.zeros((8, 8), dtype=bool)
    expected[2:4] = True
    assert np.array_equal(report.support((1, 0)), expected)
    assert any(n.startswith("global") for n in report.outputs[0].notes)


def test_blocks_inside_a_row_pool_columns() -> None:
    report, over = oracle_checks(TokenPool(4, 8), (2, 8, 8))  # two blocks per row
    assert over == 0
    expected = np.zeros((8, 8), dtype=bool)
    expected[3, 4:8] = True
    assert np.array_equal(report.support((3, 1)), expected)
    assert report.outputs[0].rf == [1, 4] and report.outputs[0].stride == [1, 4]


def test_blocks_across_rows_are_read_whole_and_said() -> None:
    report, over = oracle_checks(TokenPool(4, 3), (2, 6, 6))  # 36 tokens in 9 blocks of 4: rows are cut
    assert over > 0
    assert any("approx" in n for n in report.outputs[0].notes)


def test_overlapping_windows_on_merged_tokens_are_refused() -> None:
    class Overlapping(TokenPool):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = F.avg_pool1d(self.embed(x).flatten(2), 4, stride=2)
            return y.view(y.shape[0], y.shape[1], 1, -1)

    with pytest.raises(UnsupportedOpError, match="only disjoint blocks"):
        analyze(Overlapping(4, 1), (2, 4, 4))


class EfficientAttention(nn.Module):
    """NextViT's E-MHSA: queries from every token, keys and values from tokens pooled in blocks of k = r * r
    over the flattened sequence, the result back on the grid and added to the input."""

    def __init__(self, dim: int = 4, k: int = 16) -> None:
        super().__init__()
        self.k = k
        self.embed, self.out = nn.Conv2d(2, dim, 3, padding=1), nn.Conv2d(dim, 2, 1)
        self.q, self.kv, self.proj = nn.Linear(dim, dim), nn.Linear(dim, 2 * dim), nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.embed(x)
        B, C, H, W = y.shape
        t = y.reshape(B, C, -1).transpose(-1, -2)
        pooled = F.avg_pool1d(t.transpose(1, 2), self.k).transpose(1, 2)
        k, v = self.kv(pooled).chunk(2, dim=-1)
        a = self.proj(F.scaled_dot_product_attention(self.q(t), k, v))
        return self.out(y + a.transpose(-1, -2).reshape(B, C, H, W))


def test_efficient_attention_is_exact() -> None:
    torch.manual_seed(0)
    report, over = oracle_checks(EfficientAttention(), (2, 8, 8))
    assert over == 0
    assert report.outputs[0].global_


# --- MAnet: an attention output reshaped (not transposed) back to a map -------------------------------------------


class PositionAttention(nn.Module):
    """smp MAnet's PAB: a softmax over the whole (HW, HW) map, applied to (B, HW, C) values and reshaped
    row-major to (B, C, H, W), which puts positions into the channels; then added to the input."""

    def __init__(self, dim: int = 4) -> None:
        super().__init__()
        self.top, self.centre = nn.Conv2d(2, 2, 1), nn.Conv2d(2, 2, 1)
        self.bottom, self.out = nn.Conv2d(2, dim, 3, padding=1), nn.Conv2d(dim, 2, 3, padding=1)
        self.embed = nn.Conv2d(2, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, _, H, W = x.shape
        scores = self.centre(x).flatten(2).transpose(1, 2) @ self.top(x).flatten(2)
        attn = torch.softmax(scores.view(B, -1), dim=1).view(B, H * W, H * W)
        sp = (attn @ self.bottom(x).flatten(2).transpose(1, 2)).reshape(B, -1, H, W)
        return self.out(self.embed(x) + sp)


def test_position_attention_added_to_its_input_is_global_and_exact() -> None:
    torch.manual_seed(0)
    report, over = oracle_checks(PositionAttention(), (2, 4, 6))
    assert over == 0
    assert report.outputs[0].global_ and report.support((0, 0)).all()


class ScatteredResidual(nn.Module):
    """A local map added to itself reshaped row-major from (B, HW, C): position p of the reshaped tensor holds
    token (c * HW + p) // C, so each output mixes its own pixel with pixels chosen by the channel."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.out = nn.Conv2d(2, 4, 1), nn.Conv2d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.embed(x)
        B, C, H, W = y.shape
        return self.out(y + y.flatten(2).transpose(1, 2).reshape(B, C, H, W))


def test_a_scattered_residual_is_over_approximated_and_said() -> None:
    # The reshaped map's row at (c, h, w) is the token row c: over all channels, every row (and column).
    report, over = oracle_checks(ScatteredResidual(), (2, 4, 4))
    assert over > 0 and report.support((0, 0)).all()
    assert any("approx" in n for n in report.outputs[0].notes)


def test_blocks_of_one_row_viewed_back_as_a_single_row_map_are_read_where_they_lie() -> None:
    """Blocks of one row each, viewed back as (B, C, 1, 8): output (0, j) pools input row j. The output's H dim
    (size 1) holds no axis and its W dim holds H, so an index names a tensor position; read as axis coordinates
    it named row 0 for every j (an under-reach found in review)."""
    report, _ = oracle_checks(TokenPool(8, 1), (2, 8, 8))
    for j in range(8):
        assert np.flatnonzero(report.support((0, j)).any(axis=1)).tolist() == [j]


def test_an_add_whose_inputs_would_put_two_axes_in_one_dim_is_refused() -> None:
    """out[r, j] = x[j, r] + x[r, j], each term reshaped so that H and W trade dims: the placements chosen per axis
    would both claim dim 3, and no element could be addressed, so the add is refused by name."""

    class Collide(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Conv2d(1, 1, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.embed(x)
            a = y.transpose(2, 3).reshape(y.shape[0], 2, 2, 4)  # W split over dims 1-2, H in dim 3
            b = y.reshape(y.shape[0], 2, 2, 4)  # H split over dims 1-2, W in dim 3
            return (a + b).reshape(y.shape[0], 1, 4, 4)

    with pytest.raises(UnsupportedOpError, match=r"aten\.add .*would share dim 3"):
        analyze(Collide(), (1, 4, 4))
