"""Propagate influence over the recorded graph, in either set algebra (:mod:`atrous.rf.algebra`).

Each op's rule effects are computed once (:class:`Propagation`); :meth:`Propagation.run` then carries, for every
tensor, which input pixels reach it, per channel segment (so ``torch.chunk`` of a concatenation is exact), and
in the periodic algebra the classes of paths by window centre that decide alignment.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import pairwise
from math import ceil

from atrous.errors import AnalysisTooLargeError, UnsupportedOpError
from atrous.rf import layout as L
from atrous.rf.algebra import Algebra, Term, same_terms, union_of
from atrous.rf.graph import Graph, OpCall
from atrous.rf.layout import Layout
from atrous.rf.rules import AXIS_NAMES, Channels, Ctx, Effect, Options, rule_for
from atrous.rf.support import IDENTITY, PHASE_LIMIT, AxisMap, GrowthError, compose_endpoints


@dataclass
class Segment:
    """Channels ``start:stop`` of a tensor, all reached by the same union of products ``terms``."""

    start: int
    stop: int
    terms: tuple[Term, ...]


def map_channels(alg: Algebra, segments: list[Segment], ch: Channels, c_in: int, c_out: int) -> list[Segment]:
    """Source segments expressed in output channel coordinates, per the rule's channel relation."""
    if ch.kind == "same" and c_in == c_out:
        return [Segment(s.start, s.stop, s.terms) for s in segments]
    if ch.kind in ("same", "mix", "merge"):
        return [Segment(0, c_out, union_of(alg, [s.terms for s in segments]))]
    if ch.kind == "groups":
        g = ch.a
        out: list[Segment] = []
        read_before = None
        for i, end in _group_runs(segments, g, c_in):
            lo, hi = i * c_in // g, (i + 1) * c_in // g
            read = [k for k, s in enumerate(segments) if s.start < hi and s.stop > lo]
            start, stop = i * c_out // g, end * c_out // g
            if read == read_before:  # the same input segments as the group before: the same union (depthwise)
                out[-1] = Segment(out[-1].start, stop, out[-1].terms)
                continue
            read_before = read
            terms = union_of(alg, [segments[k].terms for k in read])
            append_merged(alg, out, Segment(start, stop, terms))
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


def _moved_terms(terms: tuple[Term, ...], move: Callable[[Term], Term]) -> tuple[Term, ...]:
    """Each term through ``move``; ``terms`` itself when no map changed (an op that keeps every axis, e.g. a 1x1
    convolution or an activation, composes with the identity), so a :class:`~atrous.rf.algebra.Union` stays
    one and the next union of it costs nothing."""
    moved = tuple(move(t) for t in terms)
    if all(all(a is b for a, b in zip(new, old)) for new, old in zip(moved, terms)):
        return terms
    return moved


