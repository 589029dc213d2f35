"""FLOPs and parameter counts, measured on shape-only tensors (nothing of input size is allocated).

Two counts of a convolution's work:

* **nominal** (PyTorch's ``FlopCounterMode``): every kernel tap at every output pixel, as papers count;
* **effective**: only taps that land inside the input. A dilated 3x3 conv with rate 24 on an 8x8 feature map
  reads zero padding with 8 of its 9 taps, and CPU/GPU kernels skip that work, so throughput divided by nominal
  FLOPs can exceed the hardware peak. MFU (``atrous bench``) is computed from effective FLOPs.
"""

from __future__ import annotations

from collections.abc import Sequence
from math import prod

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count

aten = torch.ops.aten


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def valid_taps(n_in: int, n_out: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    """Sum over output positions of the kernel taps that read an input position (not padding)."""
    return sum(
        sum(1 for j in range(kernel) if 0 <= u * stride - padding + dilation * j < n_in) for u in range(n_out)
    )


def effective_conv_flop(
    x_shape, w_shape, _bias, stride, padding, dilation, transposed, *args, out_shape=None, **kwargs
) -> int:
    if transposed:  # scatter form: every input tap writes an output; cropping by padding is rare, count all
        return conv_flop_count(x_shape, w_shape, out_shape, transposed=True)
    spatial = len(w_shape) - 2
    taps = prod(
        valid_taps(x_shape[2 + i], out_shape[2 + i], w_shape[2 + i], stride[i], padding[i], dilation[i])
        for i in range(spatial)
    )
    return 2 * x_shape[0] * w_shape[0] * w_shape[1] * taps


def effective_conv_backward_flop(
    grad_out_shape,
    x_shape,
    w_shape,
    _bias,
    stride,
    padding,
    dilation,
    transposed,
    _output_padding,
    _groups,
    output_mask,
    out_shape=None,
) -> int:
    # grad_input and grad_weight each redo the forward's valid multiply-adds.
    forward = effective_conv_flop(
        x_shape, w_shape, _bias, stride, padding, dilation, transposed, out_shape=grad_out_shape
    )
    return forward * (int(output_mask[0]) + int(output_mask[1]))


EFFECTIVE = {
    aten.convolution: effective_conv_flop,
    aten._convolution: effective_conv_flop,
    aten.convolution_backward: effective_conv_backward_flop,
}


def counter(effective: bool = False) -> FlopCounterMode:
    return FlopCounterMode(display=False, custom_mapping=EFFECTIVE if effective else None)


def count_flops(model: nn.Module, input_shape: Sequence[int], batch: int = 1, effective: bool = False) -> int:
    """Forward FLOPs for one batch of ``(batch, *input_shape)`` (a multiply-add is two FLOPs; elementwise ops
    are not counted). ``effective`` leaves out convolution taps that read padding."""
    was_training = model.training
    model.eval()
    try:
        with FakeTensorMode(allow_non_fake_inputs=True):
            x = torch.empty(batch, *input_shape)
            with torch.no_grad(), counter(effective) as c:
                model(x)
    finally:
        model.train(was_training)
    return int(c.get_total_flops())
