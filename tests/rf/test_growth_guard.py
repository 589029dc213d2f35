"""The growth guard: an analysis whose index maps outgrow the budget stops at once with one line that names the
module, the quantity and what to do, instead of running for minutes (GhostNetV2's gates at 193x193 did)."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import atrous.rf.propagate as propagate
import atrous.rf.support as support
from atrous.errors import AtrousError
from atrous.rf import analyze
from oracle import gradient_support


class Gate(nn.Module):
    """GhostNetV2's DFC attention in miniature: the input pooled by 2, resized back to the input's size by
    nearest neighbours, as a sigmoid gate on the input. At an odd size n the resize reads index
    ``floor(u * (n // 2) / n)``: an index map of period n, and stacked gates multiply their periods."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = F.interpolate(F.avg_pool2d(x, 2), size=x.shape[-2:], mode="nearest")
        return x * torch.sigmoid(g)


def gated_stack() -> nn.Module:
    """gate, stride-2 conv, gate, stride-2 conv, gate: at 97x97 the gates resize 48->97, 24->49, 12->25, so the
    third gate's map would need period 97 * 49 * 25 = 118,825 (over the 32,768 limit); at 32x32 every resize is
    by 2 and the periods stay at 2."""
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    for i in (1, 2, 3):
        layers[f"gate{i}"] = Gate()
        if i < 3:
            layers[f"down{i}"] = nn.Conv2d(1, 1, 3, stride=2, padding=1)
    return nn.Sequential(layers).eval()


def test_multiplying_periods_stop_at_the_module_that_overflows() -> None:
    with pytest.raises(AtrousError) as caught:
        analyze(gated_stack(), (1, 97, 97))
    message = str(caught.value)
    # gate2 needs period 4,753 (allowed); gate3's resize is the first op over the limit.
    assert "'gate3:" in message and "upsample_nearest2d" in message
    assert "118,825 phases" in message and f"limit {support.PHASE_LIMIT:,}" in message
    assert "input size" in message  # what to do
    assert "\n" not in message  # the CLI prints one line


def test_the_same_network_at_an_evenly_divided_size_is_analysed_exactly() -> None:
    # The control: the guard must not refuse the benign case, and what it lets through is still exact.
    torch.manual_seed(0)
    model = gated_stack()
    report = analyze(model, (1, 32, 32))
    assert not report.outputs[0].global_
    for index in [(4, 4), (0, 0), (7, 7)]:
        assert np.array_equal(report.support(index), gradient_support(model, (1, 32, 32), index))


def test_path_classes_are_counted_against_the_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    # Every map here has period <= 2, but the gate's path and the skip path sit in different classes of the
    # alignment check, whose periods add up past a limit of 3: the sum is what time and memory follow.
    monkeypatch.setattr(support, "PHASE_LIMIT", 3)
    monkeypatch.setattr(propagate, "PHASE_LIMIT", 3)
    with pytest.raises(AtrousError, match=r"classes of paths along (H|W) would need \d+ phases \(limit 3\)"):
        analyze(gated_stack(), (1, 32, 32))
