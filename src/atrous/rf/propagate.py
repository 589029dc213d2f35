"""Propagate influence over the recorded graph, in either set algebra (:mod:`atrous.rf.algebra`).

Each op's rule effects are computed once (:class:`Propagation`); :meth:`Propagation.run` then carries, for every
tensor, which input pixels reach it, per channel segment (so ``torch.chunk`` of a concatenation is exact), and
in the periodic algebra the classes of paths by window centre that decide alignment.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from itertools import pairwise
from math import ceil

from atrous.errors import AnalysisTooLargeError, UnsupportedOpError
from atrous.rf import layout as L
from atrous.rf.algebra import Algebra, Term, composed_at, fold, same_terms, union_of
from atrous.rf.graph import Graph, OpCall, paused_gc
from atrous.rf.layout import Layout
from atrous.rf.rules import AXIS_NAMES, Channels, Effect, Options, rule_for
from atrous.rf.rules.memo import EffectMemo
from atrous.rf.support import GLOBAL_MAP, IDENTITY, PHASE_LIMIT, AxisMap, GrowthError, compose_endpoints


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
    # One input covering every channel (a tensor without channels has no segment, as below).
    if len(pieces) == 1 and c_out > 0 and pieces[0].start == 0 and pieces[0].stop >= c_out:
        return (Segment(0, c_out, union_of(alg, [pieces[0].terms])),)
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
    # Axes along which the maps (``coarse``) or the path classes (``coarse_paths``) of this tensor, or of one it
    # reads, were folded (see "coarsening" below): the report gives no stride, phases or alignment there.
    coarse: frozenset[int] = frozenset()
    coarse_paths: frozenset[int] = frozenset()


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
        self._reach_cache: dict[int, list[tuple[int, int]]] | None = None
        self._channels: dict[int, int] = {}
        memo = EffectMemo(options)  # repeated blocks: one rule run per distinct call (see rules.memo)
        with paused_gc():  # see graph.paused_gc
            for call in graph.calls:
                if not call.outputs:
                    continue
                fn = rule_for(call)
                if fn is None:
                    raise UnsupportedOpError(
                        f"no receptive-field rule for {call.name} at module '{call.module or '<model>'}'; the engine "
                        "never guesses an op is the identity: please report it, or replace the op"
                    )
                effects = memo.effects(fn, call, self.layouts, self.shapes)
                if len(effects) != len(call.outputs):
                    raise AssertionError(
                        f"rule for {call.packet} gave {len(effects)} effects for {len(call.outputs)} outputs"
                    )
                for node, effect in zip(call.outputs, effects):
                    self.layouts[node] = effect.layout
                self.effects.append((call, effects))

    def channels(self, node: int) -> int:
        # Asked twice per dependency of every op; layouts are fixed once the effects are computed.
        found = self._channels.get(node)
        if found is None:
            cd = L.channel_dim(self.layouts[node], self.shapes[node])
            found = self._channels[node] = self.shapes[node][cd] if cd is not None else 1
        return found

    def size(self, node: int, axis: int) -> int:
        loc = self.layouts[node][axis]
        return 1 if loc is None else loc.size

    def run(self, alg: Algebra, with_paths: bool = False) -> dict[int, NodeState]:
        """What reaches every tensor. Where the periodic index maps or path classes of a tensor outgrow
        :data:`PHASE_LIMIT`, they are coarsened (:meth:`_fold`) and the tensor and all it reaches carry a note
        that says so; :class:`AnalysisTooLargeError` (naming the module and what grew) remains for what
        cannot be coarsened."""
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
        self._folded: dict[tuple, AxisMap] = {}  # coarsened compositions, by (map, rule, range)
        self._coarse: set[int] = set()  # axes whose maps were coarsened at the tensor being computed
        self._coarse_paths: set[int] = set()  # and those whose path classes were
        self._coarse_note: str | None = None
        with paused_gc():  # see graph.paused_gc
            for call, effects in self.effects:
                for node, effect in zip(call.outputs, effects):
                    # A map of the result over the budget is coarsened before the work (GrowthError), the sum after.
                    self._coarse, self._coarse_paths = set(), set()
                    try:
                        state = self._apply(alg, effect, node, states, memo)
                    except GrowthError as exc:
                        raise self._too_large(node, "an index map", exc.phases) from None
                    states[node] = self._check_growth(alg, node, state)
        return states

    # -- coarsening: what the periodic run does where exact maps outgrow the budget -------------------------
    #
    # Why it is sound. A tensor's periodic map along an axis is only ever read at the positions the tensor has
    # (its report) and at those a later op reads from it (``_reach``: a backward pass of the rules' windows
    # over intervals, from every tensor's own positions). Where the exact map is over the budget it is
    # replaced by a map that contains it at every one of those positions (:func:`~atrous.rf.algebra.fold`);
    # an exact composition of such a map is then exact at every position whose reads stay in the range, which
    # by construction of ``_reach`` includes the tensor's own reached range. So every tensor's map contains
    # the exact one at each of its reached positions (induction over the graph), and the windows, rf and
    # in-image windows reported never fall short. The stride and the phases, which the exact map defines
    # beyond the image, are rounded in the folded one: the axis is marked (``NodeState.coarse``) on the tensor
    # and everything it reaches, and the report gives no stride, phases or alignment there (tiling refuses).
    # Path classes folded or dropped mark ``coarse_paths``: the alignment is then not claimed. The in-image
    # support (finite run) is not coarsened at all.

    def _reach(self) -> dict[int, list[tuple[int, int]]]:
        """Per tensor and axis, an interval holding every position that the tensor has or that a later op
        reads from it (a superset: the hull of every phase of a rule at both ends of the range). Computed on
        the first coarsening only, backwards over the calls: a tensor's readers all come after it."""
        if self._reach_cache is not None:
            return self._reach_cache
        own = {n: [(0, self.size(n, a) - 1) for a in range(self.spatial)] for n in self.layouts}
        reach = {n: list(r) for n, r in own.items()}
        for call, effects in reversed(self.effects):
            for node, effect in zip(call.outputs, effects):
                for dep in effect.deps:
                    src = dep.source.node
                    if src not in reach:
                        continue
                    for a in range(self.spatial):
                        rule_ = dep.axes.get(a)
                        lo, hi = reach[node][a]
                        if rule_ is not None and self.layouts[src][a] is not None:
                            found = _reads(rule_.periodic, lo, hi)
                            if found is None:
                                continue
                            lo, hi = found
                        old = reach[src][a]
                        reach[src][a] = (min(old[0], lo), max(old[1], hi))
        self._reach_cache = reach
        return reach

    def _fold(
        self,
        node: int,
        axis: int,
        at,
        stride,
        phases: int,
        key: tuple,
        small: bool = False,
        paths: bool = False,
    ) -> AxisMap:
        """The map whose positions are ``at`` (exact stride ``stride``), coarsened over the reached range of
        ``node`` along ``axis`` (see above), noted on the tensor; ``phases``: what the exact map would need;
        ``paths``: a window of the alignment check's path classes, not a map of the tensor's terms."""
        lo, hi = self._reach()[node][axis]
        key = (*key, lo, hi, small)
        found = self._folded.get(key)
        if found is None:
            found = self._folded[key] = fold(at, stride, lo, hi, small)
        self._mark(node, axis, phases, paths)
        return found

    def _mark(self, node: int, axis: int, phases: int, paths: bool) -> None:
        """Note that the tensor's maps (or, with ``paths``, its path classes) along ``axis`` were coarsened. A
        folded map's stride is rounded and its phases are those of this input's positions: the report must
        not present them as exact (tiling would trust them), so the axis is marked on the tensor and on all
        it reaches (``NodeState.coarse``, ``coarse_paths``)."""
        (self._coarse_paths if paths else self._coarse).add(axis)
        if self._coarse_note is None:
            where = f"{self._name(node)}' along {AXIS_NAMES[self.spatial][axis]}"
            self._coarse_note = (
                f"approximate: the exact index maps outgrow {PHASE_LIMIT:,} phases (first at '{where}: "
                f"{phases:,}): resampling to sizes the input does not divide (pooling an odd size, then "
                "resizing back to it) multiplies their periods; from there the maps are kept for this input's "
                "positions only: each window contains the exact one (a sound over-approximation where many "
                "paths forced fewer phases), and no stride, phases or alignment are given along the axes "
                "concerned; the in-image support (--at) stays exact"
            )

    def _fold_map(self, node: int, axis: int, m: AxisMap, phases: int, small: bool) -> AxisMap:
        return self._fold(node, axis, m.at, m.stride, phases, ("map", m), small)

    def _compose(self, alg: Algebra, m, rule_, sizes: tuple[int, int], node: int, axis: int):
        try:
            return alg.compose(m, rule_, *sizes)
        except GrowthError as exc:
            if not isinstance(m, AxisMap):
                raise
            r = rule_.periodic
            return self._fold(
                node, axis, composed_at(m, r), m.stride * r.stride, exc.phases, ("compose", m, r)
            )

    def _fold_window(self, node: int, axis: int, window: AxisMap, rule_: AxisMap, phases: int) -> AxisMap:
        """A path class's window through a rule, coarsened: the alignment check keeps the ends only."""
        at = composed_at(window, rule_)
        key = ("window", window, rule_)
        found = self._fold(node, axis, at, window.stride * rule_.stride, phases, key, small=True, paths=True)
        return found.endpoints().normalized()

    def _check_growth(self, alg: Algebra, node: int, state: NodeState) -> NodeState:
        """Coarsen where the maps of one tensor along one axis add up to more than :data:`PHASE_LIMIT` phases
        (each is under the limit, but time and memory go with the sum: path classes multiply where branches
        with different resampling meet, e.g. GhostNetV2's gates at 224x224 had 946 classes of period 343):
        first the maps of more phases than the tensor's reached positions, then, if the sum is still over,
        every map to at most 4 phases (strides rounded, so that paths merge); stop only when that cannot bring
        the sum under the limit."""
        for a in range(self.spatial):
            terms = _phases(state, a)
            for small in (False, True):
                if terms > PHASE_LIMIT:
                    state = self._fold_terms(alg, node, state, a, terms, small)
                    terms = _phases(state, a)
            if terms > PHASE_LIMIT:
                raise self._too_large(node, "the index maps of its union of paths", terms, a)
            found = state.paths[a] if state.paths else {}
            if len(found) > 1 and _all_global(state, a):
                state = _one_class(state, a)
                found = state.paths[a]
            if len(found) > 1 and id(found) not in self._checked:
                classes = sum(w.period for w in found.values())
                if classes > PHASE_LIMIT:
                    state = self._fold_classes(node, state, a, classes)
                    found = state.paths[a]
                    classes = sum(w.period for w in found.values())
                self._checked.add(id(found))
                if classes > PHASE_LIMIT:
                    what = f"the alignment check's {len(found):,} classes of paths"
                    raise self._too_large(node, what, classes, a)
        if self._coarse or self._coarse_paths:
            assert self._coarse_note is not None  # set by _mark
            state.notes = tuple(dict.fromkeys((*state.notes, self._coarse_note)))
            state.coarse = state.coarse | self._coarse
            state.coarse_paths = state.coarse_paths | self._coarse_paths
        return state

    def _fold_terms(
        self, alg: Algebra, node: int, state: NodeState, axis: int, phases: int, small: bool
    ) -> NodeState:
        """The tensor's terms with their maps along ``axis`` folded: with ``small``, every map of more than
        :data:`FOLD_KEEP` phases, to at most that many; else every map of more phases than reached positions."""
        lo, hi = self._reach()[node][axis]
        keep = FOLD_KEEP if small else hi - lo + 1

        def folded(t: Term) -> Term:
            m = t[axis]
            if not isinstance(m, AxisMap) or m.period <= keep:
                return t
            return (*t[:axis], self._fold_map(node, axis, m, phases, small), *t[axis + 1 :])

        segments: list[Segment] = []
        for s in state.segments:
            new = tuple(folded(t) for t in s.terms)
            terms = s.terms if all(x is y for x, y in zip(new, s.terms)) else union_of(alg, [new])
            append_merged(alg, segments, Segment(s.start, s.stop, terms))
        return replace(state, segments=tuple(segments))

    def _fold_classes(self, node: int, state: NodeState, axis: int, phases: int) -> NodeState:
        """The path classes along ``axis`` with every window of more than a few phases folded, keyed again."""
        out: dict = {}
        for w in state.paths[axis].values():
            if w.period > FOLD_KEEP:
                w = self._fold(node, axis, w.at, w.stride, phases, ("map", w), True, paths=True)
                w = w.endpoints().normalized()
            out[centre_key(w)] = w
        # The classes only decide whether the paths agree (and the centres the report lists): a few of them
        # tell that, and each one costs a composition per op from here on. Those dropped no longer count:
        # the alignment is not claimed from here on.
        if len(out) > CLASS_CAP:
            out = dict(list(out.items())[:CLASS_CAP])
            self._mark(node, axis, phases, paths=True)
        return replace(state, paths=tuple(out if a == axis else p for a, p in enumerate(state.paths)))

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
        coarse_maps: frozenset[int] = frozenset()
        coarse_paths: frozenset[int] = frozenset()
        sources: list[list[dict]] = [[] for _ in range(self.spatial)] if memo is not None else []
        for dep in effect.deps:
            src = dep.source.node
            state = states[src]
            rules = {a: dep.axes[a] for a in dep.axes if state.layout[a] is not None}
            if rules:
                sizes = {a: (self.size(src, a), self.size(node, a)) for a in rules}

                def move(term: Term, rules: dict = rules, sizes: dict = sizes) -> Term:
                    return tuple(
                        self._compose(alg, m, rules[a], sizes[a], node, a) if a in rules else m
                        for a, m in enumerate(term)
                    )

                moved = [Segment(s.start, s.stop, _moved_terms(s.terms, move)) for s in state.segments]
            else:  # most dependencies (views, elementwise ops) keep every axis: nothing moves
                moved = list(state.segments)
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
            coarse_maps, coarse_paths = coarse_maps | state.coarse, coarse_paths | state.coarse_paths
            if memo is not None:
                for a, by_centre in enumerate(state.paths):
                    if a not in rules:
                        sources[a].append(by_centre)
                        continue
                    coarse = partial(self._fold_window, node, a)
                    sources[a].append(_moved_classes(by_centre, rules[a].periodic, memo, coarse))
        segments = combine(alg, pieces, c_out) if pieces else (Segment(0, c_out, ()),)
        paths = tuple(_merge_classes(found) for found in sources)
        return NodeState(
            effect.layout, segments, tuple(dict.fromkeys(notes)), paths, merged, coarse_maps, coarse_paths
        )

    def _name(self, node: int) -> str:
        return self.graph.nodes[node].name


