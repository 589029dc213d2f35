"""``atrous suggest``: the cheapest zoo configurations whose exact receptive field covers a dataset's objects.

1. The data says what a hole-free square window centred on each object would need (:func:`needed_window`: twice
   the farthest reach from the anchor, plus one); the ``target`` quantile over each class, the largest over
   classes, is the window ``t`` the conv-stack candidates are built around (a box figure, used only to pick
   candidates).
2. A few dozen candidates: hole-free conv stacks reaching ``t`` (the shortest schedules, the rate-1 stack, and
   the shortest schedule one step below ``t``), gridded stacks of the same depth and cost (holes), plain and
   dilated U-Nets of depth 2-4, DeepLabv3-small at output stride 8 and 16 with and without image pooling, and
   ASPP nets, all at the zoo's default widths.
3. Each is judged exactly (:mod:`atrous.data.coverage`: the engine's support at every image size, or size
   bucket) and costed by FLOPs at the dataset's sizes (mean per image). Ranked by FLOPs; at equal FLOPs a
   schedule without holes comes first, so a gridded schedule is never recommended over a hole-free one of
   the same cost.
4. Coverage is necessary, not sufficient: a model whose logits are resized from a grid ``stride`` pixels apart
   loses objects narrower than two strides to the boundary band (:func:`min_width`, the rule the lab's
   designs use too). A candidate too coarse for the ``target`` share of a class's objects, by their
   thickness (the largest square inside each), is not recommended, however well it covers them.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

from atrous.data.coverage import (
    BUCKET_WHY,
    ModelView,
    buckets,
    check_anchor,
    covered_flags,
    per_class,
    reach,
    rf_facts,
)
from atrous.data.stats import DatasetObjects, Found, Size, bucket_notes
from atrous.errors import OptionError, option
from atrous.models.stride import STRIDES_ACROSS, logit_stride, min_width
from atrous.rf import schedule

MAX_PLAIN_LAYERS = 16  # a rate-1 stack deeper than this is not a candidate anyone would train


class SuggestError(OptionError):
    """A suggestion that cannot be made as asked."""


@dataclass
class Candidate:
    label: str  # short, for the 80-column table
    spec: str  # what create_model takes
    result: dict[str, Any] = field(default_factory=dict)


def _share(values: list[int], target: float) -> int:
    """The value that ``target`` of ``values`` are at most (the ``target`` quantile, no interpolation)."""
    values = sorted(values)
    return values[max(0, math.ceil(target * len(values)) - 1)]


def needed_window(objs: DatasetObjects, k: int, target: float, margin: int, anchor: str) -> int:
    """The side of a hole-free centred square window holding ``target`` of class ``k``'s objects."""
    return _share([2 * reach(f, margin, anchor) + 1 for f in objs.of_class(k)], target)


def needed_thickness(found: list[Found], target: float) -> int:
    """The thickness ``target`` of the objects reach or exceed: the thinnest object the model must keep."""
    return -_share([-f.obj.thickness for f in found], target)


