"""Meta outputs by rule: the recorder's shortcut around Python meta kernels (see :mod:`atrous.rf.graph`).

Most meta kernels are Python reference code (0.1-5 ms a call), and models call elementwise ops, normalisations,
``addmm`` and a few reductions on ever new shapes, which the recorder's cache of exact argument metadata does not
reuse. For these ops the outputs' shapes follow from the arguments by a rule, and their strides and dtypes from
a key: the op, each tensor's dtype, memory order and size-1 dims (not its sizes), the other arguments, and the
default dtype. The first call of each key runs the kernel and checks the rule against it (:class:`LearnedRules`);
a key where the two differ keeps the kernel. Nothing here records anything: the recorder asks
:meth:`LearnedRules.outputs` before running a kernel and tells :meth:`LearnedRules.learn` what the kernel gave.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


def storage_key(t: torch.Tensor) -> int:
    return t.untyped_storage()._cdata


FRESH, IN_PLACE = 1, 2


def pointwise_kind(func, cacheable: bool) -> int:
    """Whether ``func`` is an elementwise op with broadcasting (tagged ``pointwise``) returning one tensor: a
    fresh one (``FRESH``) or its first argument written in place (``IN_PLACE``, e.g. ``relu_``)."""
    if torch.Tag.pointwise not in func.tags or torch.Tag.nondeterministic_seeded in func.tags:
        return 0
    schema = func._schema
    if len(schema.returns) != 1 or str(schema.returns[0].type) != "Tensor":
        return 0
    if cacheable:
        return FRESH
    arguments, ret = schema.arguments, schema.returns[0].alias_info
    written = [a for a in arguments if a.alias_info is not None and a.alias_info.is_write]
    if (
        arguments
        and written == [arguments[0]]
        and arguments[0].name == "self"
        and ret is not None
        and ret.is_write
        and set(ret.before_set) == set(arguments[0].alias_info.before_set)
        and all(a.alias_info is None for a in arguments[1:])
    ):
        return IN_PLACE
    return 0


_UNCHECKED = object()


def row_major(shape: tuple[int, ...]) -> tuple[int, ...]:
    """The strides of a contiguous tensor of ``shape`` (as ``torch.empty`` makes them)."""
    strides, step = [], 1
    for n in reversed(shape):
        strides.append(step)
        step *= max(n, 1)
    return tuple(reversed(strides))


def broadcast_shape(shapes: list[tuple[int, ...]]) -> tuple[int, ...] | None:
    """The shape ``shapes`` broadcast to, or None where they do not broadcast (the kernel then says why)."""
    out = [1] * max(len(s) for s in shapes)
    for s in shapes:
        for i, n in enumerate(s, len(out) - len(s)):
            if n != 1:
                if out[i] == 1:
                    out[i] = n
                elif out[i] != n:
                    return None
    return tuple(out)


def _bind(arguments: tuple, args: tuple, kwargs: dict) -> dict[str, Any]:
    """Every schema argument by name, defaults filled in (``arguments``: (name, kwarg_only, has_default, default)
    for each, as the recorder reads them from the schema)."""
    bound: dict[str, Any] = {}
    for i, (name, kwarg_only, has_default, default) in enumerate(arguments):
        if i < len(args) and not kwarg_only:
            bound[name] = args[i]
        elif name in kwargs:
            bound[name] = kwargs[name]
        elif has_default:
            bound[name] = default
    return bound


def layout_class(t: torch.Tensor) -> tuple | None:
    """What a shape rule may assume of a tensor's memory besides its sizes: the order of its dims in memory
    (outermost first) when it is dense in that order (row-major, a weight's ``.t()``, a channels-last view), with
    which dims have size 1 (where strides are ambiguous); None for anything else (strided, overlapping, empty)."""
    if not t.is_meta or t.numel() == 0:
        return None
    shape, stride = t.shape, t.stride()
    order = tuple(sorted(range(len(shape)), key=lambda i: -stride[i]))  # stable: ties keep the logical order
    dense = row_major(tuple(shape[i] for i in order))
    if any(stride[i] != step for i, step in zip(order, dense)):
        return None
    return order, tuple(n == 1 for n in shape)


def fresh_row_major(out: Any, shapes: list, inputs: list[torch.Tensor]) -> tuple | None:
    """The dtypes of ``out`` (a tensor or a tuple of them) if they are fresh row-major meta tensors of ``shapes``,
    sharing no storage with each other or the tensor arguments ``inputs`` (what a shape rule makes), else None."""
    outs = out if isinstance(out, tuple) else (out,)
    if len(outs) != len(shapes):
        return None
    storages = {storage_key(t) for t in inputs}
    dtypes = []
    for t, shape in zip(outs, shapes):
        if not (
            isinstance(t, torch.Tensor)
            and t.is_meta
            and t.layout == torch.strided
            and not t.is_conj()
            and not t.is_neg()
            and t.shape == shape
            and t.stride() == row_major(shape)
            and t.storage_offset() == 0
            and t.untyped_storage().nbytes() == t.numel() * t.element_size()
            and storage_key(t) not in storages
        ):
            return None
        storages.add(storage_key(t))
        dtypes.append(t.dtype)
    return tuple(dtypes)


def _dims(dims: Any, ndim: int) -> list[int] | None:
    """Reduction dims normalised to 0..ndim-1 (None or [] = all), or None where the kernel would refuse them."""
    if dims is None or (isinstance(dims, (list, tuple)) and len(dims) == 0):
        return list(range(ndim))
    dims = [dims] if isinstance(dims, int) else list(dims)
    out = []
    for d in dims:
        if not isinstance(d, int) or not -max(ndim, 1) <= d < max(ndim, 1):
            return None
        out.append(d % max(ndim, 1))
    return out if len(set(out)) == len(out) else None


def _reduced(shape: tuple[int, ...], dims: Any, keepdim: Any) -> tuple[int, ...] | None:
    axes = _dims(dims, len(shape))
    if axes is None or not isinstance(keepdim, bool):
        return None
    return tuple(1 if i in axes else n for i, n in enumerate(shape) if keepdim or i not in axes)


def _hashable(*values: Any) -> tuple:
    return tuple(tuple(v) if isinstance(v, list) else v for v in values)


def _rule_batch_norm(b: dict) -> tuple | None:
    x = b["input"]
    if x.dim() < 2:
        return None
    c = x.shape[1]
    stats = [b[k] for k in ("weight", "bias", "running_mean", "running_var")]
    if any(t is not None and tuple(t.shape) != (c,) for t in stats):
        return None
    extra = (tuple(t is None for t in stats), b["training"], b["momentum"], b["eps"])
    return extra, [tuple(x.shape), (c,), (c,)]


def _rule_layer_norm(b: dict) -> tuple | None:
    x, norm = b["input"], list(b["normalized_shape"])
    k = len(norm)
    if not 1 <= k <= x.dim() or list(x.shape[-k:]) != norm:
        return None
    if any(t is not None and list(t.shape) != norm for t in (b["weight"], b["bias"])):
        return None
    stats = (*x.shape[: x.dim() - k], *(1,) * k)
    return (k, b["weight"] is None, b["bias"] is None, b["eps"]), [tuple(x.shape), stats, stats]


def _rule_addmm(b: dict) -> tuple | None:
    bias, a, w = b["self"], b["mat1"], b["mat2"]
    if a.dim() != 2 or w.dim() != 2 or a.shape[1] != w.shape[0]:
        return None
    shape = (a.shape[0], w.shape[1])
    if bias.dim() > 2 or broadcast_shape([tuple(bias.shape), shape]) != shape:
        return None
    return _hashable(bias.dim(), type(b["beta"]), b["beta"], type(b["alpha"]), b["alpha"]), [shape]


def _rule_softmax(b: dict) -> tuple | None:
    x, dim = b["self"], b["dim"]
    if _dims(dim, x.dim()) is None:
        return None
    return (dim, b["dtype"]), [tuple(x.shape)]


def _rule_mean(b: dict) -> tuple | None:
    shape = _reduced(tuple(b["self"].shape), b["dim"], b["keepdim"])
    return None if shape is None else (_hashable(b["dim"], b["keepdim"], b["dtype"]), [shape])


def _rule_vector_norm(b: dict) -> tuple | None:
    shape = _reduced(tuple(b["self"].shape), b["dim"], b["keepdim"])
    extra = _hashable(type(b["ord"]), b["ord"], b["dim"], b["keepdim"], b["dtype"])
    return None if shape is None else (extra, [shape])


def _rule_roll(b: dict) -> tuple | None:
    x, shifts, dims = b["self"], list(b["shifts"]), list(b["dims"])
    if not dims or len(shifts) != len(dims) or _dims(dims, x.dim()) is None:
        return None
    return _hashable(shifts, dims), [tuple(x.shape)]


# Functional ops with Python meta kernels that models call on many shapes, and how their outputs' shapes follow
# from the arguments (None: the rule does not apply, the kernel decides). See LearnedRules.shaped.
SHAPE_RULES: dict[Any, Callable[[dict], tuple | None]] = {
    torch.ops.aten.native_batch_norm.default: _rule_batch_norm,
    torch.ops.aten.native_layer_norm.default: _rule_layer_norm,
    torch.ops.aten.addmm.default: _rule_addmm,
    torch.ops.aten._safe_softmax.default: _rule_softmax,
    torch.ops.aten.mean.dim: _rule_mean,
    torch.ops.aten.linalg_vector_norm.default: _rule_vector_norm,
    torch.ops.aten.roll.default: _rule_roll,
}


class LearnedRules:
    """What the kernels taught one recording: for each key of :meth:`pointwise` and :meth:`shaped`, whether the rule
    holds there (and the outputs' dtypes), learned from the kernel's outputs on the key's first call."""

    def __init__(self) -> None:
        self.pointwise_keys: dict[tuple, Any] = {}  # key -> output dtype, True (in place) or None (kernel)
        self.shaped_keys: dict[tuple, Any] = {}  # key -> the outputs' dtypes, or None (kernel)

    def outputs(self, func, pointwise: int, arguments: tuple, args: tuple, kwargs: dict) -> tuple | None:
        """The rule for a call of ``func`` (``pointwise``: its :func:`pointwise_kind`; ``arguments``: its schema's
        arguments, see :func:`_bind`): None where no rule applies, else (key, shapes, the outputs or None when
        this key has not been checked yet, in which case the caller runs the kernel and calls :meth:`learn`)."""
        rule = self.pointwise(func, pointwise, args, kwargs) if pointwise else None
        if rule is None and func in SHAPE_RULES:
            rule = self.shaped(func, arguments, args, kwargs)
        return rule

    def learn(self, pointwise: int, rule: tuple, out: Any, inputs: list[torch.Tensor]) -> None:
        """The first call of ``rule``'s key gave ``out`` (``inputs``: the call's tensor arguments)."""
        if pointwise:
            self.pointwise_keys[rule[0]] = pointwise_agrees(pointwise, rule[1], out, inputs)
        else:
            self.shaped_keys[rule[0]] = fresh_row_major(out, rule[1], inputs)

    def pointwise(
        self, func, kind: int, args: tuple, kwargs: dict
    ) -> tuple[Any, tuple[int, ...], Any] | None:
        """An elementwise op's output made by rule instead of by its meta kernel (Python reference code, 0.1-3 ms a
        call: gelu, add, mul, silu_), where the rule applies; models call them on ever new shapes, which the cache
        of exact arguments (``layouts``) does not reuse.

        The rule: when every tensor operand is non-empty and row-major contiguous and one of them has the broadcast
        shape, the output is a fresh row-major tensor of that shape (what FakeTensor's fast path for add/mul
        assumes), or, in place, the first argument itself; its dtype depends only on the operands' dtypes, which
        ones are 0-dim, the other arguments and the default dtype. So the key is those and which dims have size 1
        (where strides are ambiguous), not the sizes, and the first call of each key runs the kernel and checks the
        rule against it (:func:`pointwise_agrees`): a key where they differ keeps the kernel. Returns None where the
        rule does not apply, else (key, broadcast shape, the output or None when this key has not been checked yet).
        """
        tensors: list[torch.Tensor] = []
        # The default dtype decides what integer operands promote to (``sigmoid``, ``div``, ``+ 0.5``).
        key: list[Any] = [func, torch.get_default_dtype()]
        for value in args:
            if isinstance(value, torch.Tensor):
                tensors.append(value)
                key.append((value.dtype, tuple(n == 1 for n in value.shape)))
            else:
                key.append((type(value), value))
        for name, value in kwargs.items():
            if isinstance(value, torch.Tensor):
                tensors.append(value)
                key.append((name, value.dtype, tuple(n == 1 for n in value.shape)))
            else:
                key.append((name, type(value), value))
        if not tensors:
            return None
        for t in tensors:
            shape = t.shape
            if not t.is_meta or t.numel() == 0 or t.stride() != row_major(shape):
                return None
        shape = broadcast_shape([t.shape for t in tensors])
        if shape is None or all(t.shape != shape for t in tensors):
            return None
        if kind == IN_PLACE:
            first = args[0] if args else None
            if first is not tensors[0] or first.shape != shape:
                return None
            storage = storage_key(first)
            if any(storage_key(t) == storage for t in tensors[1:]):  # operands overlapping the output
                return None
        try:
            learned = self.pointwise_keys.get(tuple(key), _UNCHECKED)
        except TypeError:  # an unhashable argument
            return None
        if learned is _UNCHECKED:
            return tuple(key), shape, None
        if learned is None:  # the kernel disagreed with the rule for this key once
            return None
        if kind == IN_PLACE:
            return tuple(key), shape, args[0]
        return tuple(key), shape, torch.empty(shape, dtype=learned, device="meta")

    def shaped(self, func, arguments: tuple, args: tuple, kwargs: dict) -> tuple[Any, list, Any] | None:
        """The outputs of an op of :data:`SHAPE_RULES` (normalisations, ``addmm``, reductions: Python meta
        kernels of 1-5 ms a call, met on every stage's shapes) made by its rule, where the rule applies: fresh
        row-major tensors of the shapes it computes, with dtypes learned, like :meth:`pointwise`, from the first
        call of each key (the op, each tensor's dtype, layout class and size-1 dims, the other arguments as the
        rule reads them, the default dtype) once the kernel is seen to agree. Returns None where the rule does not
        apply, else (key, shapes, the outputs or None when this key has not been checked yet)."""
        bound = _bind(arguments, args, kwargs)
        classes: list[Any] = []
        for name, value in bound.items():
            if isinstance(value, torch.Tensor):
                cls = layout_class(value)
                if cls is None:
                    return None
                classes.append((name, value.dtype, cls))
            elif isinstance(value, (list, tuple)) and any(isinstance(v, torch.Tensor) for v in value):
                return None
        ruled = SHAPE_RULES[func](bound)
        if ruled is None:
            return None
        extra, shapes = ruled
        key = (func, torch.get_default_dtype(), tuple(classes), extra)
        try:
            learned = self.shaped_keys.get(key, _UNCHECKED)
        except TypeError:
            return None
        if learned is _UNCHECKED:
            return key, shapes, None
        if learned is None:
            return None
        outs = tuple(torch.empty(shape, dtype=d, device="meta") for shape, d in zip(shapes, learned))
        return key, shapes, outs if len(outs) > 1 else outs[0]


def pointwise_agrees(kind: int, shape: tuple[int, ...], out: Any, inputs: list[torch.Tensor]) -> Any:
    """What the rule of :meth:`LearnedRules.pointwise` learns from the kernel's output for a new key: the dtype
    (or True, in place) where the kernel gave what the rule would have, else None."""
    if kind == IN_PLACE:
        return True if inputs and out is inputs[0] else None
    dtypes = fresh_row_major(out, [shape], inputs) if isinstance(out, torch.Tensor) else None
    return dtypes[0] if dtypes else None
