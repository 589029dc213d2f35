"""Effective receptive fields against exact arithmetic and against the RF engine."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import atrous
from atrous.cli import main
from atrous.erf import effective_rf, gradient_maps, sample_loop_maps
from atrous.errors import AtrousError
from atrous.rf import analyze


def constant_stack(
    kernels: list[int],
    dilations: list[int] | None = None,
    channels: int = 1,
    value: float = 1.0,
    strides: list[int] | None = None,
) -> nn.Sequential:
    dilations = dilations or [1] * len(kernels)
    strides = strides or [1] * len(kernels)
    layers = []
    for i, (k, d, s) in enumerate(zip(kernels, dilations, strides)):
        conv = nn.Conv2d(
            channels if i == 0 else 1, 1, k, stride=s, padding=d * (k - 1) // 2, dilation=d, bias=False
        )
        nn.init.constant_(conv.weight, value)
        layers.append(conv)
    return nn.Sequential(*layers)


def test_linear_model_erf_is_the_kernel_composition() -> None:
    erf = effective_rf(constant_stack([3, 5], channels=2), (2, 21, 21), samples=4)
    profile = np.convolve(np.ones(3), np.ones(5))  # path counts along one axis
    expected = np.zeros((21, 21))
    expected[10 - 3 : 10 + 4, 10 - 3 : 10 + 4] = 2 * np.outer(profile, profile)  # two input channels summed
    assert np.array_equal(erf.map, expected)


def test_single_averaging_conv_is_uniform_over_its_rf() -> None:
    erf = effective_rf(constant_stack([5], value=1 / 25), (1, 15, 15), samples=3)
    inside = erf.map[5:10, 5:10]
    assert np.allclose(inside, 1 / 25) and erf.map.sum() == pytest.approx(1.0)
    assert erf.metrics["area_10"] == 25 and erf.metrics["radius_95"] == 2


def test_gridded_stack_erf_is_zero_exactly_at_the_engine_holes() -> None:
    model = constant_stack([3, 3, 3], [2, 2, 2])
    erf = effective_rf(model, (1, 25, 25), samples=2)
    (oy, ox), mask = erf.window
    placed = np.zeros((25, 25), dtype=bool)
    placed[oy : oy + mask.shape[0], ox : ox + mask.shape[1]] = mask
    assert np.array_equal(erf.map > 0, placed)
    assert (~mask).sum() > 0  # there are holes to test


def exact_support(
    kernels: list[int], dilations: list[int], strides: list[int], size: int, at: int
) -> np.ndarray:
    """The input pixels (one axis) that reach output pixel ``at`` of a stack, by convolution arithmetic alone,
    not the engine: walking back layer by layer, output ``u`` reads inputs ``u * s - p + d * j`` (j < k) that lie
    inside that layer's input; a tap on padding reaches nothing."""
    sizes = [size]
    for k, d, s in zip(kernels, dilations, strides):
        p = d * (k - 1) // 2
        sizes.append((sizes[-1] + 2 * p - d * (k - 1) - 1) // s + 1)
    reached = {at}
    for k, d, s, n in reversed(list(zip(kernels, dilations, strides, sizes))):
        p = d * (k - 1) // 2
        reached = {u * s - p + d * j for u in reached for j in range(k)} & set(range(n))
    axis = np.zeros(size, dtype=bool)
    axis[sorted(reached)] = True
    return axis


@pytest.mark.parametrize(
    ("kernels", "dilations", "strides"),
    [
        ([3, 3, 3], [1, 2, 5], [1, 1, 1]),  # hole-free, 17 wide
        ([3, 3, 3], [2, 2, 2], [1, 1, 1]),  # gridded: 13 wide with 6 holes
        ([1, 3], [1, 1], [2, 1]),  # a strided 1x1 skips every other pixel
        ([2, 3], [1, 2], [2, 1]),  # stride and dilation: pairs of pixels, 4 apart
        ([3, 3, 3], [1, 1, 3], [2, 2, 1]),  # downsampling, then dilation with a tap on padding
    ],
)
def test_erf_support_is_the_exact_support(
    kernels: list[int], dilations: list[int], strides: list[int]
) -> None:
    """With positive weights no paths cancel, so the ERF is nonzero exactly where the RF reaches: it may neither
    spill outside the exact support nor miss a pixel of it (its extremes included), and the engine agrees."""
    size = 23
    model = constant_stack(kernels, dilations, strides=strides)
    erf = effective_rf(model, (1, size, size), samples=2)
    (y, x) = erf.position
    expected = np.outer(
        exact_support(kernels, dilations, strides, size, y),
        exact_support(kernels, dilations, strides, size, x),
    )
    assert np.array_equal(erf.map > 0, expected)
    assert np.array_equal(analyze(model, (1, size, size)).support(erf.position), expected)


@pytest.mark.parametrize("name", atrous.list_models())
def test_erf_support_is_the_engine_support(name: str) -> None:
    """Gradient outside the engine's support means the engine misses a path; support without gradient means the
    engine over-reaches (or the ERF lost a path). Small random weights on top of the initialisation, since an
    identity-initialised context module passes no gradient through its off-centre taps."""
    torch.manual_seed(0)
    model = atrous.create_model(name)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn(p.shape))
    size = max(model.min_size, 33)
    shape = (model.in_channels, size, size + 2)
    erf = effective_rf(model, shape, samples=3, batch=3)
    support = analyze(model, shape).support(erf.position)
    reached = erf.map > 0
    assert not (reached & ~support).any(), f"{name}: gradient outside the receptive field"
    assert not (support & ~reached).any(), f"{name}: receptive field where no gradient reaches"


