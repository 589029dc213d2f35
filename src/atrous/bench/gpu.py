"""``atrous bench gpu``: training DeepLabv3-ResNet50 on one GPU, against torchvision measured in the same run.

The setting is the one issue 10 fixed: 21 classes, aux head, 512 x 512, batch 16, bf16 autocast, SGD with
momentum, forward + backward + step. Rows:

* bare training steps on synthetic tensors already on the GPU: torchvision's ``deeplabv3_resnet50`` (only when
  torchvision is installed; imported here alone) and ours, NCHW and channels-last;
* ``atrous train`` itself, data (``multiscale``, 21 classes, 512 x 512), logging and all, eager and with
  ``--compile``: the steady-state rate leaves out the first step (start-up, cuDNN autotuning, compilation:
  that step's time is the compile time);
* the data pipeline alone (no model): the same synthetic batches composed on the GPU vs drawn on the CPU.

MFU is reported against the datasheet's dense bf16 peak and against an 8192^3 bf16 matmul measured in the same
run; FLOPs per image are counted by ``FlopCounterMode`` (nominal: every tap, as the issue's 1,038 GFLOP).
A short torch.profiler trace of our eager step says where its GPU time goes.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

from atrous.device import autocast, synchronize

# Dense (no sparsity) bf16 tensor-core peaks from the vendors' datasheets, TFLOP/s.
DATASHEET_BF16_TFLOPS = {
    "H200": 989.0,
    "H100 80GB HBM3": 989.0,  # SXM
    "H100 PCIe": 756.0,
    "H100 NVL": 835.0,
    "A100": 312.0,
    "L40S": 362.0,
    "L4": 121.0,
    "A10": 125.0,
}


@dataclass(frozen=True)
class Setting:
    """What is measured; the defaults are issue 10's. A CPU smoke test shrinks it to check the code runs."""

    model: str = "deeplabv3_resnet50"
    batch: int = 16
    size: int = 512
    classes: int = 21
    bare_steps: int = 20
    train_steps: int = 40
    matmul: int = 8192
    compile: bool = True  # also measure atrous train --compile

    def model_spec(self) -> str:
        return f"{self.model}:num_classes={self.classes},aux_loss=true"

    def data_spec(self, n: int) -> str:
        """A synthetic task with as many classes as the model predicts: objects of ``classes - 1`` sizes."""
        lo, hi = max(2, self.size // 64), self.size * 5 // 16
        return f"multiscale:size={self.size},classes={self.classes - 1},min_extent={lo},max_extent={hi},n={n}"


def datasheet_peak(name: str) -> float | None:
    for key, tflops in DATASHEET_BF16_TFLOPS.items():
        if key in name:
            return tflops * 1e12
    return None


def timed(fn: Callable[[], object], steps: int, warmup: int, device: torch.device) -> float:
    """Seconds per call after ``warmup`` calls, timed between device synchronisations."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    synchronize(device)
    return (time.perf_counter() - start) / steps


def reset_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None


def bf16_matmul_peak(device: torch.device, n: int) -> float:
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    return 2 * n**3 / timed(lambda: a @ b, 10, 3, device)


def _models(s: Setting, device: torch.device) -> list[tuple[str, torch.nn.Module, Callable]]:
    """(label, model, forward returning (main, aux)): torchvision's when it is installed, then ours."""
    from atrous.models.registry import create_model

    rows = []
    if s.model == "deeplabv3_resnet50":
        try:
            from torchvision.models.segmentation import deeplabv3_resnet50

            tv = deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=s.classes, aux_loss=True)
            rows.append(("torchvision deeplabv3_resnet50", tv, lambda m, x: tuple(m(x).values())))
        except ImportError:
            pass
    ours = create_model(s.model_spec())
    rows.append((f"atrous {s.model}", ours, lambda m, x: m.forward_aux(x)))
    return [(label, m.to(device), fwd) for label, m, fwd in rows]


def step_flops(s: Setting, model: torch.nn.Module, forward: Callable, device: torch.device) -> float:
    """Nominal FLOPs of forward + backward per image (FlopCounterMode, one image)."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(1, 3, s.size, s.size, device=device)
    y = torch.randint(0, s.classes, (1, s.size, s.size), device=device)
    model.train()
    with FlopCounterMode(display=False) as counter:
        main, aux = forward(model, x)
        (F.cross_entropy(main, y) + 0.5 * F.cross_entropy(aux, y)).backward()
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def bare_step(
    s: Setting,
    model: torch.nn.Module,
    forward: Callable,
    device: torch.device,
    channels_last: bool,
    steps: int,
) -> dict[str, float | None]:
    """img/s and peak memory of the plain training step on tensors already on the device."""
    model.train().to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(s.batch, 3, s.size, s.size, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, s.classes, (s.batch, s.size, s.size), device=device)

    def step() -> None:
        with autocast(device, "bf16"):
            main, aux = forward(model, x)
            loss = F.cross_entropy(main.float(), y) + 0.5 * F.cross_entropy(aux.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    reset_memory(device)
    seconds = timed(step, steps, 3, device)
    return {"img_s": s.batch / seconds, "memory_gb": peak_memory_gb(device)}


def train_command_rate(s: Setting, device: torch.device, compile: bool, workers: int) -> dict:
    """Steady-state img/s of ``atrous train`` (data, logging and all) after its first (start-up, compiling)
    step, with the first step's time as the compile time."""
    from atrous.train.config import TrainConfig
    from atrous.train.loop import fit

    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(
            model=s.model_spec(),
            data=s.data_spec(s.batch * s.train_steps),
            val="none",
            steps=s.train_steps,
            batch_size=s.batch,
            optimizer="sgd",
            lr=0.01,
            loss="ce",
            precision="bf16",
            device=str(device),
            workers=workers,
            compile=compile,
            out=f"{tmp}/run",
        )
        reset_memory(device)
        result = fit(cfg, console=Console(quiet=True))
    return {
        "img_s": result.steady_img_per_s,
        "memory_gb": peak_memory_gb(device),
        "compile_s": result.first_step_seconds if compile else None,
    }


