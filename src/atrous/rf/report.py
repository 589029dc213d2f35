"""The report: receptive fields per tensor and per axis (:class:`RFReport`, :class:`TensorRF`, :class:`AxisRF`),
summarised from the propagated states, with the exact window and in-image support of any output pixel."""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from functools import reduce
from math import prod
from typing import Any

import numpy as np

from atrous.errors import InputShapeError
from atrous.rf import layout as L
from atrous.rf import support as rf_support
from atrous.rf.algebra import FiniteAlgebra, Term
from atrous.rf.graph import Graph
from atrous.rf.outputs import unknown_output
from atrous.rf.propagate import NodeState, Propagation
from atrous.rf.rules import AXIS_NAMES, Options
from atrous.rf.support import AxisMap, GrowthError, Offsets


@dataclass
class PhaseWindow:
    phase: int
    lo: int  # output index ``q * period + phase`` sees input ``[q * advance + lo, q * advance + hi]``
    hi: int
    holes: list[int]

    @property
    def rf(self) -> int:
        return self.hi - self.lo + 1


@dataclass(kw_only=True)  # eleven fields, several of one type: by keyword, none can be swapped silently
class AxisRF:
    """The receptive field of one tensor along one spatial axis; None (and no holes, no phases) where a
    quantity does not exist: no pixel reaches the tensor, the field is global, or strides differ.

    ``approximate``: the index maps along this axis were coarsened (they outgrew the phase budget, see the
    tensor's notes). Then rf, holes and coverage bound the exact ones from the windows of the tensor's own
    positions (never a pixel less), and the stride, padding, phases and alignment, which the coarsened maps
    give only rounded, are not given (None, none, False)."""

    name: str
    rf: int | None  # None: global
    global_: bool
    stride: Fraction | None = None  # None when paths of different strides meet
    padding: Fraction | None = None
    centre: Fraction | None = None
    holes: list[int] = field(default_factory=list)  # missing inside the largest window, from its first pixel
    coverage: float
    aligned: bool
    phases: list[PhaseWindow] = field(default_factory=list)
    note: str | None = None
    approximate: bool = False

    @property
    def hole_count(self) -> int:
        return len(self.holes)


@dataclass
class TensorRF:
    name: str
    shape: tuple[int, ...]
    axes: list[AxisRF]
    notes: list[str]
    area_coverage: float | None  # fraction of the RF box (all axes) that really influences the pixel

    @property
    def global_(self) -> bool:
        return any(a.global_ for a in self.axes)

    @property
    def aligned(self) -> bool:
        return all(a.aligned for a in self.axes)

    @property
    def rf(self) -> list[int | None]:
        return [a.rf for a in self.axes]

    @property
    def stride(self) -> list[Fraction | None]:
        return [a.stride for a in self.axes]

    @property
    def padding(self) -> list[Fraction | None]:
        return [a.padding for a in self.axes]

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "shape": list(self.shape),
            "rf": [a.rf for a in self.axes],
            "stride": [_num(a.stride) for a in self.axes],
            "padding": [_num(a.padding) for a in self.axes],
            "centre": [_num(a.centre) for a in self.axes],
            "holes": [a.holes for a in self.axes],
            "coverage": [round(a.coverage, 6) for a in self.axes],
            "area_coverage": None if self.area_coverage is None else round(self.area_coverage, 6),
            "aligned": self.aligned,
            "global": self.global_,
            "global_axes": [a.name for a in self.axes if a.global_],
            "phases": [
                [{"phase": p.phase, "window": [p.lo, p.hi], "rf": p.rf, "holes": p.holes} for p in a.phases]
                if not a.aligned
                else []
                for a in self.axes
            ],
            "notes": self.notes + [a.note for a in self.axes if a.note],
        }


def _num(x: Fraction | None) -> int | float | None:
    if x is None:
        return None
    return int(x) if x.denominator == 1 else float(x)


def _axis_union(maps: list[AxisMap]) -> AxisMap | None:
    """Union of per-term maps, or None when their strides differ (no single periodic map exists). Raises
    :class:`GrowthError` when it would need more phases than the budget (the propagation keeps such terms
    apart, see ``PeriodicAlgebra.union``)."""
    acc = maps[0]
    for m in maps[1:]:
        acc = acc.union(m)
        if acc is None:
            return None
    return acc


