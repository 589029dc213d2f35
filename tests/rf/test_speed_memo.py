"""Rule effects reused across calls that look the same to a rule (``rules.memo``, issue 19) change no answer: on
networks of repeated blocks the effects, the reports and the in-image supports are those of running every rule,
and a call that reads one tensor twice is never answered from one that reads two."""

from __future__ import annotations

import itertools

import pytest
import torch
from attention_nets import Swin, ViT, WindowAttentionCNN
from torch import nn

from atrous.rf import analyze
from atrous.rf.graph import record
from atrous.rf.propagate import Propagation
from atrous.rf.rules import CONSTANT_PACKETS, Options, memo
from atrous.rf.rules.base import Ctx


class SquareOrProduct(nn.Module):
    """Two products of the same shapes and layouts: ``a * a`` reads one tensor twice, ``a * b`` two."""

    def __init__(self) -> None:
        super().__init__()
        self.f, self.g = nn.Conv2d(2, 4, 3, padding=1), nn.Conv2d(2, 4, 5, padding=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.f(x), self.g(x)
        return a * a + a * b


class Repeated(nn.Module):
    """The same block several times (what the memo is for), with strided and dilated convolutions between."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Conv2d(4, 4, 3, padding=d, dilation=d), nn.GELU()) for d in (1, 1, 2, 1)
        )
        self.stem, self.down = nn.Conv2d(2, 4, 3, padding=1), nn.Conv2d(4, 4, 3, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for i, block in enumerate(self.blocks):
            x = x + block(x)
            if i == 1:
                x = self.down(x)
        return x


NETS = {
    "swin": (lambda: Swin(((4, 0), (4, 2), (4, 0), (4, 2)), merge=True), (2, 16, 16)),
    "vit": (lambda: ViT(depth=3), (2, 16, 16)),
    "window_attention_cnn": (WindowAttentionCNN, (2, 16, 16)),
    "square_or_product": (SquareOrProduct, (2, 9, 9)),
    "repeated": (Repeated, (2, 17, 15)),
}


def without_memo(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        memo.EffectMemo,
        "effects",
        lambda self, fn, call, layouts, shapes: fn(Ctx(call, layouts, shapes, self.options)),
    )


def effects_text(prop: Propagation) -> list[str]:
    return [
        f"{call.name} {node} {effect.layout} {effect.notes} "
        + str(
            [(d.source, sorted((a, r.periodic) for a, r in d.axes.items()), d.channels) for d in effect.deps]
        )
        for call, effects in prop.effects
        for node, effect in zip(call.outputs, effects)
    ]


@pytest.mark.parametrize("name", sorted(NETS))
def test_effects_reports_and_supports_are_those_of_every_rule(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    factory, shape = NETS[name]
    torch.manual_seed(0)
    model = factory().eval()
    graph = record(model, (1, *shape), CONSTANT_PACKETS)
    fast_prop = Propagation(graph, Options())
    fast = analyze(model, shape)
    with monkeypatch.context() as m:
        without_memo(m)
        slow_prop = Propagation(graph, Options())
        slow = analyze(model, shape)
    assert effects_text(fast_prop) == effects_text(slow_prop)
    assert fast.to_json() == slow.to_json()
    out_shape = fast.outputs[0].shape[2:]
    for index in itertools.product(*[sorted({0, n // 2, n - 1}) for n in out_shape]):
        assert (fast.support(index) == slow.support(index)).all()


def test_repeated_blocks_reuse_effects_and_a_repeated_tensor_is_told_apart() -> None:
    calls = []
    original = memo.EffectMemo.effects

    def counting(self, fn, call, layouts, shapes):
        calls.append(memo._key(call, layouts, shapes))
        return original(self, fn, call, layouts, shapes)

    graph = record(Swin(((4, 0), (4, 0), (4, 0))).eval(), (1, 2, 16, 16), CONSTANT_PACKETS)
    memo.EffectMemo.effects = counting
    try:
        Propagation(graph, Options())
    finally:
        memo.EffectMemo.effects = original
    assert len(set(calls)) < len(calls) * 0.6  # the blocks' calls share keys

    graph = record(SquareOrProduct().eval(), (1, 2, 9, 9))
    square, product = [c for c in graph.calls if c.packet == "aten.mul"]
    prop = Propagation(graph, Options())
    keys = [memo._key(c, prop.layouts, prop.shapes) for c in (square, product)]
    assert keys[0] != keys[1]
    deps = {
        c.outputs[0]: [d.source.node for d in e[0].deps] for c, e in prop.effects if c in (square, product)
    }
    assert len(set(deps[square.outputs[0]])) == 1 and len(set(deps[product.outputs[0]])) == 2


def test_floats_that_compare_equal_get_different_keys() -> None:
    graph = record(nn.Sequential(nn.Conv2d(2, 2, 1)).eval(), (1, 2, 4, 4))
    call = graph.calls[0]
    prop = Propagation(graph, Options())
    key = memo._key(call, prop.layouts, prop.shapes)
    call.args = {**call.args, "extra": -0.0}
    other = memo._key(call, prop.layouts, prop.shapes)
    call.args = {**call.args, "extra": 0.0}
    assert other != memo._key(call, prop.layouts, prop.shapes) and key is not None


def test_a_tensor_without_channels_reaches_no_pixel() -> None:
    """The one-input fast path of ``combine`` must not give an empty channel range a segment: a sum over zero
    channels is all zeros and reads nothing (review of the memo commit)."""
    import numpy as np
    from torch import nn

    from atrous.rf import analyze
    from oracle import gradient_support

    class Empty(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(2, 1, 3, padding=1)

        def forward(self, x):
            s = self.conv(x)
            return s.expand(1, 0, *s.shape[2:]).sum(1, keepdim=True)

    report = analyze(Empty(), (2, 6, 6))
    assert not report.support((3, 3)).any()
    assert np.array_equal(report.support((3, 3)), gradient_support(Empty(), (2, 6, 6), (3, 3)))
