"""Record the operations a model really executes, as a graph of tensors (not the order modules are called in).

The model runs once on a shape-only (``meta``) input under a dispatch-level recorder, the way
``torch.utils.flop_counter`` counts FLOPs: every ATen operation is seen with its arguments, any Python control
flow in ``forward`` is simply executed, and no pixel is ever computed or allocated. Parameters and buffers are
swapped for meta tensors as ops reach them, so the model itself is never modified (not even a running
statistic); this is about four times faster than ``FakeTensorMode`` on a ResNet-101. Each tensor derived from the
input becomes a node; parameters, buffers and constants stay untracked because they carry no spatial
information about the input. In-place operations rebind the tensor to a new node, so residual ``out += x`` and
``ReLU(inplace=True)`` are followed exactly.

Ops whose values never depend on their inputs' values (``x.new_zeros(H, W)``, ``zeros_like``) make constants, not
nodes: an attention mask built from the input's shape and filled by slice assignment (Swin) is a constant
whatever is written into it. Writing input-derived values into a constant through a view is the one thing that
would make it silently wrong, so the storages written that way are remembered and reading them is refused.

Recurrent layers (``nn.LSTM``, ``nn.GRU``, ``nn.RNN``) call ``torch._VF.lstm`` and friends with their weights as
a flat list; these composite ops check devices before any ATen op reaches the recorder, and would unroll into a
dozen ops per time step. A function-level mode therefore records each of them as one call (``aten.lstm`` ...),
with one rule for the whole layer (:mod:`atrous.rf.rules.recurrent`), and runs it on the weights' meta twins.

Most meta kernels are Python reference code (0.1-5 ms a call). A functional op met again with the same argument
metadata reuses its first outputs' layouts; elementwise ops and a few others (normalisations, ``addmm``,
reductions) get their outputs from a shape rule (:mod:`atrous.rf.meta_shape_rules`), which the kernel confirms
on the first call of each key (the dtypes, memory orders and size-1 dims, not the sizes): a key where the two differ
keeps the kernel.

A model that reads tensor values in Python (``.item()``, ``int()`` or ``bool()`` of a tensor, data-dependent
shapes such as ``nonzero``) cannot run on meta tensors. :func:`record` then records once more on real tensors
of the same shape (a random input, the model's parameters copied once: the model is still never modified) and
says so in ``Graph.recording``; what the model read, and whether it depended on the input, is in its note.
"""

from __future__ import annotations

import contextlib
import gc
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes
from torch.utils._pytree import tree_flatten, tree_map

from atrous.errors import InputShapeError, ModelError, UnsupportedOpError
from atrous.rf import meta_shape_rules
from atrous.rf.meta_shape_rules import LearnedRules, pointwise_kind
from atrous.rf.meta_shape_rules import storage_key as _storage_key


@dataclass(frozen=True)
class TensorArg:
    """A tensor argument of a recorded op: the node it comes from (None for constants) and its shape."""

    node: int | None
    shape: tuple[int, ...]
    stride: tuple[int, ...] = ()  # memory strides, for the ops whose meaning depends on them (as_strided)
    storage_offset: int = 0


@dataclass
class OpCall:
    """One executed ATen operation whose inputs include at least one tracked tensor."""

    name: str  # e.g. "aten.convolution.default"
    packet: str  # e.g. "aten.convolution": the key of the rule table
    args: dict[str, Any]  # every schema argument by name, defaults filled in, tensors as TensorArg
    inputs: list[TensorArg]  # tensor arguments in schema order (tracked and constant)
    outputs: list[int]  # node ids of the tensor outputs, in the op's output order
    module: str  # innermost module path active when the op ran ("" = the model itself)
    mutated: list[int] = field(default_factory=list)  # indexes into `inputs` of tensors written in place


@dataclass
class Node:
    """A tensor derived from the model input."""

    id: int
    shape: tuple[int, ...]
    op: OpCall | None  # None for the input itself
    name: str  # module path and op, for messages and tables


@dataclass
class Graph:
    nodes: list[Node]
    calls: list[OpCall]
    input_node: int
    outputs: dict[str, int]  # output name ("out", "[0]", "aux", ...) -> node id
    input_shape: tuple[int, ...]
    recorded_on: str = "meta"  # "meta" (shapes only) or "real" (the model reads tensor values)
    recording_note: str | None = None  # why and how it was recorded on real tensors
    value_reads: list[ValueRead] = field(default_factory=list)  # real recording: every value the model read