@dataclass
class _PathMemo:
    """Per-run caches of the alignment check: moved class dicts by (identity of the dict, rule), and moved
    windows by (window, rule). Per run, so that nothing outlives the analysis."""

    classes: dict = field(default_factory=dict)
    windows: dict = field(default_factory=dict)
    # One object per distinct map (rules and moved windows): rules of different calls, and windows moved from
    # different classes, are equal but distinct objects, and a key that holds one is compared phase by phase on
    # every hit (a third of the moves' time on Swin-B).
    rules: dict = field(default_factory=dict)


def _moved_classes(
    by_centre: dict, periodic: AxisMap, memo: _PathMemo, coarse: Callable[..., AxisMap] | None = None
) -> dict:
    """One axis's path classes through one rule: each class's window moves and is keyed again by its new centre
    (classes that now agree fall together, the last one written standing for them). Memoised by the identity
    of the class dict, which the states keep alive through the run (the memo holds it too): a tensor read by
    several ops through the same rule (a residual, a ghost module's two branches) moves its classes once.
    A window whose move is over the budget goes through ``coarse(window, rule, phases)`` instead; that
    result depends on the tensor (its reached range), so it is not memoised here."""
    periodic = memo.rules.setdefault(periodic, periodic)
    key = (id(by_centre), periodic)
    hit = memo.classes.get(key)
    if hit is not None:
        return hit[1]
    out: dict = {}
    windows = memo.windows
    shared = True
    for window in by_centre.values():
        # The same windows meet the same rules over and over (Swin-B: 913 distinct pairs among 22,000 moves).
        found = windows.get((window, periodic))
        if found is None:
            try:
                moved = compose_endpoints(window, periodic)
            except GrowthError as exc:
                if coarse is None:
                    raise
                # Coarsened over this tensor's reached range only: neither memo may keep it.
                moved = coarse(window, periodic, exc.phases)
                found = (moved, centre_key(moved))
                shared = False
            else:
                moved = memo.rules.setdefault(moved, moved)  # equal windows as one object, like the rules
                found = windows[(window, periodic)] = (moved, centre_key(moved))
        out[found[1]] = found[0]
    if shared:
        memo.classes[key] = (by_centre, out)
    return out


