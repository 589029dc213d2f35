"""A training loss that turns non-finite from a given call on: how the tests make a run diverge."""

from __future__ import annotations

import pytest

from atrous.train import loop


def poison_loss(monkeypatch: pytest.MonkeyPatch, from_call: int, factor: float) -> None:
    """From the ``from_call``-th loss evaluation on, the training loss is multiplied by ``factor`` (nan, inf)."""
    real = loop.make_loss

    def poisoned(*args, **kwargs):
        inner, calls = real(*args, **kwargs), {"n": 0}

        def loss(logits, target):
            calls["n"] += 1
            value = inner(logits, target)
            return value * factor if calls["n"] >= from_call else value

        return loss

    monkeypatch.setattr(loop, "make_loss", poisoned)
