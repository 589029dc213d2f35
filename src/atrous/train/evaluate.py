"""Validation: metrics of a model over a whole dataset, on any device."""

from __future__ import annotations

from typing import Any

import torch

from atrous.device import autocast
from atrous.train.batches import BatchStream, epoch_batches
from atrous.train.distributed import Dist
from atrous.train.metrics import SegmentationMetrics
from atrous.train.tiling import TilePlan, plan_tiles, tiled_logits


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    dataset,
    batch_size: int,
    device: torch.device | str = "cpu",
    d: Dist | None = None,
    channels_last: bool = False,
    workers: int = 0,
    precision: str = "fp32",
    stream: BatchStream | None = None,
    tile: int | str | None = None,
) -> dict[str, Any]:
    """Metrics of ``model`` on ``dataset`` (this rank's share of the batches; torchmetrics syncs the matrix).
    The confusion matrix accumulates on the device; it is read once, at the end. ``tile`` (pixels or "auto")
    runs each image through the exact tiler of ``atrous predict``, for validation images too large for one
    pass: the same logits as whole-image inference (see :mod:`atrous.train.tiling`)."""
    d = d or Dist()
    device = torch.device(device)
    stream = stream or BatchStream(dataset, device, workers)
    was_training = model.training
    model.eval()
    metrics = SegmentationMetrics(dataset.num_classes, getattr(dataset, "ignore_index", 255), device)
    plans: dict[tuple[int, ...], TilePlan] = {}
    batches = epoch_batches(len(dataset), batch_size, 0, 0, shuffle=False)[d.rank :: d.world]
    for x, y in stream(batches):
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device, precision):
            logits = model(x) if tile is None else _tiled(model, x, tile, plans)
        metrics.update(logits.float(), y)
    model.train(was_training)
    return metrics.compute().to_json()


def _tiled(model: torch.nn.Module, x: torch.Tensor, tile: int | str, plans: dict) -> torch.Tensor:
    """Logits of a batch, image by image through the exact tiler (one plan per image size)."""
    shape = tuple(x.shape[1:])
    if shape not in plans:
        plans[shape] = plan_tiles(model, shape[1:], shape[0], tile)
    return torch.stack([tiled_logits(model, image, plans[shape]) for image in x]).to(x.device)
