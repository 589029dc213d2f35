"""Candidate speed changes for seed-sized models, each measured against the naive baseline in the same run.

Candidates (issue 3): no conv bias before BatchNorm, in-place activations, channels-last memory format, and
``torch.inference_mode`` instead of ``torch.no_grad`` for evaluation. Model: the seed's 64-wide U-Net at
64x64, batch 32, CPU fp32. Run: ``.venv/bin/python benchmarks/model_speed_candidates.py``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

import atrous
from atrous.bench import NaiveSeedUNet, median_time

BATCH, SIZE, REPEATS = 32, 64, 5


def train_img_s(model: torch.nn.Module, x: torch.Tensor) -> float:
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    target = torch.zeros(x.shape[0], *x.shape[2:])

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        F.binary_cross_entropy_with_logits(model(x)[:, 0], target).backward()
        opt.step()

    return x.shape[0] / median_time(step, REPEATS)


def eval_img_s(model: torch.nn.Module, x: torch.Tensor, mode: str) -> float:
    model.eval()
    ctx = torch.inference_mode if mode == "inference_mode" else torch.no_grad
    with ctx():
        return x.shape[0] / median_time(lambda: model(x), REPEATS)


def candidates() -> None:
    torch.manual_seed(0)
    x = torch.randn(BATCH, 3, SIZE, SIZE)
    variants = {
        "naive (bias before BN, out-of-place ReLU)": (NaiveSeedUNet(), x),
        "no bias before BN, in-place ReLU (atrous unet, seed widths)": (
            atrous.create_model("unet", width=64, depth=2, up_kernel=4, num_classes=1),
            x,
        ),
        "seed_unet (bias kept, in-place ReLU)": (atrous.create_model("seed_unet"), x),
        "naive + channels-last": (
            NaiveSeedUNet().to(memory_format=torch.channels_last),
            x.contiguous(memory_format=torch.channels_last),
        ),
    }
    base_train = base_eval = None
    print(f"seed-sized U-Net, {SIZE}x{SIZE}, batch {BATCH}, CPU fp32, {torch.get_num_threads()} threads")
    for name, (model, inp) in variants.items():
        tr = train_img_s(model, inp)
        ev_ng = eval_img_s(model, inp, "no_grad")
        ev_im = eval_img_s(model, inp, "inference_mode")
        base_train = base_train or tr
        base_eval = base_eval or ev_ng
        print(
            f"{name:62s} train {tr:6.1f} img/s ({tr / base_train:.2f}x)  eval no_grad {ev_ng:6.1f} "
            f"({ev_ng / base_eval:.2f}x)  eval inference_mode {ev_im:6.1f} ({ev_im / base_eval:.2f}x)"
        )


def channels_last_per_model(
    names: tuple[str, ...] = (
        "unet",
        "dilated_unet",
        "deeplabv3_small",
        "deeplabv3plus_small",
        "convstack",
        "context",
    ),
) -> None:
    """Does channels-last win for every zoo family, or only for some?"""
    x = torch.randn(BATCH, 3, SIZE, SIZE)
    for name in names:
        torch.manual_seed(0)
        model = atrous.create_model(name)
        nchw = train_img_s(model, x) if model.num_classes == 1 else train_ce(model, x)
        model = model.to(memory_format=torch.channels_last)
        xl = x.contiguous(memory_format=torch.channels_last)
        nhwc = train_img_s(model, xl) if model.num_classes == 1 else train_ce(model, xl)
        print(
            f"{name:22s} train NCHW {nchw:7.1f} img/s, channels-last {nhwc:7.1f} img/s ({nhwc / nchw:.2f}x)"
        )


def train_ce(model: torch.nn.Module, x: torch.Tensor) -> float:
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    target = torch.zeros(x.shape[0], *x.shape[2:], dtype=torch.long)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), target).backward()
        opt.step()

    return x.shape[0] / median_time(step, REPEATS)


def main() -> None:
    candidates()
    channels_last_per_model()


if __name__ == "__main__":
    main()