def _group_runs(segments: list[Segment], g: int, c_in: int) -> list[tuple[int, int]]:
    """Groups ``i:end`` that read the same input segments, as runs: a group's segments can differ from the
    previous group's only where a segment boundary falls in that group or the one before, so only those groups
    need a look. A depthwise convolution has a group per channel (3,840 in EfficientNetV2-L) and usually one
    segment: one run instead of a scan of every group."""
    starts = {0}
    for s in segments:
        for p in (s.start, s.stop):
            i = min(p * g // c_in, g - 1)
            starts.update(j for j in (i, i + 1) if j < g)
    cuts = sorted(starts)
    return list(zip(cuts, [*cuts[1:], g]))


def combine(alg: Algebra, pieces: list[Segment], c_out: int) -> tuple[Segment, ...]:
    """Union of segment pieces from several inputs, split at every boundary, equal neighbours merged."""
    cuts = sorted({0, c_out} | {p.start for p in pieces} | {p.stop for p in pieces})
    # Each piece adds its terms to the intervals it covers (found by bisection), in the order of the pieces: a
    # scan of every piece per interval was quadratic in the channel count after depthwise convolutions (16 of
    # EfficientNetV2-L's 20 s of analysis).
    covering: list[list[tuple[Term, ...]]] = [[] for _ in range(len(cuts) - 1)]
    for p in pieces:
        for i in range(bisect_left(cuts, p.start), bisect_left(cuts, p.stop)):
            covering[i].append(p.terms)
    segments: list[Segment] = []
    for (lo, hi), found in zip(pairwise(cuts), covering):
        if hi <= lo or lo >= c_out:
            continue
        append_merged(alg, segments, Segment(lo, hi, union_of(alg, found)))
    return tuple(segments)


def append_merged(alg: Algebra, segments: list[Segment], new: Segment) -> None:
    """Append ``new``, or extend the last segment when it borders ``new`` with the same terms: a depthwise
    convolution would otherwise leave one segment per channel, and every later op would pay for each."""
    last = segments[-1] if segments else None
    if last is not None and last.stop == new.start and same_terms(alg, last.terms, new.terms):
        segments[-1] = Segment(last.start, new.stop, last.terms)
    else:
        segments.append(new)


@dataclass
class NodeState:
    """What reaches one tensor: per channel segment, plus notes and (periodic run) alignment path classes."""

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

    def run(self, alg: Algebra, with_paths: bool = False) -> dict[int, NodeState]:
        """What reaches every tensor; raises :class:`AnalysisTooLargeError` (naming the module and what grew)
        when a tensor's index maps or path classes outgrow :data:`PHASE_LIMIT`."""
        g = self.graph
        start = tuple(alg.identity(a) for a in range(self.spatial))
        c_in = self.channels(g.input_node)
        paths0 = (
            tuple({centre_key(IDENTITY): IDENTITY.endpoints()} for _ in range(self.spatial))
            if with_paths
            else ()
        )
        states = {
            g.input_node: NodeState(self.layouts[g.input_node], (Segment(0, c_in, (start,)),), (), paths0)
        }
        memo = _PathMemo() if with_paths else None
        # Path-class dicts already counted: most ops pass theirs on unchanged. The states keep every dict alive
        # through the run, so an id stays its own.
        self._checked: set[int] = set()
        for call, effects in self.effects:
            for node, effect in zip(call.outputs, effects):
                # A map of the result over the budget is said before the work (GrowthError), the sum after.
                try:
                    states[node] = self._apply(alg, effect, node, states, memo)
                except GrowthError as exc:
                    raise self._too_large(node, "an index map", exc.phases) from None
                self._check_growth(node, states[node])
        return states

    def _check_growth(self, node: int, state: NodeState) -> None:
        """Stop when the maps of one tensor along one axis add up to more than :data:`PHASE_LIMIT` phases: each
        is under the limit, but time and memory go with the sum (path classes multiply where branches with
        different resampling meet, e.g. GhostNetV2's gates at 224x224: 946 classes of period 343)."""
        for a in range(self.spatial):
            terms = sum(t[a].period for s in state.segments for t in s.terms if isinstance(t[a], AxisMap))
            if terms > PHASE_LIMIT:
                raise self._too_large(node, "the index maps of its union of paths", terms, a)
            found = state.paths[a] if state.paths else {}
            if len(found) > 1 and id(found) not in self._checked:
                self._checked.add(id(found))
                classes = sum(w.period for w in found.values())
                if classes > PHASE_LIMIT:
                    what = f"the alignment check's {len(found):,} classes of paths"
                    raise self._too_large(node, what, classes, a)

    def _too_large(self, node: int, what: str, phases: int, axis: int | None = None) -> AnalysisTooLargeError:
        where = f" along {AXIS_NAMES[self.spatial][axis]}" if axis is not None else ""
        return AnalysisTooLargeError(
            f"receptive-field analysis stopped at '{self._name(node)}': {what}{where} would need {phases:,} "
            f"phases (limit {PHASE_LIMIT:,}); resampling to sizes the input does not divide (pooling an odd "
            "size, then resizing back to it) multiplies the periods of the index maps; analyse at an input size "
            "every downsampling divides evenly (a multiple of the network's total stride, e.g. 256)"
        )

    def _apply(
        self, alg: Algebra, effect: Effect, node: int, states: dict, memo: _PathMemo | None
    ) -> NodeState:
        c_out = self.channels(node)
        pieces: list[Segment] = []
        notes: list[str] = list(effect.notes)
        merged = False
        sources: list[list[dict]] = [[] for _ in range(self.spatial)] if memo is not None else []
        for dep in effect.deps:
            src = dep.source.node
            state = states[src]
            rules = {a: dep.axes[a] for a in dep.axes if state.layout[a] is not None}
            sizes = {a: (self.size(src, a), self.size(node, a)) for a in range(self.spatial)}

            def move(term: Term, rules: dict = rules, sizes: dict = sizes) -> Term:
                return tuple(
                    alg.compose(m, rules[a], *sizes[a]) if a in rules else m for a, m in enumerate(term)
                )

            moved = [Segment(s.start, s.stop, _moved_terms(s.terms, move)) for s in state.segments]
            c_src = self.channels(src)
            if dep.channels.kind == "merge" and len({id(s) for s in moved}) > 1:
                distinct = any(not same_terms(alg, moved[0].terms, s.terms) for s in moved[1:])
                merged = merged or distinct
            if dep.channels.kind in ("slice", "groups") and state.channels_merged:
                notes.append(
                    f"approximate: channels were reorganised before the channel selection at {self._name(node)}; "
                    "the support shown is the union over those channels"
                )
            pieces += map_channels(alg, moved, dep.channels, c_src, c_out)
            notes += state.notes
            merged = merged or state.channels_merged
            if memo is not None:
                for a, by_centre in enumerate(state.paths):
                    sources[a].append(
                        _moved_classes(by_centre, rules[a].periodic, memo) if a in rules else by_centre
                    )
        segments = combine(alg, pieces, c_out) if pieces else (Segment(0, c_out, ()),)
        paths = tuple(_merge_classes(found) for found in sources)
        return NodeState(effect.layout, segments, tuple(dict.fromkeys(notes)), paths, merged)

    def _name(self, node: int) -> str:
        return self.graph.nodes[node].name


@dataclass
class _PathMemo:
    """Per-run caches of the alignment check: moved class dicts by (identity of the dict, rule), and moved
    windows by (window, rule). Per run, so that nothing outlives the analysis."""

    classes: dict = field(default_factory=dict)
    windows: dict = field(default_factory=dict)


def _moved_classes(by_centre: dict, periodic: AxisMap, memo: _PathMemo) -> dict:
    """One axis's path classes through one rule: each class's window moves and is keyed again by its new centre
    (classes that now agree fall together, the last one written standing for them). Memoised by the identity
    of the class dict, which the states keep alive through the run (the memo holds it too): a tensor read by
    several ops through the same rule (a residual, a ghost module's two branches) moves its classes once."""
    key = (id(by_centre), periodic)
    hit = memo.classes.get(key)
    if hit is not None:
        return hit[1]
    out: dict = {}
    windows = memo.windows
    for window in by_centre.values():
        # The same windows meet the same rules over and over (Swin-B: 913 distinct pairs among 22,000 moves).
        found = windows.get((window, periodic))
        if found is None:
            moved = compose_endpoints(window, periodic)
            found = windows[(window, periodic)] = (moved, centre_key(moved))
        out[found[1]] = found[0]
    memo.classes[key] = (by_centre, out)
    return out


def _merge_classes(found: list[dict]) -> dict:
    """The classes reaching a tensor from all its dependencies, as if written one after another. Class dicts are
    never changed once built, so a single source is shared rather than copied (most ops have one)."""
    if found and all(d is found[0] for d in found[1:]):
        return found[0]
    merged: dict = {}
    for d in found:  # in order, repeats too: which window stands for a shared centre depends on it
        merged.update(d)
    return merged


def centre_key(m: AxisMap) -> tuple:
    """Paths agree when their stride and the centre of every phase's window agree."""
    if m.has_global:
        return ("global",)
    return (m.period, m.advance, tuple(p.lo + p.hi if not p.empty else None for p in m.phases))
