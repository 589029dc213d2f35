"""Object statistics of a segmentation dataset (``atrous data stats``): the extents the receptive field must
serve.

An object is a 4-connected component of one class in one mask (:mod:`atrous.data.components`); the background
class (index 0 unless told otherwise) and the ignore value are not objects. Per class: bounding-box height and
width, extent (the larger of the two), equivalent diameter (of the disc with the object's area), thickness (the
side of the largest square inside it), their percentiles, objects per image, the class's share of labelled
pixels, and the objects that touch the image border (their extent is a lower bound: the image cut them).
Masks are read one at a time (synthetic tasks render masks without drawing noise), and every object is kept as
row runs for the coverage checks.

A dataset with more distinct image sizes than ``max_sizes`` is measured per **size bucket**
(:func:`size_buckets`): sizes grouped so that each bucket's smallest height and width lose the least image
area, which is the size the coverage checks analyse the bucket at (:mod:`atrous.data.coverage` says why that
direction is the safe one).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from atrous.data.components import Component, objects
from atrous.data.files import DatasetError, FileDataset, load_mask
from atrous.data.synthetic import SyntheticTask

PERCENTILES = (5, 25, 50, 75, 95, 100)
MEASURES = ("height", "width", "extent", "diameter", "thickness")


def percentile_key(q: int) -> str:
    return "max" if q == 100 else f"p{q}"


@dataclass
class Found:
    """One object and where it was found: image index and that image's (H, W)."""

    image: int
    size: tuple[int, int]
    obj: Component


@dataclass
class DatasetObjects:
    """Every object of a dataset, with what the per-class summary needs besides them."""

    name: str
    class_names: list[str]
    channels: int
    classes: list[int]  # the class indices whose components are objects (all but the background)
    found: list[Found] = field(default_factory=list)
    sizes: Counter = field(default_factory=Counter)  # (H, W) -> images
    pixels: np.ndarray | None = None  # labelled pixels per class (ignore excluded)
    per_image: list[np.ndarray] = field(default_factory=list)  # objects per class, one row per image

    @property
    def images(self) -> int:
        return len(self.per_image)

    def of_class(self, k: int) -> list[Found]:
        return [f for f in self.found if f.obj.label == k]

    def only(self, classes: list[int]) -> DatasetObjects:
        """The same dataset with the objects of ``classes`` alone (what coverage then checks and reports)."""
        return replace(self, classes=list(classes), found=[f for f in self.found if f.obj.label in classes])

    def measure(self, found: list[Found], what: str) -> np.ndarray:
        if what == "diameter":
            return np.array([np.sqrt(4 * f.obj.area / np.pi) for f in found], dtype=float)
        if what == "extent":
            return np.array([max(f.obj.height, f.obj.width) for f in found], dtype=float)
        return np.array([getattr(f.obj, what) for f in found], dtype=float)


Size = tuple[int, int]


def size_buckets(sizes: Counter, most: int) -> dict[Size, Size]:
    """Each image size -> the size its bucket is analysed at: itself while there are at most ``most`` sizes;
    otherwise at most ``most`` buckets, each at its members' smallest height and smallest width (so every
    member holds it as a sub-rectangle), grouped greedily by the merge that loses the least image area
    (``sum over images of 1 - bucket area / image area``)."""
    if most < 1:
        raise DatasetError(f"--max-sizes must be at least 1, got {most}")
    order = sorted(sizes)
    if len(order) <= most:
        return {s: s for s in order}
    h = np.array([s[0] for s in order], dtype=float)
    w = np.array([s[1] for s in order], dtype=float)
    n = np.array([sizes[s] for s in order], dtype=float)
    inv = n / (h * w)  # per bucket: sum of images / area, so that its loss is n - h w inv
    groups = [[i] for i in range(len(order))]
    alive = np.ones(len(order), dtype=bool)

    def extra(i: int) -> np.ndarray:  # the loss a merge of bucket i with each other bucket adds
        hm, wm = np.minimum(h[i], h), np.minimum(w[i], w)
        own = h * w * inv
        cost = own[i] + own - hm * wm * (inv[i] + inv)
        cost[~alive] = np.inf
        cost[i] = np.inf
        return cost

    table = np.stack([extra(i) for i in range(len(order))])
    for _ in range(len(order) - most):
        i, j = divmod(int(np.argmin(table)), len(order))
        i, j = min(i, j), max(i, j)
        h[i], w[i], inv[i] = min(h[i], h[j]), min(w[i], w[j]), inv[i] + inv[j]
        groups[i] += groups[j]
        alive[j] = False
        table[j, :] = table[:, j] = np.inf
        table[i, :] = table[:, i] = extra(i)
    return {order[m]: (int(h[g[0]]), int(w[g[0]])) for g in (groups[i] for i in np.flatnonzero(alive))
            for m in g}  # fmt: skip