def data_rate(s: Setting, device: torch.device, workers: int, batches: int = 24) -> list[dict]:
    """Synthetic batches delivered on the device per second, without a model: composed on the device
    (the workers make masks) vs drawn whole on the CPU."""
    from atrous.data import build_dataset
    from atrous.train.batches import BatchStream, epoch_batches

    ds = build_dataset(s.data_spec(s.batch * batches))
    plan = epoch_batches(len(ds), s.batch, 0, 0)
    rows = []
    for label, on_device in (("composed on the device", True), ("drawn on the CPU", False)):
        stream = BatchStream(ds, device, workers, on_device)
        list(stream(plan[:2]))  # start the workers
        synchronize(device)
        start = time.perf_counter()
        count = sum(len(x) for x, _ in stream(plan))
        synchronize(device)
        rows.append(
            {"pipeline": f"{label}, {workers} workers", "img_s": count / (time.perf_counter() - start)}
        )
    return rows


def profile_step(s: Setting, model: torch.nn.Module, forward: Callable, device: torch.device) -> list[dict]:
    """Share of device time per kernel family in a few eager channels-last steps of our model."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    with profile(activities=[ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU]) as prof:
        bare_step(s, model, forward, device, channels_last=True, steps=3)
    families = dict.fromkeys(("conv", "batch_norm", "upsample", "gemm", "other"), 0.0)
    for evt in prof.key_averages():
        name = evt.key.lower()
        if not cuda and not name.startswith("aten::"):
            continue  # CPU: only the operators' own time, not the Python frames around them
        fam = next((f for f in ("conv", "batch_norm", "upsample", "gemm") if f in name), "other")
        families["batch_norm" if "bn_" in name else fam] += (
            evt.self_device_time_total if cuda else evt.self_cpu_time_total
        )
    total = sum(families.values()) or 1.0
    return [{"family": k, "share": v / total} for k, v in families.items()]


def bench_gpu(device: torch.device | None = None, workers: int | None = None, setting: Setting | None = None):
    s = setting or Setting()
    device = device or torch.device("cuda")
    workers = workers if workers is not None else min(8, os.cpu_count() or 1)
    torch.backends.cudnn.benchmark = True
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    measured_peak = bf16_matmul_peak(device, s.matmul)
    models = _models(s, device)
    flops = step_flops(s, models[-1][1], models[-1][2], device)
    rows: list[dict[str, Any]] = []
    for label, model, fwd in models:
        for cl in (False, True):
            layout = "channels-last" if cl else "NCHW"
            rows.append(
                {
                    "config": f"{label}, {layout} eager, bare step",
                    **bare_step(s, model, fwd, device, cl, s.bare_steps),
                }
            )
    profile = profile_step(s, models[-1][1], models[-1][2], device)
    del models
    if device.type == "cuda":
        torch.cuda.empty_cache()
    for compile in (False, True) if s.compile else (False,):
        what = "atrous train, channels-last" + (" + --compile" if compile else " eager") + ", data and all"
        rows.append({"config": what, **train_command_rate(s, device, compile, workers)})
    tv_cl = [r for r in rows if r["config"].startswith("torchvision") and "channels-last" in r["config"]]
    peak = datasheet_peak(name)
    for r in rows:
        r["mfu_datasheet"] = flops * r["img_s"] / peak if peak else None
        r["mfu_measured"] = flops * r["img_s"] / measured_peak
        r["vs_torchvision_cl"] = r["img_s"] / tv_cl[0]["img_s"] if tv_cl else None
    return {
        "device": name,
        "torch": torch.__version__,
        "setting": s.__dict__,
        "gflop_per_img": flops / 1e9,
        "datasheet_tflops": peak / 1e12 if peak else None,
        "matmul_tflops": measured_peak / 1e12,
        "rows": rows,
        "data": data_rate(s, device, workers),
        "profile": profile,
    }


def print_gpu(result: dict, console: Console) -> None:
    s = Setting(**result["setting"])
    peak = result["datasheet_tflops"]
    console.print(
        f"{result['device']}, torch {result['torch']}: {s.model} + aux, {s.size}x{s.size}, batch {s.batch}, "
        f"bf16, SGD; {result['gflop_per_img']:.0f} GFLOP/img (fwd+bwd); bf16 peak {peak or '?'} TFLOP/s "
        f"(datasheet), {result['matmul_tflops']:.0f} measured ({s.matmul}^3 matmul)"
    )
    table = Table(title="Training speed, same run (vs tv: ratio to torchvision channels-last eager)")
    for col in ("config", "img/s", "MFU sheet", "MFU mm", "vs tv", "GB", "compile s"):
        table.add_column(col, overflow="fold")
    fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
    for r in result["rows"]:
        table.add_row(
            r["config"],
            f"{r['img_s']:.0f}",
            fmt(r["mfu_datasheet"], ".1%"),
            fmt(r["mfu_measured"], ".1%"),
            fmt(r["vs_torchvision_cl"], ".2f"),
            fmt(r["memory_gb"], ".1f"),
            fmt(r.get("compile_s"), ".0f"),
        )
    console.print(table)
    for d in result["data"]:
        console.print(f"data pipeline alone, {s.data_spec(0)[:-4]}: {d['pipeline']}: {d['img_s']:.0f} img/s")
    shares = ", ".join(f"{p['family']} {p['share']:.0%}" for p in result["profile"])
    console.print(f"device time of our eager channels-last step by kernel family: {shares}")
