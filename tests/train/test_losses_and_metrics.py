"""Losses and metrics against values computed by hand (the arithmetic is in the comments)."""

from __future__ import annotations

import math

import pytest
import torch

from atrous.train.losses import bce_loss, cross_entropy_loss, make_loss, soft_dice_loss
from atrous.train.metrics import SegmentationMetrics, scores_from_confusion

LN = math.log


def binary_case() -> tuple[torch.Tensor, torch.Tensor]:
    # sigmoid -> probabilities [[0.5, 0.75], [0.25, 0.5]]; target [[1, 1], [0, 0]]
    logits = torch.tensor([[[[0.0, LN(3)], [-LN(3), 0.0]]]])
    return logits, torch.tensor([[[1, 1], [0, 0]]])


def test_binary_soft_dice() -> None:
    logits, target = binary_case()
    # intersection 0.5 + 0.75 = 1.25; sum p = 2.0; sum g = 2: (2.5 + 1) / (4 + 1) = 0.7
    assert soft_dice_loss(logits, target).item() == pytest.approx(1 - 0.7)
    target[0, 1, 1] = 255  # ignore the p = 0.5 pixel: sum p = 1.5 -> 3.5 / 4.5
    assert soft_dice_loss(logits, target).item() == pytest.approx(1 - 3.5 / 4.5)


def multiclass_case() -> tuple[torch.Tensor, torch.Tensor]:
    # two 1x1 images: softmax -> [0.25, 0.5, 0.25] (target 1) and [0.6, 0.2, 0.2] (target 0)
    logits = torch.tensor([[LN(1), LN(2), LN(1)], [LN(3), 0.0, 0.0]]).view(2, 3, 1, 1)
    return logits, torch.tensor([1, 0]).view(2, 1, 1)


def test_multiclass_soft_dice_per_batch_and_per_image() -> None:
    logits, target = multiclass_case()
    # per batch: class 0 (1.2 + 1) / (1.85 + 1), class 1 (1 + 1) / (1.7 + 1), class 2 1 / 1.45
    batch = (2.2 / 2.85 + 2 / 2.7 + 1 / 1.45) / 3
    assert soft_dice_loss(logits, target).item() == pytest.approx(1 - batch)
    # per image: image 1 scores 1/1.25, 2/2.5, 1/1.25 (all 0.8); image 2 2.2/2.6, 1/1.2, 1/1.2
    image = (0.8 + (2.2 / 2.6 + 1 / 1.2 + 1 / 1.2) / 3) / 2
    assert soft_dice_loss(logits, target, per_image=True).item() == pytest.approx(1 - image)


def test_cross_entropy_with_ignore_and_bce() -> None:
    logits, target = multiclass_case()
    assert cross_entropy_loss(logits, target).item() == pytest.approx(-(LN(0.5) + LN(0.6)) / 2)
    target[1] = 255
    assert cross_entropy_loss(logits, target).item() == pytest.approx(-LN(0.5))
    b_logits, b_target = binary_case()
    # per pixel -log p(correct): -ln 0.5, -ln 0.75, -ln 0.75, -ln 0.5
    assert bce_loss(b_logits, b_target).item() == pytest.approx(-(2 * LN(0.5) + 2 * LN(0.75)) / 4)
    assert make_loss("dice+ce", 3)(logits, target).item() == pytest.approx(
        soft_dice_loss(logits, target).item() + cross_entropy_loss(logits, target).item()
    )


def test_metrics_from_a_hand_made_confusion() -> None:
    # 3 classes; class 2 never appears in target or prediction.
    pred = torch.tensor([[[0, 0, 1, 1], [0, 1, 1, 1]]])
    target = torch.tensor([[[0, 0, 0, 1], [0, 1, 1, 255]]])
    m = SegmentationMetrics(3)
    m.update(torch.nn.functional.one_hot(pred, 3).permute(0, 3, 1, 2).float(), target)
    s = m.compute()
    # class 0: tp 3, fp 0, fn 1 -> IoU 3/4, Dice 6/7; class 1: tp 3, fp 1, fn 0 -> IoU 3/4, Dice 6/7
    assert s.iou == pytest.approx([0.75, 0.75, None]) and s.dice[:2] == pytest.approx([6 / 7, 6 / 7])
    assert s.mean_iou == pytest.approx(0.75) and s.pixel_accuracy == pytest.approx(6 / 7)
    assert s.dice[2] is None  # absent from both: excluded, not 0 or 1


def test_binary_single_logit_metrics() -> None:
    scores = scores_from_confusion(torch.tensor([[5, 1], [2, 8]]))
    assert scores.foreground_dice == pytest.approx(16 / 19)
