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
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

from atrous.errors import InputShapeError, ModelError, UnsupportedOpError


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


class _ModuleStack:
    """Tracks the innermost running module through forward hooks (module reuse gets a call number)."""

    def __init__(self, model: nn.Module) -> None:
        self.stack: list[str] = []
        self.calls: dict[str, int] = {}
        self.handles = []
        for name, module in model.named_modules():
            self.handles.append(module.register_forward_pre_hook(self._enter(name)))
            self.handles.append(module.register_forward_hook(self._leave, always_call=True))

    def _enter(self, name: str) -> Callable:
        def hook(module: nn.Module, args: Any) -> None:
            count = self.calls.get(name, 0) + 1
            self.calls[name] = count
            self.stack.append(name if count == 1 else f"{name}#{count}")

        return hook

    def _leave(self, module: nn.Module, args: Any, output: Any) -> None:
        if self.stack:
            self.stack.pop()

    @property
    def current(self) -> str:
        return self.stack[-1] if self.stack else ""

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def _storage_key(t: torch.Tensor) -> int:
    return t.untyped_storage()._cdata


class _Recorder(TorchDispatchMode):
    def __init__(self, modules: _ModuleStack, constants: frozenset[str] = frozenset()) -> None:
        super().__init__()
        self.modules = modules
        self.constants = constants  # op packets whose outputs do not depend on the input's values
        # Storages written in place with input-derived values: other (untracked) views of them are not constants.
        self.written: dict[int, str] = {}
        self.nodes: list[Node] = []
        self.calls: list[OpCall] = []
        # id(tensor) -> (tensor, node id). Holding the tensor keeps its id from being reused.
        self.tracked: dict[int, tuple[torch.Tensor, int]] = {}
        # Tensors whose storage was written through another alias: their node no longer tells the truth.
        self.stale: dict[int, str] = {}
        self.failed_in: str | None = None
        self.meta: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # id(real tensor) -> (real, meta twin)

    def to_meta(self, value: Any) -> Any:
        if not isinstance(value, torch.Tensor) or value.device.type == "meta":
            return value
        entry = self.meta.get(id(value))
        if entry is None or entry[0] is not value:
            twin = torch.empty_strided(value.shape, value.stride(), dtype=value.dtype, device="meta")
            entry = self.meta[id(value)] = (value, twin)
        return entry[1]

    def track(self, t: torch.Tensor, op: OpCall | None, name: str) -> int:
        node = Node(len(self.nodes), tuple(t.shape), op, name)
        self.nodes.append(node)
        self.tracked[id(t)] = (t, node.id)
        self.stale.pop(id(t), None)
        return node.id

    def node_of(self, t: torch.Tensor) -> int | None:
        entry = self.tracked.get(id(t))
        return entry[1] if entry is not None and entry[0] is t else None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        args, kwargs = tree_map(self.to_meta, args), tree_map(self.to_meta, kwargs or {})
        flat, _ = tree_flatten((args, kwargs))
        tensors = [t for t in flat if isinstance(t, torch.Tensor)]
        module = self.modules.current
        for t in tensors:
            tracked = self.node_of(t) is not None
            why = (
                self.stale.get(id(t))
                if tracked
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
        if f"{func.namespace}.{func._opname}" in self.constants or not any(
            self.node_of(t) is not None for t in tensors
        ):
            return self._run(func, args, kwargs, module)
        out = self._run(func, args, kwargs, module)
        call = self._describe(func, args, kwargs, module)
        mutated_ids = {id(call_input) for call_input in self._mutated_tensors(func, args, kwargs)}
        out_flat, _ = tree_flatten(out)
        label = f"{module or '<model>'}:{func._opname}"
        for t in out_flat:
            if isinstance(t, torch.Tensor):
                call.outputs.append(self.track(t, call, label))
        for t in self._mutated_tensors(func, args, kwargs):
            if all(t is not o for o in out_flat):  # an out= style write not returned: still rebind it
                call.outputs.append(self.track(t, call, label))
            self.written[_storage_key(t)] = f"written in place by {label}"
        self._mark_aliases_stale(mutated_ids, label)
        self.calls.append(call)
        return out

    def _run(self, func, args, kwargs, module: str):
        try:
            return func(*args, **kwargs)
        except Exception as exc:
            # Forward hooks unwind the module stack before the error reaches record(): remember where it was.
            self.failed_in = self.failed_in or module or "<model>"
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

    @staticmethod
    def _mutated_tensors(func, args, kwargs) -> list[torch.Tensor]:
        found = []
        for i, arg in enumerate(func._schema.arguments):
            if arg.alias_info is not None and arg.alias_info.is_write:
                value = args[i] if i < len(args) else kwargs.get(arg.name)
                if isinstance(value, torch.Tensor):
                    found.append(value)
        return found

    def _mark_aliases_stale(self, mutated_ids: set[int], label: str) -> None:
        if not mutated_ids:
            return
        keys = {_storage_key(self.tracked[i][0]) for i in mutated_ids if i in self.tracked}
        for tid, (t, _) in self.tracked.items():
            if tid not in mutated_ids and _storage_key(t) in keys:
                self.stale[tid] = f"written in place by {label}"

    def _describe(self, func, args, kwargs, module: str) -> OpCall:
        schema = func._schema
        bound: dict[str, Any] = {}
        for i, arg in enumerate(schema.arguments):
            if i < len(args) and not arg.kwarg_only:
                bound[arg.name] = args[i]
            elif arg.name in kwargs:
                bound[arg.name] = kwargs[arg.name]
            elif arg.has_default_value():
                bound[arg.name] = arg.default_value
        inputs: list[TensorArg] = []

        def wrap(value: Any) -> Any:
            if isinstance(value, torch.Tensor):
                ta = TensorArg(
                    self.node_of(value), tuple(value.shape), tuple(value.stride()), value.storage_offset()
                )
                inputs.append(ta)
                return ta
            return value

        bound = {k: tree_map(wrap, v) for k, v in bound.items()}
        mutated: list[int] = []
        for t in self._mutated_tensors(func, args, kwargs):
            node = self.node_of(t)
            for j, ta in enumerate(inputs):
                if ta.node == node and node is not None:
                    mutated.append(j)
                    break
        return OpCall(
            name=str(func),
            packet=f"{func.namespace}.{func._opname}",
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
    Ops named in ``constants`` (packets such as ``aten.new_zeros``) make untracked constants.
    """
    if not isinstance(model, nn.Module):
        raise ModelError(f"expected a torch.nn.Module, got {type(model).__name__}")
    modes = {m: m.training for m in model.modules()}
    model.eval()
    stack = _ModuleStack(model)
    recorder = _Recorder(stack, constants)
    try:
        x = torch.empty(input_shape, device="meta")
        input_node = recorder.track(x, None, "input")
        try:
            with torch.no_grad(), recorder:
                out = model(x)
        except (UnsupportedOpError, ModelError, InputShapeError):
            raise
        except Exception as exc:  # the model itself refused this input: a user error, said in one line
            where = recorder.failed_in or stack.current or "<model>"
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            if "meta" in first_line:
                hint = "the model reads tensor values in Python (e.g. .item()); the engine sees shapes only"
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
        for m, mode in modes.items():
            m.train(mode)
    if not outputs:
        raise ModelError("the model returned no tensor that depends on its input; nothing to analyse")
    return Graph(recorder.nodes, recorder.calls, input_node, outputs, tuple(input_shape))
