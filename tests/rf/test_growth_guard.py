"""The growth guard: index maps that outgrow the budget are coarsened (and the report says so) instead of running
for minutes (GhostNetV2's gates at 193x193 did); what cannot be brought under it stops at once with one line that
names the module, the quantity and what to do."""

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


def test_multiplying_periods_are_coarsened_where_they_overflow_and_the_report_says_so() -> None:
    # Until 2026-12-02 this stopped with AnalysisTooLargeError; now the maps past the budget are folded
    # (tests/rf/test_coarsening.py checks the windows), and every output names where and why.
    torch.manual_seed(0)
    model = gated_stack()
    report = analyze(model, (1, 97, 97))
    (note,) = [n for n in report.outputs[0].notes if n.startswith("approximate")]
    # gate2 needs period 4,753 (allowed); gate3's resize is the first op over the limit.
    assert "'gate3:upsample_nearest2d' along H: 118,825)" in note
    assert f"outgrow {support.PHASE_LIMIT:,} phases" in note and "over-approximation" in note
    assert "\n" not in note
    for index in [(12, 12), (0, 0), (24, 24)]:  # the in-image support is not coarsened
        assert np.array_equal(report.support(index), gradient_support(model, (1, 97, 97), index))


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


class TwoPeriods(nn.Module):
    """Two pooled-and-resized branches meeting in a sum: each term's map has period 5 or 7, their union 35."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = F.interpolate(F.avg_pool1d(x, 5), scale_factor=5, mode="nearest")
        b = F.interpolate(F.avg_pool1d(x, 7), scale_factor=7, mode="nearest")
        return a + b


def test_terms_whose_union_outgrows_the_budget_are_reported_position_by_position(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The propagation keeps two terms apart when their union would need more phases than the budget
    # (PeriodicAlgebra.union); the report then read their union anyway and raised a bare GrowthError (a
    # traceback from the CLI; 181 and 191 at 34,571 did it under the real limit). Each term is exact: the
    # window of every position is their union there, with no stride or phases (like paths of mixed strides).
    exact = analyze(TwoPeriods(), (1, 35))
    monkeypatch.setattr(support, "PHASE_LIMIT", 30)
    monkeypatch.setattr(propagate, "PHASE_LIMIT", 30)
    report = analyze(TwoPeriods(), (1, 35))
    (axis,) = report.outputs[0].axes
    assert (axis.stride, axis.phases, axis.aligned, axis.approximate) == (None, [], False, False)
    assert "together they would need 35 phases (limit 30)" in axis.note
    assert axis.rf == exact.outputs[0].axes[0].rf == 5 + 7 - 1
    for u in range(35):
        want, got = exact.window((u,)), report.window((u,))
        assert want[0] == got[0] and np.array_equal(want[1], got[1])
    report.to_json()  # every layer's row too