class _ModuleStack:
    """Tracks the innermost running module through forward hooks (module reuse gets a call number).

    Two hooks per module cost as much as the recording's meta kernels on a 700-module model (registering and
    removing a handle each). When no module of the model has hooks of its own, two process-wide hooks, filtered
    to the model's modules and this thread, see the same calls in the same order. A model with hooks of its own
    keeps per-module ones: global hooks run before a module's own, which would move the ops a user's hook runs
    into another module.
    """

    def __init__(self, model: nn.Module) -> None:
        self.stack: list[str] = []
        self.calls: dict[str, int] = {}
        self.handles = []
        named = list(model.named_modules())
        if any(m._forward_hooks or m._forward_pre_hooks for name, m in named if name):
            for name, module in named:
                self.handles.append(module.register_forward_pre_hook(self._enter(name)))
                self.handles.append(module.register_forward_hook(self._leave, always_call=True))
            return
        # The root's own hooks may stay: ops they run are named after the root ("") inside or outside it.
        self.names = {id(m): (m, name) for name, m in named}
        self.thread = threading.get_ident()
        self.handles.append(register_module_forward_pre_hook(self._global_enter))
        self.handles.append(register_module_forward_hook(self._global_leave, always_call=True))

    def _push(self, name: str) -> None:
        count = self.calls.get(name, 0) + 1
        self.calls[name] = count
        self.stack.append(name if count == 1 else f"{name}#{count}")

    def _enter(self, name: str) -> Callable:
        def hook(module: nn.Module, args: Any) -> None:
            self._push(name)

        return hook

    def _leave(self, module: nn.Module, args: Any, output: Any) -> None:
        if self.stack:
            self.stack.pop()

    def _ours(self, module: nn.Module) -> str | None:
        entry = self.names.get(id(module))
        if entry is None or entry[0] is not module or threading.get_ident() != self.thread:
            return None
        return entry[1]

    def _global_enter(self, module: nn.Module, args: Any) -> None:
        name = self._ours(module)
        if name is not None:
            self._push(name)

    def _global_leave(self, module: nn.Module, args: Any, output: Any) -> None:
        if self.stack and self._ours(module) is not None:
            self.stack.pop()

    @property
    def current(self) -> str:
        return self.stack[-1] if self.stack else ""

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


# Ops that hand a tensor's value to Python or size their output by values: meta tensors cannot answer them.
_VALUE_TAGS = (torch.Tag.data_dependent_output, torch.Tag.dynamic_output_shape)
_READ_NAMES = {  # what the user wrote, for the ops that read one value
    "aten._local_scalar_dense": ".item(), int(), float() or bool() of a tensor",
    "aten.is_nonzero": "bool() of a tensor",
    "aten.equal": "torch.equal",
}
# Reads that never reach the dispatcher (the data is copied out directly): recognised by their message only.
_META_READ_MESSAGES = ("Cannot copy out of meta tensor", "can't convert meta device type tensor to numpy")

# Recurrent layers as nn.RNN/LSTM/GRU call them; recorded as one call each (see the module docstring).
_RNN_LAYERS = {
    torch._C._VariableFunctions.lstm: "lstm",
    torch._C._VariableFunctions.gru: "gru",
    torch._C._VariableFunctions.rnn_tanh: "rnn_tanh",
    torch._C._VariableFunctions.rnn_relu: "rnn_relu",
}
_RECURRENT_MODULES = (nn.RNNBase, nn.RNNCellBase)  # a model holding one is recorded with _LayerCalls at once
# One step of each (nn.LSTMCell ...), written in a Python loop over the sequence: also one call each, since their
# decomposition gates views of one buffer in place, which the recorder refuses to follow.
_RNN_CELLS = {
    torch._C._VariableFunctions.lstm_cell: "lstm_cell",
    torch._C._VariableFunctions.gru_cell: "gru_cell",
    torch._C._VariableFunctions.rnn_tanh_cell: "rnn_tanh_cell",
    torch._C._VariableFunctions.rnn_relu_cell: "rnn_relu_cell",
}


# Values an ATen op's arguments and results hold besides lists, tuples and dicts: leaves for pytree too.
_LEAVES = (
    torch.Tensor,
    int,
    float,
    bool,
    str,
    complex,
    type(None),
    torch.dtype,
    torch.device,
    torch.memory_format,
    torch.layout,
)


