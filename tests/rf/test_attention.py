"""Attention models (ViT, Swin, Segformer, attention inside CNNs): exact supports against the gradient oracle,
and the receptive fields that windows, shifts, class tokens and shape-only masks give."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np
import pytest
import torch
from attention_nets import (
    ClassTokenHead,
    MixFFN,
    NonLocalCNN,
    PartitionReverse,
    SegformerBlock,
    ShapeMask,
    ShiftedWindowSum,
    Swin,
    ViT,
    WindowAttentionCNN,
    WindowSum,
    grid,
    tokens,
)
from torch import nn

from atrous.errors import UnsupportedOpError
from atrous.rf import analyze
from oracle import gradient_support

REPLICAS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "vit": (lambda: ViT(depth=2), (2, 16, 16)),
    "vit_multihead_module": (lambda: ViT(mha=True), (2, 16, 16)),
    "swin_window": (lambda: Swin(((4, 0),)), (2, 16, 16)),
    "swin_window_then_shifted": (lambda: Swin(((4, 0), (4, 2))), (2, 16, 16)),
    "swin_patch_merging": (lambda: Swin(((4, 0), (4, 2)), merge=True), (2, 16, 16)),
    "segformer": (SegformerBlock, (2, 32, 32)),
    "mix_ffn": (MixFFN, (2, 32, 32)),
    "non_local_cnn": (NonLocalCNN, (2, 12, 12)),
    "window_attention_cnn": (WindowAttentionCNN, (2, 16, 16)),
    "partition_reverse": (PartitionReverse, (2, 16, 16)),
    "window_sum": (WindowSum, (2, 16, 16)),
    "shifted_window_wraps": (ShiftedWindowSum, (2, 16, 16)),
    "shape_mask": (ShapeMask, (2, 8, 8)),
}


@pytest.mark.parametrize("name", sorted(REPLICAS))
def test_in_image_support_equals_oracle(name: str) -> None:
    factory, shape = REPLICAS[name]
    torch.manual_seed(0)
    model = factory()
    report = analyze(model, shape)
    out_shape = report.outputs[0].shape[2:]
    probes = {tuple(n // 2 for n in out_shape), (1, 1), *itertools.product(*[(0, n - 1) for n in out_shape])}
    for index in sorted(probes):
        expected = gradient_support(model, shape, index, random_weights=True, inputs=3)
        got = report.support(index)
        assert np.array_equal(got, expected), (
            f"{name} at {index}: engine {got.sum()} px, oracle {expected.sum()} px"
        )


def _windows(name: str) -> list[tuple[int, int]]:
    factory, shape = REPLICAS[name]
    return [(p.lo, p.hi) for p in analyze(factory(), shape).outputs[0].axes[0].phases]


def test_global_attention_is_global_and_says_so() -> None:
    for name in ("vit", "vit_multihead_module", "segformer", "non_local_cnn"):
        factory, shape = REPLICAS[name]
        report = analyze(factory(), shape)
        out = report.outputs[0]
        assert out.global_ and out.rf == [None, None], name
        assert any("matrix product" in n for n in out.notes), name
        assert report.support((0, 0)).all(), name


def test_window_partition_and_reverse_is_the_identity() -> None:
    out = analyze(PartitionReverse(), (2, 16, 16)).outputs[0]
    assert out.rf == [1, 1] and out.stride == [1, 1] and out.aligned


def test_sum_within_each_window_sees_that_window() -> None:
    report = analyze(WindowSum(), (2, 16, 16))
    out = report.outputs[0]
    assert out.rf == [4, 4] and out.stride == [4, 4] and out.aligned
    expected = np.zeros((16, 16), dtype=bool)
    expected[8:12, 4:8] = True
    assert np.array_equal(report.support((2, 1)), expected)


def test_window_attention_has_one_window_per_phase() -> None:
    # 2x2 patches, 4x4-token windows: every token sees its own 8-pixel window; not shift invariant.
    out = analyze(Swin(((4, 0),)), (2, 16, 16)).outputs[0]
    assert out.rf == [8, 8] and out.stride == [2, 2] and not out.aligned
    assert _windows("swin_window") == [(0, 7)] * 4


def test_shifted_windows_grow_the_field_exactly() -> None:
    # A shift of 2 tokens: the first two tokens of a window reach back into the previous window, the last two
    # into the next one: 16 pixels either way.
    out = analyze(Swin(((4, 0), (4, 2))), (2, 16, 16)).outputs[0]
    assert out.rf == [16, 16] and not out.aligned
    assert _windows("swin_window_then_shifted") == [(-8, 7), (-8, 7), (0, 15), (0, 15)]
    assert _windows("swin_patch_merging") == [(-8, 7), (0, 15)]


def test_convolutions_around_window_attention_widen_each_phase() -> None:
    assert analyze(WindowAttentionCNN(), (2, 16, 16)).outputs[0].rf == [10, 10]
    assert _windows("window_attention_cnn") == [(-5, 4), (-1, 4), (-1, 4), (-1, 8)]


def test_roll_wraps_the_corner_window_around_the_border() -> None:
    report = analyze(ShiftedWindowSum(), (2, 16, 16))
    corner = report.support((0, 0))
    rows = np.isin(np.arange(16), [14, 15, 0, 1])
    assert np.array_equal(corner, rows[:, None] & rows[None, :])
    # On an unbounded input there is no border: the theoretical windows are the shifted ones.
    assert _windows("shifted_window_wraps") == [(-2, 1), (-2, 1), (2, 5), (2, 5)]


def test_mask_made_from_the_input_shape_is_a_constant() -> None:
    out = analyze(ShapeMask(), (2, 8, 8)).outputs[0]
    assert out.rf == [1, 1] and out.aligned


def test_mix_ffn_is_local() -> None:
    out = analyze(MixFFN(), (2, 32, 32)).outputs[0]
    assert out.rf == [15, 15] and out.stride == [4, 4] and out.aligned


def test_class_token_read_out_after_attention_is_global() -> None:
    report = analyze(ClassTokenHead(), (2, 16, 16))
    out = report.outputs[0]
    assert out.global_ and any("extra tokens" in n for n in out.notes)
    assert gradient_support(ClassTokenHead(), (2, 16, 16), (), random_weights=True).all()


def test_two_input_pieces_along_a_spatial_dim_are_refused() -> None:
    class Tile(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.cat([x, x], dim=2)

    with pytest.raises(
        UnsupportedOpError, match=r"aten\.cat at module '<model>'.*concatenation along a spatial"
    ):
        analyze(Tile(), (1, 8, 8))


def test_input_values_written_into_a_constant_through_a_view_are_refused() -> None:
    class Into(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = x.new_zeros(x.shape)
            out[:, :, 1:] = x[:, :, 1:] * 2
            return out + 1

    with pytest.raises(UnsupportedOpError, match="modified in place through another view"):
        analyze(Into(), (1, 6, 6))


class FusedAttention(nn.Module):
    """Calls the fused CPU kernel directly (``F.scaled_dot_product_attention`` decomposes on meta tensors)."""

    def __init__(self, causal: bool = False) -> None:
        super().__init__()
        self.causal = causal

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = tokens(x)[:, None]
        out = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(t, t, t, is_causal=self.causal)[0]
        return grid(out[:, 0], *x.shape[2:])


def test_fused_attention_kernel_is_global() -> None:
    report = analyze(FusedAttention(), (2, 4, 4))
    assert report.outputs[0].global_
    assert np.array_equal(
        report.support((0, 0)), gradient_support(FusedAttention(), (2, 4, 4), (0, 0), inputs=3)
    )


def test_causal_fused_attention_is_refused_naming_op_and_module() -> None:
    with pytest.raises(
        UnsupportedOpError, match=r"_scaled_dot_product_flash_attention_for_cpu.*'<model>'.*causal"
    ):
        analyze(FusedAttention(causal=True), (2, 4, 4))
