"""An independent receptive-field oracle: gradient support of one output pixel.

Every weight is set to a positive constant (1 / fan-in, so values stay finite), max pooling is replaced by
average pooling over the same windows, BatchNorm is replaced by the identity; inputs are positive. Then every path from
an input pixel to the chosen output pixel carries a strictly positive product, nothing cancels, and the input
pixels with a nonzero gradient are exactly the pixels that reach the output. It shares no code with the engine.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class _MaxAsAvg(nn.Module):
    """Average (sum) pooling over exactly the windows of a max pooling, dilation included."""

    def __init__(self, pool: nn.Module, dim: int) -> None:
        super().__init__()
        self.pool, self.dim = pool, dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.pool
        k = p.kernel_size
        dil = p.dilation if isinstance(p.dilation, tuple) else (p.dilation,) * self.dim
        if all(d == 1 for d in dil):
            avg = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[self.dim]
            return avg(x, k, p.stride, p.padding, p.ceil_mode, count_include_pad=False)
        if p.ceil_mode:
            raise NotImplementedError("the oracle has no dilated ceil-mode pooling")
        conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[self.dim]
        ks = k if isinstance(k, tuple) else (k,) * self.dim
        weight = torch.ones(x.shape[1], 1, *ks, dtype=x.dtype)
        return conv(x, weight, None, p.stride, p.padding, p.dilation, groups=x.shape[1])


def positive_copy(model: nn.Module, generator: torch.Generator | None = None) -> nn.Module:
    """The oracle's copy of ``model``. With a ``generator``, every parameter is then redrawn positive and
    distinct, ``(0.5 + U[0, 1)) / fan-in``: constant weights make the channels equal, and a LayerNorm of equal
    channels is exactly 0, which cuts every gradient through it (attention models need this variant)."""
    model = copy.deepcopy(model).double().eval()
    for name, module in list(model.named_modules()):
        if isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)):
            with torch.no_grad():
                module.weight.fill_(1.0 / module.weight[0].numel())
                if module.bias is not None:
                    module.bias.zero_()
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            # The identity (eval-mode BatchNorm with unit statistics and eps = 0, which PyTorch < 2.13 refuses).
            _replace(model, name, nn.Identity())
        elif isinstance(module, (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)):
            dim = {nn.MaxPool1d: 1, nn.MaxPool2d: 2, nn.MaxPool3d: 3}[type(module)]
            _replace(model, name, _MaxAsAvg(module, dim))
    if generator is not None:
        with torch.no_grad():
            for p in model.parameters():
                fan_in = p[0].numel() if p.dim() > 1 else 1
                p.copy_((torch.rand(p.shape, generator=generator, dtype=p.dtype) + 0.5) / fan_in)
    return model


def _replace(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


def _pick(out: object, output: str | None) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, dict):
        return out[output] if output else next(iter(out.values()))
    if isinstance(out, (tuple, list)):
        return out[int(output.strip("[]")) if output else 0]
    raise TypeError(type(out))


def gradient_support(
    model: nn.Module,
    input_shape: Sequence[int],
    index: Sequence[int],
    output: str | None = None,
    seed: int = 0,
    random_weights: bool = False,
    inputs: int = 1,
) -> np.ndarray:
    """Boolean array over the input's spatial shape: pixels whose gradient at output ``index`` is nonzero.

    ``random_weights`` draws distinct positive weights (see :func:`positive_copy`); softmax and normalisation
    Jacobians have both signs, so a gradient can vanish at one input by accident: the support is the union
    over ``inputs`` random inputs."""
    gen = torch.Generator().manual_seed(seed)
    model = positive_copy(model, gen if random_weights else None)
    found = np.zeros(input_shape[1:], dtype=bool)
    for _ in range(inputs):
        x = (torch.rand(1, *input_shape, generator=gen, dtype=torch.float64) + 0.5).requires_grad_(True)
        y = _pick(model(x), output)
        y[(0, slice(None), *index)].sum().backward()
        found |= (x.grad[0].abs().sum(0) > 0).numpy()
    return found
