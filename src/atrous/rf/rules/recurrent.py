"""Recurrent layers (RNN, LSTM, GRU) run along a spatial axis: a unidirectional layer reads the prefix, a
bidirectional one the whole axis.

The recorder sees each ``nn.RNN``/``nn.LSTM``/``nn.GRU`` call as one op (``aten.lstm`` ..., all layers and both
directions; see :mod:`atrous.rf.graph`) on an input ``(T, B, F)``, or ``(B, T, F)`` with ``batch_first``:

* the **sequence** dim: the output at step ``t`` reads steps ``<= t`` of a unidirectional layer (stacking layers
  keeps the prefix), every step of a bidirectional one (the backward half reads ``>= t``, and the features of
  both directions are concatenated, so the union is the whole axis);
* the **batch** dim: sequences are independent, so an axis carried there (Sequencer2d runs its LSTM over the rows
  of ``(B * H, W, C)``: H sits in the batch dim) is read position by position;
* the **features**: every output feature reads every input feature, so an axis carried there is read whole.

On an unbounded input a prefix is unbounded, so the theoretical field along a sequence axis is global; the
in-image relation (``finite``) keeps the exact prefix. When the sequence dim carries several axes (tokens
flattened in raster order, ``h * W + w``), the prefix is lexicographic, which is no product of per-axis sets; it
is a union of products, one dependency each: ``h' < h`` with any ``w'``, or ``h' = h`` with ``w' <= w``. Other
digits of the sequence dim (batch or channel digits merged into it) count as positions too: the output pixel's
support is the union over them.

The final states ``h_n`` (and ``c_n``) read the whole sequence; an initial state derived from the input is read
by every step.

Two over-approximations the rules cannot see coming, so they say them up front (an "approximate" note): one
direction's features of a single bidirectional layer (``out[..., :hidden]``: a prefix, or a suffix) sliced out
of the last dim, which the engine does not track, keep the whole axis; and a cell (``nn.LSTMCell`` ...) stepped
in a Python loop over an axis, its steps stacked back, reads the whole axis at every step instead of the prefix
(the stack cannot tell which step each piece was).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from atrous.rf import layout as L
from atrous.rf.graph import TensorArg
from atrous.rf.layout import Layout, Loc
from atrous.rf.rules.base import GLOBAL_RULE, MIX, AxisRule, Ctx, Dep, Effect, axis_names, rule
from atrous.rf.support import GLOBAL, AxisMap


def _prefix(strict: bool) -> AxisRule:
    """Output step ``t`` reads input steps ``<= t`` (``< t`` when ``strict``)."""
    k = -1 if strict else 0

    def finite(n_in: int, n_out: int) -> np.ndarray:
        return np.tri(n_out, n_in, k, dtype=bool)

    return AxisRule(AxisMap.constant(GLOBAL), finite)


PREFIX, STRICT_PREFIX = _prefix(False), _prefix(True)


def _sequence_digits(locs: list[tuple[int, Loc]], length: int) -> list[int | None]:
    """The axes carried by the sequence dim, slowest first, with None for each run of other digits (size > 1)
    between them: the lexicographic order the layer runs in."""
    digits: list[int | None] = []
    above = length  # positions of the sequence dim above the current digit
    for axis, loc in sorted(locs, key=lambda al: -al[1].inner):
        if above // (loc.inner * loc.size) > 1:
            digits.append(None)
        digits.append(axis)
        above = loc.inner
    if above > 1:
        digits.append(None)
    return digits


def _state_deps(
    ctx: Ctx, states: list[TensorArg], batch: dict[int, Loc], state_dim: int, out_dim: int
) -> list[Dep]:
    """A state ``(..., B, H)`` derived from the input (batch dim ``state_dim``): every output of that sequence
    reads all of it; an axis in its batch dim is read position by position when the output (batch dim
    ``out_dim``) carries it the same way, and whole otherwise."""
    deps = []
    for h in states:
        rules = {}
        for axis, loc in enumerate(ctx.layout(h)):
            if loc is None:
                continue
            same = (
                isinstance(loc, Loc) and loc.dim == state_dim and replace(loc, dim=out_dim) == batch.get(axis)
            )
            if not same:
                rules[axis] = GLOBAL_RULE
        deps.append(Dep(h, rules, MIX))
    return deps


def _batch_locs(layout: Layout, dim: int, out_dim: int) -> dict[int, Loc]:
    return {
        axis: replace(loc, dim=out_dim)
        for axis, loc in enumerate(layout)
        if isinstance(loc, Loc) and loc.dim == dim
    }


def _one_direction_note(ctx: Ctx, axes: list[str]) -> str:
    """The features of one direction alone (``out[..., :hidden]``) read only a prefix or a suffix of the axis,
    but the engine tracks feature ranges in dim 1 only, and the features here are the last dim: a slice of them
    keeps the whole axis. Only a single layer has such halves: a second layer's forward direction reads the
    first layer's backward features, hence the whole axis."""
    where = ", ".join(axes)
    return (
        f"approximate where one direction's features are taken alone: a bidirectional recurrent layer runs "
        f"along {where}; its forward features read only steps <= t and its backward ones steps >= t, but a "
        f"slice of them is shown reading the whole axis ({ctx.where})"
    )