def bucket_notes(at: dict[Size, Size]) -> list[dict[str, Any]]:
    """The buckets for the JSON: the size analysed, the sizes it stands for."""
    reps = sorted(set(at.values()))
    return [
        {"analysed_at": list(r), "sizes": [list(s) for s in sorted(s for s in at if at[s] == r)]}
        for r in reps
    ]


def size_key(size: Size) -> str:
    return f"{size[0]}x{size[1]}"


def masks(dataset) -> Iterator[np.ndarray]:
    """The label maps of a dataset, one at a time, without the work of making its images."""
    for i in range(len(dataset)):
        if isinstance(dataset, SyntheticTask):
            yield dataset.sample(i)[1]
        elif isinstance(dataset, FileDataset):
            yield load_mask(dataset.pairs[i].mask)
        else:
            yield np.asarray(dataset[i][1])


def object_classes(num_classes: int, background: int | None) -> list[int]:
    if background is not None and not 0 <= background < num_classes:
        raise DatasetError(f"background class {background} is not a class index (0..{num_classes - 1})")
    return [k for k in range(num_classes) if k != background]


def scan(
    dataset, background: int | None = 0, limit: int | None = None, progress: bool = True
) -> DatasetObjects:
    """Find every object of ``dataset`` (the first ``limit`` masks), with a progress bar on stderr."""
    from rich.progress import Progress

    names = list(dataset.class_names)
    total = len(dataset) if limit is None else min(limit, len(dataset))
    name = getattr(dataset, "name", type(dataset).__name__)
    if total < 1:
        raise DatasetError(f"dataset {name} has no masks to measure")
    out = DatasetObjects(
        name, names, int(getattr(dataset, "in_channels", 3)), object_classes(len(names), background)
    )
    ignore = getattr(dataset, "ignore_index", None)
    out.pixels = np.zeros(len(names), dtype=np.int64)
    with Progress(transient=True, disable=not progress) as bar:
        task = bar.add_task(f"objects in {name}", total=total)
        for i, mask in enumerate(masks(dataset)):
            if i >= total:
                break
            size = (int(mask.shape[0]), int(mask.shape[1]))
            out.sizes[size] += 1
            labelled = mask[mask != ignore] if ignore is not None else mask.ravel()
            out.pixels += np.bincount(
                labelled[(labelled >= 0) & (labelled < len(names))], minlength=len(names)
            )
            row = np.zeros(len(names), dtype=np.int64)
            for obj in objects(mask, out.classes):
                out.found.append(Found(i, size, obj))
                row[obj.label] += 1
            out.per_image.append(row)
            bar.advance(task)
    return out


def _percentiles(values: np.ndarray) -> dict[str, float]:
    return {percentile_key(q): float(np.percentile(values, q)) for q in PERCENTILES}


def class_summary(objs: DatasetObjects, k: int, found: list[Found] | None = None) -> dict[str, Any]:
    """The statistics of class ``k`` (over ``found``, default every object of the class)."""
    found = objs.of_class(k) if found is None else found
    counts = np.array([row[k] for row in objs.per_image])
    labelled = int(objs.pixels.sum()) if objs.pixels is not None else 0
    row: dict[str, Any] = {
        "index": k,
        "name": objs.class_names[k],
        "objects": len(found),
        "images_with": int((counts > 0).sum()),
        "per_image_mean": float(counts.mean()),
        "per_image_max": int(counts.max()),
        "pixel_share": float(objs.pixels[k] / labelled) if labelled else 0.0,
        "border": sum(f.obj.touches_border(f.size) for f in found),
    }
    if not found:
        row["note"] = f"no objects of class {objs.class_names[k]!r} in {objs.images} masks"
        return row
    for what in MEASURES:
        row[what] = _percentiles(objs.measure(found, what))
    return row


