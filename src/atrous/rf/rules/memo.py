"""Rule effects reused across calls that look the same to a rule (:class:`EffectMemo`).

Transformers repeat one block on the same shapes (Swin-B runs 18 identical blocks in its third stage), and
every call's rule was run again: about 40% of the engine's time on Swin and MaxViT. A rule sees a call only
through :class:`~atrous.rf.rules.base.Ctx`: the op's name, its arguments (tensors as ``TensorArg``: node,
shape, strides, offset), which arguments it writes, its outputs' shapes, the layouts of its tracked inputs and
the options. Of the node ids a rule can tell only whether a tensor is tracked and which arguments are the same
tensor (``x * x``), and of the module only its name, through ``ctx.where``, which goes into notes and errors.

So the key is all of that with each node id replaced by the order in which it first appears (None for a
constant), and two calls with one key get the same effects, each dependency's source swapped for the
argument in the same position of the new call. Effects with notes name their module: they are not reused;
neither is a rule's dependency on a tensor that is not one of the call's arguments (no rule makes one), and
a rule that raises stores nothing.
"""

from __future__ import annotations

from typing import Any

from atrous.rf.graph import OpCall, TensorArg
from atrous.rf.layout import Layout
from atrous.rf.rules.base import Ctx, Dep, Effect, Options, RuleFn

_NOT_REUSABLE = object()


class EffectMemo:
    """The effects of one propagation's calls, computed once per key (see the module docstring)."""

    def __init__(self, options: Options) -> None:
        self.options = options
        self._found: dict[tuple, Any] = {}

    def effects(
        self, fn: RuleFn, call: OpCall, layouts: dict[int, Layout], shapes: dict[int, tuple]
    ) -> list[Effect]:
        key = _key(call, layouts, shapes)
        found = self._found.get(key, _NOT_REUSABLE) if key is not None else _NOT_REUSABLE
        if found is not _NOT_REUSABLE and found is not None:
            inputs = call.inputs
            return [
                Effect(layout, [Dep(inputs[i], axes, channels) for i, axes, channels in deps])
                for layout, deps in found
            ]
        effects = fn(Ctx(call, layouts, shapes, self.options))
        if key is not None and key not in self._found:
            self._found[key] = _template(call, effects)
        return effects


def _key(call: OpCall, layouts: dict[int, Layout], shapes: dict[int, tuple]) -> tuple | None:
    """Everything a rule can see of ``call``, node ids replaced by their order of appearance; None where an
    argument cannot be part of a key (unhashable)."""
    order: dict[int, int] = {}
    try:
        args = tuple((name, _canon(value, order, layouts)) for name, value in call.args.items())
        return (
            call.name,
            args,
            len(call.inputs),
            tuple(call.mutated),
            tuple(shapes[n] for n in call.outputs),
        )
    except TypeError:
        return None


def _canon(value: Any, order: dict[int, int], layouts: dict[int, Layout]) -> Any:
    kind = type(value)
    if kind is TensorArg:
        node = value.node
        if node is None:
            return (TensorArg, None, value.shape, value.stride, value.storage_offset)
        slot = order.setdefault(node, len(order))
        return (TensorArg, slot, value.shape, value.stride, value.storage_offset, layouts[node])
    if kind is int or kind is bool or value is None:
        return (kind, value)
    if kind is list or kind is tuple:
        return (kind, tuple([_canon(v, order, layouts) for v in value]))
    if kind is float:  # repr tells -0.0 from 0.0, which compare (and hash) equal
        return (kind, repr(value))
    if isinstance(value, TensorArg):  # a subclass: as it is (no rule makes one)
        raise TypeError("not keyed")
    hash(value)
    return (kind, value)


def _template(call: OpCall, effects: list[Effect]) -> tuple | None:
    """``effects`` with each dependency's source as its position in ``call.inputs``; None where they cannot be
    reused (notes, which name the module, or a source that is not one of the call's arguments)."""
    found = []
    for effect in effects:
        if effect.notes:
            return None
        deps = []
        for dep in effect.deps:
            i = next((i for i, t in enumerate(call.inputs) if t is dep.source), None)
            if i is None:
                return None
            deps.append((i, dep.axes, dep.channels))
        found.append((effect.layout, tuple(deps)))
    return tuple(found)
