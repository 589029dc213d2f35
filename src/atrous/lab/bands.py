"""Accuracy of a model on the pixels its receptive field can and cannot decide.

Whole-class IoU mixes pixels of very different needs: the centre of a small square is decided by a window
half the size its corners need (``SyntheticTask.need_map``). The theory's claim is per pixel: a model whose
RF is below a pixel's need cannot label it better than the class prior. So the claim is tested on exactly
those pixels: per size class, accuracy on the pixels whose need exceeds an RF (*ambiguous* for it) and on the
rest (*decidable*).

The model runs once over the validation split (:func:`tally`); the per-need counts it returns split at any RF
afterwards, so one model can be scored on the pixels ambiguous for several other models' RFs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from atrous.errors import SpecError
from atrous.train.config import TrainConfig
from atrous.train.metrics import hard_prediction
from atrous.train.setup import load_datasets


@dataclass
class NeedTally:
    """Validation pixels of each class by their needed RF: ``pixels[c, r]`` pixels of class ``c`` need RF
    ``r``, of which the model labelled ``correct[c, r]`` correctly."""

    class_names: list[str]
    pixels: np.ndarray  # (classes, max need + 1) int64
    correct: np.ndarray

    def band(self, c: int, ambiguous: np.ndarray) -> dict:
        """Counts and accuracy of class ``c`` over the needs selected by the boolean ``ambiguous`` (per r)."""
        pixels, correct = int(self.pixels[c, ambiguous].sum()), int(self.correct[c, ambiguous].sum())
        return {"pixels": pixels, "correct": correct, "accuracy": correct / pixels if pixels else None}

    def ambiguous_needs(self, rf: int | None) -> np.ndarray:
        """Which needs (column index) exceed ``rf``; a global RF (None) leaves nothing ambiguous."""
        needs = np.arange(self.pixels.shape[1])
        return needs > rf if rf is not None else np.zeros_like(needs, dtype=bool)

    def bands(self, rf: int | None) -> list[dict]:
        """Per object class (c >= 1): ``ambiguous`` (need > rf) and ``decidable`` (need <= rf) counts."""
        amb = self.ambiguous_needs(rf)
        return [
            {"class": self.class_names[c], "ambiguous": self.band(c, amb), "decidable": self.band(c, ~amb)}
            for c in range(1, len(self.class_names))
        ]

    def between(self, low: int, high: int | None) -> dict:
        """Counts and accuracy over the object pixels (every class c >= 1) whose need lies in (low, high]: the
        pixels a model of RF ``high`` can decide and one of RF ``low`` cannot (high None: a global RF)."""
        needs = np.arange(self.pixels.shape[1])
        band = (needs > low) & (needs <= high if high is not None else True)
        pixels, correct = int(self.pixels[1:, band].sum()), int(self.correct[1:, band].sum())
        return {"pixels": pixels, "correct": correct, "accuracy": correct / pixels if pixels else None}

    def ambiguous(self, threshold_rf: int | None) -> list[float | None]:
        """Per object class: accuracy on its pixels whose need exceeds ``threshold_rf`` (None: no such pixel)."""
        return [b["ambiguous"]["accuracy"] for b in self.bands(threshold_rf)]


def validation_set(data: str, seed: int):
    """The validation split a training run of ``data`` with ``seed`` evaluates on, built by the same code
    (for a synthetic spec without ``seed=``, the run's seed selects the split's samples)."""
    return load_datasets(TrainConfig(model="", data=data, seed=seed))[1]


def need_counts(data: str, seed: int = 0) -> np.ndarray:
    """``pixels[c, r]``: how many validation pixels of class ``c`` need RF ``r`` (the split a run of ``data``
    with ``seed`` evaluates on). Known before any model trains: what the theory can say in advance."""
    ds = validation_set(data, seed)
    width = 2 * max(ds.extents) + 2  # needs are odd and at most 2 e + 1 (need_block)
    pixels = np.zeros((ds.num_classes, width), dtype=np.int64)
    for i in range(len(ds)):
        cell = (ds[i][1].numpy() * width + ds.need_map(i)).ravel()
        pixels += np.bincount(cell, minlength=ds.num_classes * width).reshape(ds.num_classes, width)
    return pixels


def iou_loss_bound(pixels: np.ndarray, c: int, rf: int) -> float:
    """The most a model of RF ``rf`` can lose in IoU of class ``c`` against a perfect one, if it labels every
    pixel it can decide correctly (``pixels`` from ``need_counts``): it misses at most the class's ``m`` pixels
    whose need exceeds its RF and labels as ``c`` at most the ``f`` such pixels of the other object classes, so
    its IoU is at least (N - m) / (N + f) for the class's N pixels."""
    beyond = np.arange(pixels.shape[1]) > rf
    n, m = int(pixels[c].sum()), int(pixels[c, beyond].sum())
    f = int(pixels[1:, beyond].sum()) - (m if c >= 1 else 0)
    return (m + f) / (n + f) if n + f else 0.0


