"""``atrous bench gpu``: training DeepLabv3-ResNet50 on one GPU, against torchvision measured in the same run.

The setting is the one issue 10 fixed: 21 classes, aux head, 512 x 512, batch 16, bf16 autocast, SGD with
momentum, forward + backward + step. Rows:

* bare training steps on synthetic tensors already on the GPU: torchvision's ``deeplabv3_resnet50`` (only when
  torchvision is installed; imported here alone) and ours, NCHW and channels-last. A bare step is
  ``atrous train``'s step without its data and bookkeeping: the same optimizer (fused), loss, auxiliary
  weight and precision, built from the same ``TrainConfig`` as the train rows;
* ``atrous train`` itself, data (``multiscale``, 21 classes, 512 x 512), logging and all, eager and with
  ``--compile``: the steady-state rate leaves out the first step. ``first_step_s`` is that first step's wall
  time (data start-up, cuDNN autotuning, and for ``--compile`` the compilation); ``compile_s`` is what compiling
  adds to it: the compiled run's first step less the eager run's, measured one after the other in this process
  with the same data and shapes, so start-up and autotuning (already cached by the bare rows) cancel;
* the data pipeline alone (no model): the same synthetic batches composed on the GPU vs drawn on the CPU.

MFU is reported against the datasheet's dense bf16 peak (an exact table of device names; an unknown card gets
none rather than a neighbour's) and against an 8192^3 bf16 matmul measured in the same run; FLOPs per image are
counted by ``FlopCounterMode`` (nominal: every tap, as the issue's 1,038 GFLOP). A short torch.profiler trace
of our eager step says where its GPU time goes, by kernel family (``kernel_family``), with the share no rule
recognised reported as "unclassified" and its largest kernels named.

A row that fails (out of memory, a compiler missing on the image) is kept with its error and the others still
run: a lent GPU may come with minutes, and ``make gpu-check`` fails on any row's error.
"""

from __future__ import annotations

import gc
import os
import re
import tempfile
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from rich.console import Console
from rich.table import Table

from atrous.device import autocast, synchronize

if TYPE_CHECKING:
    from atrous.train.config import TrainConfig

# Dense (no sparsity) bf16 tensor-core peaks from the vendors' datasheets, TFLOP/s, keyed by the exact name
# CUDA reports (torch.cuda.get_device_name), compared after ``normalise_device_name``. Exact, not substring:
# "NVIDIA L40" must not get the L4's peak, nor "NVIDIA A10G" the A10's. A card missing here gets no datasheet
# MFU (the measured-matmul MFU is still reported): add its name as CUDA spells it.
DATASHEET_BF16_TFLOPS = {
    # Hopper. SXM: 1,979 TFLOP/s with sparsity; PCIe 1,513; NVL 1,671 (per GPU).
    "NVIDIA H100 80GB HBM3": 989.0,  # SXM5
    "NVIDIA H100 PCIe": 756.0,
    "NVIDIA H100 NVL": 835.0,
    "NVIDIA H800": 989.0,  # SXM; export variant with H100 SXM's tensor cores
    "NVIDIA H200": 989.0,  # SXM
    "NVIDIA H200 NVL": 835.0,
    "NVIDIA GH200 480GB": 989.0,
    # Ampere: every A100 (SXM4 or PCIe, 40 or 80 GB) is 312 dense.
    "NVIDIA A100-SXM4-40GB": 312.0,
    "NVIDIA A100-SXM4-80GB": 312.0,
    "NVIDIA A100-PCIE-40GB": 312.0,
    "NVIDIA A100 80GB PCIe": 312.0,
    "NVIDIA A30": 165.0,
    "NVIDIA A40": 149.7,
    "NVIDIA A10": 125.0,
    # NVIDIA A10G (AWS g5) has no NVIDIA datasheet; it is not an A10 (fewer tensor TFLOP/s), so it has no entry.
    # Ada: L4 242 / L40 362 / L40S 733 with sparsity.
    "NVIDIA L4": 121.0,
    "NVIDIA L40": 181.0,
    "NVIDIA L40S": 362.0,
    # Blackwell: 4.5 PFLOP/s with sparsity per HGX B200 GPU.
    "NVIDIA B200": 2250.0,
}


def normalise_device_name(name: str) -> str:
    """Case, the vendor prefix, and ``-``/``_``/space runs do not distinguish cards; every other character does."""
    words = re.sub(r"[-_\s]+", " ", name.strip().lower()).split()
    return " ".join(words[1:] if words[:1] == ["nvidia"] else words)


