"""Every registered model: odd sizes, minimum size, batch-1 and batch-2 training steps, determinism, and its
receptive field against the gradient oracle."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import atrous
from atrous.models.registry import model_info
from atrous.rf import analyze
from oracle import gradient_support

NAMES = atrous.list_models()
SEGMENTERS = [n for n in NAMES if model_info(n).task == "segmentation"]


def build(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return atrous.create_model(name)


def loss_of(model: torch.nn.Module, out: torch.Tensor) -> torch.Tensor:
    if model_info(model.zoo_name).task == "backbone":
        return out.square().mean()
    target = torch.randint(0, max(model.num_classes, 2), (out.shape[0], *out.shape[2:]))
    if model.num_classes == 1:
        return F.binary_cross_entropy_with_logits(out[:, 0], target.float())
    return F.cross_entropy(out, target)


@pytest.fixture(params=NAMES)
def model(request: pytest.FixtureRequest) -> torch.nn.Module:
    m = build(request.param)
    m.zoo_name = request.param
    return m


def test_registry_lists_every_family() -> None:
    for family in (
        "convstack",
        "context",
        "unet",
        "dilated_unet",
        "deeplabv3",
        "deeplabv3plus",
        "resnet50",
        "seed_unet",
        "seed_dilated_unet",
        "seed_deeplab",
    ):
        assert family in NAMES


def test_forward_at_odd_and_minimum_sizes(model: torch.nn.Module) -> None:
    model.eval()
    for h, w in ((65, 97), (model.min_size, model.min_size)):
        with torch.no_grad():
            out = model(torch.randn(1, model.in_channels, h, w))
        if model_info(model.zoo_name).task == "segmentation":
            assert out.shape == (1, model.num_classes, h, w)
        else:
            assert out.shape[:2] == (1, model.channels["layer4"])


@pytest.mark.parametrize("batch", [1, 2])
def test_training_step_gives_finite_gradients_everywhere(model: torch.nn.Module, batch: int) -> None:
    model.train()
    size = max(model.min_size, 33)
    x = torch.randn(batch, model.in_channels, size, size + 4)
    loss = loss_of(model, model(x))
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} gets no gradient"
        assert torch.isfinite(p.grad).all(), f"{name} has a non-finite gradient"


def test_eval_treats_each_image_alone(model: torch.nn.Module) -> None:
    """In eval mode an image's logits do not depend on the batch it comes in (running statistics, no batch
    coupling): the second image of a batch of two gets the logits it gets alone."""
    model.eval()
    x = torch.randn(2, model.in_channels, 40, 36)
    with torch.no_grad():
        together, alone = model(x)[1], model(x[1:])[0]
    # Batched and single convolutions round differently (~1e-6 relative); coupling would differ by far more.
    error = (together - alone).abs().max().item()
    assert error <= 1e-5 * max(1.0, together.abs().max().item()), error


def test_rf_equals_gradient_oracle(model: torch.nn.Module) -> None:
    size = (model.in_channels, max(model.min_size, 37), max(model.min_size, 37) + 4)
    report = analyze(model, size)
    out_shape = report.outputs[0].shape[2:]
    corners = [(i, j) for i in (0, out_shape[0] - 1) for j in (0, out_shape[1] - 1)]
    for index in [tuple(n // 2 for n in out_shape), *corners]:
        assert np.array_equal(report.support(index), gradient_support(model, size, index)), index
