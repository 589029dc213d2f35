"""Propagate receptive fields over the recorded graph and summarise them per tensor.

Two exact views share the rule table:

* the **theoretical** receptive field of the network extended to an infinite input (Araujo et al.): periodic
  index maps (:mod:`atrous.rf.support`) give extent, stride, padding, centre, holes and per-phase windows,
  whatever the input size, like the published values (ResNet-50: 427 / 32 / 213);
* the **in-image** support for one output pixel of this input size (:meth:`RFReport.support`), where borders
  and zero padding cut paths: exactly what a gradient of that output pixel can reach.

A tensor's influence is kept per channel segment (so ``torch.chunk`` of a concatenation is exact) as a union
of products of per-axis sets: branches with different dilations meet as a union, which is not a product.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from functools import reduce
from itertools import pairwise
from math import ceil, prod
from typing import Any

import numpy as np
import torch
from torch import nn

from atrous.errors import InputShapeError, ModelError, UnsupportedOpError
from atrous.rf import layout as L
from atrous.rf.graph import Graph, OpCall, record
from atrous.rf.layout import Layout
from atrous.rf.rules import AXIS_NAMES, CONSTANT_PACKETS, AxisRule, Channels, Ctx, Effect, Options, rule_for
from atrous.rf.support import IDENTITY, AxisMap, Offsets, compose

# ------------------------------------------------------------------------------------------------------------
# Two algebras over the same propagation: periodic maps (theoretical RF) and finite relations (in-image)


class PeriodicAlgebra:
    def identity(self, axis: int) -> AxisMap:
        return IDENTITY

    def compose(self, m: AxisMap, rule: AxisRule, n_in: int, n_out: int) -> AxisMap:
        return m if rule.periodic is IDENTITY else compose(m, rule.periodic)

    def union(self, a: AxisMap, b: AxisMap) -> AxisMap | None:
        return a.union(b)

    def subset(self, a: AxisMap, b: AxisMap) -> bool:
        return a.issubset(b)

    def equal(self, a: AxisMap, b: AxisMap) -> bool:
        return a == b

    def empty(self, m: AxisMap) -> bool:
        return m.is_empty


def relation(rule: AxisRule, n_in: int, n_out: int) -> np.ndarray:
    """Boolean (n_out, n_in) matrix: which input indices output index ``u`` reads on real tensor sizes."""
    if rule.finite is not None:
        return rule.finite(n_in, n_out)
    m = rule.periodic
    rel = np.zeros((n_out, n_in), dtype=bool)
    for phase, offsets in enumerate(m.phases):
        us = np.arange(phase, n_out, m.period)
        if offsets.is_global:
            rel[us, :] = True
            continue
        if offsets.empty or us.size == 0:
            continue
        cols = (us // m.period)[:, None] * m.advance + np.fromiter(offsets, dtype=np.int64)[None, :]
        rows = np.broadcast_to(us[:, None], cols.shape)
        ok = (cols >= 0) & (cols < n_in)
        rel[rows[ok], cols[ok]] = True
    return rel


class FiniteAlgebra:
    """Maps are boolean matrices (index along the tensor's axis, input pixel); one row means "same for all"."""

    def __init__(self, sizes: Sequence[int]) -> None:
        self.sizes = list(sizes)

    def identity(self, axis: int) -> np.ndarray:
        return np.eye(self.sizes[axis], dtype=bool)

    def compose(self, m: np.ndarray, rule: AxisRule, n_in: int, n_out: int) -> np.ndarray:
        if rule.periodic is IDENTITY and rule.finite is None and m.shape[0] in (n_out, 1) and n_in == n_out:
            return m
        rel = relation(rule, n_in, n_out)
        if m.shape[0] != n_in:
            m = np.broadcast_to(m, (n_in, m.shape[1]))
        # Counting paths in float32 is exact far beyond any tensor size here; > 0 keeps the reachable set.
        return (rel.astype(np.float32) @ m.astype(np.float32)) > 0

    @staticmethod
    def _pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if a.shape[0] != b.shape[0]:
            n = max(a.shape[0], b.shape[0])
            a, b = np.broadcast_to(a, (n, a.shape[1])), np.broadcast_to(b, (n, b.shape[1]))
        return a, b

    def union(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        a, b = self._pair(a, b)
        return a | b

    def subset(self, a: np.ndarray, b: np.ndarray) -> bool:
        a, b = self._pair(a, b)
        return not (a & ~b).any()

    def equal(self, a: np.ndarray, b: np.ndarray) -> bool:
        a, b = self._pair(a, b)
        return bool(np.array_equal(a, b))

    def empty(self, m: np.ndarray) -> bool:
        return not m.any()


Term = tuple  # one map per input axis; the support is the product of the per-axis sets


@dataclass
class Segment:
    start: int
    stop: int
    terms: tuple[Term, ...]


def union_terms(alg: Any, terms: Sequence[Term]) -> tuple[Term, ...]:
    """A union of products, without terms contained in others, merging pairs that differ in one axis
    (``A x B  |  A x C  =  A x (B | C)``, exact)."""

    def contained(t: Term, r: Term) -> bool:
        return all(alg.subset(a, b) for a, b in zip(t, r))

    def add(out: list[Term], t: Term) -> list[Term]:
        if any(alg.empty(m) for m in t) or any(contained(t, r) for r in out):
            return out
        return [r for r in out if not contained(r, t)] + [t]

    out: list[Term] = []
    for t in terms:
        out = add(out, t)
    merged = True
    while merged and len(out) > 1:
        merged = False
        for i in range(len(out)):
            for j in range(i + 1, len(out)):
                diff = [ax for ax in range(len(out[i])) if not alg.equal(out[i][ax], out[j][ax])]
                if len(diff) != 1:
                    continue
                u = alg.union(out[i][diff[0]], out[j][diff[0]])
                if u is None:
                    continue
                new = tuple(u if ax == diff[0] else m for ax, m in enumerate(out[i]))
                rest = [t for k, t in enumerate(out) if k not in (i, j)]
                out = add(rest, new)
                merged = True
                break
            if merged:
                break
    return tuple(out)


def _same_terms(alg: Any, a: Sequence[Term], b: Sequence[Term]) -> bool:
    if len(a) != len(b):
        return False
    return all(any(all(alg.equal(x, y) for x, y in zip(s, t)) for t in b) for s in a)


def _map_channels(alg: Any, segments: list[Segment], ch: Channels, c_in: int, c_out: int) -> list[Segment]:
    """Source segments expressed in output channel coordinates, per the rule's channel relation."""
    if ch.kind == "same" and c_in == c_out:
        return [Segment(s.start, s.stop, s.terms) for s in segments]
    if ch.kind in ("same", "mix", "merge"):
        return [Segment(0, c_out, union_terms(alg, [t for s in segments for t in s.terms]))]
    if ch.kind == "groups":
        g = ch.a
        out = []
        for i in range(g):
            lo, hi = i * c_in // g, (i + 1) * c_in // g
            terms = [t for s in segments if s.start < hi and s.stop > lo for t in s.terms]
            out.append(Segment(i * c_out // g, (i + 1) * c_out // g, union_terms(alg, terms)))
        return out
    if ch.kind == "slice":
        start, step = ch.a, ch.b
        out = []
        for s in segments:
            j0 = max(0, ceil((s.start - start) / step))
            j1 = min(c_out, ceil((s.stop - start) / step))
            if j1 > j0:
                out.append(Segment(j0, j1, s.terms))
        return out
    raise ValueError(f"unknown channel relation {ch.kind}")


def _combine(alg: Any, pieces: list[Segment], c_out: int) -> tuple[Segment, ...]:
    """Union of segment pieces from several inputs, split at every boundary, equal neighbours merged."""
    cuts = sorted({0, c_out} | {p.start for p in pieces} | {p.stop for p in pieces})
    segments: list[Segment] = []
    for lo, hi in pairwise(cuts):
        if hi <= lo or lo >= c_out:
            continue
        terms = union_terms(alg, [t for p in pieces if p.start <= lo and p.stop >= hi for t in p.terms])
        if segments and _same_terms(alg, segments[-1].terms, terms):
            segments[-1] = Segment(segments[-1].start, hi, segments[-1].terms)
        else:
            segments.append(Segment(lo, hi, terms))
    return tuple(segments)


# ------------------------------------------------------------------------------------------------------------
# Propagation


@dataclass
class NodeState:
    layout: Layout
    segments: tuple[Segment, ...]
    notes: tuple[str, ...] = ()
    paths: tuple[dict, ...] = ()  # per axis: centre key -> endpoint map of one class of paths
    channels_merged: bool = False


class Propagation:
    """Rule effects computed once per call; influence propagated in one algebra."""

    def __init__(self, graph: Graph, options: Options) -> None:
        self.graph = graph
        self.options = options
        self.spatial = len(graph.input_shape) - 2
        self.shapes = {n.id: n.shape for n in graph.nodes}
        self.layouts: dict[int, Layout] = {
            graph.input_node: L.with_sizes(
                L.input_layout(len(graph.input_shape), self.spatial), graph.input_shape
            )
        }
        self.effects: list[tuple[OpCall, list[Effect]]] = []
        for call in graph.calls:
            if not call.outputs:
                continue
            fn = rule_for(call)
            if fn is None:
                raise UnsupportedOpError(
                    f"no receptive-field rule for {call.name} at module '{call.module or '<model>'}'; the engine "
                    "never guesses an op is the identity: please report it, or replace the op"
                )
            effects = fn(Ctx(call, self.layouts, self.shapes, options))
            if len(effects) != len(call.outputs):
                raise AssertionError(
                    f"rule for {call.packet} gave {len(effects)} effects for {len(call.outputs)} outputs"
                )
            for node, effect in zip(call.outputs, effects):
                self.layouts[node] = effect.layout
            self.effects.append((call, effects))

    def channels(self, node: int) -> int:
        cd = L.channel_dim(self.layouts[node], self.shapes[node])
        return self.shapes[node][cd] if cd is not None else 1

    def size(self, node: int, axis: int) -> int:
        loc = self.layouts[node][axis]
        return 1 if loc is None else loc.size

    def run(self, alg: Any, with_paths: bool = False) -> dict[int, NodeState]:
        g = self.graph
        start = tuple(alg.identity(a) for a in range(self.spatial))
        c_in = self.channels(g.input_node)
        paths0 = (
            tuple({_centre_key(IDENTITY): IDENTITY.endpoints()} for _ in range(self.spatial))
            if with_paths
            else ()
        )
        states = {
            g.input_node: NodeState(self.layouts[g.input_node], (Segment(0, c_in, (start,)),), (), paths0)
        }
        for call, effects in self.effects:
            for node, effect in zip(call.outputs, effects):
                states[node] = self._apply(alg, effect, node, states, with_paths)
        return states

    def _apply(self, alg: Any, effect: Effect, node: int, states: dict, with_paths: bool) -> NodeState:
        c_out = self.channels(node)
        pieces: list[Segment] = []
        notes: list[str] = list(effect.notes)
        merged = False
        paths: list[dict] = [{} for _ in range(self.spatial)] if with_paths else []
        for dep in effect.deps:
            src = dep.source.node
            state = states[src]
            rules = {a: dep.axes[a] for a in dep.axes if state.layout[a] is not None}
            sizes = {a: (self.size(src, a), self.size(node, a)) for a in range(self.spatial)}

            def move(term: Term, rules: dict = rules, sizes: dict = sizes) -> Term:
                return tuple(
                    alg.compose(m, rules[a], *sizes[a]) if a in rules else m for a, m in enumerate(term)
                )

            moved = [Segment(s.start, s.stop, tuple(move(t) for t in s.terms)) for s in state.segments]
            c_src = self.channels(src)
            if dep.channels.kind == "merge" and len({id(s) for s in moved}) > 1:
                distinct = any(not _same_terms(alg, moved[0].terms, s.terms) for s in moved[1:])
                merged = merged or distinct
            if dep.channels.kind in ("slice", "groups") and state.channels_merged:
                notes.append(
                    f"approximate: channels were reorganised before the channel selection at {self._name(node)}; "
                    "the support shown is the union over those channels"
                )
            pieces += _map_channels(alg, moved, dep.channels, c_src, c_out)
            notes += state.notes
            merged = merged or state.channels_merged
            if with_paths:
                for a in range(self.spatial):
                    for key, sig in state.paths[a].items():
                        new = (
                            sig
                            if a not in rules
                            else compose(sig, rules[a].periodic).endpoints().normalized()
                        )
                        paths[a][_centre_key(new) if a in rules else key] = new
        segments = _combine(alg, pieces, c_out) if pieces else (Segment(0, c_out, ()),)
        return NodeState(effect.layout, segments, tuple(dict.fromkeys(notes)), tuple(paths), merged)

    def _name(self, node: int) -> str:
        return self.graph.nodes[node].name


def _centre_key(m: AxisMap) -> tuple:
    """Paths agree when their stride and the centre of every phase's window agree."""
    if m.has_global:
        return ("global",)
    return (m.period, m.advance, tuple(p.lo + p.hi if not p.empty else None for p in m.phases))


# ------------------------------------------------------------------------------------------------------------
# Reports


@dataclass
class PhaseWindow:
    phase: int
    lo: int  # output index ``q * period + phase`` sees input ``[q * advance + lo, q * advance + hi]``
    hi: int
    holes: list[int]

    @property
    def rf(self) -> int:
        return self.hi - self.lo + 1


@dataclass
class AxisRF:
    name: str
    rf: int | None  # None: global
    global_: bool
    stride: Fraction | None  # None when paths of different strides meet
    padding: Fraction | None
    centre: Fraction | None
    holes: list[int]  # positions missing inside the largest window, relative to its first pixel
    coverage: float
    aligned: bool
    phases: list[PhaseWindow]
    note: str | None = None

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
    """Union of per-term maps, or None when their strides differ (no single periodic map exists)."""
    acc = maps[0]
    for m in maps[1:]:
        acc = acc.union(m)
        if acc is None:
            return None
    return acc


def _axis_rf(name: str, maps: list[AxisMap], paths: dict, n_out: int) -> AxisRF:
    """Summary of one axis of one tensor from the per-term maps (union) and path classes (alignment)."""
    union = _axis_union(maps) if maps else None
    if not maps or (union is not None and union.is_empty):
        return AxisRF(
            name, 0, False, None, None, None, [], 0.0, True, [], "no input pixel reaches this tensor"
        )
    if union is not None and union.has_global:
        return AxisRF(
            name, None, True, union.stride if not union.is_global else None, None, None, [], 1.0, True, []
        )
    if union is None:
        # Paths with different strides meet: the window depends on the position; show the largest one.
        sets = [reduce(lambda acc, m: acc | m.at(u), maps, Offsets.of([])) for u in range(max(n_out, 1))]
        widest = max(sets, key=lambda s: s.extent)
        strides = sorted({str(m.stride) for m in maps if not m.is_empty})
        return AxisRF(
            name,
            widest.extent,
            False,
            None,
            None,
            None,
            widest.holes(),
            len(widest) / widest.extent,
            False,
            [],
            f"paths with different strides ({', '.join(strides)}) meet: the window depends on the position; "
            f"rf is the largest over the {n_out} output positions",
        )
    windows = [PhaseWindow(f, p.lo, p.hi, p.holes()) for f, p in enumerate(union.phases) if not p.empty]
    widest_phase = max(windows, key=lambda w: w.rf)
    widest = union.phases[widest_phase.phase]
    first = union.phases[0]
    padding = -Fraction(first.lo) if not first.empty else None
    centres = {k for k in paths if k != ("global",)}
    aligned = union.period == 1 and len(centres) <= 1
    note = None
    if union.period > 1:
        note = f"{union.period} output phases see different windows (stride {union.stride})"
    elif len(centres) > 1:
        found = sorted({Fraction(k[2][0], 2) for k in centres if k[2][0] is not None and k[0] == 1})
        note = "paths disagree on the centre of the window: " + ", ".join(str(c) for c in found)
    centre = Fraction(first.lo + first.hi, 2) if union.period == 1 else None
    return AxisRF(
        name,
        widest_phase.rf,
        False,
        union.stride,
        padding,
        centre,
        widest_phase.holes,
        len(widest) / widest.extent,
        aligned,
        windows,
        note,
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
    grid = np.zeros(shape, dtype=bool)
    for b in boxes:
        idx = [np.fromiter((v - lo[i] for v in b[i]), dtype=np.int64) for i in range(len(axes))]
        grid[np.ix_(*idx)] = True
    return float(grid.mean())


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

    def output(self, name: str | None = None) -> TensorRF:
        """The report of one output (the first when ``name`` is None; names as in :func:`named_outputs`)."""
        if name is None:
            return self.outputs[0]
        for o in self.outputs:
            if o.name == name:
                return o
        raise _unknown_output(name, [o.name for o in self.outputs])

    @property
    def rf(self) -> list[int | None]:
        return self.outputs[0].rf

    def tensor(self, node: int, name: str | None = None) -> TensorRF:
        return _tensor_rf(self._prop, self._periodic[node], node, name or self.graph.nodes[node].name)

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
        lay = state.layout
        boxes = []
        for seg in state.segments:
            for term in seg.terms:
                sets = [m.at(index[a] if lay[a] is not None else 0) for a, m in enumerate(term)]
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
            mask[
                np.ix_(
                    *[np.fromiter((v - origin[a] for v in b[a]), dtype=np.int64) for a in range(len(index))]
                )
            ] = True
        return origin, mask

    def support(self, index: Sequence[int], output: str | None = None) -> np.ndarray:
        """Exact in-image support of one output pixel: a boolean array over the input's spatial shape, True
        where the input pixel influences output ``index`` (spatial indices of that output)."""
        node = self.graph.outputs[self.output(output).name]
        if self._finite is None:
            self._finite = self._prop.run(FiniteAlgebra(self.input_shape[1:]))
        state = self._finite[node]
        lay = state.layout
        if len(index) != len(lay):
            raise InputShapeError(f"support index {tuple(index)} needs {len(lay)} spatial coordinates")
        grid = np.zeros(self.input_shape[1:], dtype=bool)
        for seg in state.segments:
            for term in seg.terms:
                rows = []
                for a, m in enumerate(term):
                    i = index[a] if lay[a] is not None else 0
                    rows.append(m[min(i, m.shape[0] - 1)] if m.shape[0] > 1 else m[0])
                grid |= reduce(np.multiply.outer, rows).astype(bool) if len(rows) > 1 else rows[0]
        return grid

    def to_json(self, layers: bool = True) -> dict:
        data: dict[str, Any] = {
            "input": list(self.input_shape),
            "mode": "train-view" if self.options.train_batchnorm else "eval",
            "outputs": [o.to_json() for o in self.outputs],
        }
        if layers:
            data["layers"] = [
                {"node": r.node, "module": r.module, "op": r.op, **r.tensor.to_json()} for r in self.layers()
            ]
        return data


def named_outputs(out: Any, prefix: str = "") -> list[tuple[str, torch.Tensor]]:
    """Every tensor in a model's return value, named by where it sits: ``out`` for a lone tensor; the key of a
    dict (``out``, ``aux``), the field of a dataclass or named tuple (``logits``), the index of a tuple or list
    (``0``, ``1``); nested places joined by dots (``aux.0``). Other values (None, numbers) are skipped."""
    if isinstance(out, torch.Tensor):
        return [(prefix or "out", out)]
    if dataclasses.is_dataclass(out) and not isinstance(out, type):
        items: Any = ((f.name, getattr(out, f.name)) for f in dataclasses.fields(out))
    elif isinstance(out, Mapping):
        items = out.items()
    elif isinstance(out, tuple) and hasattr(out, "_fields"):
        items = zip(out._fields, out)
    elif isinstance(out, (list, tuple)):
        items = enumerate(out)
    else:
        return []
    return [
        leaf
        for key, value in items
        for leaf in named_outputs(value, f"{prefix}.{key}" if prefix else str(key))
    ]


def _unknown_output(name: str, names: Sequence[str]) -> ModelError:
    return ModelError(
        f"the model has no output {name!r}; its outputs are {', '.join(names)} (pick one of these)"
    )


def _as_named_dict(module: nn.Module, args: Any, out: Any) -> Any:
    """Forward hook: a structured return value becomes a flat ``{name: tensor}`` dict, so that the recorder
    names each output as :func:`named_outputs` does (it understands dicts, not dataclasses)."""
    return None if isinstance(out, torch.Tensor) else dict(named_outputs(out))


def select_output(model: nn.Module, name: str | None = None) -> nn.Module:
    """Make ``model`` return only its output ``name`` (the first when None), for tools that need one tensor
    (the ERF). Installs a forward hook on ``model`` itself, so module names (and messages) stay as they were;
    a model that returns one tensor is left untouched when ``name`` is None or ``"out"``."""

    def pick(module: nn.Module, args: Any, out: Any) -> torch.Tensor:
        if isinstance(out, torch.Tensor) and name in (None, "out"):
            return out
        leaves = dict(named_outputs(out))
        if not leaves:
            raise ModelError(f"the model returned {type(out).__name__}, which holds no tensor")
        if name is None:
            return next(iter(leaves.values()))
        if name not in leaves:
            raise _unknown_output(name, list(leaves))
        return leaves[name]

    model.register_forward_hook(pick)
    return model


def _tensor_rf(prop: Propagation, state: NodeState, node: int, name: str) -> TensorRF:
    terms = [t for s in state.segments for t in s.terms]
    names = AXIS_NAMES[prop.spatial]
    axes = []
    for a in range(prop.spatial):
        maps = [t[a] for t in terms]
        paths = state.paths[a] if state.paths else {}
        axes.append(_axis_rf(names[a], maps, paths, prop.size(node, a)))
    notes = [n for n in state.notes if n.startswith("global") and any(ax.global_ for ax in axes)]
    notes += [n for n in state.notes if not n.startswith("global")]
    return TensorRF(name, prop.shapes[node], axes, notes, _area_coverage(terms, axes))


def _parse_shape(input_shape: Sequence[int]) -> tuple[int, ...]:
    shape = tuple(int(s) for s in input_shape)
    if not 2 <= len(shape) <= 4 or any(s < 1 for s in shape):
        raise InputShapeError(
            f"input shape {tuple(input_shape)} must be (C, L), (C, H, W) or (C, D, H, W) with positive sizes"
        )
    return shape


def analyze(
    model: nn.Module | Callable[[], nn.Module],
    input_shape: Sequence[int],
    *,
    train_view: bool = False,
    ignore_statistics: bool = False,
) -> RFReport:
    """Exact receptive fields of ``model`` for inputs of ``input_shape`` = (C, *spatial), batch excluded.

    ``train_view`` shows training semantics (BatchNorm batch statistics make the RF global);
    ``ignore_statistics`` treats all normalisation statistics as constants (the structural RF).
    Nothing of input size is allocated: the model runs on shape-only tensors.
    """
    shape = _parse_shape(input_shape)
    if not isinstance(model, nn.Module) and callable(model):
        model = model()
    naming = model.register_forward_hook(_as_named_dict)
    try:
        graph = record(model, (1, *shape), CONSTANT_PACKETS)
    finally:
        naming.remove()
    options = Options(train_batchnorm=train_view, ignore_statistics=ignore_statistics)
    prop = Propagation(graph, options)
    periodic = prop.run(PeriodicAlgebra(), with_paths=True)
    outputs = [_tensor_rf(prop, periodic[node], node, name) for name, node in graph.outputs.items()]
    return RFReport(shape, outputs, graph, options, prop, periodic)