def summary(objs: DatasetObjects, max_sizes: int = 8) -> dict[str, Any]:
    """The JSON of ``data stats``: per class, and per image size (per size bucket beyond ``max_sizes``)
    where the dataset has several."""
    if not objs.found:
        raise DatasetError(
            f"no objects in {objs.images} masks of {objs.name}: every pixel is background or ignored "
            f"(classes counted: {', '.join(objs.class_names[k] for k in objs.classes) or 'none'})"
        )
    data: dict[str, Any] = {
        "dataset": objs.name,
        "images": objs.images,
        "connectivity": 4,
        "sizes": [{"size": list(s), "images": n} for s, n in sorted(objs.sizes.items())],
        "classes": [class_summary(objs, k) for k in objs.classes],
    }
    if len(objs.sizes) > 1:
        at = size_buckets(objs.sizes, max_sizes)
        if len(objs.sizes) > max_sizes:
            data["size_buckets"] = bucket_notes(at)
        data["by_size"] = {
            size_key(r): [
                class_summary(objs, k, [f for f in objs.of_class(k) if at[f.size] == r]) for k in objs.classes
            ]
            for r in sorted(set(at.values()))
        }
    return data


def stats_table(data: dict[str, Any], title: str):
    """A rich table of the summary, 80 columns wide."""
    from rich.table import Table

    table = Table(title=title, caption="extent = max(box height, width), px; 4-connected objects")
    for col in ("class", "objs", "/img", "pix %", "border", "ext p5", "p50", "p95", "max", "diam50"):
        table.add_column(col, justify="left" if col == "class" else "right")
    for c in data["classes"]:
        if "extent" not in c:
            table.add_row(c["name"], "0", "-", f"{c['pixel_share']:.1%}", "-", "-", "-", "-", "-", "-")
            continue
        e = c["extent"]
        table.add_row(
            c["name"],
            str(c["objects"]),
            f"{c['per_image_mean']:.1f}",
            f"{c['pixel_share']:.1%}",
            f"{c['border'] / c['objects']:.0%}",
            *(f"{e[k]:.0f}" for k in ("p5", "p50", "p95", "max")),
            f"{c['diameter']['p50']:.1f}",
        )
    return table


def stats_figure(objs: DatasetObjects, path: str | Path, lines: dict[str, float] | None = None) -> Path:
    """Histograms of extent and equivalent diameter per class; ``lines`` marks sizes (a model's RF, its
    ERF's side) on both axes."""
    from atrous.lab.plots import plt, save

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    largest = max(max(f.obj.height, f.obj.width) for f in objs.found)
    side = max(max(s) for s in objs.sizes)
    widest = max(largest, int(np.ceil(objs.measure(objs.found, "diameter").max())))
    bins = np.arange(0, widest + 2)  # one bin per pixel
    for ax, what in zip(axes, ("extent", "diameter")):
        for k in objs.classes:
            found = objs.of_class(k)
            if found:
                ax.hist(objs.measure(found, what), bins=bins, histtype="step", label=objs.class_names[k])
        for i, (label, x) in enumerate((lines or {}).items()):
            # An RF larger than the image would squash the histograms: its line is left out, its label kept.
            beyond = x > side
            ax.axvline(min(x, side), color="k", linestyle=("--", ":", "-.")[i % 3], linewidth=1,
                       label=f"{label} (beyond the image)" if beyond else label, alpha=0 if beyond else 1)  # fmt: skip
        ax.set_xlim(0, side)
        ax.set_xlabel(f"{what} (px)" if what == "extent" else "equivalent diameter (px)")
        ax.set_ylabel("objects")
    axes[0].set_title("object extent: max(box height, width)", fontsize=9)
    axes[1].set_title("equivalent diameter: sqrt(4 area / pi)", fontsize=9)
    axes[1].legend(fontsize=7)
    fig.suptitle(f"{objs.name}: {len(objs.found)} objects in {objs.images} masks", fontsize=10)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save(fig, path)
    return path