def _axis_rf(
    name: str, maps: list[AxisMap], paths: dict, n_out: int, coarse: bool = False, coarse_paths: bool = False
) -> AxisRF:
    """Summary of one axis of one tensor from the per-term maps (union) and path classes (alignment).
    ``coarse``: the maps were folded (propagate's coarsening), ``coarse_paths``: the path classes were."""
    too_many = None
    try:
        union = _axis_union(maps) if maps else None
    except GrowthError as exc:
        union, too_many = None, exc.phases
    if not maps or (union is not None and union.is_empty):
        note = "no input pixel reaches this tensor"
        return AxisRF(name=name, rf=0, global_=False, coverage=0.0, aligned=True, note=note)
    if (union is not None and union.has_global) or (too_many and any(m.has_global for m in maps)):
        stride = union.stride if union is not None and not union.is_global and not coarse else None
        return AxisRF(
            name=name, rf=None, global_=True, stride=stride, coverage=1.0, aligned=True, approximate=coarse
        )
    if coarse:
        # The folded maps contain the exact ones at every position the tensor has: their windows there bound
        # the exact windows; their strides and phases are rounded (the exact period is over the budget).
        note = (
            "approximate (index maps coarsened, see the notes): the window depends on the position; rf is the "
            f"largest over the {n_out} output positions, at least the exact one; no stride or phases are given"
        )
        return _positions_axis(name, maps, n_out, note, approximate=True)
    if too_many is not None:
        # Each term's map is exact; only their union has too many phases to build: read them per position.
        periods = sorted({m.period for m in maps if not m.is_empty})
        limit = rf_support.PHASE_LIMIT
        note = (
            f"paths whose windows repeat every {', '.join(map(str, periods))} positions meet: together they "
            f"would need {too_many:,} phases (limit {limit:,}), so no stride or phases are given; the window "
            f"depends on the position; rf is the largest over the {n_out} output positions"
        )
        return _positions_axis(name, maps, n_out, note)
    if union is None:
        return _mixed_strides_axis(name, maps, n_out)
    return _periodic_axis(name, union, paths, coarse_paths)


def _mixed_strides_axis(name: str, maps: list[AxisMap], n_out: int) -> AxisRF:
    """Paths with different strides meet: the window depends on the position; show the largest one."""
    strides = sorted({str(m.stride) for m in maps if not m.is_empty})
    note = (
        f"paths with different strides ({', '.join(strides)}) meet: the window depends on the position; "
        f"rf is the largest over the {n_out} output positions"
    )
    return _positions_axis(name, maps, n_out, note)


def _positions_axis(
    name: str, maps: list[AxisMap], n_out: int, note: str, approximate: bool = False
) -> AxisRF:
    """No periodic map to show: the window of every output position (the union of the terms' maps there), the
    largest one as the rf; no stride, padding or phases."""
    sets = [reduce(lambda acc, m: acc | m.at(u), maps, Offsets.of([])) for u in range(max(n_out, 1))]
    widest = max(sets, key=lambda s: s.extent)
    return AxisRF(
        name=name,
        rf=widest.extent,
        global_=False,
        holes=widest.holes(),
        coverage=len(widest) / widest.extent if widest.extent else 0.0,
        aligned=False,
        note=note,
        approximate=approximate,
    )


def _periodic_axis(name: str, union: AxisMap, paths: dict, coarse_paths: bool = False) -> AxisRF:
    """One periodic map covers every path: its phases give the windows, the path classes the alignment
    (unless they were folded, ``coarse_paths``: then the alignment is not claimed)."""
    windows = [PhaseWindow(f, p.lo, p.hi, p.holes()) for f, p in enumerate(union.phases) if not p.empty]
    widest_phase = max(windows, key=lambda w: w.rf)
    widest = union.phases[widest_phase.phase]
    first = union.phases[0]
    centres = {k for k in paths if k != ("global",)}
    note = None
    if union.period > 1:
        note = f"{union.period} output phases see different windows (stride {union.stride})"
    elif coarse_paths:
        note = (
            "approximate (path classes coarsened, see the notes): whether every path agrees on the centre of "
            "the window is not decided, so the axis is not said to be aligned"
        )
    elif len(centres) > 1:
        found = sorted({Fraction(k[2][0], 2) for k in centres if k[2][0] is not None and k[0] == 1})
        note = "paths disagree on the centre of the window: " + ", ".join(str(c) for c in found)
    return AxisRF(
        name=name,
        rf=widest_phase.rf,
        global_=False,
        stride=union.stride,
        padding=-Fraction(first.lo) if not first.empty else None,
        centre=Fraction(first.lo + first.hi, 2) if union.period == 1 else None,
        holes=widest_phase.holes,
        coverage=len(widest) / widest.extent,
        aligned=union.period == 1 and len(centres) <= 1 and not coarse_paths,
        phases=windows,
        note=note,
    )


