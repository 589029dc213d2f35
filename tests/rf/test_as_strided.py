"""``as_strided``: exact when it only restrides (PyTorch gives pooled outputs their input's memory format that
way, e.g. torchvision's Swin head), refused when it moves elements."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from atrous.errors import UnsupportedOpError
from atrous.rf import analyze
from nets import Lambda, seq


def test_pooling_a_permuted_tensor_is_global_not_an_error() -> None:
    # (N, H, W, C) features permuted to (N, C, H, W): the mean's output is restrided with as_strided_.
    model = seq(
        nn.Conv2d(3, 4, 3, padding=1),
        Lambda(lambda x: x.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)),
        nn.AdaptiveAvgPool2d(1),
    )
    out = analyze(model, (3, 16, 16)).outputs[0]
    assert out.global_ and "mean over H, W" in out.notes[0]


def test_restriding_that_keeps_positions_is_the_identity() -> None:
    model = seq(nn.Conv2d(3, 4, 3, padding=1), Lambda(lambda x: x.as_strided(x.shape, x.stride())))
    assert analyze(model, (3, 16, 16)).outputs[0].rf == [3, 3]


def test_as_strided_that_moves_elements_is_refused() -> None:
    shifted = Lambda(lambda x: torch.as_strided(x, (1, 4, 8, 8), x.stride(), 1))
    with pytest.raises(UnsupportedOpError, match="as_strided that moves elements"):
        analyze(seq(nn.Conv2d(3, 4, 3, padding=1), shifted), (3, 8, 8))
