"""Exercise 4: multi-scale fusion. ASPP heads with single rates and fused rates (with and without image
pooling) on objects of several sizes; accuracy per size class shows which rates serve which scales."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from atrous.data import build_dataset
from atrous.data.synthetic import needed_rf
from atrous.lab import common, plots
from atrous.lab.jobs import Job
from atrous.lab.presets import Preset
from atrous.lab.report import Section, Table
from atrous.lab.stats import agreement, compare_paired, mean_ci
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


def section(p: Preset, seeds: list[int], results: dict, run_dir: Path) -> Section:
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
    extents = build_dataset(data).extents
    rfs: dict[str, int | None] = {}
    for i, (label, spec) in enumerate(p.ms_variants):
        per_seed = common.runs(results, p, spec, data, seeds)
        rf = analyze(per_seed_model(spec, data), (3, p.ms_size, p.ms_size)).outputs[0]
        rf_text = "global" if rf.global_ else str(rf.rf[0])
        rfs[label] = None if rf.global_ else int(rf.rf[0])
        ious = [common.estimate(per_seed, f"iou:{c + 1}") for c in range(len(classes))]
        means[i] = [e.mean for e in ious]
        per_class[label] = [common.final(per_seed, f"iou:{c + 1}") for c in range(len(classes))]
        miou = common.estimate(per_seed, "miou")
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
    out["by_size"] = {
        name: size_class_part(s, name, c, extents, rfs, per_class) for c, name in enumerate(classes)
    }
    s.results = out
    return s


def per_seed_model(spec: str, data: str):
    """The architecture of a variant with the data's class count, for the RF column."""
    from atrous.models.registry import create_model

    return create_model(spec, num_classes=build_dataset(data).num_classes)


def class_need(extents: list[int], c: int) -> int:
    """RF that tells size class ``c`` from every other for every pixel: 2 x side + 1 (both ends of the object
    in view) tells it from larger sizes; for the largest class it is enough to see a run longer than the next
    size, i.e. the next size's need (a corner pixel's window then spans more than that size)."""
    return needed_rf(extents[c] if c < len(extents) - 1 else extents[c - 1])


def size_class_part(s: Section, name: str, c: int, extents: list[int], rfs: dict, per_class: dict) -> dict:
    """Prediction: a variant whose RF reaches the class's need separates its every pixel from the other sizes;
    one whose RF falls short cannot for every pixel. The smallest covering variant is predicted to beat each
    variant that does not cover."""
    need = class_need(extents, c)
    covers = [v for v, rf in rfs.items() if rf is None or rf >= need]
    short = [v for v in rfs if v not in covers]
    best = max(per_class, key=lambda v: float(np.mean(per_class[v][c])))
    line = (
        f"Objects of {name} (needed RF {need}): predicted to separate them: {', '.join(covers) or 'none'}. "
        f"Measured: highest mean IoU with {best} ({mean_ci(per_class[best][c])})"
    )
    result: dict = {"needed_rf": need, "covering": covers, "best": best, "comparisons": []}
    if covers and short:
        lead = min(covers, key=lambda v: (rfs[v] is None, rfs[v] or 0))
        for other in short:
            cmp = compare_paired(per_class[lead][c], per_class[other][c])
            agree = agreement("better", cmp)
            line += f"; {lead} vs {other} (predicted better): {cmp.summary()}, {agree}"
            result["comparisons"].append(
                {
                    "a": lead,
                    "b": other,
                    "prediction": "better",
                    "measurement": cmp.to_json(),
                    "agreement": agree,
                }
            )
    s.paragraphs.append(line + ".")
    return result
