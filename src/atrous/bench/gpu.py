"""``atrous bench gpu``: training DeepLabv3-ResNet50 on one GPU, against torchvision measured in the same run.

The setting is the one issue 10 fixed: 21 classes, aux head, 512 x 512, batch 16, bf16 autocast, SGD with
momentum, forward + backward + step. Rows:

* bare training steps on synthetic tensors already on the GPU: torchvision's ``deeplabv3_resnet50`` (only when
  torchvision is installed; imported here alone) and ours, NCHW and channels-last;
* ``atrous train`` itself, data (``scale`` at 512 x 512), logging and all, eager and with ``--compile``: the
  steady-state rate is the difference of two runs of different lengths, so start-up, the first (compiling)
  steps and the end-of-run checkpoint cancel out;
* the data pipeline alone (no model): synthetic ``scale`` batches composed on the GPU vs drawn on the CPU.

MFU is reported against the datasheet's dense bf16 peak and against an 8192^3 bf16 matmul measured in the same
run; FLOPs per image are counted by ``FlopCounterMode`` (nominal: every tap, as the issue's 1,038 GFLOP).
A short torch.profiler trace of our eager step says where its GPU time goes.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

from atrous.device import synchronize

BATCH, SIZE, CLASSES = 16, 512, 21
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


def datasheet_peak(name: str) -> float | None:
    for key, tflops in DATASHEET_BF16_TFLOPS.items():
        if key in name:
            return tflops * 1e12
    return None


def cuda_time(fn: Callable[[], object], steps: int, warmup: int, device: torch.device) -> float:
    """Seconds per call after ``warmup`` calls, timed between device synchronisations."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    synchronize(device)
    return (time.perf_counter() - start) / steps


def bf16_matmul_peak(device: torch.device, n: int = 8192) -> float:
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    return 2 * n**3 / cuda_time(lambda: a @ b, 10, 3, device)


def _models(device: torch.device) -> list[tuple[str, torch.nn.Module, Callable]]:
    """(label, model, forward returning (main, aux)) for the bare-step rows."""
    from atrous.models.registry import create_model

    rows = []
    try:
        from torchvision.models.segmentation import deeplabv3_resnet50

        tv = deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=CLASSES, aux_loss=True)
        rows.append(("torchvision deeplabv3_resnet50", tv, lambda m, x: tuple(m(x).values())))
    except ImportError:
        pass
    ours = create_model("deeplabv3_resnet50", num_classes=CLASSES, aux_loss=True)
    rows.append(("atrous deeplabv3_resnet50", ours, lambda m, x: m.forward_aux(x)))
    return [(label, m.to(device), fwd) for label, m, fwd in rows]


def step_flops(model: torch.nn.Module, forward: Callable, device: torch.device) -> float:
    """Nominal FLOPs of forward + backward per image (FlopCounterMode, one image)."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(1, 3, SIZE, SIZE, device=device)
    y = torch.randint(0, CLASSES, (1, SIZE, SIZE), device=device)
    with FlopCounterMode(display=False) as counter:
        main, aux = forward(model, x)
        (F.cross_entropy(main, y) + 0.5 * F.cross_entropy(aux, y)).backward()
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def bare_step(
    model: torch.nn.Module, forward: Callable, device: torch.device, channels_last: bool, steps: int = 20
) -> dict[str, float]:
    """img/s and peak memory of the plain training step on tensors already on the device."""
    model.train().to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(BATCH, 3, SIZE, SIZE, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, CLASSES, (BATCH, SIZE, SIZE), device=device)

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            main, aux = forward(model, x)
            loss = F.cross_entropy(main.float(), y) + 0.5 * F.cross_entropy(aux.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    torch.cuda.reset_peak_memory_stats(device)
    seconds = cuda_time(step, steps, 5, device)
    return {"img_s": BATCH / seconds, "memory_gb": torch.cuda.max_memory_allocated(device) / 1e9}


def train_command_rate(device: torch.device, compile: bool, short: int, long: int, workers: int) -> dict:
    """Steady-state img/s of ``atrous train`` (data, logging, checkpoint and all) from two runs' wall times."""
    from atrous.train.config import TrainConfig
    from atrous.train.loop import fit

    walls, compile_s = [], None
    for steps in (short, long):
        with tempfile.TemporaryDirectory() as tmp:
            cfg = TrainConfig(
                model=f"deeplabv3_resnet50:num_classes={CLASSES},aux_loss=true",
                data=f"scale:size={SIZE},small=24,large=72,n={BATCH * long}",
                val="none",
                steps=steps,
                batch_size=BATCH,
                optimizer="sgd",
                lr=0.01,
                loss="ce",
                precision="bf16",
                device=str(device),
                workers=workers,
                compile=compile,
                out=f"{tmp}/run",
            )
            torch.cuda.reset_peak_memory_stats(device)
            start = time.perf_counter()
            result = fit(cfg, console=Console(quiet=True))
            walls.append(time.perf_counter() - start)
            compile_s = result.compile_seconds
    return {
        "img_s": BATCH * (long - short) / (walls[1] - walls[0]),
        "memory_gb": torch.cuda.max_memory_allocated(device) / 1e9,
        "compile_s": compile_s,
    }


