"""The protocol of Exercises 2 and 3: in each regime of ``design``, first what the RF engine predicts for each
comparison, then the measurement (final validation metrics over the same seeds, paired by seed), then whether
the two agree."""

from __future__ import annotations

from dataclasses import dataclass

from atrous.lab import common, convergence, plots
from atrous.lab.design import Model, Regime, matched, predict_rf, predict_stride
from atrous.lab.jobs import Job
from atrous.lab.presets import Preset
from atrous.lab.report import Section, Table
from atrous.lab.stats import VERDICT_RULES, judge
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
        common.job(p, m.spec, regime.data, s, f"{key} {m.label}, regime ({regime.key}), seed {s}")
        for regime, contests in plan
        for m in models_of(contests)
        for s in seeds
    ]


def predictions(plan: list[tuple[Regime, list[Contest]]]) -> dict:
    """The design and the engine's predictions, registered (predictions.json) before anything trains."""
    return {
        "regimes": {
            regime.key: {
                "regime": regime.to_json(),
                "models": {m.label: m.to_json() for m in models_of(contests)},
                "comparisons": [
                    {
                        "name": c.name,
                        "a": c.a.label,
                        "b": c.b.label,
                        "kind": c.kind,
                        "metric": c.metric,
                        "cost_matched": matched(c.a, c.b),
                        **dict(zip(("prediction", "because"), c.predict(regime))),
                    }
                    for c in contests
                ],
            }
            for regime, contests in plan
        }
    }


def section(
    key: str,
    title: str,
    p: Preset,
    plan: list[tuple[Regime, list[Contest]]],
    seeds: list[int],
    results,
    run_dir,
    registered: dict,
) -> Section:
    s = Section(key, title, f"atrous lab --only {key} --preset {p.name}")
    s.paragraphs.append(
        f"Each model trained up to {p.steps} steps (batch {p.batch_size}, AdamW lr {p.lr} after {p.warmup} warm-up "
        f"steps, gradients clipped at norm {p.clip_grad:g}, Dice+CE; {convergence.RULE}), seeds {seeds}; a seed "
        "fixes data, initialisation and order, so comparisons are paired by seed. "
        f"Metrics: validation split, {AGGREGATION}. {VERDICT_RULES}"
    )
    out: dict = {"regimes": {}}
    for regime, contests in plan:
        entry = registered["regimes"][regime.key]
        out["regimes"][regime.key] = regime_part(s, p, regime, contests, seeds, results, run_dir, key, entry)
    s.results = out
    return s


def regime_part(
    s: Section, p, regime: Regime, contests: list[Contest], seeds, results, run_dir, key, registered: dict
) -> dict:
    predicted = {c["name"]: c for c in registered["comparisons"]}
    s.tables.append(
        Table(
            ["comparison", "RFs (engine)", "params, FLOPs within 10 %", "predicted", "because"],
            [
                [
                    c.name,
                    f"{rf_text(c.a)} vs {rf_text(c.b)}",
                    "yes" if predicted[c.name]["cost_matched"] else "no (not a twin)",
                    predicted[c.name]["prediction"],
                    predicted[c.name]["because"],
                ]
                for c in contests
            ],
            f"Regime ({regime.key}), {regime.title}: `{regime.data}`; separating every pixel needs an RF of "
            f"2 x {regime.small} + 1 = {regime.need}. The engine's prediction, registered before training:",
        )
    )
    runs = {m.spec: common.runs(results, p, m.spec, regime.data, seeds) for m in models_of(contests)}
    model_rows, models_out = [], {}
    for m in models_of(contests):
        miou, small = common.estimate(runs[m.spec], "miou"), common.estimate(runs[m.spec], "iou:1")
        health = common.health_text(runs[m.spec])
        floor = common.floor_text(runs[m.spec])
        model_rows.append(
            [m.label, rf_text(m), floor, m.params, m.flops / 1e9, str(miou), str(small), health]
        )
        models_out[m.label] = {
            **m.to_json(),
            "miou": miou.to_json(),
            "small_iou": small.to_json(),
            "per_seed_miou": common.final(runs[m.spec], "miou"),
            "floor_miou": common.floor_miou(runs[m.spec]),
            "health": [r["health"] for r in runs[m.spec]],
            "steps": [r["steps"] for r in runs[m.spec]],
        }
    s.tables.append(
        Table(
            ["model", "RF", "mIoU floor", "params", "GFLOPs/img", "val mIoU", "IoU small objects", "runs"],
            model_rows,
            f"Regime ({regime.key}): measured, mean ± 95 % CI over {len(seeds)} seeds. {common.FLOOR_NOTE}",
        )
    )
    note = common.absent_note(next(iter(runs.values())), {1: "small objects"})
    if note:
        s.paragraphs.append(note)
    verdict_rows, comparisons = [], []
    for c in contests:
        guess, why = predicted[c.name]["prediction"], predicted[c.name]["because"]
        healthy = common.healthy(runs[c.a.spec]) and common.healthy(runs[c.b.spec])
        j = judge(
            guess, common.final(runs[c.a.spec], c.metric), common.final(runs[c.b.spec], c.metric), healthy
        )
        cmp = j.comparison
        verdict_rows.append(
            [
                c.name,
                guess,
                j.summary(),
                f"{cmp.diff.mean:+.3f} ± {cmp.diff.half_width:.3f}",
                "-" if cmp.mdd != cmp.mdd else f"{cmp.mdd:.3f}",
                j.text,
            ]
        )
        comparisons.append(
            {
                "a": c.a.label,
                "b": c.b.label,
                "metric": c.metric,
                "kind": c.kind,
                "cost_matched": predicted[c.name]["cost_matched"],
                "prediction": guess,
                "because": why,
                "measurement": cmp.to_json(),
                "judgement": j.to_json(),
                "agreement": j.text,
            }
        )
    s.tables.append(
        Table(
            ["comparison", "predicted", "measured", "difference (95 % CI)", "MDD", "agreement"],
            verdict_rows,
            f"Regime ({regime.key}): prediction, measurement, agreement (MDD: minimum detectable difference at "
            "power 0.8; a predicted tie is tested by TOST against ±0.05)",
        )
    )
    fig = f"{key}_regime_{regime.key}_curves.png"
    curves = {m.label: common.curves(runs[m.spec]) for m in models_of(contests)}
    plots.learning_curves(curves, run_dir / fig, f"regime ({regime.key}): training loss and validation mIoU")
    s.figures.append((fig, f"Regime ({regime.key}), {regime.title}: learning curves"))
    return {"regime": regime.to_json(), "models": models_out, "comparisons": comparisons}


def rf_text(m: Model) -> str:
    return "global" if m.rf is None else str(m.rf)
