"""Propagate influence over the recorded graph, in either set algebra (:mod:`atrous.rf.algebra`).

Each op's rule effects are computed once (:class:`Propagation`); :meth:`Propagation.run` then carries, for every
tensor, which input pixels reach it, per channel segment (so ``torch.chunk`` of a concatenation is exact), and
in the periodic algebra the classes of paths by window centre that decide alignment.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass
from functools import lru_cache
from itertools import pairwise
from math import ceil

from atrous.errors import UnsupportedOpError
from atrous.rf import layout as L
from atrous.rf.algebra import Algebra, Term, same_terms, union_terms
from atrous.rf.graph import Graph, OpCall
from atrous.rf.layout import Layout
from atrous.rf.rules import AxisRule, Channels, Ctx, Effect, Options, rule_for
from atrous.rf.support import IDENTITY, AxisMap, compose


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
        return [Segment(0, c_out, union_terms(alg, [t for s in segments for t in s.terms]))]
    if ch.kind == "groups":
        g = ch.a
        out: list[Segment] = []
        read_before = None
        for i in range(g):
            lo, hi = i * c_in // g, (i + 1) * c_in // g
            read = [k for k, s in enumerate(segments) if s.start < hi and s.stop > lo]
            start, stop = i * c_out // g, (i + 1) * c_out // g
            if read == read_before:  # the same input segments as the group before: the same union (depthwise)
                out[-1] = Segment(out[-1].start, stop, out[-1].terms)
                continue
            read_before = read
            terms = union_terms(alg, [t for k in read for t in segments[k].terms])
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


def combine(alg: Algebra, pieces: list[Segment], c_out: int) -> tuple[Segment, ...]:
    """Union of segment pieces from several inputs, split at every boundary, equal neighbours merged."""
    cuts = sorted({0, c_out} | {p.start for p in pieces} | {p.stop for p in pieces})
    # Each piece adds its terms to the intervals it covers (found by bisection), in the order of the pieces: a
    # scan of every piece per interval was quadratic in the channel count after depthwise convolutions (16 of
    # EfficientNetV2-L's 20 s of analysis).
    covering: list[list[Term]] = [[] for _ in range(len(cuts) - 1)]
    for p in pieces:
        for i in range(bisect_left(cuts, p.start), bisect_left(cuts, p.stop)):
            covering[i].extend(p.terms)
    segments: list[Segment] = []
    for (lo, hi), found in zip(pairwise(cuts), covering):
        if hi <= lo or lo >= c_out:
            continue
        append_merged(alg, segments, Segment(lo, hi, union_terms(alg, found)))
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
        for call, effects in self.effects:
            for node, effect in zip(call.outputs, effects):
                states[node] = self._apply(alg, effect, node, states, with_paths)
        return states

    def _apply(self, alg: Algebra, effect: Effect, node: int, states: dict, with_paths: bool) -> NodeState:
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
            if with_paths:
                _move_paths(state.paths, rules, paths)
        segments = combine(alg, pieces, c_out) if pieces else (Segment(0, c_out, ()),)
        return NodeState(effect.layout, segments, tuple(dict.fromkeys(notes)), tuple(paths), merged)

    def _name(self, node: int) -> str:
        return self.graph.nodes[node].name


def _move_paths(classes: tuple[dict, ...], rules: dict[int, AxisRule], into: list[dict]) -> None:
    """Path classes through one dependency: along an axis the op reads through a rule, each class's window
    moves and is keyed again by its new centre (classes that now agree fall together); other axes keep theirs."""
    for a, by_centre in enumerate(classes):
        for key, window in by_centre.items():
            if a in rules:
                window = _moved(window, rules[a].periodic)
                key = centre_key(window)
            into[a][key] = window


@lru_cache(maxsize=4096)
def _moved(window: AxisMap, periodic: AxisMap) -> AxisMap:
    """A path class's window after one op. Cached: the same windows meet the same rules over and over (Swin-B:
    913 distinct pairs among 22,000 moves, half of its analysis time before)."""
    return compose(window, periodic).endpoints().normalized()


def centre_key(m: AxisMap) -> tuple:
    """Paths agree when their stride and the centre of every phase's window agree."""
    if m.has_global:
        return ("global",)
    return (m.period, m.advance, tuple(p.lo + p.hi if not p.empty else None for p in m.phases))
