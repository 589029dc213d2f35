"""Exercise 4: multi-scale fusion. ASPP heads with single rates and fused rates (with and without image
pooling) on objects of several sizes; accuracy per size class shows which rates serve which scales."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from atrous.data import build_dataset
from atrous.data.synthetic import needed_rf
from atrous.lab import bands, common, convergence, plots
from atrous.lab.jobs import Job
from atrous.lab.presets import Preset
from atrous.lab.report import Section, Table
from atrous.lab.stats import RELEVANT, judge, mean_ci
from atrous.rf import analyze
from atrous.train.inference import load

KEY = "ex4"


def data_spec(p: Preset) -> str:
    return f"multiscale:size={p.ms_size},n={p.n},max_extent={min(48, p.ms_size * 3 // 4)}"


def jobs(p: Preset, seeds: list[int]) -> list[Job]:
    return [
        common.job(p, spec, data_spec(p), s, f"ex4 {label}, seed {s}")
        for label, spec in p.ms_variants
        for s in seeds
    ]


def variant_rfs(p: Preset) -> dict[str, int | None]:
    """Each variant's RF per axis from the engine (None: global), at the task's size."""
    data = data_spec(p)
    rfs: dict[str, int | None] = {}
    for label, spec in p.ms_variants:
        out = analyze(per_seed_model(spec, data), (3, p.ms_size, p.ms_size)).outputs[0]
        rfs[label] = None if out.global_ else int(out.rf[0])
    return rfs


def predictions(p: Preset, seeds: list[int]) -> dict:
    """Before training: per size class, the variants whose RF covers its need, and, for the smallest of them
    against each variant that does not cover it, how much IoU the shorter RF can cost on the class
    (``bands.iou_loss_bound`` on the validation images of the exercise's seeds, the largest over them): at
    least ``RELEVANT`` predicts "better", less predicts a tie (no difference of ``RELEVANT`` or more): where the
    RF argument allows only a difference below the lab's margin, a tie is the prediction the test can decide
    (``quick``: rate 3 on the 36 px squares, which cannot decide 1.2 % of their pixels, the corners). The band
    comparisons measure exactly the pixels a shorter RF cannot decide."""
    ds = build_dataset(data_spec(p))
    rfs = variant_rfs(p)
    counts = [bands.need_counts(data_spec(p), seed) for seed in seeds]
    by_size = {}
    for c, name in enumerate(ds.class_names[1:]):
        need = class_need(ds.extents, c)
        covers = [v for v, rf in rfs.items() if rf is None or rf >= need]
        short = [v for v in rfs if v not in covers]
        lead = min(covers, key=lambda v: (rfs[v] is None, rfs[v] or 0)) if covers and short else None
        comparisons = []
        for other in short if lead else []:
            bound = max(bands.iou_loss_bound(pixels, c + 1, rfs[other]) for pixels in counts)
            prediction = "better" if bound >= RELEVANT else "tie"
            comparisons.append({"a": lead, "b": other, "prediction": prediction, "iou_loss_bound": bound})
        by_size[name] = {"needed_rf": need, "covering": covers, "comparisons": comparisons}
    pairs = {(c["a"], c["b"]) for size in by_size.values() for c in size["comparisons"]}
    band_pairs = [
        {"a": a, "b": b, "band": [rfs[b], rfs[a]], "prediction": "better"}
        for a, b in sorted(pairs, key=lambda ab: (rfs[ab[1]] or 0, rfs[ab[0]] or 0))
    ]
    return {
        "data": data_spec(p),
        "variants": dict(p.ms_variants),
        "rfs": rfs,
        "by_size": by_size,
        "bands": band_pairs,
    }


def section(p: Preset, seeds: list[int], results: dict, run_dir: Path, registered: dict) -> Section:
    data = registered["data"]
    classes = build_dataset(data).class_names[1:]  # object size classes
    s = Section(KEY, "Exercise 4: multi-scale fusion with ASPP", f"atrous lab --only {KEY} --preset {p.name}")
    s.paragraphs.append(
        f"Task `{data}`: objects of {len(classes)} sizes ({', '.join(classes)}), the label is the size class. "
        "Models: "
        + "; ".join(f"{label} = `{spec}`" for label, spec in p.ms_variants)
        + ". Each is a two-conv "
        "stride-2 stem and an ASPP head, so the rates set the receptive field. Per-class IoU on the validation "
        f"split, mean ± 95 % CI over seeds {seeds}. Runs: {convergence.RULE}."
    )
    means = np.zeros((len(p.ms_variants), len(classes)))
    rows, out, per_class, healthy = [], {"data": data, "classes": classes, "variants": {}}, {}, {}
    rfs: dict[str, int | None] = registered["rfs"]
    for i, (label, spec) in enumerate(p.ms_variants):
        per_seed = common.runs(results, p, spec, data, seeds)
        rf_text = "global" if rfs[label] is None else str(rfs[label])
        ious = [common.estimate(per_seed, f"iou:{c + 1}") for c in range(len(classes))]
        means[i] = [e.mean for e in ious]
        per_class[label] = [common.final(per_seed, f"iou:{c + 1}") for c in range(len(classes))]
        healthy[label] = common.healthy(per_seed)
        miou = common.estimate(per_seed, "miou")
        floor = common.floor_text(per_seed)
        rows.append([label, rf_text, floor, *[str(e) for e in ious], str(miou), common.health_text(per_seed)])
        out["variants"][label] = {
            "spec": spec,
            "rf": rfs[label],
            "iou": [e.to_json() for e in ious],
            "miou": miou.to_json(),
            "floor_miou": common.floor_miou(per_seed),
            "health": [r["health"] for r in per_seed],
            "steps": [r["steps"] for r in per_seed],
        }
    s.tables.append(
        Table(
            ["variant", "RF", "mIoU floor", *[f"IoU {c}" for c in classes], "mIoU", "runs"],
            rows,
            f"Validation IoU per object-size class, mean ± 95 % CI over seeds. {common.FLOOR_NOTE}",
        )
    )
    first = common.runs(results, p, p.ms_variants[0][1], data, seeds)
    note = common.absent_note(first, {c + 1: f"{name} objects" for c, name in enumerate(classes)})
    if note:
        s.paragraphs.append(note)
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
        name: size_class_part(s, name, c, registered["by_size"][name], per_class, healthy)
        for c, name in enumerate(classes)
    }
    out["bands"] = band_part(s, p, seeds, results, registered, healthy)
    s.results = out
    return s


def band_part(
    s: Section, p: Preset, seeds: list[int], results: dict, registered: dict, healthy: dict
) -> list:
    """Where the theory speaks: for each registered pair (a covers a need that b does not), both models'
    accuracy on the validation pixels whose need lies between b's RF and a's, which a can decide and b cannot
    (b can do no better there than guess from the class prior). Whole-class IoU mixes these pixels with ones
    both decide."""
    data = registered["data"]
    tallies = {
        label: [bands.tally(load(Path(r["run_dir"]) / "last"), data, seed=r["job"]["seed"]) for r in per_seed]
        for label, spec in p.ms_variants
        for per_seed in [common.runs(results, p, spec, data, seeds)]
    }
    rows, out = [], []
    for pred in registered["bands"]:
        a, b, (low, high) = pred["a"], pred["b"], pred["band"]
        acc = {v: [t.between(low, high)["accuracy"] for t in tallies[v]] for v in (a, b)}
        band = f"({low}, {'global' if high is None else high}]"
        if any(x is None for v in acc.values() for x in v):
            rows.append(
                [f"{a} vs {b}", band, 0, "-", "-", "no validation pixel needs an RF in this band", "-"]
            )
            out.append({**pred, "pixels_first_seed": 0, "agreement": "undetermined (no pixel in the band)"})
            continue
        j = judge(pred["prediction"], acc[a], acc[b], healthy[a] and healthy[b])
        pixels = tallies[a][0].between(low, high)["pixels"]
        rows.append(
            [f"{a} vs {b}", band, pixels, str(mean_ci(acc[a])), str(mean_ci(acc[b])), j.summary(), j.text]
        )
        out.append(
            {
                **pred,
                "pixels_first_seed": pixels,
                "accuracy": acc,
                "judgement": j.to_json(),
                "agreement": j.text,
            }
        )
    s.tables.append(
        Table(
            [
                "comparison",
                "pixels' needed RF",
                "pixels (first seed)",
                "accuracy a",
                "accuracy b",
                "measured",
                "agreement",
            ],
            rows,
            "Accuracy on the object pixels whose needed RF (per pixel, from the task's geometry) lies between the "
            "two models' RFs: decidable by a, not by b. Predicted (registered): a better. Mean ± 95 % CI over seeds",
        )
    )
    return out


def per_seed_model(spec: str, data: str):
    """The architecture of a variant with the data's class count, for the RF column."""
    from atrous.models.registry import create_model

    return create_model(spec, num_classes=build_dataset(data).num_classes)


def class_need(extents: list[int], c: int) -> int:
    """RF that tells size class ``c`` from every other for every pixel: 2 x side + 1 (both ends of the object
    in view) tells it from larger sizes; for the largest class it is enough to see a run longer than the next
    size, i.e. the next size's need (a corner pixel's window then spans more than that size)."""
    return needed_rf(extents[c] if c < len(extents) - 1 else extents[c - 1])


def size_class_part(s: Section, name: str, c: int, registered: dict, per_class: dict, healthy: dict) -> dict:
    """The registered prediction for one size class (the smallest covering variant beats each variant that does
    not cover the class's need), the measurement and their agreement."""
    best = max(per_class, key=lambda v: float(np.mean(per_class[v][c])))
    covers = registered["covering"]
    line = (
        f"Objects of {name} (needed RF {registered['needed_rf']}): predicted to separate them: "
        f"{', '.join(covers) or 'none'}. Measured: highest mean IoU with {best} ({mean_ci(per_class[best][c])})"
    )
    result: dict = {"needed_rf": registered["needed_rf"], "covering": covers, "best": best, "comparisons": []}
    for pred in registered["comparisons"]:
        a, b = pred["a"], pred["b"]
        j = judge(pred["prediction"], per_class[a][c], per_class[b][c], healthy[a] and healthy[b])
        line += (
            f"; {a} vs {b} (predicted {pred['prediction']}: {b}'s RF can cost it at most "
            f"{pred['iou_loss_bound']:.3f} IoU here): {j.summary()}, {j.text}"
        )
        result["comparisons"].append(
            {
                "a": a,
                "b": b,
                "prediction": pred["prediction"],
                "iou_loss_bound": pred["iou_loss_bound"],
                "measurement": j.comparison.to_json(),
                "judgement": j.to_json(),
                "agreement": j.text,
            }
        )
    s.paragraphs.append(line + ".")
    return result
