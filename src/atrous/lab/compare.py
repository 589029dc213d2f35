"""The comparison protocol of Exercises 2 and 3: models trained on shapes and scale over the same seeds,
final validation metrics with 95 % CIs, and verdicts against a baseline by a paired test over seeds."""

from __future__ import annotations

from pathlib import Path

from atrous.lab import common, plots
from atrous.lab.jobs import Job
from atrous.lab.presets import Preset
from atrous.lab.report import Section, Table
from atrous.lab.stats import compare_paired
from atrous.train.metrics import AGGREGATION


def jobs(p: Preset, models: tuple[tuple[str, str], ...], seeds: list[int], key: str) -> list[Job]:
    return [
        common.job(p, spec, data, s, f"{key} {label} on {task}, seed {s}")
        for task, data in common.tasks(p).items()
        for label, spec in models
        for s in seeds
    ]


def section(
    key: str,
    title: str,
    p: Preset,
    models: tuple[tuple[str, str], ...],
    seeds: list[int],
    results: dict,
    run_dir: Path,
    timings: dict,
) -> Section:
    base_label, base_spec = models[0]
    s = Section(key, title, f"atrous lab --only {key} --preset {p.name}")
    s.paragraphs.append(
        "Models: "
        + "; ".join(f"{label} = `{spec}`" for label, spec in models)
        + f". Each trained {p.steps} steps, "
        f"batch {p.batch_size}, AdamW lr {p.lr}, Dice+CE loss, seeds {seeds} (a seed fixes data, initialisation and "
        f"order, so comparisons are paired by seed). Metrics: validation split, {AGGREGATION}."
    )
    out: dict = {"tasks": {}}
    timings[key] = {}
    for task, data in common.tasks(p).items():
        base = common.runs(results, p, base_spec, data, seeds)
        rows, task_out = [], {"data": data, "models": {}, "verdicts": {}}
        curves = {}
        for label, spec in models:
            per_seed = common.runs(results, p, spec, data, seeds)
            miou, mdice = common.estimate(per_seed, "miou"), common.estimate(per_seed, "mdice")
            cmp = compare_paired(common.final(per_seed, "miou"), common.final(base, "miou"))
            verdict = "baseline" if spec == base_spec else cmp.summary()
            img_s = common.speed(per_seed)
            timings[key][f"{task}/{label}"] = img_s
            rows.append(
                [
                    label,
                    per_seed[0]["params"],
                    per_seed[0]["flops"] / 1e9,
                    f"{img_s:.0f}",
                    str(miou),
                    str(mdice),
                    verdict,
                ]
            )
            task_out["models"][label] = {
                "spec": spec,
                "params": per_seed[0]["params"],
                "flops": per_seed[0]["flops"],
                "miou": miou.to_json(),
                "mdice": mdice.to_json(),
                "per_seed_miou": common.final(per_seed, "miou"),
            }
            if spec != base_spec:
                task_out["verdicts"][f"{label} vs {base_label}"] = cmp.to_json()
                s.paragraphs.append(f"{task}: {label} vs {base_label}: mIoU difference {cmp.describe()}.")
            curves[label] = common.curves(per_seed)
        s.tables.append(
            Table(
                ["model", "params", "GFLOPs/img", "train img/s", "val mIoU", "val mDice", f"vs {base_label}"],
                rows,
                f"{task} (`{data}`): final validation metrics, mean ± 95 % CI over {len(seeds)} seeds; train img/s "
                "measured on one CPU thread in this run (not in results.json)",
            )
        )
        fig = f"{key}_{task}_curves.png"
        plots.learning_curves(curves, run_dir / fig, f"{task}: training loss and validation mIoU per epoch")
        s.figures.append((fig, f"{task}: learning curves"))
        out["tasks"][task] = task_out
    s.results = out
    return s