def coarsest_stride(thickness: int) -> int:
    """The largest stride whose :func:`min_width` an object this thick still spans."""
    return max(1, thickness // STRIDES_ACROSS)


def candidates(t: int, min_side: int) -> list[Candidate]:
    """The candidate set for a needed window ``t`` on images whose shorter side is ``min_side``."""
    t = max(3, t + 1 - t % 2)  # a stack of 3x3 convs reaches odd RFs: 1 + 2 * sum(rates)
    out: list[Candidate] = []
    below = schedule.suggest(t - 2, limit=1) if t > 3 else []
    for s in [*schedule.suggest(t, limit=2), *below]:
        rates = ",".join(map(str, s.rates))
        out.append(Candidate(f"stack {rates}", f"convstack:rates={rates}"))
        if len(s.rates) > 1 and len(set(s.rates)) > 1:  # the same depth and cost with one rate: gridded
            r = max(1, round(sum(s.rates) / len(s.rates)))
            same = ",".join([str(r)] * len(s.rates))
            out.append(Candidate(f"stack {same}", f"convstack:rates={same}"))
    layers = (t - 1) // 2
    if layers <= MAX_PLAIN_LAYERS:
        out.append(Candidate(f"stack 1 x{layers}", f"convstack:rates={','.join(['1'] * layers)}"))
    for depth in (2, 3, 4):
        if min_side < 2 ** (depth + 1):
            continue
        out.append(Candidate(f"unet d{depth}", f"unet:depth={depth}"))
        for rates in ("1,2,4", "1,2,4,8", "2,2,2"):
            out.append(
                Candidate(
                    f"dil-unet d{depth} {rates}", f"dilated_unet:depth={depth},bottleneck_rates={rates}"
                )
            )
    if min_side >= 32:
        for os_ in (8, 16):
            out.append(
                Candidate(f"deeplabv3s os{os_}", f"deeplabv3_small:output_stride={os_},image_pooling=False")
            )
            out.append(Candidate(f"deeplabv3s os{os_}+pool", f"deeplabv3_small:output_stride={os_}"))
    for rates in ("1,6,12", "1,2,3"):
        out.append(Candidate(f"aspp_net {rates}", f"aspp_net:rates={rates}"))
    seen: set[str] = set()
    return [c for c in out if not (c.spec in seen or seen.add(c.spec))]


def evaluate(
    c: Candidate, objs: DatasetObjects, margin: int, anchor: str, at: dict[Size, Size],
    thin: dict[str, int],
) -> dict[str, Any]:  # fmt: skip
    """Exact coverage per class, mean FLOPs per image, parameters, RF, holes, logit stride and the classes
    too thin for that stride (``thin``: class -> needed thickness) of one candidate."""
    from atrous.flops import count_flops, count_params
    from atrous.models.registry import create_model

    with warnings.catch_warnings():  # gridded candidates are there on purpose
        warnings.simplefilter("ignore")
        model = create_model(c.spec, in_channels=objs.channels, num_classes=max(2, len(objs.class_names)))
    view = ModelView(model, c.spec, objs.channels)
    flags = covered_flags(objs, view, margin, anchor, at=at)
    facts = rf_facts(view, sorted(set(at.values())))
    # Counted once per analysed size and scaled by area (these nets' cost is linear in the pixels): exact
    # while every size is analysed as it is.
    per_size = {r: count_flops(model, (objs.channels, *r)) for r in set(at.values())}
    flops = sum(per_size[at[s]] * (s[0] * s[1]) / (at[s][0] * at[s][1]) * n for s, n in objs.sizes.items())
    flops /= objs.images
    classes = per_class(objs, flags, at)
    first = next(iter(facts.values()))
    stride = logit_stride(model)
    return {
        "label": c.label,
        "spec": c.spec,
        "flops": int(flops),
        "params": count_params(model),
        "rf": None if first["global"] else max(first["rf"]),
        "global": first["global"],
        "holes": max(f["holes"] for f in facts.values()),
        "stride": stride,
        "too_thin": [name for name, t in thin.items() if t < min_width(stride)],
        "coverage": {objs.class_names[k]: row["objects_covered"] for k, row in classes.items()},
        "worst": min(row["objects_covered"] for row in classes.values()),
        **({"why": first["why"]} if "why" in first else {}),
    }


def suggest(
    objs: DatasetObjects,
    target: float = 0.95,
    margin: int = 0,
    anchor: str = "centre",
    classes: list[int] | None = None,
    max_sizes: int = 8,
    progress: bool = False,
) -> dict[str, Any]:
    """Every candidate judged: the recommended ones (covering, stride fine enough) first by (FLOPs, holes,
    parameters), then the rest by coverage."""
    from rich.progress import Progress

    if not 0 < target <= 1:
        raise SuggestError(f"{option('target')} must be a share in (0, 1], got {target}")
    check_anchor(anchor, margin)
    at = buckets(objs, max_sizes)
    wanted = objs.classes if classes is None else classes
    unknown = [k for k in wanted if not 0 <= k < len(objs.class_names)]
    if unknown:
        raise SuggestError(
            f"{option('classes')} {unknown[0]}: {objs.name} has classes 0-{len(objs.class_names) - 1} "
            f"({', '.join(objs.class_names)})"
        )
    have = [k for k in wanted if objs.of_class(k)]
    if not have:
        raise SuggestError(f"no objects of the classes asked for in {objs.images} masks of {objs.name}")
    skipped = [objs.class_names[k] for k in wanted if k not in have]
    sub = objs.only(have)
    needs = {objs.class_names[k]: needed_window(sub, k, target, margin, anchor) for k in have}
    thin = {objs.class_names[k]: needed_thickness(sub.of_class(k), target) for k in have}
    pool = candidates(max(needs.values()), min(min(s) for s in at.values()))
    rows = []
    with Progress(transient=True, disable=not progress) as bar:
        task = bar.add_task("candidates", total=len(pool))
        for c in pool:
            rows.append(evaluate(c, sub, margin, anchor, at, thin))
            bar.advance(task)
    ok, rest = rank(rows, target)
    data = {
        "dataset": objs.name,
        "target": target,
        "anchor": anchor,
        "margin": margin,
        "needed_window": needs,
        "needed_thickness": thin,
        "coarsest_stride": coarsest_stride(min(thin.values())),
        "skipped_classes": skipped,
        "sizes": [list(s) for s in sorted(objs.sizes)],
        "covering": ok,
        "not_covering": rest,
    }
    if any(k != v for k, v in at.items()):
        data.update(size_buckets=bucket_notes(at), size_buckets_why=BUCKET_WHY)
    return data


def rank(rows: list[dict[str, Any]], target: float) -> tuple[list[dict], list[dict]]:
    """(recommended, not): a candidate is recommended when it covers ``target`` of every class and its
    stride is fine enough for every class (no ``too_thin``). The first by FLOPs, then holes (a hole-free
    schedule wins a tie of cost), then parameters; the rest by their worst class's coverage, then FLOPs."""

    def good(r: dict[str, Any]) -> bool:
        return r["worst"] >= target and not r["too_thin"]

    ok = sorted((r for r in rows if good(r)), key=lambda r: (r["flops"], r["holes"] > 0, r["params"]))
    rest = sorted((r for r in rows if not good(r)), key=lambda r: (-r["worst"], r["flops"]))
    return ok, rest


def suggest_table(data: dict[str, Any], top: int):
    """The ranked candidates, 80 columns wide."""
    from rich.table import Table

    table = Table(
        title=f"cheapest models covering {data['target']:.0%} of every class's objects ({data['dataset']})",
        caption="GFLOP: forward, mean per image; RF and holes per axis (engine); stride: of the grid the "
        "logits are resized from, ! too coarse; worst: lowest class coverage",
    )
    for col in ("#", "model", "GFLOP", "params", "RF", "holes", "stride", "worst"):
        table.add_column(col, justify="left" if col == "model" else "right")
    ok = data["covering"][:top]
    # Rows that cover but are too coarse are shown where their cost would rank them, so that the cheapest
    # model a user might have expected is seen with its reason; the rest fill the table below.
    bound = ok[-1]["flops"] if len(ok) == top else float("inf")
    coarse = [r for r in data["not_covering"] if not r["worst"] < data["target"] and r["flops"] <= bound]
    shown = sorted(ok + coarse, key=lambda r: r["flops"])[:top]
    shown += [r for r in data["not_covering"] if r not in coarse][: max(0, top - len(shown))]
    number = {id(r): i for i, r in enumerate(data["covering"], 1)}
    for r in shown:
        rank = str(number[id(r)]) if id(r) in number else "-"
        table.add_row(
            rank,
            r["label"],
            f"{r['flops'] / 1e9:.3f}",
            _count(r["params"]),
            "global" if r["global"] else str(r["rf"]),
            str(r["holes"]),
            f"{r['stride']}{'!' if r['too_thin'] else ''}",
            f"{r['worst']:.0%}",
        )
    return table


def _count(n: int) -> str:
    return f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.0f}k"


