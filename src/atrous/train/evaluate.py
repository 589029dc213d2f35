"""Validation: metrics of a model over a whole dataset, on any device."""

from __future__ import annotations

from typing import Any

import torch

from atrous.device import autocast
from atrous.train.batches import BatchStream, epoch_batches
from atrous.train.distributed import Dist
from atrous.train.metrics import SegmentationMetrics


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
) -> dict[str, Any]:
    """Metrics of ``model`` on ``dataset`` (this rank's share of the batches; torchmetrics syncs the matrix).
    The confusion matrix accumulates on the device; it is read once, at the end."""
    d = d or Dist()
    device = torch.device(device)
    stream = stream or BatchStream(dataset, device, workers)
    was_training = model.training
    model.eval()
    metrics = SegmentationMetrics(dataset.num_classes, getattr(dataset, "ignore_index", 255), device)
    batches = epoch_batches(len(dataset), batch_size, 0, 0, shuffle=False)[d.rank :: d.world]
    for x, y in stream(batches):
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device, precision):
            logits = model(x)
        metrics.update(logits.float(), y)
    model.train(was_training)
    return metrics.compute().to_json()
