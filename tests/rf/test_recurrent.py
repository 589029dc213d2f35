"""Recurrent layers (RNN, LSTM, GRU) along spatial axes: exact in-image supports against the gradient oracle.

A unidirectional layer's output at step t reads steps <= t, a bidirectional one the whole axis, and the axis
that rides in the batch dim (Sequencer2d's (B * H, W, C)) is read position by position. The oracle's positivity
argument holds here: with positive weights and inputs every gate pre-activation is positive, and each partial
derivative of an LSTM or RNN output is a sum of positive products (sigmoid', tanh' > 0, tanh(c) > 0), so no
gradient cancels. A GRU's update gate enters as ``z * h + (1 - z) * n``, whose derivative ``z' * (h - n)`` has
either sign, so a gradient could vanish by accident: distinct random weights (``random_weights=True``) and a
union over several inputs keep that from happening unnoticed.

Where the engine over-approximates (a cell stepped in a Python loop and stacked; one direction's features of a
bidirectional layer), the tests pin the whole row it answers, the prefix or suffix the oracle reads, and the note
that says so.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch import nn

from atrous.errors import InputShapeError, UnsupportedOpError
from atrous.rf import analyze
from oracle import gradient_support

RNNS = {
    "lstm": nn.LSTM,
    "gru": nn.GRU,
    "rnn": nn.RNN,
    "rnn_relu": lambda *a, **k: nn.RNN(*a, **k, nonlinearity="relu"),
}


class AlongAxis(nn.Module):
    """A recurrent layer along H or W of an (N, C, H, W) map: the other axis rides in the batch dim."""

    def __init__(self, kind: str, along: str, bidirectional=False, batch_first=True, layers=1) -> None:
        super().__init__()
        self.rnn = RNNS[kind](2, 3, num_layers=layers, bidirectional=bidirectional, batch_first=batch_first)
        self.along, self.batch_first = along, batch_first

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c = x.shape[:2]
        y = x.permute(0, 2, 3, 1) if self.along == "W" else x.permute(0, 3, 2, 1)  # the sequence axis third
        rows, steps = y.shape[1], y.shape[2]
        y = y.reshape(n * rows, steps, c)
        if not self.batch_first:
            y = y.transpose(0, 1)
        y, _ = self.rnn(y)
        if not self.batch_first:
            y = y.transpose(0, 1)
        y = y.reshape(n, rows, steps, -1)
        return y.permute(0, 3, 1, 2) if self.along == "W" else y.permute(0, 3, 2, 1)


class Sequence1d(nn.Module):
    """A 1-D signal (N, C, L): conv, then a 2-layer LSTM along L (as in Encodec's encoder), then a conv."""

    def __init__(self, bidirectional: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv1d(2, 3, 3, padding=1)
        self.rnn = nn.LSTM(3, 3, num_layers=2, bidirectional=bidirectional)  # (L, N, C): not batch-first
        self.out = nn.Conv1d(6 if bidirectional else 3, 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, _ = self.rnn(self.conv(x).permute(2, 0, 1))
        return self.out(y.permute(1, 2, 0))


class Sequencer2dBlock(nn.Module):
    """timm's Sequencer2d block: LayerNorm, bidirectional (or not) LSTMs over columns and rows of (B, H, W, C),
    concatenated, a Linear; then a channel MLP; both residual."""

    def __init__(self, dim: int = 4, hidden: int = 3, bidirectional: bool = True) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.rnn_v = nn.LSTM(dim, hidden, batch_first=True, bidirectional=bidirectional)
        self.rnn_h = nn.LSTM(dim, hidden, batch_first=True, bidirectional=bidirectional)
        self.fc = nn.Linear(2 * hidden * (2 if bidirectional else 1), dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def mix(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        v, _ = self.rnn_v(x.permute(0, 2, 1, 3).reshape(-1, h, c))
        v = v.reshape(b, w, h, -1).permute(0, 2, 1, 3)
        r, _ = self.rnn_h(x.reshape(-1, w, c))
        return self.fc(torch.cat([v, r.reshape(b, h, w, -1)], dim=-1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = x + self.mix(self.norm1(x))
        x = x + self.mlp(self.norm2(x))
        return x.permute(0, 3, 1, 2)


class Raster(nn.Module):
    """A unidirectional LSTM over the tokens in raster order (h * W + w): output (h, w) reads every earlier row
    and its own row up to w, a union of two products of per-axis sets."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.LSTM(2, 3, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        y, _ = self.rnn(x.flatten(2).transpose(1, 2))
        return y.transpose(1, 2).reshape(n, -1, h, w)


class ChannelsInSequence(nn.Module):
    """Each row's sequence runs over (channel, column) pairs: channels slow (every column of the row is then
    reached through an earlier channel) or fast (the prefix of the row stays exact)."""

    def __init__(self, channels_first: bool) -> None:
        super().__init__()
        self.rnn = nn.GRU(1, 3, batch_first=True)
        self.channels_first = channels_first

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, c, h, w = x.shape
        if self.channels_first:
            y, _ = self.rnn(x[0].permute(1, 0, 2).reshape(h, c * w, 1))
            y = y.reshape(h, c, w, -1).sum(1)
        else:
            y, _ = self.rnn(x[0].permute(1, 2, 0).reshape(h, w * c, 1))
            y = y.reshape(h, w, c, -1).sum(2)
        return y.permute(2, 0, 1)[None]


class InitialState(nn.Module):
    """A GRU along W whose initial state is computed from the row's last two pixels: every step of row h reads
    them (and only row h's)."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.GRU(2, 3, batch_first=True)
        self.fc = nn.Linear(2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        h0 = self.fc(x[:, :, :, -2:].mean(3).permute(0, 2, 1))  # (1, H, hidden): H in the batch dim
        y, _ = self.rnn(x.permute(0, 2, 3, 1).reshape(h, w, c), h0)
        return y.reshape(n, h, w, -1).permute(0, 3, 1, 2)


class FinalState(nn.Module):
    """The last hidden state of each row's LSTM, broadcast back over the row: the whole row, row by row."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.LSTM(2, 3, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        _, (hn, _) = self.rnn(x.permute(0, 2, 3, 1).reshape(h, w, c))  # hn: (1, H, 3)
        return hn.permute(0, 2, 1)[..., None].expand(n, 3, h, w)


class PixelCell(nn.Module):
    """One LSTMCell step per pixel (all pixels as rows of the batch): the identity on both axes."""

    def __init__(self) -> None:
        super().__init__()
        self.cell = nn.LSTMCell(2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        hidden, _ = self.cell(x.permute(0, 2, 3, 1).reshape(h * w, c))
        return hidden.reshape(n, h, w, 3).permute(0, 3, 1, 2)


CELLS = {"lstm": nn.LSTMCell, "gru": nn.GRUCell, "rnn": nn.RNNCell}


class CellLoop(nn.Module):
    """A recurrent cell in a Python loop along W, each step fed the previous state, the steps stacked back: the
    exact support is the row's prefix."""

    def __init__(self, kind: str = "lstm") -> None:
        super().__init__()
        self.cell = CELLS[kind](2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        seq = x.permute(3, 0, 2, 1).reshape(w, n * h, c)
        state, outs = None, []
        for t in range(w):
            state = self.cell(seq[t], state)
            outs.append(state[0] if isinstance(state, tuple) else state)
        return torch.stack(outs).reshape(w, n, h, -1).permute(1, 3, 2, 0)


class OneDirection(nn.Module):
    """The features of one direction of a bidirectional LSTM along W: forward (``out[..., :hidden]``, steps
    <= t with one layer) or backward (``out[..., hidden:]``, steps >= t)."""

    def __init__(self, half: str, layers: int = 1) -> None:
        super().__init__()
        self.rnn = nn.LSTM(2, 3, num_layers=layers, batch_first=True, bidirectional=True)
        self.half = half

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        y, _ = self.rnn(x.permute(0, 2, 3, 1).reshape(n * h, w, c))
        y = y[..., :3] if self.half == "forward" else y[..., 3:]
        return y.reshape(n, h, w, -1).permute(0, 3, 1, 2)


CASES: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    **{
        f"{kind}_{along}_{'bi' if bi else 'uni'}_{'bf' if bf else 'tbf'}": (
            lambda kind=kind, along=along, bi=bi, bf=bf: AlongAxis(kind, along, bi, bf),
            (2, 5, 6),
        )
        for kind, along, bi, bf in itertools.product(RNNS, "HW", (False, True), (True, False))
        if kind == "lstm" or bf  # batch_first both ways once, on the LSTM
    },
    "lstm_W_uni_3layers": (lambda: AlongAxis("lstm", "W", layers=3), (2, 5, 6)),
    "gru_H_bi_2layers": (lambda: AlongAxis("gru", "H", bidirectional=True, layers=2), (2, 5, 6)),
    "sequence_1d_uni": (Sequence1d, (2, 9)),
    "sequence_1d_bi": (lambda: Sequence1d(bidirectional=True), (2, 9)),
    "sequencer_block": (Sequencer2dBlock, (4, 5, 6)),
    "sequencer_block_uni": (lambda: Sequencer2dBlock(bidirectional=False), (4, 5, 6)),
    "sequencer_two_blocks_uni": (
        lambda: nn.Sequential(Sequencer2dBlock(bidirectional=False), Sequencer2dBlock(bidirectional=False)),
        (4, 5, 6),
    ),
    "raster": (Raster, (2, 4, 5)),
    "channels_slow_in_sequence": (lambda: ChannelsInSequence(True), (2, 4, 5)),
    "channels_fast_in_sequence": (lambda: ChannelsInSequence(False), (2, 4, 5)),
    "initial_state": (InitialState, (2, 4, 5)),
    "final_state": (FinalState, (2, 4, 5)),
    "pixel_cell": (PixelCell, (2, 4, 5)),
    # Two layers: the second layer's forward direction reads the first's backward features, so either half
    # reads the whole row, as the engine says.
    "bi_forward_half_2layers": (lambda: OneDirection("forward", layers=2), (2, 4, 5)),
    "bi_backward_half_2layers": (lambda: OneDirection("backward", layers=2), (2, 4, 5)),
}


def _probes(out_shape: tuple[int, ...]) -> set[tuple[int, ...]]:
    return {tuple(n // 2 for n in out_shape), *itertools.product(*[(0, n - 1) for n in out_shape])}


@pytest.mark.parametrize("name", sorted(CASES))
def test_support_equals_oracle(name: str) -> None:
    factory, shape = CASES[name]
    torch.manual_seed(0)
    model = factory()
    report = analyze(model, shape)
    for index in sorted(_probes(report.outputs[0].shape[2:])):
        expected = gradient_support(model, shape, index, random_weights=True, inputs=2)
        got = report.support(index)
        assert np.array_equal(got, expected), (
            f"{name} at {index}: engine {got.sum()} px, oracle {expected.sum()}"
        )


def test_prefix_and_whole_axis_values() -> None:
    """The relations spelled out: uni along W at (2, 3) reads row 2, columns 0..3; bi the whole row; along H
    column 3, rows 0..2; the raster order every earlier row plus the row's prefix."""
    uni = analyze(AlongAxis("lstm", "W"), (2, 5, 6)).support((2, 3))
    assert sorted(zip(*np.nonzero(uni))) == [(2, c) for c in range(4)]
    bi = analyze(AlongAxis("lstm", "W", bidirectional=True), (2, 5, 6)).support((2, 3))
    assert sorted(zip(*np.nonzero(bi))) == [(2, c) for c in range(6)]
    col = analyze(AlongAxis("gru", "H"), (2, 5, 6)).support((2, 3))
    assert sorted(zip(*np.nonzero(col))) == [(r, 3) for r in range(3)]
    raster = analyze(Raster(), (2, 4, 5)).support((1, 2))
    assert raster.sum() == 5 + 3 and raster[0].all() and raster[1, :3].all() and not raster[2:].any()
    first = analyze(Raster(), (2, 4, 5)).support((0, 0))
    assert first.sum() == 1 and first[0, 0]


def test_theoretical_field_is_global_along_the_sequence_and_says_so() -> None:
    """On an unbounded input a prefix is unbounded: global along the sequence axis, 1 along the batch axis."""
    out = analyze(AlongAxis("lstm", "W"), (2, 5, 6)).outputs[0]
    assert out.rf == [1, None]
    assert any("recurrent layer runs along W" in n and "unidirectional" in n for n in out.notes)
    out = analyze(AlongAxis("lstm", "H", bidirectional=True), (2, 5, 6)).outputs[0]
    assert out.rf == [None, 1]
    assert any("runs along H" in n and "bidirectional" in n for n in out.notes)


def test_recorded_as_one_call_per_layer() -> None:
    """One call per nn.LSTM (all layers and directions), not a dozen ops per time step."""
    report = analyze(AlongAxis("lstm", "W", bidirectional=True, layers=3), (2, 5, 6))
    packets = [c.packet for c in report.graph.calls]
    assert packets.count("aten.lstm") == 1
    assert not any(p in packets for p in ("aten.addmm", "aten.sigmoid", "aten.sigmoid_", "aten.unbind"))
    assert report.graph.recorded_on == "meta"


def _assert_row_with_a_note(model: nn.Module, shape: tuple[int, ...], truth: Callable[[int], range]) -> None:
    """The engine answers the whole row and says it approximates; the oracle reads ``truth(column)`` of the
    row, never more (the note's claim), and the engine never misses a pixel of it."""
    torch.manual_seed(0)
    report = analyze(model, shape)
    out = report.outputs[0]
    assert any(n.startswith("approximate") for n in out.notes), out.notes
    for index in sorted(_probes(out.shape[2:])):
        expected = gradient_support(model, shape, index, random_weights=True, inputs=2)
        got = report.support(index)
        assert not (expected & ~got).any(), f"under-reach at {index}"
        assert got[index[0]].all() and got.sum() == shape[2]  # the row, nothing else
        columns = list(truth(index[1]))
        assert np.flatnonzero(expected[index[0]]).tolist() == columns and expected.sum() == len(columns)


@pytest.mark.parametrize("kind", sorted(CELLS))
def test_cell_loop_over_approximates_and_says_so(kind: str) -> None:
    """A cell stepped in a Python loop and stacked: the stack's pieces carry no step index (each is a selection
    of one column), so the engine reports the whole row where the truth is the prefix, and says so."""
    shape = (2, 4, 5)
    _assert_row_with_a_note(CellLoop(kind), shape, lambda w: range(w + 1))
    out = analyze(CellLoop(kind), shape).outputs[0]
    assert sum("stacked back along W" in n for n in out.notes) == 1, "one note for the whole loop"


def test_cell_on_each_pixel_needs_no_note() -> None:
    """A cell on every pixel at once (no loop, no state) is exact: no approximation to report."""
    assert not any("approx" in n for n in analyze(PixelCell(), (2, 4, 5)).outputs[0].notes)


@pytest.mark.parametrize("half", ["forward", "backward"])
def test_one_direction_of_a_bidirectional_layer_over_approximates_and_says_so(half: str) -> None:
    """The features of one direction read a prefix (forward) or a suffix (backward) of the row; the engine
    tracks features in dim 1 only, so a slice of the last dim keeps the whole row, and the report says so."""
    w = 5
    truth = (lambda t: range(t + 1)) if half == "forward" else (lambda t: range(t, w))
    _assert_row_with_a_note(OneDirection(half), (2, 4, w), truth)


def test_stacked_bidirectional_layers_need_no_direction_note() -> None:
    """With two layers every feature reads the whole axis, so no slice can be narrower: no such note."""
    notes = analyze(OneDirection("forward", layers=2), (2, 4, 5)).outputs[0].notes
    assert not any("approx" in n for n in notes), notes


def test_wrong_feature_count_names_the_layer() -> None:
    class Wrong(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = nn.LSTM(5, 3, batch_first=True)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.rnn(x.flatten(2).transpose(1, 2))[0]

    # nn.LSTM checks its input itself; the engine turns that into its one-line error on the input shape.
    with pytest.raises(InputShapeError, match=r"input shape \(1, 2, 4, 4\).*Expected 5, got 2"):
        analyze(Wrong(), (2, 4, 4))


def test_packed_sequence_is_refused_in_one_line() -> None:
    """Packing reads its lengths as values on the CPU, which shape-only tensors are not: a one-line error that
    names the lengths (and a packed call that got through would be refused by name: no rule for it)."""

    class Packed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = nn.GRU(2, 3, batch_first=True)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seq = x.flatten(2).transpose(1, 2)
            packed = nn.utils.rnn.pack_padded_sequence(seq, [seq.shape[1]], batch_first=True)
            return nn.utils.rnn.pad_packed_sequence(self.rnn(packed)[0], batch_first=True)[0]

    with pytest.raises((UnsupportedOpError, InputShapeError), match=r"lengths|packed sequence") as err:
        analyze(Packed(), (2, 4, 4))
    assert "\n" not in str(err.value)


def test_timm_sequencer2d_equals_oracle() -> None:
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    trunk = timm.create_model("sequencer2d_s", pretrained=False, num_classes=0, global_pool="")

    class NCHW(nn.Module):  # timm returns (B, H, W, C) features; the oracle and the report index (N, C, H, W)
        def __init__(self) -> None:
            super().__init__()
            self.trunk = trunk

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.trunk(x).permute(0, 3, 1, 2)

    model, shape = NCHW(), (3, 32, 32)
    report = analyze(model, shape)
    out = report.outputs[0]
    assert out.shape[2:] == (2, 2)
    assert any("bidirectional" in n for n in out.notes)
    for index in sorted(_probes((2, 2))):
        expected = gradient_support(model, shape, index, random_weights=True, inputs=2)
        assert np.array_equal(report.support(index), expected), index
    # Patch embedding 7x7 stride 7 on 32 px covers 28 rows and columns; the bidirectional LSTMs reach them all.
    assert report.support((0, 0)).sum() == 28 * 28
