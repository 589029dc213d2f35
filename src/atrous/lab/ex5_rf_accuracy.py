"""Exercise 5: receptive field vs accuracy on ``scale``, whose needed RF is known (2 * small + 1).

Conv stacks of equal depth (5 layers) whose RF is set by hole-free dilation schedules from the schedule tools
(1x1 layers where the RF is smaller than five 3x3 layers give). Where accuracy saturates is measured: the
smallest RF whose mean mIoU is within 0.01 of the best and not significantly lower (paired test over seeds).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from atrous.data.synthetic import needed_rf
from atrous.lab import common, plots
from atrous.lab.jobs import CONVERGENCE, Job
from atrous.lab.presets import Preset
from atrous.lab.report import Section, Table
from atrous.lab.stats import agreement, compare_paired
from atrous.models.registry import create_model
from atrous.rf import analyze, schedule

KEY = "ex5"
TOLERANCE = 0.01


def data_spec(p: Preset, small: int) -> str:
    large = max(p.scale_large, 2 * small + 4)
    return f"scale:size={p.size},n={p.n},small={small},large={large}"


def stack_spec(p: Preset, rf: int) -> str:
    kernels, rates = schedule.fixed_depth(rf, p.ex5_depth)
    return f"convstack:width={p.width},kernel={','.join(map(str, kernels))},rates={','.join(map(str, rates))}"


def jobs(p: Preset, seeds: list[int]) -> list[Job]:
    return [
        common.job(p, stack_spec(p, rf), data_spec(p, small), s, f"ex5 RF {rf} (objects {small}px), seed {s}")
        for small in p.ex5_smalls
        for rf in p.ex5_rfs
        for s in seeds
    ]


def saturation(rfs: list[int], miou: dict[int, list[float]]) -> tuple[int, dict]:
    best = max(rfs, key=lambda r: np.mean(miou[r]))
    for rf in sorted(rfs):
        close = np.mean(miou[rf]) >= np.mean(miou[best]) - TOLERANCE
        cmp = compare_paired(miou[rf], miou[best])
        if rf == best or (close and cmp.outcome != "worse"):
            return rf, {"best_rf": best, "vs_best": cmp.to_json()}
    return best, {"best_rf": best}


COLUMNS = [
    "RF (engine)",
    "kernels, rates",
    "holes/axis",
    "params",
    "GFLOPs/img",
    "train img/s",
    "val mIoU",
    "IoU small objects",
]


def section(p: Preset, seeds: list[int], results: dict, run_dir: Path) -> Section:
    s = Section(KEY, "Exercise 5: receptive field vs accuracy", f"atrous lab --only {KEY} --preset {p.name}")
    s.paragraphs.append(
        f"Conv stacks of {p.ex5_depth} layers, width {p.width}, trained {p.steps} steps on `scale` (label = object "
        f"size), seeds {seeds}. Saturation RF: the smallest RF whose mean validation mIoU is within {TOLERANCE} of "
        "the best RF's and not significantly lower (paired t-test over seeds). Prediction (the engine, before "
        "training): stacks whose RF is below the needed RF cannot separate every pixel, so accuracy saturates at "
        f"the first RF of the sweep that reaches the need. {CONVERGENCE}."
    )
    out, curves = {}, {}
    for small in p.ex5_smalls:
        rows, miou, points = sweep(p, small, seeds, results)
        text, out[f"small_{small}"] = verdicts(p, small, miou)
        out[f"small_{small}"]["points"] = [
            {"rf": int(r), "miou_mean": float(m), "ci95": float(c), "gflops": float(f)}
            for r, m, c, f, _ in points
        ]
        s.paragraphs.append(text)
        need = needed_rf(small)
        caption = (
            f"`{data_spec(p, small)}` (needed RF {need}); mean ± 95 % CI over seeds; img/s measured on one "
        )
        s.tables.append(Table(COLUMNS, rows, caption + "thread in this run"))
        curves[small] = (need, points)
    fig_name = "ex5_rf_vs_accuracy.png"
    plots.rf_accuracy(curves, run_dir / fig_name)
    s.figures.append((fig_name, "Accuracy and cost vs receptive field"))
    s.results = out
    return s


def sweep(p: Preset, small: int, seeds: list[int], results: dict) -> tuple[list, dict, list]:
    """Table rows, per-seed mIoU by RF, and (RF, mean, CI, GFLOPs, img/s) points of one object size."""
    data = data_spec(p, small)
    rows, miou, points = [], {}, []
    for rf in p.ex5_rfs:
        spec = stack_spec(p, rf)
        per_seed = common.runs(results, p, spec, data, seeds)
        report = analyze(create_model(spec, num_classes=3), (3, p.size, p.size)).outputs[0]
        est, small_iou = common.estimate(per_seed, "miou"), common.estimate(per_seed, "iou:1")
        miou[rf] = common.final(per_seed, "miou")
        img_s, gflops = common.speed(per_seed), per_seed[0]["flops"] / 1e9
        rows.append(
            [
                report.rf[0],
                spec.split(",", 1)[1],
                report.axes[0].hole_count,
                per_seed[0]["params"],
                gflops,
                f"{img_s:.0f}",
                str(est),
                str(small_iou),
            ]
        )
        points.append((report.rf[0], est.mean, est.half_width, gflops, img_s))
    return rows, miou, points


def verdicts(p: Preset, small: int, miou: dict[int, list[float]]) -> tuple[str, dict]:
    """The prediction (saturation at the first RF reaching the need; the step there is better), the measurement
    and their agreement, as a sentence and as results."""
    need = needed_rf(small)
    sat, detail = saturation(list(p.ex5_rfs), miou)
    below, at = [r for r in p.ex5_rfs if r < need], [r for r in p.ex5_rfs if r >= need]
    predicted = min(at) if at else None
    sat_agrees = "undetermined" if predicted is None else ("agrees" if sat == predicted else "disagrees")
    text = (
        f"Objects {small} px (needed RF 2 x {small} + 1 = {need}). Predicted: saturation at RF "
        f"{predicted if predicted is not None else 'beyond the sweep'}. Measured: mIoU saturates at "
        f"RF {sat} ({sat / need:.2f} x the needed RF): {sat_agrees}."
    )
    step = step_agrees = None
    if below and at:
        step = compare_paired(miou[min(at)], miou[max(below)])
        step_agrees = agreement("better", step)
        difference = f"mIoU difference {step.describe()} ({step_agrees})"
        text += f" RF {min(at)} vs RF {max(below)}, predicted better: {difference}."
    result = {
        "data": data_spec(p, small),
        "needed_rf": need,
        "saturation_rf": sat,
        "prediction": {"saturation_rf": predicted, "step_at_needed": "better" if step else None},
        "agreement": {"saturation_rf": sat_agrees, "step_at_needed": step_agrees},
        **detail,
        "step_at_needed": None if step is None else step.to_json(),
    }
    return text, result