def _stepped_note(ctx: Ctx, axes: list[str]) -> str:
    """A cell stepped in a Python loop over an axis sees one position per step (its input carries no index of
    the axis) and the previous step's state: step t reads positions <= t. Stacking the steps back along the
    axis merges tensors that carry no index of it, so each stacked position is shown reading every step's
    positions (the whole axis)."""
    where = ", ".join(axes)
    # One note for the whole loop, not one per step: the recorder names the k-th call of a module "name#k".
    module = ctx.call.module.rpartition("#")[0] or ctx.call.module or "<model>"
    return (
        f"approximate where the steps are stacked back along {where}: a recurrent cell fed its previous state "
        f"steps over positions of {where}; step t reads only positions <= t, but a stack of the steps is shown "
        f"reading the positions of every step ({ctx.call.packet} at module '{module}', every call)"
    )


@rule("aten.lstm", "aten.gru", "aten.rnn_tanh", "aten.rnn_relu")
def _recurrent(ctx: Ctx) -> list[Effect]:
    a = ctx.call.args
    x: TensorArg = a["input"]
    hx = a["hx"] if isinstance(a["hx"], (list, tuple)) else [a["hx"]]
    states = [h for h in hx if isinstance(h, TensorArg) and h.node is not None]
    t_dim, b_dim, f_dim = (1, 0, 2) if a["batch_first"] else (0, 1, 2)
    n_axes = len(ctx.layout(ctx.tracked()[0]))
    names = axis_names(n_axes)

    batch: dict[int, Loc] = {}  # axis -> its Loc in the output's batch dim
    sequence: list[tuple[int, Loc]] = []
    features: list[int] = []
    if x.node is not None:
        for axis, loc in enumerate(ctx.layout(x)):
            if loc is None:
                continue
            dims = L.dims_of(loc)
            if dims == {b_dim} and isinstance(loc, Loc):
                batch[axis] = loc
            elif dims == {f_dim}:
                features.append(axis)
            elif dims == {t_dim} and isinstance(loc, Loc) and not loc.offset:
                sequence.append((axis, loc))
            else:
                raise ctx.unsupported(
                    f"axis {names[axis]} is spread over the sequence, batch and feature dims of the recurrent "
                    "layer's input in a way the engine cannot follow (a view merged or split it); give the "
                    "layer a (seq, batch, features) tensor whose sequence dim holds whole axes"
                )
    else:  # only the initial state is derived from the input: its batch dim becomes the output's
        batch = _batch_locs(ctx.layout(states[0]), 1, b_dim)

    seq_axes = [axis for axis, _ in sequence]
    whole = {axis: GLOBAL_RULE for axis in features}
    notes = []
    deps: list[Dep] = []
    if x.node is not None:
        if a["bidirectional"] or not sequence:
            deps.append(Dep(x, {**whole, **{axis: GLOBAL_RULE for axis in seq_axes}}, MIX))
        else:
            # Lexicographic prefix: the first digit where input and output differ is smaller in the input,
            # digits before it are equal, digits after it are free.
            digits = _sequence_digits(sequence, x.shape[t_dim])
            for i, digit in enumerate(digits):
                later = {axis: GLOBAL_RULE for axis in digits[i + 1 :] if axis is not None}
                if digit is None:  # another digit differs first: every later axis position is reached
                    deps.append(Dep(x, {**whole, **later}, MIX))
                    break
                last = i == len(digits) - 1
                # The last axis digit: "smaller" and "all equal" together make <=.
                deps.append(Dep(x, {**whole, digit: PREFIX if last else STRICT_PREFIX, **later}, MIX))
        if sequence:
            kind = (
                "bidirectional: reads the whole axis"
                if a["bidirectional"]
                else "unidirectional: step t reads steps <= t"
            )
            notes.append(
                f"global: a recurrent layer runs along {', '.join(names[axis] for axis in seq_axes)} "
                f"({kind}; {ctx.where})"
            )
        if sequence and a["bidirectional"] and a["num_layers"] == 1:
            notes.append(_one_direction_note(ctx, [names[axis] for axis in seq_axes]))
        if features:
            notes.append(
                f"global: {', '.join(names[axis] for axis in features)} is read through the features of a "
                f"recurrent layer ({ctx.where})"
            )
    deps += _state_deps(ctx, states, batch, 1, b_dim)

    kept = {**batch, **dict(sequence)}  # the features are mixed; the batch and sequence dims stay
    out_layout: Layout = tuple(kept.get(axis) for axis in range(n_axes))
    effects = [Effect(L.with_sizes(out_layout, ctx.out_shapes[0]), deps, notes)]
    # Final states (D * layers, B, H): the whole sequence, the batch dim moved to dim 1.
    final_deps = []
    if x.node is not None:
        final_deps.append(Dep(x, {**whole, **{axis: GLOBAL_RULE for axis in seq_axes}}, MIX))
    final_deps += _state_deps(ctx, states, batch, 1, b_dim)
    final_layout: Layout = tuple(
        replace(batch[axis], dim=1) if axis in batch else None for axis in range(n_axes)
    )
    for shape in ctx.out_shapes[1:]:
        effects.append(Effect(L.with_sizes(final_layout, shape), final_deps, notes))
    return effects


