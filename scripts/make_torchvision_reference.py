"""Record torchvision's ResNets and DeepLabv3s as a reference file, so that `make test` checks our models'
parity with them without torchvision (no CPU build of it matches the pinned torch):

    .venv-zoo/bin/python scripts/make_torchvision_reference.py

writes tests/fixtures/torchvision_reference.safetensors (about 0.3 MB). For each model the file holds its
state_dict names, shapes and dtypes, and its outputs (all logits for a classifier; per-class mean and std plus a
strided sample of pixels for a segmenter) on a fixed input, with every state_dict tensor filled by :func:`fill_`:
a pure function of the tensor's name and shape, so that a model with the same names and shapes is filled with
the same values without torchvision's weights. The test (tests/models/test_architectures.py) imports this file
for :func:`fill_`, :func:`make_input` and ``MODELS``.
"""

from __future__ import annotations

import datetime
import hashlib
import importlib
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

OUT = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "torchvision_reference.safetensors"

# name -> (torchvision builder, its kwargs, our zoo name, its kwargs, input shape). Classifiers see a small odd
# input. The segmenters see a tall one: 297 rows give a 38-row map at output stride 8, so that even the rate-36
# ASPP branch reads real pixels (at 64x64 every tap but the centre of the rate-12/24/36 branches reads padding,
# and a wrong rate would go unseen); 33 columns keep the cost down and the sizes odd.
SEGMENTER_INPUT = (1, 3, 297, 33)
MODELS: dict[str, tuple[str, dict, str, dict, tuple[int, ...]]] = {
    **{
        f"resnet{d}": (
            f"torchvision.models:resnet{d}",
            {"weights": None},
            f"resnet{d}",
            {"num_classes": 1000},
            (1, 3, 67, 93),
        )
        for d in (18, 34, 50, 101)
    },
    **{
        f"deeplabv3_resnet{d}": (
            f"torchvision.models.segmentation:deeplabv3_resnet{d}",
            {"weights": None, "weights_backbone": None, "num_classes": 21, "aux_loss": True},
            f"deeplabv3_resnet{d}",
            {"num_classes": 21, "aux_loss": True},
            SEGMENTER_INPUT,
        )
        for d in (50, 101)
    },
}
# Segmenter logits are sampled every ROW_STEP rows and COL_STEP columns (the full maps would be ~3 MB): steps
# below the output stride 8, so every cell of the stride-8 map reaches some sampled pixel.
ROW_STEP, COL_STEP = 7, 3


def _uniform(key: str, shape: tuple[int, ...]) -> np.ndarray:
    """Uniform [0, 1) values, a pure function of ``key`` and ``shape``: PCG64's stream and ``random()`` are
    stable across numpy versions, unlike torch's generators across torch versions."""
    seed = int.from_bytes(hashlib.sha256(f"{key}:{tuple(shape)}".encode()).digest()[:8], "little")
    return np.random.Generator(np.random.PCG64(seed)).random(math.prod(shape)).reshape(shape)


def fill_values(name: str, shape: tuple[int, ...]) -> np.ndarray:
    """The value of state_dict entry ``name`` of ``shape``, by kind (float64; cast by the caller).

    Convolution and linear weights: uniform with variance 2 / fan_in (He), so activations keep their scale
    through a ReLU network; biases in [-0.1, 0.1). BatchNorm: running_var log-uniform in [0.01, 1), so that eps
    matters (1e-3 instead of 1e-5 in the one norm of the ASPP's pooling branch moves the logits by 1.5e-3 of
    their scale); running_mean in [-0.2, 0.2); the scale is sqrt(running_var) times [0.2, 0.6), so that a norm
    shrinks what it passes on and 33 residual blocks do not blow up. Nothing is zero or one, so a swapped or
    skipped tensor changes the outputs.
    """
    u = _uniform(name, shape)
    prefix, leaf = name.rsplit(".", 1) if "." in name else ("", name)
    if leaf == "running_var":
        return 10 ** (2 * u - 2)
    if leaf == "running_mean":
        return 0.4 * u - 0.2
    if leaf == "bias":
        return 0.2 * u - 0.1
    if leaf == "weight" and len(shape) == 1:  # a norm's scale
        return np.sqrt(fill_values(f"{prefix}.running_var", shape)) * (0.2 + 0.4 * u)
    if leaf == "weight":
        fan_in = math.prod(shape[1:])
        return (2 * u - 1) * math.sqrt(6 / fan_in)
    raise ValueError(f"no fill rule for state_dict entry {name!r} of shape {shape}")