def test_sigma_grows_like_sqrt_depth() -> None:
    sigmas = {
        n: effective_rf(constant_stack([3] * n), (1, 64, 64), samples=1).metrics["sigma"][0]
        for n in (1, 2, 4, 8, 16)
    }
    for n, s in sigmas.items():
        assert s / sigmas[1] == pytest.approx(math.sqrt(n), rel=0.05)


def test_batched_gradients_equal_the_per_sample_loop() -> None:
    torch.manual_seed(0)
    model = atrous.create_model("convstack:preset=hdc,width=8").eval()
    x = torch.randn(6, 3, 24, 24)
    assert torch.allclose(
        gradient_maps(model, x, (12, 12), batch=4), sample_loop_maps(model, x, (12, 12)), rtol=1e-5, atol=1e-7
    )


def test_cli_compare_and_json(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "erf.png"
    assert (
        main(
            [
                "erf",
                "convstack:preset=gridded",
                "--input",
                "3,25,25",
                "--samples",
                "4",
                "--out",
                str(out),
                "--compare",
                "convstack:preset=hdc",
                "--json",
            ]
        )
        == 0
    )
    rows = json.loads(capsys.readouterr().out)
    assert [r["rf"] for r in rows] == [[13, 13], [17, 17]] and out.stat().st_size > 5000
    for key in ("area_10", "area_2sigma", "radius_50", "radius_95", "side_95_over_rf", "sigma"):
        assert key in rows[0]


def test_erf_over_a_dataset_and_bad_arguments(capsys: pytest.CaptureFixture) -> None:
    erf = effective_rf(atrous.create_model("convstack:width=4"), data="shapes:size=24,n=8", samples=8)
    assert erf.map.shape == (24, 24) and erf.samples == 8
    with pytest.raises(AtrousError, match="not both"):
        effective_rf(atrous.create_model("convstack"), (3, 8, 8), data="shapes")
    assert main(["erf", "convstack", "--input", "3,16,16", "--at", "40,0", "--out", "/tmp/x.png"]) == 2
    assert "outside the output" in capsys.readouterr().err