@rule("aten.lstm_cell", "aten.gru_cell", "aten.rnn_tanh_cell", "aten.rnn_relu_cell")
def _cell(ctx: Ctx) -> list[Effect]:
    """One step ``(B, F), (B, H) -> (B, H)``: rows are independent sequences, every feature mixes."""
    a = ctx.call.args
    hx = a["hx"] if isinstance(a["hx"], (list, tuple)) else [a["hx"]]
    sources = [t for t in (a["input"], *hx) if isinstance(t, TensorArg) and t.node is not None]
    batch = _batch_locs(ctx.layout(sources[0]), 0, 0)
    n_axes = len(ctx.layout(sources[0]))
    names = axis_names(n_axes)
    deps = _state_deps(ctx, sources, batch, 0, 0)
    mixed = {axis for dep in deps for axis in dep.axes}
    notes = []
    if mixed:
        notes.append(
            f"global: {', '.join(names[axis] for axis in sorted(mixed))} is read through the features of a "
            f"recurrent cell ({ctx.where})"
        )
    x = a["input"]
    stepped = [] if x.node is None else [names[axis] for axis, loc in enumerate(ctx.layout(x)) if loc is None]
    if stepped and any(t is not x for t in sources):
        notes.append(_stepped_note(ctx, stepped))
    layout: Layout = tuple(batch.get(axis) for axis in range(n_axes))
    return [Effect(L.with_sizes(layout, shape), deps, notes) for shape in ctx.out_shapes]
