"""FLOPs and parameter counts, measured on shape-only tensors (nothing of input size is allocated)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def count_flops(model: nn.Module, input_shape: Sequence[int], batch: int = 1) -> int:
    """Forward FLOPs for one batch of ``(batch, *input_shape)`` as counted by PyTorch's FlopCounterMode
    (a multiply-add is two FLOPs; elementwise ops are not counted)."""
    was_training = model.training
    model.eval()
    try:
        with FakeTensorMode(allow_non_fake_inputs=True):
            x = torch.empty(batch, *input_shape)
            with torch.no_grad(), FlopCounterMode(display=False) as counter:
                model(x)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())
