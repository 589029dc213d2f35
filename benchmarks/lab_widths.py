"""A lab training step of each model the quick preset narrowed, at session 14's widths against today's, in one run.

Session 16 narrowed some of the quick preset's models to 8 channels (conv stacks 12 -> 8, Exercise 3's ASPP heads
16 -> 8, DeepLab's backbone 16-128 -> 8-64). Each pair is timed on one thread at the lab's batch (8) and image
sizes, with the lab's optimizer, loss and weight average (``lab_step.stepper``; not its gradient clipping),
interleaved round by round, in alternating order, so that drift in the machine's speed hits both alike; the ratio
is what a step costs now.
Width 12 is timed too: on this kind of CPU it costs as much as 16, which is why the preset went to 8 and not 12.
The context module and Exercise 4's heads are timed as well, though they stay at 16: at 8 a step is cheaper, but
they needed so many more steps to converge that little or no time was saved (BENCHMARKS.md, session 16), so they
are left out of the mean.
Run: ``.venv/bin/python benchmarks/lab_widths.py`` (about three minutes).
"""

from __future__ import annotations

import statistics
import time

import torch

from lab_step import stepper  # the lab's step: fused AdamW, Dice+CE, the weight average

CTX = "context:scores=norm,act=leaky,context_rates=1,1,1,1,1,1,1,front_width="
DEEPLAB = "deeplabv3_small:aspp_channels=16,rates=1,2,3,upsample=nearest"
STACK = "convstack:kernel=3,3,3,3,3,rates=1,1,2,2,2,width="
HEAD = "aspp_net:width="
PAIRS = (  # (what, before, 12 channels or None, now, image side, classes, narrowed in the preset)
    ("undilated context module (kept)", f"{CTX}16", f"{CTX}12", f"{CTX}8", 48, 3, False),
    ("DeepLab (stride 8)", DEEPLAB, None, f"{DEEPLAB},widths=8,16,32,64", 48, 3, True),
    (
        "Exercise 3 ASPP 1,3,6",
        f"{HEAD}16,rates=1,3,6",
        f"{HEAD}12,rates=1,3,6",
        f"{HEAD}8,rates=1,3,6",
        48,
        3,
        True,
    ),
    ("Exercise 3 ASPP 1,1,1", f"{HEAD}16,rates=1,1,1", None, f"{HEAD}8,rates=1,1,1", 48, 3, True),
    ("conv stack (Exercises 1, 5)", f"{STACK}12", None, f"{STACK}8", 32, 3, True),
    ("Exercise 4 head, rate 3 (kept)", f"{HEAD}16,rates=3", None, f"{HEAD}8,rates=3", 48, 4, False),
    ("Exercise 4 rates 1,3,6 (kept)", f"{HEAD}16,rates=1,3,6", None, f"{HEAD}8,rates=1,3,6", 48, 4, False),
)
ROUNDS, STEPS = 5, 10


def main() -> None:
    torch.set_num_threads(1)
    print(f"{'model':32s} {'before ms':>9s} {'12 ch ms':>8s} {'at 8 ms':>7s} {'8/before':>8s}")
    ratios = []
    for what, before, twelve, now, side, classes, narrowed in PAIRS:
        specs = {"before": before, "twelve": twelve, "now": now}
        steps = {k: stepper(s, side, classes, new=True) for k, s in specs.items() if s is not None}
        times: dict[str, list[float]] = {k: [] for k in steps}
        for step in steps.values():
            step()  # first-call costs
        for r in range(ROUNDS):
            for k in list(steps)[:: 1 if r % 2 == 0 else -1]:
                start = time.perf_counter()
                for _ in range(STEPS):
                    steps[k]()
                times[k].append((time.perf_counter() - start) / STEPS * 1e3)
        ms = {k: statistics.median(v) for k, v in times.items()}
        ratio = ms["now"] / ms["before"]
        if narrowed:
            ratios.append(ratio)
        twelve_ms = f"{ms['twelve']:8.1f}" if "twelve" in ms else f"{'':8s}"
        print(f"{what:32s} {ms['before']:9.1f} {twelve_ms} {ms['now']:7.1f} {ratio:8.2f}")
    print(
        f"geometric mean at 8 / before, the models the preset narrowed: {statistics.geometric_mean(ratios):.2f}"
    )


if __name__ == "__main__":
    main()
