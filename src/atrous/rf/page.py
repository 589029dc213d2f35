"""``atrous rf MODEL --html rf.html``: one self-contained page (no network needed to open it) where moving the
mouse over the output grid shows the exact input support of that output pixel.

What the page draws, and why it is exact. The engine gives every output pixel's theoretical window (on an
unbounded input), which repeats with the output's period: one window per phase, shifted by the stride. Where the
window lies inside the image, the in-image support is that window (nothing of the border is involved). Near the
border, zero padding and resampling rounding can cut more than the image edge does, so the builder asks the
engine for the exact in-image support of every border pixel (those whose window leaves the image) and of a
sample of interior pixels, and stores the ones that differ from the window clipped to the image; the page draws
those stored supports, and the clipped window elsewhere. Where no window repeats (a global RF, or resampling at
odd sizes, whose rounding differs from pixel to pixel) every pixel's support is stored. The page states how many
pixels were checked and how many differed. Supports are bitsets, base64-encoded, cropped to their bounding box.
"""

from __future__ import annotations

import base64
import html
import json
from fractions import Fraction
from pathlib import Path

import numpy as np

from atrous.errors import InputShapeError
from atrous.fileio import write_atomic

INTERIOR_SAMPLE = 256


def _bits(mask: np.ndarray) -> str:
    return base64.b64encode(np.packbits(mask.astype(bool).ravel()).tobytes()).decode()


def _crop(mask: np.ndarray) -> dict:
    ys, xs = np.nonzero(mask)
    if not len(ys):
        return {"box": [0, 0, 0, 0], "bits": ""}
    y0, x0, y1, x1 = ys.min(), xs.min(), ys.max() + 1, xs.max() + 1
    return {"box": [int(y0), int(x0), int(y1 - y0), int(x1 - x0)], "bits": _bits(mask[y0:y1, x0:x1])}


class Windows:
    """Theoretical windows of an output, one per phase, and the window of any pixel from them."""

    def __init__(self, report, name: str, shape: tuple[int, int]) -> None:
        out = report.output(name)
        entry = next(o for o in report.to_json()["outputs"] if o["name"] == name)
        self.period = [max(1, len(p)) for p in entry["phases"]]
        self.stride = [Fraction(str(s)) for s in out.stride]
        self.phases = {}
        for py in range(min(self.period[0], shape[0])):
            for px in range(min(self.period[1], shape[1])):
                origin, mask = report.window((py, px), name)
                self.phases[(py, px)] = (origin, mask)

    def origin(self, u: int, v: int) -> tuple[tuple[int, int], np.ndarray]:
        (oy, ox), mask = self.phases[(u % self.period[0], v % self.period[1])]
        dy = (u - u % self.period[0]) * self.stride[0]
        dx = (v - v % self.period[1]) * self.stride[1]
        return (oy + int(dy), ox + int(dx)), mask

    def clipped(self, u: int, v: int, shape: tuple[int, int]) -> tuple[np.ndarray, bool]:
        """(window of output pixel (u, v) clipped to the image, whether it had to be clipped)."""
        (oy, ox), mask = self.origin(u, v)
        grid = np.zeros(shape, dtype=bool)
        y0, x0 = max(oy, 0), max(ox, 0)
        y1, x1 = min(oy + mask.shape[0], shape[0]), min(ox + mask.shape[1], shape[1])
        if y1 > y0 and x1 > x0:
            grid[y0:y1, x0:x1] = mask[y0 - oy : y1 - oy, x0 - ox : x1 - ox]
        inside = oy >= 0 and ox >= 0 and oy + mask.shape[0] <= shape[0] and ox + mask.shape[1] <= shape[1]
        return grid, not inside

    def to_json(self) -> dict:
        return {
            "period": self.period,
            "stride": [float(s) for s in self.stride],
            "phases": {
                f"{py},{px}": {"origin": list(o), **_crop_full(m)} for (py, px), (o, m) in self.phases.items()
            },
        }


def _crop_full(mask: np.ndarray) -> dict:
    """The whole window box (holes included), so the page can place it by its origin."""
    return {"box": [0, 0, *map(int, mask.shape)], "bits": _bits(mask)}


def page_data(report, output: str | None = None) -> dict:
    out = report.output(output)
    if len(report.input_shape) != 3 or len(out.shape) != 4:
        raise InputShapeError("the RF page is drawn for 2-D inputs: give an input shape C,H,W")
    shape, oshape = tuple(report.input_shape[1:]), tuple(out.shape[2:])
    data = {
        "input": list(shape),
        "output": {"name": out.name, "shape": list(oshape), "global": out.global_},
        "layers": _layers(report),
        "exact": {},
        "checked": {"border": 0, "interior": 0, "differing": 0},
    }
    if out.global_ or any(s is None for s in out.stride):
        # No window repeats: the RF is global, or resampling at an odd size rounds differently at every
        # pixel. Every pixel's support then comes from the engine.
        for u in range(oshape[0]):
            for v in range(oshape[1]):
                data["exact"][f"{u},{v}"] = _crop(report.support((u, v), out.name))
        data["checked"]["border"] = oshape[0] * oshape[1]
        return data
    windows = Windows(report, out.name, oshape)
    data["windows"] = windows.to_json()
    interior = []
    for u in range(oshape[0]):
        for v in range(oshape[1]):
            clipped, at_border = windows.clipped(u, v, shape)
            if not at_border:
                interior.append((u, v, clipped))
                continue
            _check(report, out.name, u, v, clipped, data, "border")
    step = max(1, len(interior) // INTERIOR_SAMPLE)
    for u, v, clipped in interior[::step]:
        _check(report, out.name, u, v, clipped, data, "interior")
    return data


def _check(report, name: str, u: int, v: int, clipped: np.ndarray, data: dict, where: str) -> None:
    exact = report.support((u, v), name)
    data["checked"][where] += 1
    if not np.array_equal(exact, clipped):
        data["checked"]["differing"] += 1
        data["exact"][f"{u},{v}"] = _crop(exact)


def _layers(report) -> list[dict]:
    keys = ("name", "rf", "stride", "padding", "aligned", "global", "notes")
    return [{k: row[k] for k in keys} for row in report.to_json()["layers"]]


def write_page(report, path: str | Path, output: str | None = None, title: str = "") -> Path:
    data = page_data(report, output)
    text = TEMPLATE.replace("__TITLE__", html.escape(title or "atrous receptive field"))
    text = text.replace("__DATA__", json.dumps(data, separators=(",", ":")))
    path = Path(path)
    write_atomic(path, text)
    return path


TEMPLATE = (Path(__file__).with_name("page.html")).read_text()