_PEAKS = {normalise_device_name(k): v for k, v in DATASHEET_BF16_TFLOPS.items()}


def datasheet_peak(name: str) -> float | None:
    """Dense bf16 FLOP/s of the card called ``name``, or None for a card not in the table."""
    tflops = _PEAKS.get(normalise_device_name(name))
    return None if tflops is None else tflops * 1e12


# Kernel families, first match wins, on the lower-cased kernel name. The order matters: cuDNN's convolution
# kernels are implicit GEMMs (``sm90_xmma_fprop_implicit_gemm_...``) and must be caught before "gemm" means a
# matmul; inductor's kernels are named after the ops they fuse (``triton_poi_fused_native_batch_norm_...``) and
# must be caught before "batch_norm"; a layout conversion or a batch norm inside cuDNN before "cudnn" means a
# convolution. Memory copies and sets come from the profiler's own activity types first (``kernel_family``).
KERNEL_FAMILIES: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (family, re.compile(pattern))
    for family, pattern in (
        ("compiled (triton)", r"(^|\W)triton_"),
        ("layout (nchw<->nhwc)", r"nchwtonhwc|nhwctonchw|nchw2nhwc|nhwc2nchw"),
        ("batch norm", r"batch_?norm|bn_fw|bn_bw"),
        ("upsample", r"upsample"),
        ("pooling", r"pool"),
        # cuDNN/xmma/cutlass say the direction: fprop (forward), dgrad (input gradient), wgrad (weight gradient)
        ("conv backward", r"dgrad|wgrad|conv\w*backward|conv\w*grad_weight"),
        ("conv forward", r"fprop|convolve|winograd|fft2d|conv2d|conv_depthwise2d_forward"),
        ("conv (direction not in the name)", r"convolution|scudnn|cudnn|im2col|col2im"),
        ("matmul", r"gemm|gemv|cublas|nvjet|splitkreduce|dot_kernel"),
        ("optimizer (fused / foreach)", r"multi_tensor_apply|fused_?sgd|fused_?adam"),
        ("loss (softmax, nll)", r"softmax|nll_loss|cross_entropy"),
        ("reduction", r"reduce|reduction"),
        ("elementwise and copies", r"elementwise|catarray|batchedcopy|copy_kernel|fill_kernel|index_kernel"),
    )
)
UNCLASSIFIED = "unclassified"


def kernel_family(name: str, activity: str | None = None) -> str:
    """The family of one device activity: the profiler's own type for memory copies and sets (``gpu_memcpy``,
    ``gpu_memset``; the names ``Memcpy ...``/``Memset ...`` where a torch does not say), then the naming
    conventions of cuDNN, cutlass, cuBLAS and ATen for kernels; ``UNCLASSIFIED`` when no rule applies."""
    low = name.lower()
    if activity == "gpu_memcpy" or low.startswith("memcpy"):
        return "memcpy"
    if activity == "gpu_memset" or low.startswith("memset"):
        return "memset"
    return next((family for family, pattern in KERNEL_FAMILIES if pattern.search(low)), UNCLASSIFIED)