def _area_coverage(terms: list[Term], axes: list[AxisRF], limit: int = 1 << 24) -> float | None:
    """Fraction of the full RF box covered by the union of products at output index 0 (all axes)."""
    if any(a.global_ or a.rf is None or a.stride is None for a in axes) or not terms:
        return None
    phase = [max(a.phases, key=lambda w: w.rf).phase if a.phases else 0 for a in axes]
    boxes = [[m.at(phase[i]) for i, m in enumerate(t)] for t in terms]
    lo = [min(b[i].lo for b in boxes if not b[i].empty) for i in range(len(axes))]
    hi = [max(b[i].hi for b in boxes if not b[i].empty) for i in range(len(axes))]
    shape = [top - bottom + 1 for bottom, top in zip(lo, hi)]
    if prod(shape) > limit:
        return None
    boxes = [b for b in boxes if not any(s.empty for s in b)]
    if all(s.is_interval for b in boxes for s in b):
        return _interval_union_size(boxes) / prod(shape)
    grid = np.zeros(shape, dtype=bool)
    for b in boxes:
        grid[_box_index(b, lo)] = True
    return float(grid.mean())


def _interval_union_size(boxes: list[list[Offsets]]) -> int:
    """Number of pixels in a union of hole-free boxes, on the grid of their edges (a few cells per axis
    instead of every pixel of a window that may span the whole image, for every layer of the report)."""
    cuts = [sorted({e for b in boxes for e in (b[i].lo, b[i].hi + 1)}) for i in range(len(boxes[0]))]
    covered = np.zeros([len(c) - 1 for c in cuts], dtype=bool)
    for b in boxes:
        covered[tuple(slice(c.index(s.lo), c.index(s.hi + 1)) for s, c in zip(b, cuts))] = True
    widths = [np.diff(c) for c in cuts]
    cell_sizes = widths[0]
    for w in widths[1:]:
        cell_sizes = np.multiply.outer(cell_sizes, w)
    return int((covered * cell_sizes).sum())


def _box_index(sets: Sequence[Offsets], origin: Sequence[int]) -> tuple:
    """Index of the product of ``sets`` in a grid whose element 0 is ``origin``: a slice per hole-free axis
    (most windows; filling a box through slices is many times faster than through index arrays), else arrays."""
    if all(s.is_interval for s in sets):
        return tuple(slice(s.lo - o, s.hi - o + 1) for s, o in zip(sets, origin))
    return np.ix_(*[s.members() - o for s, o in zip(sets, origin)])


@dataclass
class LayerRow:
    node: int
    module: str
    op: str
    shape: tuple[int, ...]
    tensor: TensorRF


