"""Which device a command runs on, and whether the options asked for can run there. Messages name the
parameter (device, precision, compile), which is also the CLI's flag.

Every command takes ``--device auto|cpu|cuda[:N]`` and resolves it here, before it writes anything, so that a
request the machine cannot honour (a GPU index it does not have, bf16 on a GPU without it, ``torch.compile``
without its compiler) is one line naming the problem and the fix, exit 2, and no run directory left behind.
"""

from __future__ import annotations

import contextlib
import shutil

import torch

from atrous.errors import AtrousError


class DeviceError(AtrousError):
    """A device, precision or compilation request this machine cannot honour."""


def resolve_device(name: str | torch.device = "auto", local_rank: int = 0) -> torch.device:
    """``auto`` is CUDA when a GPU is present (the rank's own GPU under torchrun), else the CPU."""
    name = str(name)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if not name.startswith("cuda"):
        raise DeviceError(f"device {name!r}: use auto, cpu or cuda[:N]")
    if not torch.cuda.is_available():
        raise DeviceError(f"device {name}: no CUDA GPU is available on this machine; use the cpu device")
    index_text = name.partition(":")[2]
    if index_text and not index_text.isdigit():
        raise DeviceError(f"device {name!r}: the GPU index must be a number, e.g. cuda:0")
    index = int(index_text) if index_text else local_rank
    count = torch.cuda.device_count()
    if index >= count:
        raise DeviceError(
            f"device {name}: this machine has {count} GPU(s), cuda:0 to cuda:{count - 1}; pick one of those"
        )
    return torch.device("cuda", index)


def check_precision(precision: str, device: torch.device) -> None:
    """bf16 autocast needs a GPU with bf16 (Ampere or newer); on a CPU it runs, slowly, on most machines."""
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        name = torch.cuda.get_device_name(device)
        raise DeviceError(f"precision bf16: {name} has no bf16 support; use fp32")


def compile_unavailable(device: torch.device) -> str | None:
    """Why ``torch.compile`` (inductor) cannot run for ``device``, or None when it can."""
    if not torch._dynamo.is_dynamo_supported():
        return "torch.compile does not support this Python version"
    if device.type == "cuda":
        from torch.utils._triton import has_triton

        if not has_triton():
            return "torch.compile on a GPU needs triton (pip install triton)"
        return None
    if shutil.which("c++") is None and shutil.which("g++") is None:
        return "torch.compile on a CPU needs a C++ compiler (apt-get install g++)"
    return None


def check_compile(device: torch.device) -> None:
    reason = compile_unavailable(device)
    if reason is not None:
        raise DeviceError(f"compile: {reason}; or train without compiling")


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work: only for timing and at log points, never per step."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision != "bf16":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def available_devices() -> list[str]:
    """Devices present on this machine, for tests that run on every one of them."""
    return ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]