_GLOBAL_CLASS = {("global",): GLOBAL_MAP}


def _phases(state: NodeState, axis: int) -> int:
    """The phases of all the tensor's maps along ``axis``, added up."""
    return sum(t[axis].period for s in state.segments for t in s.terms if isinstance(t[axis], AxisMap))


def _all_global(state: NodeState, axis: int) -> bool:
    """Whether every term of the tensor reads the whole input along ``axis`` (a squeeze-excite mean did)."""
    terms = [t[axis] for s in state.segments for t in s.terms]
    return bool(terms) and all(isinstance(m, AxisMap) and m.is_global for m in terms)


def _one_class(state: NodeState, axis: int) -> NodeState:
    """The tensor with one (global) class of paths along ``axis``, where all its terms are global there.

    The classes are read only by the report of a tensor whose union along the axis is periodic and not
    global (``report._periodic_axis``), and every op would move them (GhostNetV2: hundreds of classes behind
    its squeeze-excite gates). A tensor reached from this one through its channels holds a term that is
    global along the axis (a global map composes to a global map, and union_of drops a term only into one
    containing it), so its union there is global, or None where strides differ, and its classes are not read.
    But classes are kept per tensor, not per channel: after a concatenation, a channel slice can drop every
    channel that this tensor reaches and keep its classes. Only there can the collapse change a report, and
    only ``aligned`` (with the note on the paths' centres): the exact classes would still be counted and can
    make it False although every path that still reaches the tensor agrees, while the global class is not
    counted, so the report says True, the right answer (the terms, hence every window, stride and phase, are
    the same either way)."""
    return replace(state, paths=tuple(_GLOBAL_CLASS if a == axis else p for a, p in enumerate(state.paths)))