def summary_lines(data: dict[str, Any]) -> list[str]:
    needs = ", ".join(f"{k} {v}" for k, v in data["needed_window"].items())
    lines = [f"hole-free centred window needed for {data['target']:.0%} of the objects (px): {needs}"]
    if data["skipped_classes"]:
        lines.append(f"no objects, left out: {', '.join(data['skipped_classes'])}")
    thin = ", ".join(f"{k} {v}" for k, v in data["needed_thickness"].items())
    coarse = [r for r in data["not_covering"] if r["too_thin"]]
    lines.append(
        f"{data['target']:.0%} of the objects are at least this thick (px): {thin}; an object must span "
        f"two output strides (the lab's rule): stride <= {data['coarsest_stride']}"
    )
    n_ok, n = len(data["covering"]), len(data["covering"]) + len(data["not_covering"])
    lines.append(f"{n_ok} of {n} candidates recommended; '-' rows are not: {len(coarse)} of them for their")
    lines.append("stride (!), the others cover too little (worst class shown)")
    if "size_buckets" in data:
        lines.append(f"{len(data['sizes'])} image sizes in {len(data['size_buckets'])} buckets: {BUCKET_WHY}")
    if data["covering"] and "why" in data["covering"][0]:
        lines.append(f"the cheapest covers everything because {data['covering'][0]['why']}")
    return lines
