"""``atrous bench``: speed measured as ratios against a baseline run in the same process.

Absolute seconds on a shared 2-core CPU drift from run to run; the ratio to a baseline measured moments
earlier on the same machine is what BENCHMARKS.md records.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from rich.console import Console
from rich.table import Table


def median_time(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_rf(repeats: int = 5) -> list[dict]:
    """RF analysis of ResNet trunks at 224x224 vs one real forward+backward pass at the same size (the least a
    gradient-based tool needs, and it would need an input larger than the RF: 1024x1024 for ResNet-101)."""
    from atrous.models.resnet import Trunk, resnet
    from atrous.rf import analyze

    rows = []
    for depth in (50, 101):
        model = Trunk(resnet(depth)).eval()
        report = analyze(model, (3, 224, 224))
        t_rf = median_time(lambda m=model: analyze(m, (3, 224, 224)), repeats)
        t_support = median_time(
            lambda r=report: r.support((3, 3)) if r._finite is None else None, 1, warmup=0
        )
        x = torch.randn(1, 3, 224, 224, requires_grad=True)

        def fwd_bwd(m: torch.nn.Module = model, x: torch.Tensor = x) -> None:
            m(x)[0, :, 3, 3].sum().backward()

        t_grad = median_time(fwd_bwd, repeats)
        rows.append(
            {
                "model": f"resnet{depth} trunk",
                "ops": len(report.graph.calls),
                "rf": report.rf[0],
                "analyze_s": t_rf,
                "in_image_support_s": t_support,
                "fwd_bwd_224_s": t_grad,
                "analyze_vs_fwd_bwd": t_rf / t_grad,
            }
        )
    return rows


def print_rf(rows: list[dict], console: Console) -> None:
    table = Table(title="RF engine (CPU): exact analysis vs one forward+backward at 224x224, same run")
    for col in (
        "model",
        "ops",
        "RF",
        "analyze (s)",
        "in-image support, first call (s)",
        "fwd+bwd 224 (s)",
        "analyze / fwd+bwd",
    ):
        table.add_column(col)
    for r in rows:
        table.add_row(
            r["model"],
            str(r["ops"]),
            str(r["rf"]),
            f"{r['analyze_s']:.3f}",
            f"{r['in_image_support_s']:.3f}",
            f"{r['fwd_bwd_224_s']:.3f}",
            f"{r['analyze_vs_fwd_bwd']:.2f}x",
        )
    console.print(table)


def matmul_peak(sizes: tuple[int, ...] = (2048, 3072)) -> float:
    """Best achieved fp32 FLOP/s of large square matrix products: the machine's practical peak for MFU
    (on this 2-core AVX2 CPU about 170 GFLOP/s; 1024x1024 products reach only ~120)."""
    best = 0.0
    for n in sizes:
        a, b = torch.randn(n, n), torch.randn(n, n)
        best = max(best, 2 * n**3 / median_time(lambda a=a, b=b: a @ b, repeats=3))
    return best


class NaiveSeedUNet(torch.nn.Module):
    """The seed's two-level 64-wide U-Net written the plain way (biases before BatchNorm, out-of-place ReLU,
    NCHW, sigmoid-free logits): the baseline the zoo's speed is compared with."""

    def __init__(self) -> None:
        super().__init__()
        nn = torch.nn

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, padding=1),
                nn.BatchNorm2d(cout),
                nn.ReLU(),
                nn.Conv2d(cout, cout, 3, padding=1),
                nn.BatchNorm2d(cout),
                nn.ReLU(),
            )

        self.e1, self.e2, self.mid = block(3, 64), block(64, 128), block(128, 256)
        self.u2, self.d2 = nn.ConvTranspose2d(256, 128, 4, 2, 1), block(256, 128)
        self.u1, self.d1 = nn.ConvTranspose2d(128, 64, 4, 2, 1), block(128, 64)
        self.out = nn.Conv2d(64, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.e1(x)
        e2 = self.e2(torch.nn.functional.max_pool2d(e1, 2))
        m = self.mid(torch.nn.functional.max_pool2d(e2, 2))
        d2 = self.d2(torch.cat([self.u2(m), e2], 1))
        return self.out(self.d1(torch.cat([self.u1(d2), e1], 1)))


def _loss(out: torch.Tensor) -> torch.Tensor:
    target = torch.zeros(out.shape[0], *out.shape[2:], dtype=torch.long)
    if out.shape[1] == 1:
        return torch.nn.functional.binary_cross_entropy_with_logits(out[:, 0], target.float())
    return torch.nn.functional.cross_entropy(out, target)


def train_step_flops(model: torch.nn.Module, shape: tuple[int, ...]) -> float:
    """Effective FLOPs of one forward+backward per image (padding taps excluded), counted on a real batch of 2."""
    from atrous.flops import counter as flop_counter

    model.train()
    x = torch.randn(2, *shape)
    with flop_counter(effective=True) as counter:
        _loss(model(x)).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / 2


def measure_model(
    model: torch.nn.Module,
    batch: int,
    size: int,
    repeats: int,
    peak: float,
    channels_last: bool = True,
    forward: bool = True,
) -> dict:
    """Throughput as atrous runs models: channels-last memory format (1.17-1.81x faster training for most zoo
    families on this CPU, see benchmarks/model_speed_candidates.py)."""
    from atrous.flops import count_flops

    shape = (getattr(model, "in_channels", 3), size, size)
    x = torch.randn(batch, *shape)
    nominal = count_flops(model, shape)
    fwd_flops = count_flops(model, shape, effective=True)
    train_flops = train_step_flops(model, shape)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    model.eval()
    t_fwd = None
    if forward:
        with torch.inference_mode():
            t_fwd = median_time(lambda: model(x), repeats)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        _loss(model(x)).backward()
        opt.step()

    t_train = median_time(step, repeats)
    return {
        "fwd_img_s": batch / t_fwd if t_fwd else None,
        "train_img_s": batch / t_train,
        "fwd_gflops_img": nominal / 1e9,
        "fwd_effective_gflops_img": fwd_flops / 1e9,
        "train_effective_gflops_img": train_flops / 1e9,
        "fwd_mfu": fwd_flops * batch / t_fwd / peak if t_fwd else None,
        "train_mfu": train_flops * batch / t_train / peak,
    }


def bench_models(
    names: list[str] | None = None, batch: int = 32, size: int = 64, repeats: int = 3, forward: bool = True
) -> list[dict]:
    """Zoo models at ``size`` x ``size``, batch ``batch``: inference and training throughput and MFU, next to
    the naive seed U-Net baseline measured in the same run."""
    from atrous.models.registry import create_model, list_models, model_info

    torch.manual_seed(0)
    peak = matmul_peak()
    base = measure_model(NaiveSeedUNet(), batch, size, repeats, peak, channels_last=False, forward=forward)
    rows = [{"model": "naive seed U-Net (baseline)", **base, "fwd_vs_base": 1.0, "train_vs_base": 1.0}]
    for name in names or [n for n in list_models() if model_info(n).task == "segmentation"]:
        r = measure_model(create_model(name), batch, size, repeats, peak, forward=forward)
        r.update(
            model=name,
            fwd_vs_base=r["fwd_img_s"] / base["fwd_img_s"] if forward else None,
            train_vs_base=r["train_img_s"] / base["train_img_s"],
        )
        rows.append(r)
    for r in rows:
        r["matmul_peak_gflops"] = peak / 1e9
    return rows


def print_models(rows: list[dict], console: Console) -> None:
    peak = rows[0]["matmul_peak_gflops"]
    table = Table(
        title=f"Zoo throughput, CPU fp32 (matmul peak measured in this run: {peak:.0f} GFLOP/s; "
        "MFU from effective FLOPs, padding taps excluded)"
    )
    cols = (
        "model",
        "GFLOPs/img nominal",
        "effective",
        "fwd img/s",
        "fwd MFU",
        "fwd vs base",
        "train img/s",
        "train MFU",
        "train vs base",
    )
    for col in cols:
        table.add_column(col)
    for r in rows:
        table.add_row(
            r["model"],
            f"{r['fwd_gflops_img']:.3f}",
            f"{r['fwd_effective_gflops_img']:.3f}",
            f"{r['fwd_img_s']:.1f}",
            f"{r['fwd_mfu']:.0%}",
            f"{r['fwd_vs_base']:.2f}x",
            f"{r['train_img_s']:.1f}",
            f"{r['train_mfu']:.0%}",
            f"{r['train_vs_base']:.2f}x",
        )
    console.print(table)


def bench_train(
    models: tuple[str, ...] = (
        "seed_unet",
        "unet:width=16,depth=3",
        "dilated_unet:width=16,depth=3",
        "deeplabv3_small",
        "context",
    ),
    target: float = 0.9,
    max_epochs: int = 15,
) -> list[dict]:
    """Wall time for each model to reach validation foreground Dice >= ``target`` on ``shapes`` (64x64, 256
    training images, batch 16, AdamW 1e-3, Dice+CE), all in this run; ratios against the seed U-Net."""
    import tempfile

    from atrous.train.config import TrainConfig
    from atrous.train.loop import fit

    rows = []
    for spec in models:
        with tempfile.TemporaryDirectory() as tmp:
            cfg = TrainConfig(
                model=spec,
                data="shapes:size=64,n=256",
                epochs=max_epochs,
                batch_size=16,
                lr=1e-3,
                out=f"{tmp}/run",
            )
            start = time.perf_counter()
            result = fit(
                cfg, console=Console(quiet=True), until=lambda r: (r["val"]["fg_dice"] or 0) >= target
            )
            seconds = time.perf_counter() - start
        last = result.history[-1]
        rows.append(
            {
                "model": spec,
                "reached": (last["val"]["fg_dice"] or 0) >= target,
                "seconds": seconds,
                "epochs": len(result.history),
                "steps": result.steps,
                "fg_dice": last["val"]["fg_dice"],
                "train_img_s": last["img_per_s"],
            }
        )
    for r in rows:
        r["time_vs_seed_unet"] = r["seconds"] / rows[0]["seconds"]
    return {"step": bench_models(forward=False), "to_dice": rows}


def print_train(result: dict, console: Console) -> None:
    step = result["step"]
    table = Table(
        title=f"Training step, 64x64, batch 32, CPU fp32 (matmul peak {step[0]['matmul_peak_gflops']:.0f} "
        "GFLOP/s measured in this run; MFU from effective FLOPs)"
    )
    for col in ("model", "train GFLOPs/img (effective)", "train img/s", "train MFU", "vs naive seed U-Net"):
        table.add_column(col)
    for r in step:
        table.add_row(
            r["model"],
            f"{r['train_effective_gflops_img']:.3f}",
            f"{r['train_img_s']:.1f}",
            f"{r['train_mfu']:.0%}",
            f"{r['train_vs_base']:.2f}x",
        )
    console.print(table)
    rows = result["to_dice"]
    table = Table(title="Time to validation foreground Dice >= 0.9 on shapes (64x64), CPU, same run")
    for col in (
        "model",
        "reached",
        "epochs",
        "steps",
        "final fg Dice",
        "train img/s",
        "wall s",
        "vs seed_unet",
    ):
        table.add_column(col)
    for r in rows:
        table.add_row(
            r["model"],
            "yes" if r["reached"] else "no",
            str(r["epochs"]),
            str(r["steps"]),
            f"{r['fg_dice']:.3f}",
            f"{r['train_img_s']:.1f}",
            f"{r['seconds']:.1f}",
            f"{r['time_vs_seed_unet']:.2f}x",
        )
    console.print(table)


def bench_erf(samples: int = 64, repeats: int = 3) -> list[dict]:
    """ERF of ``samples`` inputs: a per-sample loop of full backward passes (baseline), the same batched 16 per
    pass, and ``effective_rf`` (batched, on a crop around the exact RF when that is exact and saves work)."""
    from atrous.erf import effective_rf, gradient_maps, sample_loop_maps
    from atrous.models.registry import create_model

    rows = []
    cases = (
        ("convstack:preset=dilated", 64),
        ("convstack:preset=hdc,width=16", 96),
        ("unet:width=16,depth=3", 64),
        ("deeplabv3_small", 64),
    )
    for spec, size in cases:
        torch.manual_seed(0)
        model = create_model(spec).eval()
        x = torch.randn(samples, model.in_channels, size, size)
        pos = (size // 2, size // 2)
        shape = tuple(x.shape[1:])
        t_loop = median_time(lambda m=model, x=x, p=pos: sample_loop_maps(m, x, p), repeats)
        t_batch = median_time(lambda m=model, x=x, p=pos: gradient_maps(m, x, p, 16), repeats)
        t_erf = median_time(lambda m=model, s=shape: effective_rf(m, s, samples=samples, batch=16), repeats)
        cropped = effective_rf(model, shape, samples=2).metrics["cropped_to"]
        rows.append(
            {
                "model": spec,
                "samples": samples,
                "size": size,
                "loop_s": t_loop,
                "batched_s": t_batch,
                "erf_s": t_erf,
                "batched_speedup": t_loop / t_batch,
                "erf_speedup": t_loop / t_erf,
                "cropped_to": cropped,
            }
        )
    return rows


def print_erf(rows: list[dict], console: Console) -> None:
    table = Table(title="ERF of N inputs vs a per-sample loop of full backward passes, CPU, same run")
    for col in (
        "model",
        "N",
        "input",
        "loop (s)",
        "batched, 16/pass",
        "effective_rf (batched + RF crop)",
        "crop",
    ):
        table.add_column(col)
    for r in rows:
        crop = "none" if r["cropped_to"] is None else "x".join(str(b - a) for a, b in r["cropped_to"])
        table.add_row(
            r["model"],
            str(r["samples"]),
            f"{r['size']}x{r['size']}",
            f"{r['loop_s']:.3f}",
            f"{r['batched_s']:.3f} s ({r['batched_speedup']:.1f}x)",
            f"{r['erf_s']:.3f} s ({r['erf_speedup']:.1f}x)",
            crop,
        )
    console.print(table)


def bench_data(count: int = 2000) -> list[dict]:
    """Synthetic samples per second at 64 x 64 on one thread (the data must never bound training)."""
    from atrous.data import build_dataset

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    rows = []
    try:
        for spec in ("shapes:size=64", "scale:size=64", "multiscale:size=64,max_extent=48"):
            ds = build_dataset(f"{spec},n={count}")
            seconds = median_time(lambda ds=ds: [ds[i] for i in range(count)], repeats=3)
            rows.append({"task": spec, "images": count, "img_per_s": count / seconds})
    finally:
        torch.set_num_threads(threads)
    return rows


def print_data(rows: list[dict], console: Console) -> None:
    table = Table(title="Synthetic data generation, 64x64, one thread")
    for col in ("task", "images", "img/s"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["task"], str(r["images"]), f"{r['img_per_s']:.0f}")
    console.print(table)


SUITES = {
    "rf": (bench_rf, print_rf),
    "models": (bench_models, print_models),
    "train": (bench_train, print_train),
    "erf": (bench_erf, print_erf),
    "data": (bench_data, print_data),
}


def run(suites: list[str], console: Console) -> dict[str, Any]:
    results = {}
    for name in suites:
        measure, show = SUITES[name]
        results[name] = measure()
        show(results[name], console)
    return results
