"""A grid of samples with their masks overlaid: ``atrous data preview SPEC --out grid.png``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from atrous.data.files import voc_palette

# Percentiles of a picture are stable on a sample: a regular grid of at most this many values decides the
# stretch (torch.quantile refuses inputs above 2^24 values, a 3000 x 4000 RGB image has 3.6e7).
QUANTILE_SAMPLE = 1 << 20


def stretch_limits(x: np.ndarray, sample: int = QUANTILE_SAMPLE) -> tuple[float, float]:
    """1st and 99th percentiles of ``x``, over an evenly strided subsample when it holds more than ``sample``
    values (deterministic: the same image always gets the same stretch)."""
    flat = x.reshape(-1)
    step = max(1, -(-flat.size // sample))
    values = flat[::step].astype(np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return 0.0, 1.0
    lo, hi = np.quantile(values, [0.01, 0.99])
    return float(lo), float(hi)


def to_rgb(image: torch.Tensor | np.ndarray) -> np.ndarray:
    """Any (C, H, W) float image -> (H, W, 3) uint8, each image stretched to its own 1st-99th percentile."""
    x = image.detach().cpu().float().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    x = x[:3] if x.shape[0] >= 3 else np.broadcast_to(x[:1], (3, *x.shape[1:]))
    lo, hi = stretch_limits(x)
    x = np.clip((x.astype(np.float32) - lo) / (hi - lo + 1e-8), 0, 1)
    return (x.transpose(1, 2, 0) * 255).astype(np.uint8)


def overlay(
    rgb: np.ndarray, mask: np.ndarray, palette: list, ignore_index: int, alpha: float = 0.45
) -> np.ndarray:
    colors = np.array(palette[:256], dtype=np.float32)
    out = rgb.astype(np.float32)
    labelled = (mask > 0) & (mask != ignore_index)
    index = mask[labelled].astype(np.int64) % len(colors)  # a uint8 mask would overflow at 256 colours
    out[labelled] = (1 - alpha) * out[labelled] + alpha * colors[index]
    out[mask == ignore_index] = 0.5 * out[mask == ignore_index] + 0.5 * 255  # ignore: washed out
    return out.astype(np.uint8)


def preview(dataset, out: str | Path, count: int = 16, cols: int = 4) -> Path:
    """Image and overlay side by side for the first ``count`` samples; returns the PNG's path."""
    palette = getattr(dataset, "palette", None) or voc_palette()
    ignore = getattr(dataset, "ignore_index", 255)
    count = min(count, len(dataset))
    tiles = []
    for i in range(count):
        image, mask = dataset[i]
        rgb = to_rgb(image)
        tiles.append(np.concatenate([rgb, overlay(rgb, mask.numpy(), palette, ignore)], axis=1))
    h = max(t.shape[0] for t in tiles)
    w = max(t.shape[1] for t in tiles)
    rows = -(-count // cols)
    grid = np.full((rows * (h + 4), min(cols, count) * (w + 4), 3), 255, dtype=np.uint8)
    for k, t in enumerate(tiles):
        r, c = divmod(k, cols)
        grid[r * (h + 4) : r * (h + 4) + t.shape[0], c * (w + 4) : c * (w + 4) + t.shape[1]] = t
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).save(path)
    return path