def _map(fn: Callable[[Any], Any], value: Any) -> Any:
    """``tree_map`` for ATen arguments: pytree's generic walk costs more than a meta kernel per op (a third of
    recording MaxViT), and these hold only lists, tuples and dicts. Anything else is handed to pytree."""
    kind = type(value)
    if kind is list:
        return [_map(fn, v) for v in value]
    if kind is tuple:
        return tuple(_map(fn, v) for v in value)
    if kind is dict:
        return {k: _map(fn, v) for k, v in value.items()}
    if isinstance(value, _LEAVES):
        return fn(value)
    return tree_map(fn, value)


def _tensors(value: Any, found: list[torch.Tensor] | None = None) -> list[torch.Tensor]:
    """The tensors in ``value``, in ``tree_flatten`` order (see :func:`_map`)."""
    found = [] if found is None else found
    kind = type(value)
    if kind is list or kind is tuple:
        for v in value:
            _tensors(v, found)
    elif kind is dict:
        for v in value.values():
            _tensors(v, found)
    elif isinstance(value, torch.Tensor):
        found.append(value)
    elif not isinstance(value, _LEAVES):
        found += [t for t in tree_flatten(value)[0] if isinstance(t, torch.Tensor)]
    return found


def _call_tensors(args: tuple, kwargs: dict) -> list[torch.Tensor]:
    """``_tensors((args, kwargs))`` for an op's own arguments, without a call per argument: every op passes
    through here (3,000 times for Swin-B), and nearly all its arguments are tensors, numbers or flat lists."""
    found: list[torch.Tensor] = []
    for value in (*args, *kwargs.values()) if kwargs else args:
        if isinstance(value, torch.Tensor):
            found.append(value)
        elif type(value) is list or type(value) is tuple:
            for v in value:
                if isinstance(v, torch.Tensor):
                    found.append(v)
                elif not isinstance(v, _SCALARS):
                    _tensors(v, found)
        elif not isinstance(value, _SCALARS):
            _tensors(value, found)
    return found


# Argument values that hold no tensor (the common leaves of _LEAVES).
_SCALARS = (int, float, bool, str, type(None), torch.dtype, torch.device, torch.memory_format, torch.layout)


def _cacheable(func) -> bool:
    """Whether ``func``'s meta outputs are a pure function of its arguments' metadata: a functional op (no argument
    or return aliased or written) returning only tensors, and not seeded by the random generator."""
    schema = func._schema
    return (
        bool(schema.returns)
        and not schema.is_mutable
        and all(a.alias_info is None for a in schema.arguments)
        and all(r.alias_info is None and str(r.type) == "Tensor" for r in schema.returns)
        and not any(t in func.tags for t in (*_VALUE_TAGS, torch.Tag.nondeterministic_seeded))
    )


@dataclass(frozen=True)
class _Op:
    """What the recorder reads of an op's schema, read once per op: walking the schema on every call cost as
    much as the meta kernels it replaced."""

    name: str  # "aten.convolution.default"
    packet: str  # "aten.convolution"
    cacheable: bool  # see _cacheable
    arguments: tuple[tuple[str, bool, bool, Any], ...]  # (name, kwarg_only, has_default, default) in order
    written: tuple[tuple[int, str], ...]  # (position, name) of the arguments it writes in place
    pointwise: int  # meta_shape_rules.FRESH or IN_PLACE where LearnedRules.pointwise applies, else 0


# By id, the op kept alongside: an OpOverload hashes in Python, and every op is looked up several times.
_OPS: dict[int, tuple[Any, _Op]] = {}


def _op(func) -> _Op:
    entry = _OPS.get(id(func))
    if entry is not None and entry[0] is func:
        return entry[1]
    arguments = func._schema.arguments
    cacheable = _cacheable(func)
    op = _Op(
        name=str(func),
        packet=f"{func.namespace}.{func._opname}",
        cacheable=cacheable,
        pointwise=pointwise_kind(func, cacheable),
        arguments=tuple(
            (
                a.name,
                a.kwarg_only,
                a.has_default_value(),
                a.default_value if a.has_default_value() else None,
            )
            for a in arguments
        ),
        written=tuple(
            (i, a.name) for i, a in enumerate(arguments) if a.alias_info is not None and a.alias_info.is_write
        ),
    )
    _OPS[id(func)] = (func, op)
    return op


def _meta_key(value: Any) -> Any:
    """What a meta kernel can see of an argument: a tensor's metadata, any other value with its type (``2`` and
    ``2.0`` promote differently). Raises TypeError for an unhashable value: that call is not cached."""
    if isinstance(value, torch.Tensor):  # on meta, as every tensor an op gets is (see _Recorder.twin)
        return (value.shape, value.stride(), value.dtype, value.storage_offset())
    if isinstance(value, (list, tuple)):
        return (type(value), tuple(_meta_key(v) for v in value))
    hash(value)
    return (type(value), value)


