"""Which objects a model sees whole: coverage of a dataset's objects by a model's exact receptive field.

An object is **covered** when every one of its pixels (grown by ``margin`` pixels of context, clipped to the
image) lies in the exact in-image support (:meth:`atrous.rf.report.RFReport.support`) of the output pixel at
the object's centre (``anchor="centre"``, the centre of its bounding box), or of every output pixel of the
object (``anchor="every"``). Holes in the support count as not covered, and borders cut the support as the
engine computes them: no box approximation anywhere.

``anchor="every"`` with ``margin=1`` is the lab's criterion for ``scale``: a pixel is told apart from a larger
object only if its window shows both ends of its run, one background pixel beyond each, so a hole-free square
window covers every object of side ``s`` that way exactly from RF ``2 s + 1`` (:func:`needed_rf`) on.

The analysis is done once per (model, image size) and the support once per output pixel asked for, so a
dataset of one image size costs one analysis and at most one support per distinct anchor pixel.

**Many image sizes.** Up to ``max_sizes`` distinct sizes are each analysed as they are (exact). Beyond that
they are grouped into ``max_sizes`` buckets (:func:`atrous.data.stats.size_buckets`), each analysed at its
members' smallest height and smallest width, and each object is judged in the sub-rectangle of that size of
its own image that holds it (:func:`placement`). The support at the object's centre depends on the image
size only through the borders, and a sub-rectangle only adds borders: every path from an input pixel to the
anchor inside the sub-rectangle is a path in the whole image, so for a translation-equivariant model (stride
1: conv stacks) the support can only shrink — coverage is never overstated — and it is exact wherever the
anchor is at least the RF's half-width from the sub-rectangle's cut edges (or they are the image's own
edges). For strided models the offset is kept a multiple of 32 (every zoo stride divides it) where the object
allows, so the stride grid keeps its phase; their final resize to the input size samples slightly differently
at another size, so there the bucket is a close approximation, not a bound. The larger direction would be
wrong: a bucket analysed at its largest size would move borders away and could see context that is not there.

Against the **effective** RF (``erf_coverage``), the support is the square of half-width ``r`` around the
anchor holding ``mass`` of the gradient (the ERF's ``radius_95`` at the default 0.95), measured once at the
image centre and translated: the ERF has no exact border behaviour to be exact about.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch import nn

from atrous.data.stats import (
    PERCENTILES,
    DatasetObjects,
    Found,
    Size,
    bucket_notes,
    percentile_key,
    size_buckets,
    size_key,
)
from atrous.errors import AtrousError, OptionError, option
from atrous.rf import analyze
from atrous.rf.report import RFReport

ANCHORS = ("centre", "every")
SUPPORT_CACHE_BYTES = 256 * 2**20
PHASE = 32  # every stride in the zoo divides it: a sub-rectangle offset by a multiple keeps the grid's phase
BUCKET_WHY = (
    "each bucket is analysed at its smallest height and width, every object in the sub-rectangle of its own "
    "image that holds it: a smaller image only adds borders, which can only cut the support (exact for "
    "stride-1 models where the anchor is an RF half-width from the cut edges, close for strided ones)"
)


class CoverageError(OptionError):
    """A coverage question that cannot be answered as asked (too many image sizes, a bad anchor)."""


@dataclass
class ModelView:
    """A model and its exact supports, analysed once per input size and cached per output pixel."""

    model: nn.Module
    name: str
    channels: int
    _reports: dict[tuple[int, int], RFReport] = field(default_factory=dict, repr=False)
    _supports: dict[tuple[tuple[int, int], tuple[int, int]], np.ndarray] = field(
        default_factory=dict, repr=False
    )

    def report(self, size: tuple[int, int]) -> RFReport:
        if size not in self._reports:
            with warnings.catch_warnings():  # a gridded schedule warns once at creation, not per analysis
                warnings.simplefilter("ignore")
                self._reports[size] = analyze(self.model, (self.channels, *size))
        return self._reports[size]

    def support(self, size: tuple[int, int], pixel: tuple[int, int]) -> np.ndarray:
        """The in-image support (bool, ``size``) of the output pixel over input pixel ``pixel``."""
        key = (size, pixel)
        hit = self._supports.get(key)
        if hit is not None:
            return hit
        report = self.report(size)
        out_hw = report.outputs[0].shape[2:]
        # Models that return logits at a lower resolution: the output pixel whose area holds the input pixel.
        at = tuple(p * o // s for p, o, s in zip(pixel, out_hw, size))
        grid = report.support(at)
        if len(self._supports) * grid.size >= SUPPORT_CACHE_BYTES:
            self._supports.clear()
        self._supports[key] = grid
        return grid


def _anchors(f: Found, anchor: str) -> list[tuple[int, int]]:
    if anchor == "centre":
        return [f.obj.centre]
    o = f.obj
    return [(int(r), c) for r, s, e in zip(o.rows, o.starts, o.ends) for c in range(int(s), int(e))]


def _inside(grid: np.ndarray, top: int, left: int, crop: np.ndarray) -> bool:
    """Whether every True pixel of ``crop`` (placed at ``top``, ``left``) is in ``grid``; pixels off the grid
    are not."""
    t0, l0 = max(top, 0), max(left, 0)
    t1 = min(top + crop.shape[0], grid.shape[0])
    l1 = min(left + crop.shape[1], grid.shape[1])
    if t1 <= t0 or l1 <= l0:
        return not crop.any()
    on = crop[t0 - top : t1 - top, l0 - left : l1 - left]
    if int(on.sum()) != int(crop.sum()):
        return False
    return not (on & ~grid[t0:t1, l0:l1]).any()


def _offset(lo: int, hi: int, want: int, room: int) -> int:
    """Along one axis: the sub-rectangle's offset, in [lo, hi] (it holds the object) and [0, room] (it lies in
    the image), a multiple of PHASE nearest ``want`` if any, else ``want`` clamped."""
    lo, hi = max(lo, 0), min(hi, room)
    if lo > hi:  # the object is larger than the bucket: it cannot be held, keep the centring offset
        return min(max(want, 0), room)
    best = min(max(want, lo), hi)
    aligned = [m for m in (best // PHASE * PHASE, -(-best // PHASE) * PHASE) if lo <= m <= hi]
    return min(aligned, key=lambda m: abs(m - want)) if aligned else best


def placement(f: Found, at: Size, margin: int) -> tuple[int, int]:
    """(dy, dx): where the ``at``-sized sub-rectangle of ``f``'s image that the object is judged in starts;
    (0, 0) when the image is that size. Centred on the object where the image allows."""
    if f.size == at:
        return 0, 0
    top, left, crop = f.obj.crop(margin, f.size)
    out = []
    for axis, (start, extent) in enumerate(((top, crop.shape[0]), (left, crop.shape[1]))):
        centre, side, room = f.obj.centre[axis], at[axis], f.size[axis] - at[axis]
        out.append(_offset(start + extent - side, start, centre - side // 2, room))
    return out[0], out[1]


def object_covered(view: ModelView, f: Found, margin: int, anchor: str, at: Size | None = None) -> bool:
    """Whether the object is covered, judged in an ``at``-sized sub-rectangle of its image (default its
    whole image)."""
    at = f.size if at is None else at
    top, left, crop = f.obj.crop(margin, f.size)
    dy, dx = placement(f, at, margin)
    return all(
        0 <= a[0] - dy < at[0]
        and 0 <= a[1] - dx < at[1]
        and _inside(view.support(at, (a[0] - dy, a[1] - dx)), top - dy, left - dx, crop)
        for a in _anchors(f, anchor)
    )


def reach(f: Found, margin: int, anchor: str) -> int:
    """The chessboard half-width a window centred on each anchor needs to hold the object (grown by
    ``margin``): the farthest needed pixel along either axis from the anchors."""
    top, left, crop = f.obj.crop(margin, f.size)
    ys, xs = np.nonzero(crop)
    need_y, need_x = ys + top, xs + left
    pts = np.array(_anchors(f, anchor))
    reach_y = max(need_y.max() - pts[:, 0].min(), pts[:, 0].max() - need_y.min())
    reach_x = max(need_x.max() - pts[:, 1].min(), pts[:, 1].max() - need_x.min())
    return int(max(reach_y, reach_x))


def erf_object_covered(f: Found, radius: int, margin: int, anchor: str) -> bool:
    """Whether the square of half-width ``radius`` around each anchor holds the object."""
    return reach(f, margin, anchor) <= radius


def buckets(objs: DatasetObjects, max_sizes: int) -> dict[Size, Size]:
    """Each image size of ``objs`` -> the size it is analysed at (itself up to ``max_sizes`` sizes)."""
    if max_sizes < 1:
        raise CoverageError(f"{option('max_sizes')} must be at least 1, got {max_sizes}")
    return size_buckets(objs.sizes, max_sizes)


def bucket_block(objs: DatasetObjects, at: dict[Size, Size]) -> dict[str, Any]:
    """What the JSON says about buckets: nothing when every size is analysed as it is."""
    if all(k == v for k, v in at.items()):
        return {}
    return {"size_buckets": bucket_notes(at), "size_buckets_why": BUCKET_WHY}


def check_anchor(anchor: str, margin: int) -> None:
    if anchor not in ANCHORS:
        raise CoverageError(f"anchor {anchor!r} is not one of {', '.join(ANCHORS)} ({option('anchor')})")
    if margin < 0:
        raise CoverageError(f"{option('margin')} must be >= 0 pixels, got {margin}")


def covered_flags(
    objs: DatasetObjects, view: ModelView, margin: int = 0, anchor: str = "centre", progress: bool = False,
    at: dict[Size, Size] | None = None,
) -> np.ndarray:  # fmt: skip
    """One flag per object of ``objs.found``: covered by the model's exact support (at its size's bucket)."""
    from rich.progress import Progress

    check_anchor(anchor, margin)
    at = at or {s: s for s in objs.sizes}
    flags = np.zeros(len(objs.found), dtype=bool)
    with Progress(transient=True, disable=not progress) as bar:
        task = bar.add_task(f"coverage by {view.name}", total=len(objs.found))
        for i, f in enumerate(objs.found):
            flags[i] = object_covered(view, f, margin, anchor, at[f.size])
            bar.advance(task)
    return flags


def _shares(objs: DatasetObjects, flags: np.ndarray, keep: np.ndarray) -> dict[str, float | int]:
    area = np.array([f.obj.area for f in objs.found])
    return {
        "objects": int(keep.sum()),
        "objects_covered": float(flags[keep].mean()),
        "pixels_covered": float(area[keep & flags].sum() / area[keep].sum()),
    }


def per_class(
    objs: DatasetObjects, flags: np.ndarray, at: dict[Size, Size] | None = None
) -> dict[int, dict[str, Any]]:
    """Per class with objects: shares of objects and of object pixels covered, and per image size (or size
    bucket) when the dataset has several."""
    at = at or {s: s for s in objs.sizes}
    labels = np.array([f.obj.label for f in objs.found])
    bucket = [at[f.size] for f in objs.found]
    out = {}
    for k in objs.classes:
        keep = labels == k
        if not keep.any():
            continue
        row = _shares(objs, flags, keep)
        if len(objs.sizes) > 1:
            row["by_size"] = {}
            for r in sorted(set(at.values())):
                here = keep & np.array([b == r for b in bucket])
                if here.any():
                    row["by_size"][size_key(r)] = _shares(objs, flags, here)
        out[k] = row
    return out


def rf_facts(view: ModelView, sizes: list[Size]) -> dict[str, Any]:
    """RF, holes and, for a global RF, why: per image size analysed (the theoretical RF does not depend on
    it, the in-image support does)."""
    facts = {}
    for size in sorted(sizes):
        out = view.report(size).outputs[0]
        row: dict[str, Any] = {
            "rf": out.rf,
            "global": out.global_,
            "holes": max(a.hole_count for a in out.axes),
            "aligned": out.aligned,
        }
        if out.global_:
            why = next((n for n in out.notes if n.startswith("global")), "global: a global op")
            why = why.removeprefix("global: ")
            row["why"] = f"the RF is global ({why}): every output pixel sees the whole image"
        facts[size_key(size)] = row
    return facts


def object_rates(objs: DatasetObjects, k: int, rf: int | None) -> dict[str, float] | None:
    """Object rate (extent / RF, Loos et al. 2024) per extent percentile; None for a global RF."""
    found = objs.of_class(k)
    if rf is None or not found:
        return None
    extent = objs.measure(found, "extent")
    return {percentile_key(q): float(np.percentile(extent, q) / rf) for q in PERCENTILES}


def coverage(
    objs: DatasetObjects,
    view: ModelView,
    margin: int = 0,
    anchor: str = "centre",
    max_sizes: int = 8,
    progress: bool = False,
) -> dict[str, Any]:
    """The ``coverage`` block of ``data stats --model``."""
    at = buckets(objs, max_sizes)
    flags = covered_flags(objs, view, margin, anchor, progress, at)
    facts = rf_facts(view, sorted(set(at.values())))
    rfs = [max(r for r in f["rf"] if r is not None) if not f["global"] else None for f in facts.values()]
    rf = None if any(r is None for r in rfs) else max(rfs)
    classes = per_class(objs, flags, at)
    for k, row in classes.items():
        row["name"] = objs.class_names[k]
        row["object_rate"] = object_rates(objs, k, rf)
    data = {"model": view.name, "anchor": anchor, "margin": margin, "rf": facts, "classes": classes,
            **bucket_block(objs, at)}  # fmt: skip
    notes = sorted({f["why"] for f in facts.values() if "why" in f})
    if notes:
        data["notes"] = notes
    return data


def erf_radius(view: ModelView, size: tuple[int, int], mass: float, samples: int = 16) -> dict[str, Any]:
    """The half-width of the square around the image centre that holds ``mass`` of the ERF at that centre."""
    from atrous.erf import _square_radius, effective_rf

    if not 0 < mass <= 1:
        raise CoverageError(f"{option('erf_mass')} must be in (0, 1], got {mass}")
    result = effective_rf(view.model, (view.channels, *size), samples=samples, name=view.name)
    if result.metrics.get("peak", 0) <= 0:
        raise AtrousError(f"{view.name}: the ERF is zero for every input sample; no ERF coverage to report")
    out_hw = view.report(size).outputs[0].shape[2:]
    centre = tuple(int(p * s / o) for p, s, o in zip(result.position, size, out_hw))  # as effective_rf does
    return {"mass": mass, "radius": _square_radius(result.map, centre, mass), "samples": samples}


def erf_coverage(
    objs: DatasetObjects, view: ModelView, mass: float = 0.95, margin: int = 0, anchor: str = "centre",
    samples: int = 16, max_sizes: int = 8,
) -> dict[str, Any]:  # fmt: skip
    """The ``erf`` block of ``data stats --model --erf``: coverage by the square that holds ``mass`` of the
    effective RF, per class, with the ERF rate (its side over the theoretical RF)."""
    at = buckets(objs, max_sizes)
    check_anchor(anchor, margin)
    radii = {size: erf_radius(view, size, mass, samples) for size in sorted(set(at.values()))}
    flags = np.array([erf_object_covered(f, radii[at[f.size]]["radius"], margin, anchor) for f in objs.found])
    facts = rf_facts(view, list(radii))
    for size, r in radii.items():
        fact = facts[size_key(size)]
        side = 2 * r["radius"] + 1
        r["side"] = side
        r["erf_rate"] = None if fact["global"] else side / max(fact["rf"])
    classes = per_class(objs, flags, at)
    for k, row in classes.items():
        row["name"] = objs.class_names[k]
    return {"mass": mass, "anchor": anchor, "margin": margin, "by_size": {
        size_key(s): r for s, r in radii.items()}, "classes": classes}  # fmt: skip
