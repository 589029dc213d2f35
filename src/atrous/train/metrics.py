"""Segmentation metrics on hard predictions, from a confusion matrix accumulated over the whole dataset.

torchmetrics accumulates the confusion matrix (and synchronises it across DDP ranks); IoU, Dice and accuracy
are derived from it, so they are dataset-level ("micro over pixels per class"), not averages of per-image
scores. Empty-class policy: a class with no pixel in the target and none predicted over the whole dataset has
no IoU/Dice (None) and is left out of the means.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torchmetrics.classification import MulticlassConfusionMatrix

AGGREGATION = "dataset-level confusion matrix; classes absent from both target and prediction excluded"


def hard_prediction(logits: torch.Tensor) -> torch.Tensor:
    """Argmax over classes, or the sign of the single logit of a binary model."""
    return (logits[:, 0] > 0).long() if logits.shape[1] == 1 else logits.argmax(1)


@dataclass
class Scores:
    iou: list[float | None]
    dice: list[float | None]
    pixel_accuracy: float
    mean_iou: float
    mean_dice: float
    foreground_dice: float | None  # Dice of class 1 in a binary task (the seed's number), else None

    def to_json(self) -> dict:
        return {
            "miou": self.mean_iou,
            "mdice": self.mean_dice,
            "pixel_acc": self.pixel_accuracy,
            "iou": self.iou,
            "dice": self.dice,
            "fg_dice": self.foreground_dice,
            "aggregation": AGGREGATION,
        }


def scores_from_confusion(cm: torch.Tensor) -> Scores:
    cm = cm.double()
    tp = cm.diag()
    fp = cm.sum(0) - tp
    fn = cm.sum(1) - tp
    present = (tp + fp + fn) > 0
    iou = torch.where(present, tp / (tp + fp + fn).clamp(min=1), torch.nan)
    dice = torch.where(present, 2 * tp / (2 * tp + fp + fn).clamp(min=1), torch.nan)

    def as_list(x: torch.Tensor) -> list[float | None]:
        return [None if v != v else float(v) for v in x.tolist()]

    fg = float(dice[1]) if cm.shape[0] == 2 and present[1] else None
    return Scores(
        iou=as_list(iou),
        dice=as_list(dice),
        pixel_accuracy=float(tp.sum() / cm.sum().clamp(min=1)),
        mean_iou=float(iou[present].mean()) if present.any() else 0.0,
        mean_dice=float(dice[present].mean()) if present.any() else 0.0,
        foreground_dice=fg,
    )


class SegmentationMetrics:
    def __init__(self, num_classes: int, ignore_index: int = 255, device: torch.device | str = "cpu") -> None:
        self.num_classes = max(num_classes, 2)  # a 1-output binary model predicts two classes
        self.cm = MulticlassConfusionMatrix(self.num_classes, ignore_index=ignore_index, validate_args=False)
        self.cm = self.cm.to(device)

    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        self.cm.update(hard_prediction(logits), target)

    def compute(self) -> Scores:
        return scores_from_confusion(self.cm.compute())

    def reset(self) -> None:
        self.cm.reset()