def data_rate(device: torch.device, workers: int, batches: int = 24) -> list[dict]:
    """Batches of ``scale`` at 512 x 512 delivered on the GPU per second, without a model."""
    from atrous.data import build_dataset
    from atrous.train.batches import BatchStream, epoch_batches

    ds = build_dataset(f"scale:size={SIZE},small=24,large=72,n={BATCH * batches}")
    plan = epoch_batches(len(ds), BATCH, 0, 0)
    rows = []
    for label, on_device in (("composed on the GPU", True), ("drawn on the CPU", False)):
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


def profile_step(model: torch.nn.Module, forward: Callable, device: torch.device) -> list[dict]:
    """Share of GPU time per kernel family in a few eager channels-last steps of our model."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        bare_step(model, forward, device, channels_last=True, steps=3)
    families = {"conv": 0.0, "batch_norm": 0.0, "upsample": 0.0, "gemm": 0.0, "other": 0.0}
    total = 0.0
    for evt in prof.key_averages():
        t = evt.self_device_time_total
        total += t
        name = evt.key.lower()
        fam = next((f for f in ("conv", "batch_norm", "upsample", "gemm") if f in name), "other")
        if fam == "batch_norm" or "bn_" in name:
            fam = "batch_norm"
        families[fam] += t
    return [{"family": k, "share": v / total if total else 0.0} for k, v in families.items()]


def bench_gpu(device: torch.device | None = None, workers: int | None = None) -> dict[str, Any]:
    import os

    device = device or torch.device("cuda")
    workers = workers if workers is not None else min(8, os.cpu_count() or 1)
    torch.backends.cudnn.benchmark = True
    name = torch.cuda.get_device_name(device)
    measured_peak = bf16_matmul_peak(device)
    models = _models(device)
    flops = step_flops(models[-1][1], models[-1][2], device)
    rows = []
    for label, model, fwd in models:
        for cl in (False, True):
            rows.append(
                {
                    "config": f"{label}, {'channels-last' if cl else 'NCHW'} eager, bare step",
                    **bare_step(model, fwd, device, cl),
                }
            )
    profile = profile_step(models[-1][1], models[-1][2], device)
    del models
    torch.cuda.empty_cache()
    for compile in (False, True):
        what = "atrous train, channels-last" + (" + --compile" if compile else " eager") + ", data and all"
        rows.append({"config": what, **train_command_rate(device, compile, 6, 30, workers)})
    baseline = next(
        (r for r in rows if r["config"].startswith("torchvision") and "channels-last" in r["config"]), None
    )
    peak = datasheet_peak(name)
    for r in rows:
        r["mfu_datasheet"] = flops * r["img_s"] / peak if peak else None
        r["mfu_measured"] = flops * r["img_s"] / measured_peak
        r["vs_torchvision_cl"] = r["img_s"] / baseline["img_s"] if baseline else None
    return {
        "device": name,
        "torch": torch.__version__,
        "gflop_per_img": flops / 1e9,
        "datasheet_tflops": peak / 1e12 if peak else None,
        "matmul_tflops": measured_peak / 1e12,
        "rows": rows,
        "data": data_rate(device, workers),
        "profile": profile,
    }


def print_gpu(result: dict, console: Console) -> None:
    peak = result["datasheet_tflops"]
    table = Table(
        title=f"{result['device']}, torch {result['torch']}: DeepLabv3-ResNet50 + aux, {SIZE}x{SIZE}, batch "
        f"{BATCH}, bf16, SGD; {result['gflop_per_img']:.0f} GFLOP/img; peak {peak or '?'} TFLOP/s datasheet, "
        f"{result['matmul_tflops']:.0f} measured (8192^3 bf16 matmul)"
    )
    for col in ("config", "img/s", "MFU datasheet", "MFU matmul", "vs tv CL", "GB", "compile s"):
        table.add_column(col, overflow="fold")
    fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
    for r in result["rows"]:
        table.add_row(
            r["config"],
            f"{r['img_s']:.0f}",
            fmt(r["mfu_datasheet"], ".1%"),
            fmt(r["mfu_measured"], ".1%"),
            fmt(r["vs_torchvision_cl"], ".2f"),
            f"{r['memory_gb']:.1f}",
            fmt(r.get("compile_s"), ".0f"),
        )
    console.print(table)
    for d in result["data"]:
        console.print(f"data pipeline alone, scale {SIZE}x{SIZE}: {d['pipeline']}: {d['img_s']:.0f} img/s")
    shares = ", ".join(f"{p['family']} {p['share']:.0%}" for p in result["profile"])
    console.print(f"GPU time of our eager channels-last step by kernel family: {shares}")
