"""Zoo throughput and MFU next to a naive seed U-Net measured in the same run."""

from __future__ import annotations

import torch
from rich.console import Console
from rich.table import Table

from atrous.bench.timing import matmul_peak, median_time


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