def _reads_values(func) -> bool:
    return f"{func.namespace}.{func._opname}" in _READ_NAMES or any(t in func.tags for t in _VALUE_TAGS)


@dataclass(frozen=True)
class ValueRead:
    """A place where the model read a tensor's value in Python."""

    op: str  # the ATen packet, e.g. "aten._local_scalar_dense"
    module: str
    from_input: bool  # the value depends on the model input (so may the graph)

    def describe(self) -> str:
        what = _READ_NAMES.get(self.op, f"a shape that depends on values ({self.op})")
        return f"{what} in module '{self.module or '<model>'}'"


class _NeedsValues(Exception):
    """Recording on meta tensors failed because the model reads a value; record on real tensors instead."""

    def __init__(self, read: ValueRead | None, message: str) -> None:
        super().__init__(message)
        self.read = read


class _LayerCalls(TorchFunctionMode):
    """Sees the recurrent layers' composite calls before they unroll (see the module docstring)."""

    def __init__(self, recorder: _Recorder) -> None:
        super().__init__()
        self.recorder = recorder

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _RNN_LAYERS or func in _RNN_CELLS:
            return self.recorder.recurrent(func, args, kwargs)
        return func(*args, **kwargs)


class _Recorder(TorchDispatchMode):
    def __init__(
        self,
        modules: _ModuleStack,
        constants: frozenset[str] = frozenset(),
        own: dict[int, torch.Tensor] | None = None,
    ) -> None:
        super().__init__()
        self.modules = modules
        self.constants = constants  # op packets whose outputs do not depend on the input's values
        # Storages written in place with input-derived values: other (untracked) views of them are not constants.
        self.written: dict[int, str] = {}
        self.nodes: list[Node] = []
        self.calls: list[OpCall] = []
        # id(tensor) -> (tensor, node id). Holding the tensor keeps its id from being reused.
        self.tracked: dict[int, tuple[torch.Tensor, int]] = {}
        # Storage -> ids of the tracked tensors on it: finding a written tensor's aliases by scanning every tracked
        # tensor made in-place ops quadratic (a third of recording EfficientNetV2-L).
        self.by_storage: dict[int, dict[int, None]] = {}
        # Tensors whose storage was written through another alias: their node no longer tells the truth.
        self.stale: dict[int, str] = {}
        self.failed_in: str | None = None
        self.twins: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # id(original) -> (original, twin)
        # Real mode: the model's parameters and buffers (by id), copied once when first used so that nothing an
        # op writes reaches the model. None: meta mode, every real tensor gets a shape-only twin.
        self.own = own
        self.value_read: ValueRead | None = None  # meta mode: the value read that made recording fail
        self.reads: list[ValueRead] = []  # real mode: every value read
        self.layouts: dict[Any, list | None] = {}  # (op, arguments' metadata) -> its outputs' layouts
        self.rules = LearnedRules()  # meta outputs by rule, checked against the kernels as they come

    @property
    def real(self) -> bool:
        return self.own is not None

    def twin(self, value: Any) -> Any:
        if not isinstance(value, torch.Tensor):
            return value
        if self.own is not None:
            if self.own.get(id(value)) is not value:
                return value
        elif value.is_meta:
            return value
        entry = self.twins.get(id(value))
        if entry is None or entry[0] is not value:
            device = value.device if self.own is not None else "meta"
            twin = torch.empty_strided(value.shape, value.stride(), dtype=value.dtype, device=device)
            if self.own is not None:
                twin.copy_(value)
            entry = self.twins[id(value)] = (value, twin)
        return entry[1]

    def track(self, t: torch.Tensor, op: OpCall | None, name: str) -> int:
        node = Node(len(self.nodes), tuple(t.shape), op, name)
        self.nodes.append(node)
        self.tracked[id(t)] = (t, node.id)
        self.by_storage.setdefault(_storage_key(t), {})[id(t)] = None
        self.stale.pop(id(t), None)
        return node.id

    def node_of(self, t: torch.Tensor) -> int | None:
        entry = self.tracked.get(id(t))
        return entry[1] if entry is not None and entry[0] is t else None

    def _nodes(self, tensors: list[torch.Tensor]) -> list[int | None]:
        """``node_of`` of each tensor (every op asks it of each argument)."""
        found = []
        for t in tensors:
            entry = self.tracked.get(id(t))
            found.append(entry[1] if entry is not None and entry[0] is t else None)
        return found

    def _refuse_aliased(
        self, func, tensors: list[torch.Tensor], module: str, nodes: list[int | None] | None = None
    ) -> None:
        if not self.stale and not self.written:  # nothing written in place yet: nothing to refuse
            return
        for t, node in zip(tensors, self._nodes(tensors) if nodes is None else nodes):
            why = (
                self.stale.get(id(t))
                if node is not None
                else self.written.get(_storage_key(t))
                if self.written
                else None
            )
            if why is not None:
                raise UnsupportedOpError(
                    f"{func} at module '{module or '<model>'}' reads a tensor that was modified in place "
                    f"through another view ({why}); the receptive-field engine cannot follow "
                    "writes through aliases: use out-of-place operations there"
                )

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        tensors = _call_tensors(args, kwargs)
        # Rebuilding the arguments costs as much as a cached kernel: only when a tensor gets a twin.
        if self.own is not None or not all(t.is_meta for t in tensors):
            args, kwargs = _map(self.twin, args), _map(self.twin, kwargs)
            tensors = _call_tensors(args, kwargs)
        module = self.modules.current
        nodes = self._nodes(tensors)
        self._refuse_aliased(func, tensors, module, nodes)
        tracked = any(n is not None for n in nodes)
        packet = _op(func).packet
        if self.real and _reads_values(func):
            self.reads.append(ValueRead(packet, module, tracked))
        if packet in self.constants or not tracked:
            return self._run(func, args, kwargs, module, tracked)
        out = self._run(func, args, kwargs, module, tracked)
        self._record(func, args, kwargs, out, module)
        return out

    def recurrent(self, func, args, kwargs):
        """One recurrent layer (all its layers and directions) or one cell step as one call ``aten.lstm`` etc."""
        cell = func in _RNN_CELLS
        name = _RNN_CELLS[func] if cell else _RNN_LAYERS[func]
        module = self.modules.current
        with _disable_current_modes():  # the layer's own steps are neither recorded nor needed
            args, kwargs = tree_map(self.twin, args), tree_map(self.twin, kwargs)
            flat, _ = tree_flatten((args, kwargs))
            tensors = [t for t in flat if isinstance(t, torch.Tensor)]
            self._refuse_aliased(func, tensors, module)
            if self.real:
                out = self._run(func, args, kwargs, module, False)
            else:
                out = self._rnn_shapes(name, args, cell)
        if not any(self.node_of(t) is not None for t in tensors):
            return out
        # lstm(data, batch_sizes, hx, ...) and gru(data, batch_sizes, hx, ...) take a PackedSequence's parts.
        if not cell and (
            isinstance(args[1], torch.Tensor) if name == "lstm" else isinstance(args[2], torch.Tensor)
        ):
            raise UnsupportedOpError(
                f"{name} at module '{module or '<model>'}' runs on a packed sequence, which has no "
                "receptive-field rule (its lengths are values): pass the padded tensor instead"
            )
        op = getattr(torch.ops.aten, name)
        self._record(op.default if cell else op.input, args, kwargs, out, module)
        return out

    def _rnn_shapes(self, name: str, args: tuple, cell: bool) -> Any:
        """Shape-only outputs of a recurrent layer or cell, from its input and state: running a layer on meta
        tensors unrolls it into Python meta kernels, half a second per layer (Sequencer2d: 20 s)."""
        x, hx = args[0], args[1]
        states = list(hx) if isinstance(hx, (list, tuple)) else [hx]
        weight = args[2] if cell else args[2][0] if isinstance(args[2], (list, tuple)) and args[2] else None
        if isinstance(weight, torch.Tensor) and weight.dim() == 2 and x.shape[-1] != weight.shape[1]:
            raise InputShapeError(
                f"recurrent layer '{self.modules.current or '<model>'}' expects {weight.shape[1]} input features "
                f"but gets {x.shape[-1]} (input shape {tuple(x.shape)}); give it {weight.shape[1]} features"
            )
        if cell:  # the new state has the old one's shape
            new = tuple(torch.empty_like(h) for h in states)
            return new if name == "lstm_cell" else new[0]
        directions = 2 if args[-2] else 1  # (..., bidirectional, batch_first)
        out = torch.empty((*x.shape[:-1], directions * states[0].shape[-1]), dtype=x.dtype, device="meta")
        return (out, *(torch.empty_like(h) for h in states))

    def _record(self, func, args, kwargs, out, module: str) -> None:
        written = self._mutated_tensors(func, args, kwargs)
        call = self._describe(func, args, kwargs, module, written)
        mutated_ids = {id(call_input) for call_input in written}
        out_flat = _tensors(out)
        label = f"{module or '<model>'}:{func._opname}"
        for t in out_flat:
            call.outputs.append(self.track(t, call, label))
        for t in written:
            if all(t is not o for o in out_flat):  # an out= style write not returned: still rebind it
                call.outputs.append(self.track(t, call, label))
            self.written[_storage_key(t)] = f"written in place by {label}"
        self._mark_aliases_stale(mutated_ids, label)
        self.calls.append(call)

    def _run(self, func, args, kwargs, module: str, tracked: bool):
        # Meta kernels are mostly Python reference code (milliseconds per call: gelu, layer_norm, batch_norm) and
        # models repeat the same blocks on the same shapes: a functional op's outputs are fresh tensors whose
        # metadata depend only on the arguments' metadata, so they are made again from the first call's.
        key = None
        op = _op(func) if not self.real and isinstance(func, torch._ops.OpOverload) else None
        rule = None
        if op is not None and (
            op.pointwise or func in meta_shape_rules.SHAPE_RULES or func in meta_shape_rules.VALUE_FREE_RULES
        ):
            rule = self.rules.outputs(func, op.pointwise, op.arguments, args, kwargs)
            if rule is not None and rule[2] is not None:
                return rule[2]
        if op is not None and op.cacheable and rule is None:
            try:
                # The default dtype decides some outputs' dtypes (``full(size, 0.5)``, ``int_tensor / 2``).
                key = (func, torch.get_default_dtype(), _meta_key(args), _meta_key(tuple(kwargs.items())))
            except TypeError:  # an unhashable argument: not cached
                key = None
            layouts = self.layouts.get(key) if key is not None else None
            if layouts is not None:
                outs = [torch.empty_strided(s, st, dtype=d, device="meta") for s, st, d in layouts]
                return outs[0] if len(outs) == 1 else tuple(outs)
        try:
            out = func(*args, **kwargs)
        except Exception as exc:
            # Forward hooks unwind the module stack before the error reaches record(): remember where it was.
            self.failed_in = self.failed_in or module or "<model>"
            if not self.real and isinstance(func, torch._ops.OpOverload) and _reads_values(func):
                self.value_read = self.value_read or ValueRead(
                    f"{func.namespace}.{func._opname}", module, tracked
                )
            if func._opname == "convolution" and len(args) >= 2:
                x, w = args[0], args[1]
                groups = args[8] if len(args) > 8 else kwargs.get("groups", 1)
                expected = w.shape[0] if (args[6] if len(args) > 6 else False) else w.shape[1] * groups
                if x.dim() >= 2 and x.shape[1] != expected:
                    raise InputShapeError(
                        f"layer '{self.failed_in}' expects {expected} input channels but gets {x.shape[1]} "
                        f"(input shape {tuple(x.shape)}); give the model a {expected}-channel input"
                    ) from exc
            raise
        if rule is not None:  # the first call of this key: does the kernel agree with the rule?
            self.rules.learn(op.pointwise, rule, out, _tensors((args, kwargs)))
        if key is not None and key not in self.layouts:
            self.layouts[key] = self._layouts(out, args, kwargs)
        return out

    @staticmethod
    def _layouts(out: Any, args: tuple, kwargs: dict) -> list | None:
        """The (shape, stride, dtype) of each output, or None where remaking them from these would not give the
        same tensors: an output not a plain, fresh and dense one on meta (sharing a storage, offset into or larger
        than it, or with a conjugate or negative bit)."""
        outs = list(out) if isinstance(out, tuple) else [out]
        inputs = {_storage_key(t) for t in _tensors((args, kwargs))}
        layouts, seen = [], set()
        for t in outs:
            if (
                not isinstance(t, torch.Tensor)
                or t.device.type != "meta"
                or t.layout != torch.strided
                or t.is_conj()
                or t.is_neg()
                or t.storage_offset() != 0
            ):
                return None
            key = _storage_key(t)
            remade = torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device="meta")
            if (
                key in inputs
                or key in seen
                or remade.untyped_storage().nbytes() != t.untyped_storage().nbytes()
            ):
                return None
            seen.add(key)
            layouts.append((t.shape, t.stride(), t.dtype))
        return layouts

    @staticmethod
    def _mutated_tensors(func, args, kwargs) -> list[torch.Tensor]:
        found = []
        for i, name in _op(func).written:
            value = args[i] if i < len(args) else kwargs.get(name)
            if isinstance(value, torch.Tensor):
                found.append(value)
        return found

    def _mark_aliases_stale(self, mutated_ids: set[int], label: str) -> None:
        if not mutated_ids:
            return
        keys = {_storage_key(self.tracked[i][0]) for i in mutated_ids if i in self.tracked}
        for key in keys:
            for tid in self.by_storage.get(key, ()):
                # The index holds the storage a tensor had when tracked; one it no longer has is skipped.
                if tid not in mutated_ids and _storage_key(self.tracked[tid][0]) == key:
                    self.stale[tid] = f"written in place by {label}"

    def _describe(self, func, args, kwargs, module: str, written: list[torch.Tensor]) -> OpCall:
        op = _op(func)
        bound: dict[str, Any] = {}
        for i, (name, kwarg_only, has_default, default) in enumerate(op.arguments):
            if i < len(args) and not kwarg_only:
                bound[name] = args[i]
            elif name in kwargs:
                bound[name] = kwargs[name]
            elif has_default:
                bound[name] = default  # copied by _map below, like every list or tuple argument
        inputs: list[TensorArg] = []

        def wrap(value: Any) -> Any:
            if isinstance(value, torch.Tensor):
                ta = TensorArg(
                    self.node_of(value), tuple(value.shape), tuple(value.stride()), value.storage_offset()
                )
                inputs.append(ta)
                return ta
            return value

        for k, v in bound.items():  # _map copies lists and tuples (the OpCall must not share the caller's)
            if isinstance(v, torch.Tensor):
                bound[k] = wrap(v)
            elif not isinstance(v, _SCALARS):
                bound[k] = _map(wrap, v)
        mutated: list[int] = []
        for t in written:
            node = self.node_of(t)
            for j, ta in enumerate(inputs):
                if ta.node == node and node is not None:
                    mutated.append(j)
                    break
        return OpCall(
            name=op.name,
            packet=op.packet,
            args=bound,
            inputs=inputs,
            outputs=[],
            module=module,
            mutated=mutated,
        )


