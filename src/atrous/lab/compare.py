"""The protocol of Exercises 2 and 3: in each regime of ``design``, first what the RF engine predicts for each
comparison, then the measurement (final validation metrics over the same seeds, paired by seed), then whether
the two agree."""

from __future__ import annotations

from dataclasses import dataclass

from atrous.lab import common, plots
from atrous.lab.design import Model, Regime, matched, predict_rf, predict_stride
from atrous.lab.jobs import CONVERGENCE, Job
from atrous.lab.presets import Preset
from atrous.lab.report import Section, Table
from atrous.lab.stats import VERDICT_RULES, agreement, compare_paired
from atrous.train.metrics import AGGREGATION


@dataclass(frozen=True)
class Contest:
    """``a`` against ``b`` (its control), on ``metric``; ``kind`` says which engine fact predicts it."""

    a: Model
    b: Model
    kind: str  # "rf": RF against the need; "stride": output stride against the object size
    metric: str  # "miou", or "iou:1" (IoU of the small objects)

    @property
    def name(self) -> str:
        return f"{self.a.label} vs {self.b.label}" + (" (small-object IoU)" if self.metric != "miou" else "")

    def predict(self, regime: Regime) -> tuple[str, str]:
        if self.kind == "rf":
            return predict_rf(self.a, self.b, regime.need)
        return predict_stride(self.a, self.b, regime.small)


def models_of(contests: list[Contest]) -> list[Model]:
    return list({m.spec: m for c in contests for m in (c.a, c.b)}.values())


def jobs(p: Preset, plan: list[tuple[Regime, list[Contest]]], seeds: list[int], key: str) -> list[Job]:
    return [
        common.job(p, m.spec, regime.data, s, f"{key} {m.label}, regime ({regime.key}), seed {s}", m.steps)
        for regime, contests in plan
        for m in models_of(contests)
        for s in seeds
    ]


def section(
    key: str,
    title: str,
    p: Preset,
    plan: list[tuple[Regime, list[Contest]]],
    seeds: list[int],
    results,
    run_dir,
) -> Section:
    s = Section(key, title, f"atrous lab --only {key} --preset {p.name}")
    fixed: dict[int, list[str]] = {}
    for m in {m.label: m for _, contests in plan for m in models_of(contests) if m.steps}.values():
        fixed.setdefault(m.steps, []).append(m.label)
    exceptions = "".join(
        f"; {' and '.join(labels)}: exactly {steps} steps, without the stopping rule"
        for steps, labels in fixed.items()
    )
    s.paragraphs.append(
        f"Each model trained up to {p.steps} steps{exceptions} (batch {p.batch_size}, "
        f"AdamW lr {p.lr}, Dice+CE; "
        f"{CONVERGENCE}), seeds {seeds}; a seed fixes data, initialisation and order, so comparisons are "
        f"paired by seed. Metrics: validation split, {AGGREGATION}. {VERDICT_RULES}"
    )
    out: dict = {"regimes": {}}
    for regime, contests in plan:
        out["regimes"][regime.key] = regime_part(s, p, regime, contests, seeds, results, run_dir, key)
    s.results = out
    return s


def regime_part(s: Section, p, regime: Regime, contests: list[Contest], seeds, results, run_dir, key) -> dict:
    predicted = {c.name: c.predict(regime) for c in contests}
    s.tables.append(
        Table(
            ["comparison", "RFs (engine)", "params, FLOPs within 10 %", "predicted", "because"],
            [
                [
                    c.name,
                    f"{rf_text(c.a)} vs {rf_text(c.b)}",
                    "yes" if matched(c.a, c.b) else "no (not a twin)",
                    *predicted[c.name],
                ]
                for c in contests
            ],
            f"Regime ({regime.key}), {regime.title}: `{regime.data}`; separating every pixel needs an RF of "
            f"2 x {regime.small} + 1 = {regime.need}. The engine's prediction, stated before training:",
        )
    )
    runs = {m.spec: common.runs(results, p, m.spec, regime.data, seeds, m.steps) for m in models_of(contests)}
    model_rows, models_out = [], {}
    for m in models_of(contests):
        miou, small = common.estimate(runs[m.spec], "miou"), common.estimate(runs[m.spec], "iou:1")
        model_rows.append([m.label, rf_text(m), m.params, m.flops / 1e9, str(miou), str(small)])
        models_out[m.label] = {
            **m.to_json(),
            "miou": miou.to_json(),
            "small_iou": small.to_json(),
            "per_seed_miou": common.final(runs[m.spec], "miou"),
        }
    s.tables.append(
        Table(
            ["model", "RF", "params", "GFLOPs/img", "val mIoU", "IoU small objects"],
            model_rows,
            f"Regime ({regime.key}): measured, mean ± 95 % CI over {len(seeds)} seeds",
        )
    )
    verdict_rows, comparisons = [], []
    for c in contests:
        cmp = compare_paired(common.final(runs[c.a.spec], c.metric), common.final(runs[c.b.spec], c.metric))
        guess, why = predicted[c.name]
        agree = agreement(guess, cmp)
        verdict_rows.append(
            [
                c.name,
                guess,
                cmp.summary(),
                f"{cmp.diff.mean:+.3f} ± {cmp.diff.half_width:.3f}",
                "-" if cmp.mdd != cmp.mdd else f"{cmp.mdd:.3f}",
                agree,
            ]
        )
        comparisons.append(
            {
                "a": c.a.label,
                "b": c.b.label,
                "metric": c.metric,
                "kind": c.kind,
                "cost_matched": matched(c.a, c.b),
                "prediction": guess,
                "because": why,
                "measurement": cmp.to_json(),
                "agreement": agree,
            }
        )
    s.tables.append(
        Table(
            ["comparison", "predicted", "measured", "difference (95 % CI)", "MDD", "agreement"],
            verdict_rows,
            f"Regime ({regime.key}): prediction, measurement, agreement (MDD: minimum detectable difference)",
        )
    )
    fig = f"{key}_regime_{regime.key}_curves.png"
    curves = {m.label: common.curves(runs[m.spec]) for m in models_of(contests)}
    plots.learning_curves(curves, run_dir / fig, f"regime ({regime.key}): training loss and validation mIoU")
    s.figures.append((fig, f"Regime ({regime.key}), {regime.title}: learning curves"))
    return {"regime": regime.to_json(), "models": models_out, "comparisons": comparisons}


def rf_text(m: Model) -> str:
    return "global" if m.rf is None else str(m.rf)
