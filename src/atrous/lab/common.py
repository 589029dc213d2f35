"""What several exercises share: the task specs of a preset, jobs, and per-seed metric gathering."""

from __future__ import annotations

from typing import Any

from atrous.errors import AtrousError
from atrous.lab import convergence
from atrous.lab.jobs import Job
from atrous.lab.presets import Preset
from atrous.lab.stats import Estimate, mean_ci


def scale_task(p: Preset) -> str:
    return f"scale:size={p.size},n={p.n},small={p.scale_small},large={p.scale_large}"


def job(p: Preset, model: str, data: str, seed: int, label: str) -> Job:
    """A run of the preset's settings under the stopping rule (``convergence``), up to the preset's cap."""
    return Job(model, data, seed, p.steps, p.batch_size, p.lr, warmup=p.warmup, ema=p.ema, label=label)


def runs(
    results: dict[str, dict], p: Preset, model: str, data: str, seeds: list[int]
) -> list[dict[str, Any]]:
    return [results[job(p, model, data, s, "").key] for s in seeds]


def healthy(per_seed: list[dict]) -> bool:
    return all(r["health"] in convergence.HEALTHY for r in per_seed)


def health_text(per_seed: list[dict]) -> str:
    """``converged`` when every seed converged, else which seeds did not and why."""
    bad = [
        f"seed {r['job']['seed']}: {r['health']}" for r in per_seed if r["health"] not in convergence.HEALTHY
    ]
    return "; ".join(bad) if bad else convergence.CONVERGED


def final(per_seed: list[dict], metric: str) -> list[float]:
    """One validation metric at the end of training, per seed (``iou:2`` for class 2's IoU)."""
    if ":" in metric:
        name, idx = metric.split(":")
        return [defined(r, name, int(idx)) for r in per_seed]
    return [r["final"][metric] for r in per_seed]


def defined(run: dict, name: str, index: int) -> float:
    """A class's final metric; the metrics leave a class absent from both target and prediction undefined (and
    out of the means), so reading it as 0 would count it as a failure: the lab refuses instead."""
    value = run["final"][name][index]
    if value is None:
        raise AtrousError(
            f"class {index} is absent from the validation split of {run['job']['data']!r}, so its {name} is "
            "undefined: give the task more validation images (a larger n)"
        )
    return value


def estimate(per_seed: list[dict], metric: str) -> Estimate:
    return mean_ci(final(per_seed, metric))


def curves(per_seed: list[dict]) -> dict[str, list[list[float]]]:
    return {
        "train loss": [[h["train_loss"] for h in r["history"]] for r in per_seed],
        "val mIoU": [[h["val"]["miou"] for h in r["history"]] for r in per_seed],
    }


def speed(per_seed: list[dict]) -> float:
    """Mean measured training throughput (img/s, one thread); reported, never stored in results.json."""
    return sum(r["timing"]["train_img_s"] for r in per_seed) / len(per_seed)