def kernel_shares(events: Iterable[tuple[str, str | None, float]], steps: int = 1) -> dict[str, Any]:
    """Device time by family from ``(name, activity, microseconds)``: milliseconds per step and shares, largest
    first, "unclassified" always listed (with its largest kernels named, to extend the rules); no events, an
    empty profile: no shares at all (0 % of nothing is not a measurement)."""
    by_family: dict[str, float] = {}
    unclassified: dict[str, float] = {}
    for name, activity, us in events:
        family = kernel_family(name, activity)
        by_family[family] = by_family.get(family, 0.0) + us
        if family == UNCLASSIFIED:
            unclassified[name] = unclassified.get(name, 0.0) + us
    total = sum(by_family.values())
    if total <= 0:
        return {"device_ms_per_step": 0.0, "families": [], "unclassified_kernels": []}
    by_family.setdefault(UNCLASSIFIED, 0.0)
    families = [
        {"family": f, "ms_per_step": us / 1e3 / steps, "share": us / total}
        for f, us in sorted(by_family.items(), key=lambda kv: -kv[1])
    ]
    top = sorted(unclassified.items(), key=lambda kv: -kv[1])[:5]
    return {
        "device_ms_per_step": total / 1e3 / steps,
        "families": families,
        "unclassified_kernels": [{"name": n[:160], "share": us / total} for n, us in top],
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

    def train_config(
        self, device: torch.device, compile: bool = False, workers: int = 0, out: str = ""
    ) -> TrainConfig:
        """The ``atrous train`` run the train rows measure; the bare steps take their optimizer, loss,
        auxiliary weight and precision from it too, so that both measure the same step."""
        from atrous.train.config import TrainConfig

        return TrainConfig(
            model=self.model_spec(),
            data=self.data_spec(self.batch * self.train_steps),
            val="none",
            steps=self.train_steps,
            batch_size=self.batch,
            optimizer="sgd",
            lr=0.01,
            loss="ce",
            precision="bf16",
            device=str(device),
            workers=workers,
            compile=compile,
            out=out,
        )


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


def _attempt(what: dict[str, Any], measure: Callable[[], dict[str, Any]], device: torch.device) -> dict:
    """``what`` with ``measure()``'s numbers, or with the error that stopped it (the last frame named)."""
    try:
        return {**what, **measure()}
    except Exception as exc:  # a row's failure is reported, not raised: the other rows still run
        frame = traceback.extract_tb(exc.__traceback__)[-1]
        message = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
        where = f"{os.path.basename(frame.filename)}:{frame.lineno}"
        if device.type == "cuda":
            torch.cuda.empty_cache()
        return {**what, "error": f"{type(exc).__name__}: {message} ({where})"}


def _models(s: Setting) -> list[tuple[str, torch.nn.Module, Callable]]:
    """(label, model, forward returning (main, aux)): torchvision's when it is installed, then ours; on the
    CPU (each goes to the device for its own rows only, so no row's memory counts another model)."""
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
    return rows


def step_flops(s: Setting, model: torch.nn.Module, forward: Callable, device: torch.device) -> float:
    """Nominal FLOPs of forward + backward per image (FlopCounterMode, one image)."""
    import torch.nn.functional as F
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(1, 3, s.size, s.size, device=device)
    y = torch.randint(0, s.classes, (1, s.size, s.size), device=device)
    model.train()
    with FlopCounterMode(display=False) as counter:
        main, aux = forward(model, x)
        (F.cross_entropy(main, y) + 0.5 * F.cross_entropy(aux, y)).backward()
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def bare_optimizer(s: Setting, model: torch.nn.Module, device: torch.device) -> torch.optim.Optimizer:
    """The optimizer ``atrous train`` builds for the train rows' config (fused SGD)."""
    from atrous.train.setup import make_optimizer

    return make_optimizer(s.train_config(device), model)


def make_step(
    s: Setting, model: torch.nn.Module, forward: Callable, device: torch.device, channels_last: bool
) -> Callable[[], None]:
    """``atrous train``'s training step on a fixed batch already on the device: same optimizer, loss,
    auxiliary weight and precision as the train rows (their scheduler step, a few scalar ops, is left out)."""
    from atrous.train.losses import make_loss

    cfg = s.train_config(device)
    model.train().to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    opt = bare_optimizer(s, model, device)
    loss_fn = make_loss(cfg.loss, s.classes, cfg.dice_per_image)
    x = torch.randn(s.batch, 3, s.size, s.size, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, s.classes, (s.batch, s.size, s.size), device=device)

    def step() -> None:
        with autocast(device, cfg.precision):
            main, aux = forward(model, x)
            loss = loss_fn(main.float(), y) + cfg.aux_weight * loss_fn(aux.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def bare_step(
    s: Setting,
    model: torch.nn.Module,
    forward: Callable,
    device: torch.device,
    channels_last: bool,
    steps: int,
) -> dict[str, float | None]:
    """img/s and peak memory of the plain training step on tensors already on the device."""
    step = make_step(s, model, forward, device, channels_last)
    reset_memory(device)
    seconds = timed(step, steps, 3, device)
    return {"img_s": s.batch / seconds, "memory_gb": peak_memory_gb(device)}


def _device_events(prof: Any) -> list[tuple[str, str | None, float]]:
    """(name, activity type, microseconds) of every device activity in a profile: kernels, copies, sets; not
    the user annotations, which span the kernels they annotate."""
    from torch.autograd import DeviceType

    events = []
    for evt in prof.events():
        if evt.device_type != DeviceType.CUDA or getattr(evt, "is_user_annotation", False):
            continue
        activity = getattr(evt, "activity_type", None)  # the profiler's own type, where this torch gives it
        if activity == "gpu_user_annotation":
            continue
        events.append((evt.name, activity, float(evt.time_range.elapsed_us())))
    return events


def profile_step(
    s: Setting, model: torch.nn.Module, forward: Callable, device: torch.device, steps: int = 3
) -> dict[str, Any]:
    """Device time per kernel family in ``steps`` eager channels-last steps of our model, after two warm-up
    steps outside the trace. On a CPU there are no device kernels: the profile is empty, and says so."""
    from torch.profiler import ProfilerActivity, profile

    step = make_step(s, model, forward, device, channels_last=True)
    for _ in range(2):
        step()
    synchronize(device)
    activity = ProfilerActivity.CUDA if device.type == "cuda" else ProfilerActivity.CPU
    with profile(activities=[activity]) as prof:
        for _ in range(steps):
            step()
        synchronize(device)
    return kernel_shares(_device_events(prof), steps)


def _bare_rows(s: Setting, device: torch.device) -> tuple[list[dict[str, Any]], dict[str, Any], float | None]:
    """The bare-step rows, the profile and the FLOPs per image. A function of its own so that every model,
    optimizer and batch it made is gone when it returns: the train rows' peak memory must not count them."""
    models = _models(s)
    rows = []
    for label, model, fwd in models:
        model.to(device)
        for cl in (False, True):
            layout = "channels-last" if cl else "NCHW"
            rows.append(
                _attempt(
                    {"config": f"{label}, {layout} eager, bare step"},
                    lambda model=model, fwd=fwd, cl=cl: bare_step(s, model, fwd, device, cl, s.bare_steps),
                    device,
                )
            )
        model.zero_grad(set_to_none=True)
        if model is not models[-1][1]:  # ours stays for the FLOP count and the profile
            model.to("cpu")
            _free(device)
    ours, forward = models[-1][1], models[-1][2]
    counted = _attempt({}, lambda: {"flops": step_flops(s, ours, forward, device)}, device)
    profile = _attempt({}, lambda: profile_step(s, ours, forward, device), device)
    return rows, profile, counted.get("flops")


def train_command_rate(s: Setting, device: torch.device, compile: bool, workers: int) -> dict:
    """Steady-state img/s of ``atrous train`` (data, logging and all) after its first step, that step's wall
    time (``first_step_s``) and the run's peak memory."""
    from atrous.train.loop import fit

    with tempfile.TemporaryDirectory() as tmp:
        cfg = s.train_config(device, compile, workers, out=f"{tmp}/run")
        reset_memory(device)
        result = fit(cfg, console=Console(quiet=True))
    return {
        "img_s": result.steady_img_per_s,
        "memory_gb": peak_memory_gb(device),
        "first_step_s": result.first_step_seconds,
    }


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def data_rate(s: Setting, device: torch.device, workers: int, batches: int = 24) -> list[dict]:
    """Synthetic batches delivered on the device per second, without a model: composed on the device
    (the workers make masks) vs drawn whole on the CPU."""
    from atrous.data import build_dataset
    from atrous.train.batches import BatchStream, epoch_batches

    ds = build_dataset(s.data_spec(s.batch * batches))
    plan = epoch_batches(len(ds), s.batch, 0, 0)
    rows = []
    for label, on_device in (("composed on the device", True), ("drawn on the CPU", False)):

        def measure(on_device: bool = on_device) -> dict[str, float]:
            stream = BatchStream(ds, device, workers, on_device)
            list(stream(plan[:2]))  # start the workers
            synchronize(device)
            start = time.perf_counter()
            count = sum(len(x) for x, _ in stream(plan))
            synchronize(device)
            return {"img_s": count / (time.perf_counter() - start)}

        rows.append(_attempt({"pipeline": f"{label}, {workers} workers"}, measure, device))
    return rows


def bench_gpu(
    device: torch.device | None = None, workers: int | None = None, setting: Setting | None = None
) -> dict[str, Any]:
    """Every row, the data pipeline and the profile (see the module docstring). cuDNN's autotuning is on for
    every row alike (fixed shapes: each convolution gets its fastest algorithm); the caller's setting is
    restored afterwards, since the test suite shares a process with it. Note: ``atrous train`` itself does not
    switch autotuning on, so its rows here measure it with autotuning."""
    benchmark = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    try:
        return _bench_gpu(device or torch.device("cuda"), workers, setting or Setting())
    finally:
        torch.backends.cudnn.benchmark = benchmark


def _bench_gpu(device: torch.device, workers: int | None, s: Setting) -> dict[str, Any]:
    workers = workers if workers is not None else min(8, os.cpu_count() or 1)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    matmul = _attempt({}, lambda: {"flop_s": bf16_matmul_peak(device, s.matmul)}, device)
    measured_peak = matmul.get("flop_s")
    rows, profile, flops = _bare_rows(s, device)
    _free(device)
    train_rows = []
    for compile in (False, True) if s.compile else (False,):
        what = "atrous train, channels-last" + (" + --compile" if compile else " eager") + ", data and all"
        train_rows.append(
            _attempt({"config": what}, lambda c=compile: train_command_rate(s, device, c, workers), device)
        )
        _free(device)
    eager = train_rows[0].get("first_step_s")
    for r in train_rows[1:]:
        first = r.get("first_step_s")
        r["compile_s"] = first - eager if first is not None and eager is not None else None
    rows += train_rows
    tv_cl = [
        r
        for r in rows
        if r["config"].startswith("torchvision") and "channels-last" in r["config"] and r.get("img_s")
    ]
    peak = datasheet_peak(name)
    for r in rows:
        rate = r.get("img_s")
        ok = rate is not None and flops is not None
        r["mfu_datasheet"] = flops * rate / peak if ok and peak else None
        r["mfu_measured"] = flops * rate / measured_peak if ok and measured_peak else None
        r["vs_torchvision_cl"] = rate / tv_cl[0]["img_s"] if tv_cl and rate is not None else None
    return {
        "device": name,
        "torch": torch.__version__,
        "setting": s.__dict__,
        "gflop_per_img": flops / 1e9 if flops is not None else None,
        "datasheet_tflops": peak / 1e12 if peak else None,
        "matmul_tflops": measured_peak / 1e12 if measured_peak else None,
        "matmul_error": matmul.get("error"),
        "rows": rows,
        "data": data_rate(s, device, workers),
        "profile": profile,
    }


def print_gpu(result: dict, console: Console) -> None:
    s = Setting(**result["setting"])
    peak = result["datasheet_tflops"]
    fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
    console.print(
        f"{result['device']}, torch {result['torch']}: {s.model} + aux, {s.size}x{s.size}, batch {s.batch}, "
        f"bf16, SGD; {fmt(result['gflop_per_img'], '.0f')} GFLOP/img (fwd+bwd); bf16 peak {peak or '?'} "
        f"TFLOP/s (datasheet), {fmt(result['matmul_tflops'], '.0f')} measured ({s.matmul}^3 matmul)"
    )
    if result.get("matmul_error"):
        console.print(f"matmul peak: {result['matmul_error']}")
    table = Table(title="Training speed, same run (vs tv: ratio to torchvision channels-last eager)")
    for col in ("config", "img/s", "MFU sheet", "MFU mm", "vs tv", "GB", "1st step s", "compile s"):
        table.add_column(col, overflow="fold")
    for r in result["rows"]:
        if r.get("error"):
            table.add_row(r["config"], f"[red]error: {r['error']}[/red]", *["-"] * 6)
            continue
        table.add_row(
            r["config"],
            fmt(r["img_s"], ".0f"),
            fmt(r["mfu_datasheet"], ".1%"),
            fmt(r["mfu_measured"], ".1%"),
            fmt(r["vs_torchvision_cl"], ".2f"),
            fmt(r["memory_gb"], ".1f"),
            fmt(r.get("first_step_s"), ".1f"),
            fmt(r.get("compile_s"), ".1f"),
        )
    console.print(table)
    if any(r.get("compile_s") is not None for r in result["rows"]):
        console.print(
            "compile s: the compiled run's first step less the eager run's (start-up, autotuning cancel)"
        )
    for d in result["data"]:
        rate = f"error: {d['error']}" if d.get("error") else f"{d['img_s']:.0f} img/s"
        console.print(f"data pipeline alone, {s.data_spec(0)[:-4]}: {d['pipeline']}: {rate}")
    p = result["profile"]
    if p.get("error"):
        console.print(f"profile of our eager channels-last step: error: {p['error']}")
    elif not p["families"]:
        console.print(
            "profile of our eager channels-last step: no device kernels were recorded (empty profile)"
        )
    else:
        shares = ", ".join(f"{f['family']} {f['share']:.0%}" for f in p["families"])
        console.print(
            f"device time of our eager channels-last step ({p['device_ms_per_step']:.1f} ms of kernels per "
            f"step) by kernel family: {shares}"
        )
        for k in p["unclassified_kernels"]:
            console.print(f"  unclassified {k['share']:.1%}: {k['name']}")
