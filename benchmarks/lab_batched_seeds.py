"""Seeds of one model trained together as one batched model (``torch.func``), against one after the other.

Issue 18 suggested it to make the lab's runs cheaper. For each model family of the quick lab (the models of
``lab_step.py``), K seeds' weights are stacked (``stack_module_state``) and one ``vmap``-ed step trains them all
(per-seed loss, gradients clipped per seed at norm 1 as the lab clips, one fused AdamW over the stacked tensors),
against K ordinary steps one after the other; the two interleaved round by round in one process, one thread.
A ratio below 1 is what batching would save. Run: ``.venv/bin/python benchmarks/lab_batched_seeds.py [K]``
(about a minute).
"""

from __future__ import annotations

import copy
import statistics
import sys
import time

import torch
from torch.func import functional_call, stack_module_state, vmap

from atrous.models.registry import create_model
from atrous.train.losses import make_loss
from lab_step import MODELS, ROUNDS, STEPS


def nets(spec: str, classes: int, k: int) -> list[torch.nn.Module]:
    out = []
    for seed in range(k):
        torch.manual_seed(seed)
        out.append(create_model(spec, num_classes=classes))
    return out


def one_by_one(spec: str, side: int, classes: int, k: int):
    models = nets(spec, classes, k)
    opts = [torch.optim.AdamW(m.parameters(), 5e-3, fused=True) for m in models]
    loss = make_loss("dice+ce", classes)
    x, y = torch.randn(k, 8, 3, side, side), torch.randint(0, classes, (k, 8, side, side))

    def step() -> None:
        for i, (m, opt) in enumerate(zip(models, opts, strict=True)):
            opt.zero_grad(set_to_none=True)
            loss(m(x[i]), y[i]).backward()
            torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
            opt.step()

    return step


def batched(spec: str, side: int, classes: int, k: int):
    models = nets(spec, classes, k)
    # BatchNorm's running statistics are stacked too, and updated per seed.
    params, buffers = stack_module_state(models)
    template = copy.deepcopy(models[0]).to("meta")
    stacked = list(params.values())
    opt = torch.optim.AdamW(stacked, 5e-3, fused=True)
    loss = make_loss("dice+ce", classes)
    x, y = torch.randn(k, 8, 3, side, side), torch.randint(0, classes, (k, 8, side, side))
    losses = vmap(  # dropout (DeepLab's ASPP) draws its own mask per seed
        lambda p, b, xs, ys: loss(functional_call(template, (p, b), (xs,)), ys), randomness="different"
    )

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        losses(params, buffers, x, y).sum().backward()  # seeds share no weight: each gets its own gradient
        norms = torch.stack([p.grad.flatten(1).norm(dim=1) for p in stacked]).norm(dim=0)
        scale = (1.0 / (norms + 1e-6)).clamp(max=1.0)
        for p in stacked:
            p.grad.mul_(scale.view(-1, *[1] * (p.dim() - 1)))
        opt.step()

    return step


def main() -> None:
    k = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    torch.set_num_threads(1)
    print(
        f"{'model':62s} {'one by one ms':>13s} {'batched ms':>10s} {'batched/one':>11s}  ({k} seeds a step)"
    )
    for spec, side, classes in MODELS:
        steps = {"one": one_by_one(spec, side, classes, k), "batched": batched(spec, side, classes, k)}
        times: dict[str, list[float]] = {name: [] for name in steps}
        for step in steps.values():
            step()  # first-call costs
        for _ in range(ROUNDS):
            for name, step in steps.items():
                start = time.perf_counter()
                for _ in range(STEPS):
                    step()
                times[name].append((time.perf_counter() - start) / STEPS * 1e3)
        one, both = statistics.median(times["one"]), statistics.median(times["batched"])
        print(f"{spec:62s} {one:13.1f} {both:10.1f} {both / one:11.2f}")


if __name__ == "__main__":
    main()
