"""A lab training step with this round's optimizer and weight average against the previous round's, in one run.

For each of the lab's model families, at the quick preset's batch (8) and image sizes, on one thread: AdamW
with the fused kernel and ``WeightAverage`` (the training loop now) against AdamW's default per-tensor loop and
torch's ``AveragedModel`` (before), the two interleaved round by round so that drift in the machine's speed
hits both alike. Forward, loss and backward are the same code in both; the optimizer step and the average differ.
Run: ``.venv/bin/python benchmarks/lab_step.py`` (about a minute).
"""

from __future__ import annotations

import statistics
import time

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from atrous.models.registry import create_model
from atrous.train.averaging import WeightAverage
from atrous.train.losses import make_loss

MODELS = (  # (spec, image side, classes): one per family the quick preset trains
    ("context:front_width=16,scores=norm", 48, 3),
    ("deeplabv3_small:aspp_channels=16,rates=1,2,3,upsample=nearest", 48, 3),
    ("aspp_net:width=16,rates=1,3,6", 48, 4),
    ("unet:width=8,depth=1", 48, 3),
    ("convstack:width=12,kernel=3,3,3,3,3,rates=1,1,2,2,2", 32, 3),
)
ROUNDS, STEPS = 5, 10


def stepper(spec: str, side: int, classes: int, new: bool):
    torch.manual_seed(0)
    net = create_model(spec, num_classes=classes).to(memory_format=torch.channels_last)
    if new:
        opt = torch.optim.AdamW(net.parameters(), 5e-3, fused=True)
        ema = WeightAverage(net, 0.98)
    else:
        opt = torch.optim.AdamW(net.parameters(), 5e-3)
        ema = AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(0.98), use_buffers=True)
    loss = make_loss("dice+ce", classes)
    x = torch.randn(8, 3, side, side).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, classes, (8, side, side))

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss(net(x), y).backward()
        opt.step()
        ema.update_parameters(net)

    return step


def main() -> None:
    torch.set_num_threads(1)
    print(f"{'model':62s} {'before ms':>9s} {'now ms':>7s} {'now/before':>10s}")
    ratios = []
    for spec, side, classes in MODELS:
        steps = {new: stepper(spec, side, classes, new) for new in (False, True)}
        times: dict[bool, list[float]] = {False: [], True: []}
        for step in steps.values():
            step()  # first-call costs
        for _ in range(ROUNDS):
            for new, step in steps.items():
                start = time.perf_counter()
                for _ in range(STEPS):
                    step()
                times[new].append((time.perf_counter() - start) / STEPS * 1e3)
        before, now = statistics.median(times[False]), statistics.median(times[True])
        ratios.append(now / before)
        print(f"{spec:62s} {before:9.1f} {now:7.1f} {now / before:10.2f}")
    print(f"geometric mean now/before: {statistics.geometric_mean(ratios):.2f}")


if __name__ == "__main__":
    main()
