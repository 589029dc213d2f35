"""WeightAverage gives torch's EMA numbers, bit for bit, at a fraction of the cost per step."""

from __future__ import annotations

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from atrous.models.registry import create_model
from atrous.train.averaging import WeightAverage


def test_the_average_equals_torchs_ema_of_weights_and_batchnorm_statistics() -> None:
    torch.manual_seed(0)
    model = create_model("deeplabv3_small:aspp_channels=8,rates=1,2", num_classes=3)
    ours = WeightAverage(model, 0.9)
    theirs = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(4):  # training steps move the weights and the BatchNorm statistics and counters
        opt.zero_grad()
        model(torch.randn(2, 3, 32, 32)).square().mean().backward()
        opt.step()
        ours.update_parameters(model)
        theirs.update_parameters(model)
    mine, torchs = ours.module.state_dict(), theirs.module.state_dict()
    assert mine.keys() == torchs.keys()
    for name in mine:
        assert torch.equal(mine[name], torchs[name]), name
    assert int(ours.n_averaged) == int(theirs.n_averaged) == 4
    assert any(not t.is_floating_point() for t in mine.values())  # the counters were compared too
    moved = [
        n for n in mine if mine[n].is_floating_point() and not torch.equal(mine[n], model.state_dict()[n])
    ]
    assert moved, "the average should lag behind the trained weights"


def test_the_average_follows_a_conversion_and_keeps_the_model_out_of_its_state() -> None:
    """After ``.double()`` of both (buffers are new tensors), the next update uses the new ones; the trained
    model is not a submodule of its average."""
    torch.manual_seed(0)
    model = create_model("deeplabv3_small:aspp_channels=8,rates=1,2", num_classes=3)
    ours = WeightAverage(model, 0.9)
    theirs = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True)
    for average in (ours, theirs):
        average.update_parameters(model)
    keys = set(ours.state_dict())
    model, ours, theirs = model.double(), ours.double(), theirs.double()
    model.train()(torch.randn(2, 3, 32, 32, dtype=torch.float64))  # moves the BatchNorm statistics
    for average in (ours, theirs):
        average.update_parameters(model)
    assert set(ours.state_dict()) == keys == set(theirs.state_dict())
    for name, value in ours.module.state_dict().items():
        assert torch.equal(value, theirs.module.state_dict()[name]), name