@torch.no_grad()
def fill_(model: nn.Module) -> float:
    """Fill every floating-point state_dict tensor of ``model`` by :func:`fill_values`; returns the sum of
    |values| in float64, which the reference stores so that a drifting rule is told apart from a parity error."""
    total = 0.0
    for name, tensor in model.state_dict().items():  # tensors share storage with the parameters and buffers
        if not tensor.is_floating_point():
            continue  # num_batches_tracked: unused in eval mode
        values = fill_values(name, tuple(tensor.shape))
        tensor.copy_(torch.from_numpy(values))
        total += float(np.abs(values.astype(np.float32)).sum(dtype=np.float64))
    return total


def make_input(shape: tuple[int, ...]) -> torch.Tensor:
    """The fixed input: uniform in [-1, 1), like a normalised image."""
    return torch.from_numpy(2 * _uniform("input", shape) - 1).float()


def segmenter_record(prefix: str, logits: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-class mean and std over all pixels (float64, then float32) and a strided sample of the logits."""
    flat = logits.double().flatten(2)
    return {
        f"{prefix}/mean": flat.mean(2).float(),
        f"{prefix}/std": flat.std(2).float(),
        f"{prefix}/sample": logits[:, :, ::ROW_STEP, ::COL_STEP].contiguous(),
    }


def entries(model: nn.Module) -> list[list]:
    """[name, shape, dtype] of every state_dict entry, in order."""
    return [[k, list(v.shape), str(v.dtype)] for k, v in model.state_dict().items()]


def build_torchvision(name: str) -> nn.Module:
    path, kwargs = MODELS[name][:2]
    module, func = path.split(":")
    return getattr(importlib.import_module(module), func)(**kwargs)


def main() -> None:
    import torchvision

    tensors: dict[str, torch.Tensor] = {}
    meta: dict[str, dict] = {}
    for name in MODELS:
        model = build_torchvision(name).eval()
        checksum = fill_(model)
        shape = MODELS[name][4]
        with torch.no_grad():
            out = model(make_input(shape))
        if isinstance(out, dict):  # torchvision's segmenters: {"out": ..., "aux": ...}
            for key, logits in out.items():
                tensors.update(segmenter_record(f"{name}/{key}", logits))
            outputs = sorted(out)
        else:
            tensors[f"{name}/logits"] = out.contiguous()
            outputs = ["logits"]
        meta[name] = {
            "state_dict": entries(model),
            "fill_checksum": checksum,
            "input_shape": list(shape),
            "outputs": outputs,
        }
        print(f"{name}: {len(meta[name]['state_dict'])} entries, outputs {outputs}", file=sys.stderr)
    from safetensors.torch import save_file

    OUT.parent.mkdir(parents=True, exist_ok=True)
    info = {
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": np.__version__,
        "date": datetime.date.today().isoformat(),
        "row_step": ROW_STEP,
        "col_step": COL_STEP,
    }
    tmp = OUT.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata={"info": json.dumps(info), "models": json.dumps(meta)})
    tmp.replace(OUT)  # atomic
    print(f"wrote {OUT} ({OUT.stat().st_size:,} bytes) with {info}", file=sys.stderr)


if __name__ == "__main__":
    main()
