"""What several exercises share: the task specs of a preset, jobs, and per-seed metric gathering."""

from __future__ import annotations

import functools
from typing import Any

from atrous.errors import AtrousError
from atrous.lab import convergence
from atrous.lab.jobs import FLOOR_MAX_STRIDE, Job
from atrous.lab.presets import Preset
from atrous.lab.stats import Estimate, mean_ci


def scale_task(p: Preset) -> str:
    return f"scale:size={p.size},n={p.n},small={p.scale_small},large={p.scale_large}"


def job(p: Preset, model: str, data: str, seed: int, label: str) -> Job:
    """A run of the preset's settings under the stopping rule (``convergence``), up to the preset's cap."""
    return Job(
        model,
        data,
        seed,
        p.steps,
        p.batch_size,
        p.lr,
        warmup=p.warmup,
        ema=p.ema,
        clip_grad=p.clip_grad,
        label=label,
    )


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


def floor_miou(per_seed: list[dict]) -> float | None:
    """Mean over seeds of the mIoU these runs' RF guarantees (the mean of their classes' floors,
    ``jobs.floors``); None where the floors are unknown (tasks without per-pixel needs, blocky logits)."""
    if not all(r["floors"] for r in per_seed):
        return None
    # As in mIoU, classes absent from the split (floor None) are left out.
    present = [[f for f in r["floors"] if f is not None] for r in per_seed]
    return sum(sum(f) / len(f) for f in present) / len(present)


def floor_text(per_seed: list[dict]) -> str:
    value = floor_miou(per_seed)
    return "-" if value is None else f"{value:.3f}"


FLOOR_NOTE = (
    "mIoU floor: what a model of this RF reaches at least if it labels correctly every validation pixel whose "
    "need its RF covers, and wrongly every other (from the engine's RF and the task's per-pixel needs, before "
    f"training; short of mIoU {convergence.SOLVED} the stopping rule holds each class whose floor is below 1 to "
    f"it within {convergence.FLOOR_SLACK}; '-': none, for logits from a grid more than {FLOOR_MAX_STRIDE} px "
    "apart)"
)


def final(per_seed: list[dict], metric: str) -> list[float]:
    """One validation metric at the end of training, per seed (``iou:2`` for class 2's IoU). A class metric
    leaves out the seeds whose validation images hold no pixel of the class (``absent``): every model trained on
    those seeds drops the same ones, so paired comparisons stay paired."""
    if ":" in metric:
        name, idx = metric.split(":")
        k = int(idx)
        gone = absent(per_seed, k)
        kept = [r for r in per_seed if r["job"]["seed"] not in gone]
        if gone and not kept:
            raise AtrousError(
                f"class {k} is absent from the validation images of {per_seed[0]['job']['data']!r} for every "
                f"seed ({gone}), so nothing measures it: give the task more validation images (a larger n) or "
                "other seeds"
            )
        return [r["final"][name][k] for r in kept]
    return [r["final"][metric] for r in per_seed]


def absent(per_seed: list[dict], label: int) -> list[int]:
    """Seeds of these runs whose validation images hold no pixel of ``label`` (its IoU is then undefined, or 0
    for a model that predicts it somewhere: neither measures the class). Seen on Exercise 4's task with seed
    102: the 36 px squares, placed first, left no room for 12 px ones in any of its 64 validation images."""
    return [r["job"]["seed"] for r in per_seed if label not in val_labels(r["job"]["data"], r["job"]["seed"])]


@functools.lru_cache(maxsize=256)
def val_labels(data: str, seed: int) -> frozenset[int]:
    """The labels of the validation images a run of ``data`` with ``seed`` was validated on."""
    from atrous.lab.bands import validation_set

    ds = validation_set(data, seed)
    return frozenset(int(v) for i in range(len(ds)) for v in ds[i][1].unique().tolist())


def absent_note(per_seed: list[dict], labels: dict[int, str]) -> str:
    """A sentence naming the seeds left out of each class's numbers, or "" when none is."""
    parts = [
        f"seed {', '.join(map(str, gone))}: no {name} in its validation images"
        for k, name in labels.items()
        if (gone := absent(per_seed, k))
    ]
    return f"Left out of the per-class numbers: {'; '.join(parts)}." if parts else ""


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
