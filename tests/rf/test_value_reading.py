"""Models that read tensor values in Python: recorded once on real tensors, said in the report, and exact.

Meta tensors have shapes but no values, so ``.item()``, ``bool()`` of a tensor and data-dependent shapes
(``nonzero``) fail on them. The engine then records once on real tensors of the requested shape; the report
says so (``recorded_on``, ``recording_note``, a note on every output, the printed table). A model that reads no
value must still be recorded on meta tensors: the fallback costs a real forward and is never taken needlessly.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from rich.console import Console
from torch import nn

from atrous.errors import InputShapeError
from atrous.rf import analyze
from atrous.rf.render import outputs_table
from oracle import gradient_support


class ItemPaddedConv(nn.Module):
    """Hugging Face Encodec's padded convolution: kernel and stride kept as tensor buffers, the extra right
    padding that makes the last window whole computed from them and read with ``.item()``; reflect padding."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, dim: int = 1) -> None:
        super().__init__()
        self.conv = (nn.Conv1d if dim == 1 else nn.Conv2d)(cin, cout, kernel, stride)
        self.kernel = nn.Buffer(torch.tensor(kernel), persistent=False)
        self.stride = nn.Buffer(torch.tensor(stride), persistent=False)
        self.dim = dim

    def extra(self, length: int) -> int:
        frames = torch.ceil((length - self.kernel + (self.kernel - self.stride)) / self.stride + 1).long() - 1
        return int((frames * self.stride + self.stride - length).item())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total = int((self.kernel - self.stride).item())
        pads: list[int] = []
        for length in reversed(x.shape[2:]):  # F.pad lists the last dim first
            pads += [total - total // 2, total // 2 + self.extra(length)]
        return self.conv(F.pad(x, pads, mode="reflect"))


class EncodecLike(nn.Module):
    def __init__(self, dim: int = 1) -> None:
        super().__init__()
        self.a = ItemPaddedConv(2, 3, 4, 2, dim)
        self.b = ItemPaddedConv(3, 3, 3, 1, dim)
        self.c = ItemPaddedConv(3, 2, 5, 3, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c(F.elu(self.b(F.elu(self.a(x)))))


class ReadsInput(nn.Module):
    """Branches on a value of the input itself: the graph recorded is the one this (random) input takes."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.amax() > 0:  # always true for the engine's input (uniform in [0, 1)) and the oracle's
            return self.conv(self.conv(x))
        return self.conv(x)


class CountedColumns(nn.Module):
    """Keeps as many leading columns as a mask buffer has set entries, counted with ``nonzero``: an output
    shape that depends on values."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 3, padding=1)
        self.mask = nn.Buffer(torch.tensor([1, 0, 1, 1, 0, 1]), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        keep = self.mask.nonzero().shape[0]
        return self.conv(x[..., :keep])


class WritesBuffer(nn.Module):
    """Counts its calls in a buffer, in place, and reads the count back: recording must not change it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 3, padding=1)
        self.calls = nn.Buffer(torch.zeros((), dtype=torch.int64), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.conv(x) * float(self.calls.item() > 0)


def _probes(out_shape: tuple[int, ...]) -> set[tuple[int, ...]]:
    return {tuple(n // 2 for n in out_shape), *itertools.product(*[(0, n - 1) for n in out_shape])}


def _check_oracle(model: nn.Module, shape: tuple[int, ...]) -> None:
    report = analyze(model, shape)
    for index in sorted(_probes(report.outputs[0].shape[2:])):
        expected = gradient_support(model, shape, index)
        got = report.support(index)
        assert np.array_equal(got, expected), f"at {index}: engine {got.sum()} px, oracle {expected.sum()} px"


@pytest.mark.parametrize(("dim", "shape"), [(1, (2, 37)), (2, (2, 13, 17))])
def test_item_padding_records_on_real_tensors_and_equals_oracle(dim: int, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    model = EncodecLike(dim)
    report = analyze(model, shape)
    assert report.recorded_on == "real"
    note = report.recording_note
    assert note.startswith("recorded on real tensors")
    assert ".item()" in note and "module 'a'" in note  # the first read, where it happened
    assert "no value read depends on the input" in note  # the buffers' values only: valid for any input
    assert all(note in out.notes for out in report.outputs)
    data = report.to_json()
    assert data["recorded_on"] == "real" and data["recording_note"] == note
    assert note in data["outputs"][0]["notes"]
    _check_oracle(model, shape)


def test_printed_report_says_real_tensors() -> None:
    console = Console(width=100, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
    console.print(outputs_table(analyze(EncodecLike(1), (2, 37))))
    text = " ".join(console.export_text().split())
    assert "recorded on real tensors" in text and ".item()" in text


def test_value_of_the_input_is_said() -> None:
    torch.manual_seed(0)
    report = analyze(ReadsInput(), (2, 8, 8))
    assert report.recorded_on == "real"
    assert "depend on the input" in report.recording_note and "another input may take another path" in (
        report.recording_note
    )
    assert report.rf == [5, 5]  # the branch the input took: two 3x3 convolutions
    _check_oracle(ReadsInput(), (2, 8, 8))


def test_data_dependent_shape_records_on_real_tensors() -> None:
    torch.manual_seed(0)
    model = CountedColumns()
    report = analyze(model, (2, 6, 6))
    assert report.recorded_on == "real" and "aten.nonzero" in report.recording_note
    assert report.outputs[0].shape == (1, 2, 6, 4)
    _check_oracle(model, (2, 6, 6))


def test_real_recording_does_not_change_the_model() -> None:
    model = WritesBuffer()
    weight = model.conv.weight.detach().clone()
    report = analyze(model, (2, 6, 6))
    assert report.recorded_on == "real"
    assert int(model.calls) == 0 and torch.equal(model.conv.weight, weight)
    assert model.training  # the mode is restored too


class Counting(nn.Module):
    def __init__(self, cin: int = 2) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, 2, 3, padding=1)
        self.forwards = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.forwards += 1
        return self.conv(x)


def test_model_that_reads_no_value_stays_on_meta() -> None:
    model = Counting()
    report = analyze(model, (2, 8, 8))
    assert model.forwards == 1  # one shape-only forward, no second (real) one
    assert report.recorded_on == "meta" and report.recording_note is None
    assert report.to_json()["recorded_on"] == "meta"
    assert not any("real tensors" in n for n in report.outputs[0].notes)


def test_other_failures_do_not_fall_back() -> None:
    """A wrong channel count is the user's error: said once, from the meta run, with no real forward."""
    model = Counting(cin=3)
    with pytest.raises(InputShapeError, match="expects 3 input channels but gets 2"):
        analyze(model, (2, 8, 8))
    assert model.forwards == 1


def test_huggingface_encodec() -> None:
    """The real Encodec encoder (random weights): .item() padding, reflect padding, strided convolutions and a
    2-layer unidirectional LSTM along time.

    The oracle cannot run on it as it is: it draws every parameter positive, weight norm then makes each row of
    weights sum to about sqrt(fan-in), activations reach 1e14 at the LSTM, and saturated gates (tanh and the
    sigmoid round to exactly 1.0 in float64) make true gradients exactly 0. So the oracle runs on the same
    architecture built without weight norm, with the LSTM's input scaled by 1e-3 (a positive factor: the same
    support); the engine analyses the real model unchanged, and the damped copy, and must agree with both."""
    transformers = pytest.importorskip("transformers")
    from torch.nn.utils import parametrize

    class Damped(nn.Module):
        def __init__(self, lstm: nn.LSTM) -> None:
            super().__init__()
            self.lstm = lstm

        def forward(self, x: torch.Tensor) -> tuple:
            return self.lstm(x * 1e-3)

    def encoder(damped: bool) -> nn.Module:
        torch.manual_seed(0)
        enc = transformers.EncodecModel(transformers.EncodecConfig()).encoder
        for m in list(enc.modules()):
            if damped and isinstance(getattr(m, "lstm", None), nn.LSTM):
                m.lstm = Damped(m.lstm)
            if damped and parametrize.is_parametrized(m, "weight"):
                parametrize.remove_parametrizations(m, "weight")
        return enc

    model, damped = encoder(False), encoder(True)
    shape = (1, 4000)
    report = analyze(model, shape)
    assert report.recorded_on == "real" and ".item()" in report.recording_note
    out = report.outputs[0]
    assert out.shape[2:] == (13,)  # 4000 samples at stride 320, padded to whole frames
    assert any("recurrent layer runs along L" in n and "unidirectional" in n for n in out.notes)
    damped_report = analyze(damped, shape)
    for index in [(0,), (6,), (12,)]:
        expected = gradient_support(damped, shape, index, random_weights=True, inputs=2)
        got = report.support(index)
        assert np.array_equal(got, expected), index
        assert np.array_equal(damped_report.support(index), got), index
    # The prefix: the last frame reads every sample, the first only the start (reflect padding included).
    assert report.support((12,)).all() and report.support((0,)).sum() < shape[1]
