"""Exercise 3: ASPP and the context module against their undilated twins (same shapes, all rates 1), in the
regimes of Exercise 2; and DeepLabv3, whose output stride predicts what it does to small objects.

The ASPP rates (1, r, 2r) are the smallest whose RF covers regime (a)'s need, chosen by the engine; the
small DeepLab's ASPP rates are scaled to its feature map (stride 8 on the lab's small images leaves a few
pixels per side). In the tiny and quick presets its logits are resized nearest (``upsample=nearest``), so that
the output stride is the hard grid the prediction speaks of: bilinear logits let a model learn, slowly, to put
boundaries between grid points, and on design seed 10 such a DeepLab was still improving after 48 epochs (0.844
-> 0.854 mIoU from epoch 24 to 48 in regime (a)), where the nearest one had stopped improving by epoch 10. The
regime (b) verdict then follows from the model's construction: no 8 x 8 block is mostly 3 px squares."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from atrous.lab import compare, design, ex2_unets
from atrous.lab.jobs import Job
from atrous.lab.presets import Preset
from atrous.lab.report import Section

KEY = "ex3"


@lru_cache(maxsize=8)
def aspp_rate(width: int, need: int, size: int) -> int:
    """The smallest r whose ASPP rates (1, r, 2r) give the net an RF covering ``need``."""
    for r in range(2, 33):
        if design.describe("", f"aspp_net:width={width},rates=1,{r},{2 * r}", size).sees(need):
            return r
    raise ValueError(f"no ASPP rates up to (1, 32, 64) reach an RF of {need}")


def deeplab_label(spec: str) -> str:
    """The report's name of the DeepLab: its zoo name, and where its logits sit on the stride grid, say so (the
    model then differs from the usual DeepLabv3, and a class narrower than a block cannot be output at all)."""
    grid = ", logits on its stride grid" if "upsample=nearest" in spec else ""
    return f"DeepLab ({spec.split(':')[0]}{grid})"


def plan(p: Preset) -> list[tuple[design.Regime, list[compare.Contest]]]:
    regimes = ex2_unets.regimes(p)
    r = aspp_rate(p.aspp_width, regimes[0].need, regimes[0].size)
    out = []
    for regime in regimes:
        d = lambda label, spec, size=regime.size: design.describe(label, spec, size)  # noqa: E731
        ctx = p.context
        aspp = f"aspp_net:width={p.aspp_width},rates="
        # The stride contest's control is the dilated U-Net: full-resolution logits and an RF that covers both
        # regimes, so that the output stride is the one difference the engine sees.
        _, dilated = design.unets(p.unet_width, p.unet_depth, p.max_rate, regime.size)
        contests = [
            compare.Contest(
                d("context module", ctx),
                d("context, rates 1", f"{ctx},context_rates={design.UNDILATED_CONTEXT}"),
                "rf",
                "miou",
            ),
            compare.Contest(
                d(f"ASPP 1,{r},{2 * r}", f"{aspp}1,{r},{2 * r}"),
                d("ASPP 1,1,1", f"{aspp}1,1,1"),
                "rf",
                "miou",
            ),
            compare.Contest(d(deeplab_label(p.deeplab), p.deeplab), dilated, "stride", "iou:1"),
        ]
        out.append((regime, contests))
    return out


def jobs(p: Preset, seeds: list[int]) -> list[Job]:
    return compare.jobs(p, plan(p), seeds, KEY)


def predictions(p: Preset, seeds: list[int]) -> dict:
    return compare.predictions(plan(p))


def section(p: Preset, seeds: list[int], results: dict, run_dir: Path, registered: dict) -> Section:
    title = "Exercise 3: ASPP, the context module and DeepLab's output stride"
    return compare.section(KEY, title, p, plan(p), seeds, results, run_dir, registered)
