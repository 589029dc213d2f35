"""A lab training step of each model the quick preset trains, at session 14's widths against today's, in one run.

Session 15 narrowed the quick preset's models to 8 channels (conv stacks 12 -> 8, the context module's front end
16 -> 8, the ASPP heads 16 -> 8, DeepLab's backbone 16-128 -> 8-64). Each pair is timed on one thread at the
lab's batch (8) and image sizes, with the lab's optimizer and loss, interleaved round by round so that drift in
the machine's speed hits both alike; the ratio is what a step costs now. Width 12 is timed too: on this kind of
CPU it costs as much as 16, which is why the preset went to 8 and not 12.
Run: ``.venv/bin/python benchmarks/lab_widths.py`` (about two minutes).
"""

from __future__ import annotations

import statistics
import time

import torch

from atrous.models.registry import create_model
from atrous.train.losses import make_loss

CTX = "context:scores=norm,act=leaky,context_rates=1,1,1,1,1,1,1,front_width="
DEEPLAB = "deeplabv3_small:aspp_channels=16,rates=1,2,3,upsample=nearest"
STACK = "convstack:kernel=3,3,3,3,3,rates=1,1,2,2,2,width="
HEAD = "aspp_net:rates=3,width="
PAIRS = (  # (what, before, 12 channels or None, now, image side, classes)
    ("undilated context module", f"{CTX}16", f"{CTX}12", f"{CTX}8", 48, 3),
    ("Exercise 4 head, rate 3", f"{HEAD}16", f"{HEAD}12", f"{HEAD}8", 48, 4),
    (
        "Exercise 4 head, rates 1,3,6",
        "aspp_net:rates=1,3,6,width=16",
        None,
        "aspp_net:rates=1,3,6,width=8",
        48,
        4,
    ),
    ("DeepLab (stride 8)", DEEPLAB, None, f"{DEEPLAB},widths=8,16,32,64", 48, 3),
    ("conv stack (Exercises 1, 5)", f"{STACK}12", None, f"{STACK}8", 32, 3),
)
ROUNDS, STEPS = 5, 10


def stepper(spec: str, side: int, classes: int):
    torch.manual_seed(0)
    net = create_model(spec, num_classes=classes).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(net.parameters(), 5e-3, fused=True)
    loss = make_loss("dice+ce", classes)
    x = torch.randn(8, 3, side, side).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, classes, (8, side, side))

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss(net(x), y).backward()
        opt.step()

    return step


def main() -> None:
    torch.set_num_threads(1)
    print(f"{'model':30s} {'before ms':>9s} {'12 ch ms':>8s} {'now ms':>7s} {'now/before':>10s}")
    ratios = []
    for what, before, twelve, now, side, classes in PAIRS:
        specs = {"before": before, "twelve": twelve, "now": now}
        steps = {k: stepper(s, side, classes) for k, s in specs.items() if s is not None}
        times: dict[str, list[float]] = {k: [] for k in steps}
        for step in steps.values():
            step()  # first-call costs
        for _ in range(ROUNDS):
            for k, step in steps.items():
                start = time.perf_counter()
                for _ in range(STEPS):
                    step()
                times[k].append((time.perf_counter() - start) / STEPS * 1e3)
        ms = {k: statistics.median(v) for k, v in times.items()}
        ratios.append(ms["now"] / ms["before"])
        twelve_ms = f"{ms['twelve']:8.1f}" if "twelve" in ms else f"{'':8s}"
        print(f"{what:30s} {ms['before']:9.1f} {twelve_ms} {ms['now']:7.1f} {ratios[-1]:10.2f}")
    print(f"geometric mean now/before: {statistics.geometric_mean(ratios):.2f}")


if __name__ == "__main__":
    main()