def iou_floors(pixels: np.ndarray, rf: int | None) -> tuple[float | None, ...]:
    """Per class (background included): the IoU that a model of RF ``rf`` (None: global) reaches at least if it
    labels every pixel it can decide correctly, whatever it does with the rest (``iou_loss_bound``); None for a
    class with no pixel (its IoU is not measured either)."""
    return tuple(
        None if not pixels[c].any() else 1.0 if rf is None else 1 - iou_loss_bound(pixels, c, rf)
        for c in range(pixels.shape[0])
    )


@torch.no_grad()
def tally(model: torch.nn.Module, data: str, seed: int = 0, batch_size: int = 32) -> NeedTally:
    """Run ``model`` (eval mode, on the device of its parameters: the CPU for ``atrous.train.inference.load``)
    over the validation split of ``data`` as trained with ``seed``; count its correct pixels by class and need."""
    ds = validation_set(data, seed)
    if not hasattr(ds, "need_map"):
        raise SpecError(
            f"{data!r}: per-pixel needs exist only for the scale and multiscale tasks (of squares)"
        )
    ds.need_map(0)  # refuses, before the model runs, tasks without per-pixel needs (shapes, discs)
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    was_training = model.training
    model.eval()
    classes = ds.num_classes
    width = 2 * max(ds.extents) + 2  # needs are odd and at most 2 e + 1 (need_block)
    pixels = np.zeros((classes, width), dtype=np.int64)
    correct = np.zeros((classes, width), dtype=np.int64)
    try:
        for start in range(0, len(ds), batch_size):
            indices = range(start, min(start + batch_size, len(ds)))
            items = [ds[i] for i in indices]
            x = torch.stack([im for im, _ in items]).to(device)
            y = torch.stack([m for _, m in items]).numpy()
            pred = hard_prediction(model(x).float()).cpu().numpy()
            if pred.shape != y.shape:
                raise ValueError(f"model predicts {pred.shape[1:]} maps for {y.shape[1:]} masks")
            need = np.stack([ds.need_map(i) for i in indices])
            # One flat bincount over (class, need) for all pixels, and one over the correct ones.
            cell = (y * width + need).ravel()
            pixels += np.bincount(cell, minlength=classes * width).reshape(classes, width)
            correct += np.bincount(cell[(pred == y).ravel()], minlength=classes * width).reshape(
                classes, width
            )
    finally:
        model.train(was_training)
    return NeedTally(list(ds.class_names), pixels, correct)


def band_accuracy(
    model: torch.nn.Module, data: str, rf: int | None, batch_size: int = 32, seed: int = 0
) -> list[dict]:
    """Per object class c >= 1 of ``data``'s validation split (as trained with ``seed``):
    ``{"class": name, "ambiguous": {"pixels", "correct", "accuracy"}, "decidable": {...}}``, ambiguous = the
    class's pixels whose need exceeds ``rf`` (None, a global RF: none), decidable = the rest. Accuracy is
    None for an empty band."""
    return tally(model, data, seed, batch_size).bands(rf)


def ambiguous_accuracy(
    model: torch.nn.Module, data: str, threshold_rf: int | None, batch_size: int = 32, seed: int = 0
) -> list[float | None]:
    """Per object class c >= 1: ``model``'s accuracy on the class's validation pixels whose need exceeds
    ``threshold_rf`` (e.g. another model's RF); None where there is no such pixel."""
    return tally(model, data, seed, batch_size).ambiguous(threshold_rf)
