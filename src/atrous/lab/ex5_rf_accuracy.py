"""Exercise 5: receptive field vs accuracy on ``scale``, whose needed RF is known (2 * small + 1).

Conv stacks of equal depth (5 layers) whose RF is set by hole-free dilation schedules from the schedule tools
(1x1 layers where the RF is smaller than five 3x3 layers give). Where accuracy saturates is measured: the
smallest RF whose mean mIoU is within 0.01 of the best and not significantly lower (paired test over seeds).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from atrous.data import build_dataset
from atrous.data.coverage import ModelView, coverage
from atrous.data.stats import scan
from atrous.data.synthetic import needed_rf
from atrous.lab import common, convergence, plots
from atrous.lab.jobs import Job
from atrous.lab.presets import Preset
from atrous.lab.report import Section, Table
from atrous.lab.stats import NOT_CONVERGED, compare_paired, judge
from atrous.models.registry import create_model
from atrous.rf import schedule

KEY = "ex5"
TOLERANCE = 0.01
COVERAGE_MASKS = 32  # masks of the task whose small objects the coverage column counts
SMALL = 1  # the label of the task's small objects (scale: 1 small, 2 large)


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


def predictions(p: Preset, seeds: list[int]) -> dict:
    """Before training: for each object size, the RF where accuracy is predicted to saturate (the first RF of
    the sweep that reaches the need) and the step there (that RF predicted better than the largest below)."""
    out = {}
    for small in p.ex5_smalls:
        need = needed_rf(small)
        below, at = [r for r in p.ex5_rfs if r < need], [r for r in p.ex5_rfs if r >= need]
        out[f"small_{small}"] = {
            "data": data_spec(p, small),
            "needed_rf": need,
            "models": {str(rf): stack_spec(p, rf) for rf in p.ex5_rfs},
            "saturation_rf": min(at) if at else None,
            "step": {"a": min(at), "b": max(below), "prediction": "better"} if below and at else None,
        }
    return out


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
    "small objects covered",
    "runs",
]


def section(p: Preset, seeds: list[int], results: dict, run_dir: Path, registered: dict) -> Section:
    s = Section(KEY, "Exercise 5: receptive field vs accuracy", f"atrous lab --only {KEY} --preset {p.name}")
    s.paragraphs.append(
        f"Conv stacks of {p.ex5_depth} layers, width {p.width}, trained up to {p.steps} steps on `scale` "
        f"(label = object size), seeds {seeds}. Saturation RF: the smallest RF whose mean validation mIoU is "
        f"within {TOLERANCE} of the best RF's and not significantly lower (paired t-test over seeds). Prediction "
        "(the engine, registered before training): stacks whose RF is below the needed RF cannot separate every "
        f"pixel, so accuracy saturates at the first RF of the sweep that reaches the need. Runs: {convergence.RULE}."
    )
    out, curves = {}, {}
    for small in p.ex5_smalls:
        rows, miou, points, health = sweep(p, small, seeds, results)
        text, out[f"small_{small}"] = verdicts(small, miou, health, registered[f"small_{small}"])
        out[f"small_{small}"]["points"] = [
            {"rf": int(r), "miou_mean": float(m), "ci95": float(c), "gflops": float(f)}
            for r, m, c, f, _ in points
        ]
        s.paragraphs.append(text)
        first = common.runs(results, p, stack_spec(p, p.ex5_rfs[0]), data_spec(p, small), seeds)
        note = common.absent_note(first, {SMALL: f"{small} px objects"})
        if note:
            s.paragraphs.append(note)
        need = needed_rf(small)
        caption = (
            f"`{data_spec(p, small)}` (needed RF {need}); mean ± 95 % CI over seeds; img/s measured on one "
        )
        caption += (
            f"thread in this run; small objects covered: of the first {COVERAGE_MASKS} masks, the share of small "
            "objects that the exact support of each of their pixels holds with one pixel of context "
            "(`atrous data stats --anchor every --margin 1`)"
        )
        s.tables.append(Table(COLUMNS, rows, caption))
        curves[small] = (need, points)
    fig_name = "ex5_rf_vs_accuracy.png"
    plots.rf_accuracy(curves, run_dir / fig_name)
    s.figures.append((fig_name, "Accuracy and cost vs receptive field"))
    s.results = out
    return s


def sweep(p: Preset, small: int, seeds: list[int], results: dict) -> tuple[list, dict, list, dict]:
    """Table rows, per-seed mIoU by RF, (RF, mean, CI, GFLOPs, img/s) points and whether every run of each RF
    converged, for one object size."""
    data = data_spec(p, small)
    # `data stats` coverage under the lab's criterion (every pixel of a small object sees it and one pixel
    # beyond), on the first masks of the task: what the RF alone lets a model see, next to what it learned.
    objs = scan(build_dataset(data), limit=COVERAGE_MASKS, progress=False).only([SMALL])
    rows, miou, points, healthy = [], {}, [], {}
    for rf in p.ex5_rfs:
        spec = stack_spec(p, rf)
        per_seed = common.runs(results, p, spec, data, seeds)
        view = ModelView(create_model(spec, num_classes=3), spec, 3)
        covered = coverage(objs, view, margin=1, anchor="every")["classes"][SMALL]
        report = view.report((p.size, p.size)).outputs[0]
        est, small_iou = common.estimate(per_seed, "miou"), common.estimate(per_seed, f"iou:{SMALL}")
        miou[rf] = common.final(per_seed, "miou")
        healthy[rf] = common.healthy(per_seed)
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
                f"{covered['objects_covered']:.0%}",
                common.health_text(per_seed),
            ]
        )
        points.append((report.rf[0], est.mean, est.half_width, gflops, img_s))
    return rows, miou, points, healthy


def verdicts(
    small: int, miou: dict[int, list[float]], healthy: dict[int, bool], registered: dict
) -> tuple[str, dict]:
    """The registered prediction (saturation at the first RF reaching the need; the step there is better), the
    measurement and their agreement, as a sentence and as results. A sweep with a run that did not converge
    cannot place the saturation point."""
    need, predicted = registered["needed_rf"], registered["saturation_rf"]
    sat, detail = saturation(list(miou), miou)
    if not all(healthy.values()):
        sat_agrees = NOT_CONVERGED
    elif predicted is None:
        sat_agrees = "undetermined"
    else:
        sat_agrees = "agrees" if sat == predicted else "disagrees"
    text = (
        f"Objects {small} px (needed RF 2 x {small} + 1 = {need}). Predicted: saturation at RF "
        f"{predicted if predicted is not None else 'beyond the sweep'}. Measured: mIoU saturates at "
        f"RF {sat} ({sat / need:.2f} x the needed RF): {sat_agrees}."
    )
    step = registered["step"]
    judgement = None
    if step is not None:
        a, b = step["a"], step["b"]
        judgement = judge(step["prediction"], miou[a], miou[b], healthy[a] and healthy[b])
        difference = judgement.comparison.describe()
        text += f" RF {a} vs RF {b}, predicted better: mIoU difference {difference} ({judgement.text})."
    result = {
        "data": registered["data"],
        "needed_rf": need,
        "saturation_rf": sat,
        "prediction": {"saturation_rf": predicted, "step_at_needed": step["prediction"] if step else None},
        "agreement": {"saturation_rf": sat_agrees, "step_at_needed": judgement.text if judgement else None},
        **detail,
        "step_at_needed": None if judgement is None else judgement.to_json(),
    }
    return text, result
