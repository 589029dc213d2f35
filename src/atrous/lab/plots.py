"""Figures of the lab, drawn from results only (titles state what is plotted, never a conclusion)."""

from __future__ import annotations

import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np


def save(fig: plt.Figure, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def learning_curves(curves: dict[str, dict[str, list[list[float]]]], path: Path, title: str) -> None:
    """curves[model][metric] = per-seed lists over epochs; mean line and +-1 SD band over seeds."""
    metrics = list(next(iter(curves.values())))
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.6 * len(metrics), 3.4), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for label, per_metric in curves.items():
            # Runs stop when they converge, so seeds may have different lengths: pad with NaN, average what ran.
            longest = max(len(c) for c in per_metric[metric])
            data = np.array(
                [list(c) + [np.nan] * (longest - len(c)) for c in per_metric[metric]], dtype=float
            )
            epochs = np.arange(1, longest + 1)
            with warnings.catch_warnings():  # epochs only one seed reached have no SD: drawn as 0
                warnings.simplefilter("ignore", RuntimeWarning)
                mean, sd = np.nanmean(data, axis=0), np.nan_to_num(np.nanstd(data, axis=0, ddof=1))
            ax.plot(epochs, mean, marker="o", markersize=3, label=label)
            ax.fill_between(epochs, mean - sd, mean + sd, alpha=0.2)
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"{title} (mean over seeds, band: +-1 SD)", fontsize=9)
    save(fig, path)


def heatmap(
    values: np.ndarray, rows: list[str], cols: list[str], path: Path, title: str, fmt: str = "{:.2f}"
) -> None:
    fig, ax = plt.subplots(figsize=(1.6 * len(cols) + 2.5, 0.5 * len(rows) + 1.6))
    im = ax.imshow(values, cmap="viridis", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(len(cols)), cols, fontsize=8)
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            ax.text(
                j,
                i,
                fmt.format(values[i, j]),
                ha="center",
                va="center",
                fontsize=8,
                color="white" if values[i, j] < 0.6 else "black",
            )
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set_title(title, fontsize=9)
    save(fig, path)


def rf_accuracy(curves: dict[int, tuple[int, list[tuple]]], path: Path) -> None:
    """Exercise 5: per object size, (needed RF, [(RF, mean mIoU, CI, GFLOPs, img/s), ...]); accuracy against RF
    with the need dashed, and compute and measured speed against RF."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    speed_ax = axes[1].twinx()
    for small, (need, points) in curves.items():
        rf_axis, mean, ci, flops, speeds = map(np.array, zip(*points))
        line = axes[0].errorbar(rf_axis, mean, yerr=ci, marker="o", capsize=3, label=f"objects {small}px")
        axes[0].axvline(need, linestyle="--", color=line[0].get_color(), alpha=0.7)
        axes[1].plot(rf_axis, flops, marker="o", label=f"GFLOPs/img ({small}px task)")
        speed_ax.plot(rf_axis, speeds, marker="s", color="tab:red", alpha=0.6, label="train img/s")
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xlabel("receptive field (pixels per axis)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("validation mIoU (mean, 95 % CI)")
    axes[0].set_title("accuracy vs RF (dashed: needed RF of the task)", fontsize=9)
    axes[0].legend(fontsize=8)
    axes[1].set_ylabel("GFLOPs per image")
    speed_ax.set_ylabel("train img/s (one thread)")
    handles = axes[1].get_legend_handles_labels()[0] + speed_ax.get_legend_handles_labels()[0]
    axes[1].legend(handles, [h.get_label() for h in handles], fontsize=8, loc="lower right")
    axes[1].set_title("compute vs RF", fontsize=9)
    save(fig, path)
