"""What several exercises share: the task specs of a preset, jobs, and per-seed metric gathering."""

from __future__ import annotations

from typing import Any

from atrous.lab.jobs import Job
from atrous.lab.presets import Preset
from atrous.lab.stats import Estimate, mean_ci


def scale_task(p: Preset) -> str:
    return f"scale:size={p.size},n={p.n},small={p.scale_small},large={p.scale_large}"


def job(p: Preset, model: str, data: str, seed: int, label: str, steps: int | None = None) -> Job:
    """A run of the preset's settings; ``steps`` given: exactly that many steps, without the convergence rule."""
    return Job(model, data, seed, steps or p.steps, p.batch_size, p.lr, stop_early=steps is None, label=label)


def runs(
    results: dict[str, dict], p: Preset, model: str, data: str, seeds: list[int], steps: int | None = None
) -> list[dict[str, Any]]:
    return [results[job(p, model, data, s, "", steps).key] for s in seeds]


def final(per_seed: list[dict], metric: str) -> list[float]:
    """One validation metric at the end of training, per seed (``iou:2`` for class 2's IoU)."""
    if ":" in metric:
        name, idx = metric.split(":")
        return [r["final"][name][int(idx)] or 0.0 for r in per_seed]
    return [r["final"][metric] for r in per_seed]


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
