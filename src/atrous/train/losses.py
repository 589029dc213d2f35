"""Losses from logits: soft Dice (binary or multiclass, per image or per batch), cross-entropy with
ignore_index, binary cross-entropy, and Dice + CE.

Losses work on probabilities (softmax / sigmoid); metrics (``metrics.py``) on hard predictions. Pixels equal to
``ignore_index`` contribute to no term. Binary models have one output channel (probability of the foreground);
multiclass models one channel per class.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from atrous.errors import OptionError, option


def _probs_and_onehot(logits: torch.Tensor, target: torch.Tensor, ignore_index: int):
    """(probabilities (N, K, H, W), one-hot target (N, K, H, W), valid mask (N, 1, H, W))."""
    valid = (target != ignore_index).unsqueeze(1)
    safe = torch.where(valid.squeeze(1), target, torch.zeros_like(target))
    if logits.shape[1] == 1:  # binary: foreground channel only
        probs = torch.sigmoid(logits)
        onehot = (safe == 1).unsqueeze(1).to(probs.dtype)
    else:
        probs = torch.softmax(logits, dim=1)
        onehot = F.one_hot(safe, logits.shape[1]).permute(0, 3, 1, 2).to(probs.dtype)
    return probs, onehot, valid.to(probs.dtype)


def soft_dice_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    per_image: bool = False,
    ignore_index: int = 255,
    smooth: float = 1.0,
) -> torch.Tensor:
    """``1 - mean_c (2 sum p g + smooth) / (sum p + sum g + smooth)``.

    Sums run over the pixels of the whole batch (``per_image=False``) or of each image, averaged afterwards
    (``per_image=True``); the mean runs over classes (the foreground only for a binary model). A class absent
    from both prediction and target scores ``smooth / smooth = 1`` rather than 0/0.
    """
    probs, onehot, valid = _probs_and_onehot(logits, target, ignore_index)
    probs, onehot = probs * valid, onehot * valid
    dims = (2, 3) if per_image else (0, 2, 3)
    inter = (probs * onehot).sum(dims)
    denom = probs.sum(dims) + onehot.sum(dims)
    dice = (2 * inter + smooth) / (denom + smooth)
    return 1 - dice.mean()


def cross_entropy_loss(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = 255) -> torch.Tensor:
    if logits.shape[1] == 1:
        return bce_loss(logits, target, ignore_index)
    return F.cross_entropy(logits, target, ignore_index=ignore_index)


def bce_loss(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = 255) -> torch.Tensor:
    """Binary cross-entropy on the foreground channel; for a 2-channel model, on the class-1 logit margin."""
    valid = target != ignore_index
    fg = logits[:, 0] if logits.shape[1] == 1 else logits[:, 1] - logits[:, 0]
    per_pixel = F.binary_cross_entropy_with_logits(fg, (target == 1).to(fg.dtype), reduction="none")
    return (per_pixel * valid).sum() / valid.sum().clamp(min=1)


def make_loss(
    name: str, num_outputs: int, per_image_dice: bool = False, ignore_index: int = 255
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``dice``, ``ce``, ``bce`` or ``dice+ce``."""
    if name == "bce" and num_outputs > 2:
        raise OptionError(
            f"{option('loss')} bce needs a binary model (1 or 2 outputs), this one has {num_outputs} classes"
        )

    def dice(lg: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return soft_dice_loss(lg, t, per_image_dice, ignore_index)

    def ce(lg: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return cross_entropy_loss(lg, t, ignore_index)

    table = {
        "dice": dice,
        "ce": ce,
        "bce": lambda lg, t: bce_loss(lg, t, ignore_index),
        "dice+ce": lambda lg, t: dice(lg, t) + ce(lg, t),
    }
    if name not in table:
        raise OptionError(f"unknown {option('loss')} {name!r}; use one of {', '.join(table)}")
    return table[name]
