"""Property-based: random conv/pool/dilation stacks and random two-branch DAGs against the gradient oracle."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from torch import nn

from atrous.rf import analyze
from nets import Branches, seq
from oracle import gradient_support

C = 2


@st.composite
def layer(draw: st.DrawFn) -> nn.Module:
    kind = draw(st.sampled_from(["conv", "conv", "conv", "maxpool", "avgpool", "transposed", "upsample"]))
    pair = lambda lo, hi: (draw(st.integers(lo, hi)), draw(st.integers(lo, hi)))  # noqa: E731
    if kind == "conv":
        k, s, d = pair(1, 4), pair(1, 2), pair(1, 3)
        p = tuple(draw(st.integers(0, di * (ki - 1))) for ki, di in zip(k, d))
        return nn.Conv2d(C, C, k, s, p, d)
    if kind in ("maxpool", "avgpool"):
        k = draw(st.integers(2, 3))
        s = draw(st.integers(1, 2))
        p = draw(st.integers(0, k // 2))
        ceil = draw(st.booleans())
        return nn.MaxPool2d(k, s, p, ceil_mode=ceil) if kind == "maxpool" else nn.AvgPool2d(k, s, p, ceil)
    if kind == "transposed":
        k, s = pair(1, 4), pair(1, 2)
        p = tuple(draw(st.integers(0, ki - 1)) for ki in k)
        return nn.ConvTranspose2d(C, C, k, s, p)
    return nn.Upsample(scale_factor=2, mode=draw(st.sampled_from(["nearest", "bilinear"])))


def _valid(model: nn.Module, shape: tuple[int, ...]) -> tuple[int, ...] | None:
    try:
        with torch.no_grad():
            y = model(torch.zeros(1, *shape))
    except RuntimeError:
        return None
    return tuple(y.shape[2:]) if all(n > 0 for n in y.shape[2:]) else None


def _check(model: nn.Module, shape: tuple[int, ...], out_shape: tuple[int, ...], data: st.DataObject) -> None:
    report = analyze(model, shape)
    assert tuple(report.outputs[0].shape[2:]) == out_shape
    points = {tuple(n // 2 for n in out_shape)}
    points.add(tuple(data.draw(st.integers(0, n - 1)) for n in out_shape))
    for index in points:
        assert np.array_equal(report.support(index), gradient_support(model, shape, index)), index


SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])


@SETTINGS
@given(st.lists(layer(), min_size=1, max_size=4), st.integers(9, 20), st.integers(9, 20), st.data())
def test_random_stacks(layers: list[nn.Module], h: int, w: int, data: st.DataObject) -> None:
    torch.manual_seed(0)
    model = seq(*layers)
    out_shape = _valid(model, (C, h, w))
    assume(out_shape is not None)
    _check(model, (C, h, w), out_shape, data)


@SETTINGS
@given(
    st.lists(layer(), min_size=0, max_size=2),
    st.lists(layer(), min_size=0, max_size=3),
    st.lists(layer(), min_size=1, max_size=3),
    st.sampled_from(["add", "cat"]),
    st.integers(10, 20),
    st.integers(10, 20),
    st.data(),
)
def test_random_two_branch_dags(stem, a, b, merge, h, w, data) -> None:
    torch.manual_seed(0)
    tail = nn.Conv2d(2 * C if merge == "cat" else C, C, 3, padding=1)
    model = Branches(seq(*stem), seq(*a), seq(*b), merge, tail)
    out_shape = _valid(model, (C, h, w))
    assume(out_shape is not None)
    _check(model, (C, h, w), out_shape, data)