def _merge_classes(found: list[dict]) -> dict:
    """The classes reaching a tensor from all its dependencies, as if written one after another. Class dicts are
    never changed once built, so a single source is shared rather than copied (most ops have one)."""
    if found and all(d is found[0] for d in found[1:]):
        return found[0]
    merged: dict = {}
    for d in found:  # in order, repeats too: which window stands for a shared centre depends on it
        merged.update(d)
    return merged


FOLD_KEEP = 4  # a tensor whose maps add up to too many phases has them folded to at most this many
CLASS_CAP = 8  # and keeps this many classes of paths for the alignment check


def _reads(rule_: AxisMap, lo: int, hi: int) -> tuple[int, int] | None:
    """An interval holding every position that ``rule_`` reads from output positions ``lo..hi``: every phase's
    window at the least and the greatest whole number of periods (a superset); None when it reads none (or
    all: a global phase needs nothing of the map it reads, see :func:`~atrous.rf.support.compose`)."""
    windows = [p for p in rule_.phases if not p.empty and not p.is_global]
    if not windows:
        return None
    a, b = (lo // rule_.period) * rule_.advance, (hi // rule_.period) * rule_.advance
    return min(p.lo for p in windows) + min(a, b), max(p.hi for p in windows) + max(a, b)


def centre_key(m: AxisMap) -> tuple:
    """Paths agree when their stride and the centre of every phase's window agree."""
    if m.has_global:
        return ("global",)
    return (m.period, m.advance, tuple(p.lo + p.hi if not p.empty else None for p in m.phases))