def _name_outputs(out: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Flatten a model's return value (tensor, tuple, list, dict) into named leaves."""
    if isinstance(out, torch.Tensor):
        return [(prefix or "out", out)]
    if isinstance(out, dict):
        items = []
        for key, value in out.items():
            items += _name_outputs(value, f"{prefix}.{key}" if prefix else str(key))
        return items
    if isinstance(out, (list, tuple)):
        items = []
        for i, value in enumerate(out):
            items += _name_outputs(value, f"{prefix}[{i}]")
        return items
    return []


def record(model: nn.Module, input_shape: tuple[int, ...], constants: frozenset[str] = frozenset()) -> Graph:
    """Run ``model`` once on a fake input of ``input_shape`` (batch included) and return the op graph.

    The model is analysed in eval mode (restored afterwards) so that inference semantics decide the graph.
    Ops named in ``constants`` (packets such as ``aten.new_zeros``) make untracked constants. A model that reads
    tensor values in Python is recorded once more on real tensors (``Graph.recorded_on == "real"``).
    """
    if not isinstance(model, nn.Module):
        raise ModelError(f"expected a torch.nn.Module, got {type(model).__name__}")
    if not any(isinstance(m, _RECURRENT_MODULES) for m in model.modules()):
        # A model without recurrent layers is first recorded without the function-level mode (see _LayerCalls),
        # which routes every torch function through Python (a tenth of recording MaxViT). One that calls the
        # recurrent functions anyway fails there: their device check (weights or state not on meta) or the refused
        # in-place gating of a cell's steps; those failures are recorded again the full way. Any other failure
        # would have come the same way in the full mode: it is raised as it is.
        try:
            return _record_once(model, input_shape, constants, real=False, layer_calls=False)
        except _NeedsValues as need:
            return _record_real(model, input_shape, constants, need)
        except InputShapeError as exc:
            if "device" not in str(exc):
                raise
        except UnsupportedOpError:
            pass
    try:
        return _record_once(model, input_shape, constants, real=False)
    except _NeedsValues as need:
        return _record_real(model, input_shape, constants, need)


@contextlib.contextmanager
def paused_gc():
    """The cyclic garbage collector paused (as it was after): recording and propagation allocate tens of
    thousands of small objects that mostly stay alive until the analysis ends (nodes, calls, maps, states), and
    the collector's frequent generational passes rescan them and free nothing. Paused, it scans what is left
    once, on its next pass: about 3% of an analysis of Swin-B or MaxViT. Reference counting still frees
    everything dropped meanwhile. The collector's switch is process-wide, so only the main thread pauses it:
    an analysis in another thread must not turn it back on under one running in the main thread, or undo a
    ``gc.disable()`` of the program's own."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _record_real(
    model: nn.Module, input_shape: tuple[int, ...], constants: frozenset[str], need: _NeedsValues
) -> Graph:
    graph = _record_once(model, input_shape, constants, real=True, need=need)
    graph.recorded_on = "real"
    graph.recording_note = _real_note(need, graph.value_reads)
    return graph


def _real_note(need: _NeedsValues, reads: list[ValueRead]) -> str:
    first = need.read or (reads[0] if reads else None)
    what = first.describe() if first is not None else f"tensor data copied out in Python ({need})"
    note = (
        "recorded on real tensors (one forward of a random input), not on shape-only ones: the model reads "
        f"tensor values, {what}; "
    )
    from_input = [r for r in reads if r.from_input]
    if from_input:
        return note + (
            f"{len(from_input)} value(s) read depend on the input ({from_input[0].describe()}), so the graph is "
            "the one this random input took: another input may take another path"
        )
    if reads:
        return note + "no value read depends on the input, so the graph holds for every input of this shape"
    return note + "whether the values read depend on the input could not be seen"


def _record_once(
    model: nn.Module,
    input_shape: tuple[int, ...],
    constants: frozenset[str],
    real: bool,
    need: _NeedsValues | None = None,
    layer_calls: bool = True,
) -> Graph:
    modes = {m: m.training for m in model.modules()}
    model.eval()
    stack = _ModuleStack(model)
    own = {id(t): t for t in (*model.parameters(), *model.buffers())} if real else None
    recorder = _Recorder(stack, constants, own)
    try:
        if real:
            # The input's values only matter for what the model reads; a fixed seed keeps the graph reproducible.
            ref = next((t for t in (*model.parameters(), *model.buffers()) if t.is_floating_point()), None)
            dtype = ref.dtype if ref is not None else torch.get_default_dtype()
            device = ref.device if ref is not None else torch.device("cpu")
            gen = torch.Generator(device=device).manual_seed(0)
            x = torch.rand(input_shape, generator=gen, dtype=dtype, device=device)
        else:
            x = torch.empty(input_shape, device="meta")
        input_node = recorder.track(x, None, "input")
        try:
            with (
                torch.no_grad(),
                paused_gc(),
                _LayerCalls(recorder) if layer_calls else contextlib.nullcontext(),
                recorder,
            ):
                out = model(x)
        except (UnsupportedOpError, ModelError, InputShapeError):
            raise
        except Exception as exc:  # the model itself refused this input: a user error, said in one line
            where = recorder.failed_in or stack.current or "<model>"
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            if not real and (recorder.value_read is not None or first_line.startswith(_META_READ_MESSAGES)):
                raise _NeedsValues(recorder.value_read, first_line) from exc
            if real:
                hint = (
                    f"recorded on real tensors because the model reads values ({need}), and it failed there "
                    "too: check the channel count and the input size"
                )
            elif "meta" in first_line:
                hint = (
                    "the model needs tensor data (a CPU tensor) where the engine gives it a shape-only one; "
                    "compute that value outside the model or from shapes"
                )
            else:
                hint = "check the channel count and that the input is not smaller than the model allows"
            raise InputShapeError(
                f"model failed on input shape {tuple(input_shape)} at module '{where}': {first_line} ({hint})"
            ) from exc
        outputs: dict[str, int] = {}
        for name, t in _name_outputs(out):
            node = recorder.node_of(t)
            if node is not None:
                outputs[name] = node
    finally:
        stack.remove()
        # Modules come parent first and train() sets a module's descendants too, so restoring only the modules
        # whose mode changed ends in the same modes; restoring all of them costs a walk of the subtree each.
        for m, mode in modes.items():
            if m.training != mode:
                m.train(mode)
    if not outputs:
        raise ModelError("the model returned no tensor that depends on its input; nothing to analyse")
    graph = Graph(recorder.nodes, recorder.calls, input_node, outputs, tuple(input_shape))
    graph.value_reads = recorder.reads
    return graph
