"""Index maps past the phase budget: folded to maps that contain the exact ones at every position the tensors
have or later ops read (``algebra.fold``, ``Propagation._reach``), never fewer pixels, and said in the report.

The replica is GhostNetV2's DFC attention: a 2x2 average pooling of an odd-size map, band depthwise convolutions
(1x5, 5x1), a sigmoid gate resized back to the odd size by nearest neighbours. Each such gate multiplies the
period of the exact maps by the size it resizes to (97 -> 4,753 -> 118,825 at 97x97)."""

from __future__ import annotations

import random
from fractions import Fraction

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import atrous.rf.propagate as propagate
import atrous.rf.support as support
from atrous.rf import analyze
from atrous.rf.algebra import composed_at, fold
from atrous.rf.support import GLOBAL, AxisMap, Offsets, compose
from oracle import gradient_support


class DFC(nn.Module):
    """GhostNetV2's decoupled fully connected attention, in miniature."""

    def __init__(self, c: int = 2) -> None:
        super().__init__()
        self.h = nn.Conv2d(c, c, (1, 5), padding=(0, 2), groups=c)
        self.v = nn.Conv2d(c, c, (5, 1), padding=(2, 0), groups=c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = torch.sigmoid(self.v(self.h(F.avg_pool2d(x, 2))))
        return x * F.interpolate(g, size=x.shape[-2:], mode="nearest")


class Stack(nn.Module):
    """``gates`` DFC gates with a stride-2 convolution between two; returns the map after the first stride-2
    convolution (a middle level) and the last one. With ``squeeze``, each gate is followed by a squeeze-excite
    (a global mean as a gate, as in GhostNetV2's blocks) inside a residual."""

    def __init__(self, gates: int, squeeze: bool = False, c: int = 2) -> None:
        super().__init__()
        self.squeeze = squeeze
        self.gates = nn.ModuleList(DFC(c) for _ in range(gates))
        self.downs = nn.ModuleList(nn.Conv2d(c, c, 3, stride=2, padding=1) for _ in range(gates - 1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        levels = []
        for i, gate in enumerate(self.gates):
            y = gate(x)
            x = x + y * torch.sigmoid(y.mean((2, 3), keepdim=True)) if self.squeeze else y
            if i < len(self.downs):
                x = self.downs[i](x)
                levels.append(x)
        return levels[0], x


def _limit(monkeypatch: pytest.MonkeyPatch, limit: int) -> None:
    monkeypatch.setattr(support, "PHASE_LIMIT", limit)
    monkeypatch.setattr(propagate, "PHASE_LIMIT", limit)


def _windows(report, output: str, positions) -> dict:
    """The theoretical (unbounded) window of each output position, as a set of input pixels."""
    found = {}
    for p in positions:
        origin, mask = report.window(p, output)
        ys, xs = np.nonzero(mask)
        found[p] = set(zip((ys + origin[0]).tolist(), (xs + origin[1]).tolist()))
    return found


def _probes(shape) -> list[tuple[int, int]]:
    return sorted({(shape[0] // 2, shape[1] // 2), (0, 0)})


def test_three_odd_gates_analyse_match_the_oracle_and_say_so() -> None:
    # The refusal this replaces: 97 * 49 * 25 = 118,825 phases at the third gate (limit 32,768).
    torch.manual_seed(0)
    model = Stack(3).eval()
    shape = (2, 97, 97)
    report = analyze(model, shape)
    for out in report.outputs:
        notes = [n for n in out.notes if n.startswith("approximate: the exact index maps outgrow")]
        assert len(notes) == (1 if out is report.outputs[-1] else 0)  # the middle level comes before gate 3
    assert "'gates.2:upsample_nearest2d' along H: 118,825)" in report.outputs[-1].notes[0]
    for out in report.outputs:
        for p in _probes(out.shape[2:]):
            want = gradient_support(model, shape, p, output=out.name)
            got = report.support(p, out.name)
            assert np.array_equal(got, want)  # the in-image support is never coarsened
            (window,) = _windows(report, out.name, [p]).values()
            # The theoretical window of the pixel holds every input pixel that reaches it.
            assert set(zip(*(a.tolist() for a in np.nonzero(want)))) <= window


def test_folded_windows_contain_the_exact_ones_at_every_position(monkeypatch: pytest.MonkeyPatch) -> None:
    # Two gates at 65x65: exact maps of period 65 * 33 = 2,145 fit the budget; under smaller budgets the same
    # network is folded, first over each tensor's reached positions (exact there), then, when even that is too
    # much, to maps of at most 4 phases (larger windows). Never a pixel less, at any position of the output.
    torch.manual_seed(0)
    model = Stack(2).eval()
    exact = analyze(model, (2, 65, 65))
    out = exact.outputs[-1].name
    n = exact.outputs[-1].shape[2]
    assert not any(x.startswith("approximate") for x in exact.outputs[-1].notes)
    positions = [(i, j) for i in range(n) for j in sorted({0, i, n // 2, n - 1})]
    want = _windows(exact, out, positions)
    extra = {}
    for limit in (1000, 40):
        _limit(monkeypatch, limit)
        folded = analyze(model, (2, 65, 65))
        said = f"approximate: the exact index maps outgrow {limit:,}"
        assert any(x.startswith(said) for x in folded.outputs[-1].notes)
        got = _windows(folded, out, positions)
        assert all(want[p] <= got[p] for p in positions)
        extra[limit] = sum(len(got[p] - want[p]) for p in positions)
    assert extra[1000] == 0  # one phase per reached position: exact there
    assert extra[40] > 0  # at most 4 phases: the strides rounded, the windows wider


def test_gates_behind_squeeze_excite_stay_exact() -> None:
    # GhostNetV2's own case: its gates sit behind squeeze-excite means, so every path's field is global, and
    # only the alignment check's classes of paths grew (60,025 phases at 193x193). Classes are dropped where all
    # of a tensor's paths are global along the axis (nothing reads them again), so nothing is coarsened.
    torch.manual_seed(0)
    model = Stack(3, squeeze=True).eval()
    shape = (2, 97, 97)
    report = analyze(model, shape)
    last = report.outputs[-1]
    assert last.global_ and not any(n.startswith("approximate") for n in last.notes)
    for p in _probes(last.shape[2:]):
        assert np.array_equal(
            report.support(p, last.name), gradient_support(model, shape, p, output=last.name)
        )


def _random_map(rng: random.Random, with_global: bool = False) -> AxisMap:
    period = rng.randint(1, 7)
    advance = rng.randint(-3, 9)

    def phase() -> Offsets:
        if with_global and rng.random() < 0.05:
            return GLOBAL
        return (
            Offsets.of(rng.sample(range(-6, 7), rng.randint(0, 4))) if rng.random() > 0.1 else Offsets.of([])
        )

    return AxisMap(period, advance, tuple(phase() for _ in range(period)))


def test_compose_is_the_union_of_the_inner_map_at_each_tap() -> None:
    """compose works on whole phases and bitsets; checked against the definition, position by position."""
    rng = random.Random(3)
    for _ in range(2000):
        inner, rule = _random_map(rng, True), _random_map(rng, True)
        whole, at = compose(inner, rule), composed_at(inner, rule)
        assert all(whole.at(u) == at(u) for u in range(-3 * whole.period - 5, 3 * whole.period + 5))


@pytest.mark.parametrize("small", [False, True])
def test_fold_contains_the_map_at_every_position_of_the_range(small: bool) -> None:
    rng = random.Random(7)
    for _ in range(300):
        m = _random_map(rng)
        lo = rng.randint(-20, 5)
        hi = lo + rng.randint(0, 40)
        # The stride it is told may be off (a composed map's exact stride is only approximated): sound anyway.
        stride = m.stride + Fraction(rng.randint(-2, 2), rng.randint(5, 50))
        f = fold(m.at, stride, lo, hi, small)
        assert all(m.at(u).issubset(f.at(u)) for u in range(lo, hi + 1))
        if small:
            assert f.period <= 4 or abs(stride) < Fraction(1, 4)
        else:  # one phase per position is among the candidates, and it is exact on the range
            assert all(m.at(u) == f.at(u) for u in range(lo, hi + 1))


def test_folded_axes_give_no_stride_or_phases_and_tiling_refuses(monkeypatch: pytest.MonkeyPatch) -> None:
    # A folded map's stride is rounded (the gate's 48/97 composed with the skip path's 1 became "stride 1, 4
    # phases" under a small budget) and its phases are those of this input's positions. Tiling trusted them
    # and promised exact tiles of 97 that differed from whole-image logits by 0.066; the report now gives
    # bounds only along folded axes, and tiling refuses with the reason.
    from atrous.train.tiling import TilingError, plan_tiles

    torch.manual_seed(0)
    model = DFC(2).eval()
    exact = analyze(model, (2, 97, 97)).outputs[0]
    _limit(monkeypatch, 40)
    with pytest.raises(TilingError, match=r"^at 97x97 the receptive-field engine can only bound"):
        plan_tiles(model, (301, 301), 2, tile=97)
    report = analyze(model, (2, 97, 97))
    out = report.outputs[0]
    assert any(n.startswith("approximate: the exact index maps outgrow 40 phases") for n in out.notes)
    for want, got in zip(exact.axes, out.axes):
        assert got.approximate and got.note.startswith("approximate (index maps coarsened")
        assert (got.stride, got.padding, got.phases, got.aligned) == (None, None, [], False)
        assert got.rf >= want.rf  # a bound on the exact field, never below it
    assert out.area_coverage is None
    rows = [r.tensor for r in report.layers()]
    assert all(a.stride is None for t in rows if any(a.approximate for a in t.axes) for a in t.axes)


class Shifts(nn.Module):
    """Twelve copies of the input shifted along W and added: one term, twelve classes of paths."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sum(F.pad(x, (i, -i, 0, 0)) for i in range(12))


def test_classes_dropped_over_the_budget_withdraw_the_alignment(monkeypatch: pytest.MonkeyPatch) -> None:
    # Over the budget only a few classes are kept; the alignment decided from those is not claimed, while the
    # terms (exact) still give the stride and the phases.
    _limit(monkeypatch, 8)
    h, w = analyze(Shifts(), (1, 20, 20)).outputs[0].axes
    assert h.aligned and not h.approximate and h.note is None
    assert (w.rf, w.stride, w.aligned, w.approximate) == (12, 1, False, False)
    assert w.note.startswith("approximate (path classes coarsened")