@dataclass
class RFReport:
    """Receptive fields of every output of a model, per spatial axis (see :func:`analyze`)."""

    input_shape: tuple[int, ...]  # (C, *spatial), without the batch dim
    outputs: list[TensorRF]
    graph: Graph = field(repr=False)
    options: Options = field(repr=False)
    _prop: Propagation = field(repr=False)
    _periodic: dict[int, NodeState] = field(repr=False)
    _finite: dict[int, NodeState] | None = field(default=None, repr=False)
    recorded_on: str = "meta"  # "real": the model reads tensor values, so it ran once on real tensors
    recording_note: str | None = None  # why, and what was read (also a note on every output)

    def output(self, name: str | None = None) -> TensorRF:
        """The report of one output (the first when ``name`` is None; names as in :func:`named_outputs`)."""
        if name is None:
            return self.outputs[0]
        for o in self.outputs:
            if o.name == name:
                return o
        raise unknown_output(name, [o.name for o in self.outputs])

    @property
    def rf(self) -> list[int | None]:
        return self.outputs[0].rf

    def tensor(self, node: int, name: str | None = None) -> TensorRF:
        return tensor_rf(self._prop, self._periodic[node], node, name or self.graph.nodes[node].name)

    def layers(self) -> list[LayerRow]:
        """One row per recorded op (its main output), in execution order."""
        rows = []
        for call in self.graph.calls:
            if call.outputs:
                node = call.outputs[0]
                rows.append(
                    LayerRow(
                        node,
                        call.module,
                        call.packet.split(".")[-1],
                        self.graph.nodes[node].shape,
                        self.tensor(node),
                    )
                )
        return rows

    def window(
        self, index: Sequence[int], output: str | None = None
    ) -> tuple[tuple[int, ...], np.ndarray] | None:
        """Theoretical support of one output pixel on an unbounded input: ``(origin, mask)`` where
        ``mask[i, j]`` says whether input pixel ``(origin[0] + i, origin[1] + j)`` is reached. None if the
        receptive field is global along some axis."""
        node = self.graph.outputs[self.output(output).name]
        state = self._periodic[node]
        rows = self._rows_of(node, state.layout, index)
        boxes = []
        for seg in state.segments:
            for term in seg.terms:
                sets = [
                    reduce(operator.or_, (m.at(int(r)) for r in rs), Offsets.of([]))
                    for rs, m in zip(rows, term)
                ]
                if any(s.is_global for s in sets):
                    return None
                if not any(s.empty for s in sets):
                    boxes.append(sets)
        if not boxes:
            return tuple(0 for _ in index), np.zeros((0,) * len(index), dtype=bool)
        origin = tuple(min(b[a].lo for b in boxes) for a in range(len(index)))
        shape = tuple(max(b[a].hi for b in boxes) - origin[a] + 1 for a in range(len(index)))
        mask = np.zeros(shape, dtype=bool)
        for b in boxes:
            mask[_box_index(b, origin)] = True
        return origin, mask

    def support(self, index: Sequence[int], output: str | None = None) -> np.ndarray:
        """Exact in-image support of one output pixel: a boolean array over the input's spatial shape, True
        where the input pixel influences output ``index`` (spatial indices of that output)."""
        node = self.graph.outputs[self.output(output).name]
        if self._finite is None:
            self._finite = self._prop.run(FiniteAlgebra(self.input_shape[1:]))
        state = self._finite[node]
        rows = self._rows_of(node, state.layout, index)
        grid = np.zeros(self.input_shape[1:], dtype=bool)
        for seg in state.segments:
            for term in seg.terms:
                # A map with one row is constant along the axis (broadcast, or global); else the output pixel
                # reads the union of the rows it holds.
                reads = [m[0] if m.shape[0] == 1 else m[rs].any(0) for rs, m in zip(rows, term)]
                grid |= reduce(np.multiply.outer, reads).astype(bool) if len(reads) > 1 else reads[0]
        return grid

    def _rows_of(self, node: int, layout: L.Layout, index: Sequence[int]) -> list[np.ndarray]:
        """Per input axis, the positions along it (rows of its maps) that output pixel ``index`` holds.

        ``index`` addresses the output's last dims, in their order, whenever each of those dims carries (part of)
        a spatial axis: a transposed output, rows reordered by views, or digits of an axis kept in channels
        (space-to-depth, then a depthwise op: the pixel holds every in-block position of its channels) are then
        read as the tensor lays them out. An output whose axes were merged into fewer dims (token sequences)
        is addressed by axis coordinates instead."""
        shape = self._prop.shapes[node]
        if len(index) != len(layout):
            raise InputShapeError(f"support index {tuple(index)} needs {len(layout)} spatial coordinates")
        first = len(shape) - len(index)
        held = {p.dim for loc in layout if loc is not None for p in L.parts_of(loc)}
        # Digits kept in channels (space-to-depth) leave a grid dim of size 1 holding none of an axis: that grid
        # position still holds every block position of its channels, so it is read as the tensor lays it out.
        in_channels = any(d < first for d in held)
        # An (N, C, *grid) output whose axes each sit in grid dims of their own is read as laid out too, even
        # where a grid dim holds no axis (rows pooled and viewed back as (N, C, 1, H)): by axis coordinates its
        # index would name another element than the one at that position.
        dims_of = [{p.dim for p in L.parts_of(loc)} for loc in layout if loc is not None]
        own_dims = sum(map(len, dims_of)) == len(set().union(*dims_of))
        if (first >= 2 and not in_channels and own_dims) or all(
            d in held or (in_channels and shape[d] == 1) for d in range(first, len(shape))
        ):
            sizes = shape[first:]
            at = {first + a: i for a, i in enumerate(index)}
        else:
            sizes = tuple(0 if loc is None else loc.size for loc in layout)
            at = None
        if any(not 0 <= i < n for i, n in zip(index, sizes) if n):
            raise InputShapeError(
                f"support index {tuple(index)} is outside the output's spatial shape {sizes}"
            )
        if at is None:
            return [np.array([0 if loc is None else i]) for loc, i in zip(layout, index)]
        return [np.array([0]) if loc is None else L.rows_at(loc, at) for loc in layout]

    def to_json(self, layers: bool = True) -> dict:
        data: dict[str, Any] = {
            "input": list(self.input_shape),
            "mode": "train-view" if self.options.train_batchnorm else "eval",
            "recorded_on": self.recorded_on,
            "recording_note": self.recording_note,
            "outputs": [o.to_json() for o in self.outputs],
        }
        if layers:
            data["layers"] = [
                {"node": r.node, "module": r.module, "op": r.op, **r.tensor.to_json()} for r in self.layers()
            ]
        return data


def tensor_rf(prop: Propagation, state: NodeState, node: int, name: str) -> TensorRF:
    terms = [t for s in state.segments for t in s.terms]
    names = AXIS_NAMES[prop.spatial]
    axes = []
    for a in range(prop.spatial):
        maps = [t[a] for t in terms]
        paths = state.paths[a] if state.paths else {}
        axes.append(
            _axis_rf(names[a], maps, paths, prop.size(node, a), a in state.coarse, a in state.coarse_paths)
        )
    notes = [n for n in state.notes if n.startswith("global") and any(ax.global_ for ax in axes)]
    notes += [n for n in state.notes if not n.startswith("global")]
    return TensorRF(name, prop.shapes[node], axes, notes, _area_coverage(terms, axes))
