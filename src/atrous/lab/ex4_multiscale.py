"""Exercise 4: multi-scale fusion. ASPP heads with single rates and fused rates (with and without image
pooling) on objects of several sizes; accuracy per size class shows which rates serve which scales."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from atrous.data import build_dataset
from atrous.lab import common, plots
from atrous.lab.jobs import Job
from atrous.lab.presets import Preset
from atrous.lab.report import Section, Table
from atrous.lab.stats import compare_paired, mean_ci
from atrous.rf import analyze

KEY = "ex4"


def data_spec(p: Preset) -> str:
    return f"multiscale:size={p.ms_size},n={p.n},max_extent={min(48, p.ms_size * 3 // 4)}"


def jobs(p: Preset, seeds: list[int]) -> list[Job]:
    return [
        common.job(p, spec, data_spec(p), s, f"ex4 {label}, seed {s}")
        for label, spec in p.ms_variants
        for s in seeds
    ]


def section(p: Preset, seeds: list[int], results: dict, run_dir: Path, timings: dict) -> Section:
    data = data_spec(p)
    classes = build_dataset(data).class_names[1:]  # object size classes
    s = Section(KEY, "Exercise 4: multi-scale fusion with ASPP", f"atrous lab --only {KEY} --preset {p.name}")
    s.paragraphs.append(
        f"Task `{data}`: objects of {len(classes)} sizes ({', '.join(classes)}), the label is the size class. "
        "Models: "
        + "; ".join(f"{label} = `{spec}`" for label, spec in p.ms_variants)
        + ". Each is a two-conv "
        "stride-2 stem and an ASPP head, so the rates set the receptive field. Per-class IoU on the validation "
        f"split, mean ± 95 % CI over seeds {seeds}."
    )
    means = np.zeros((len(p.ms_variants), len(classes)))
    rows, out, per_class = [], {"data": data, "classes": classes, "variants": {}}, {}
    timings[KEY] = {}
    for i, (label, spec) in enumerate(p.ms_variants):
        per_seed = common.runs(results, p, spec, data, seeds)
        rf = analyze(per_seed_model(spec, data), (3, p.ms_size, p.ms_size)).outputs[0]
        rf_text = "global" if rf.global_ else str(rf.rf[0])
        ious = [common.estimate(per_seed, f"iou:{c + 1}") for c in range(len(classes))]
        means[i] = [e.mean for e in ious]
        per_class[label] = [common.final(per_seed, f"iou:{c + 1}") for c in range(len(classes))]
        miou = common.estimate(per_seed, "miou")
        timings[KEY][label] = common.speed(per_seed)
        rows.append([label, rf_text, *[str(e) for e in ious], str(miou)])
        out["variants"][label] = {
            "spec": spec,
            "rf": None if rf.global_ else rf.rf[0],
            "iou": [e.to_json() for e in ious],
            "miou": miou.to_json(),
        }
    s.tables.append(
        Table(
            ["variant", "RF", *[f"IoU {c}" for c in classes], "mIoU"],
            rows,
            "Validation IoU per object-size class, mean ± 95 % CI over seeds",
        )
    )
    fig = "ex4_iou_by_size.png"
    plots.heatmap(
        means,
        [v for v, _ in p.ms_variants],
        classes,
        run_dir / fig,
        "Mean validation IoU per variant (rows) and object size (columns)",
    )
    s.figures.append((fig, "IoU per ASPP variant and object size"))
    out["best_per_size"] = {}
    singles = [
        label for label, spec in p.ms_variants if "," not in spec.split("rates=")[1].split(",image")[0]
    ]
    for c, name in enumerate(classes):
        best = max(per_class, key=lambda v: float(np.mean(per_class[v][c])))
        line = f"Objects of {name}: highest mean IoU with {best} ({mean_ci(per_class[best][c])})"
        comparisons = {}
        for other in singles:
            if other != best:
                cmp = compare_paired(per_class[best][c], per_class[other][c])
                comparisons[other] = cmp.to_json()
                line += f"; vs {other}: {cmp.summary()}"
        s.paragraphs.append(line + ".")
        out["best_per_size"][name] = {"best": best, "vs_single_rates": comparisons}
    s.results = out
    return s


def per_seed_model(spec: str, data: str):
    """The architecture of a variant with the data's class count, for the RF column."""
    from atrous.models.registry import create_model

    return create_model(spec, num_classes=build_dataset(data).num_classes)
