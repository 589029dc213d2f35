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
from itertools import pairwise
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
    first = shapes[0]
    if all(s == first for s in shapes):  # the usual case (x + y, x * gate of x's shape, one operand)
        return tuple(first)
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


_ROW_MAJOR_CLASS: dict[int, tuple] = {}  # ndim -> layout_class of a row-major tensor without size-1 dims


def is_row_major(t: torch.Tensor) -> bool:
    """Whether ``t`` is a non-empty meta tensor with exactly the strides of :func:`row_major` (what the
    pointwise rule needs of every operand). ``is_contiguous`` (one flag, read in C++) says it wherever no dim
    has size 1; those dims' strides, which it ignores, are compared in full."""
    if not t.is_meta or not t.is_contiguous() or t.numel() == 0:
        return False
    shape = t.shape
    return 1 not in shape or t.stride() == row_major(shape)


def layout_class(t: torch.Tensor) -> tuple | None:
    """What a shape rule may assume of a tensor's memory besides its sizes: the order of its dims in memory
    (outermost first) when it is dense in that order (row-major, a weight's ``.t()``, a channels-last view), with
    which dims have size 1 (where strides are ambiguous); None for anything else (strided, overlapping, empty)."""
    if not t.is_meta or t.numel() == 0:
        return None
    shape = t.shape
    if 1 not in shape and t.is_contiguous():  # row-major strides exactly: most tensors, without a sort
        return _ROW_MAJOR_CLASS.get(len(shape)) or _ROW_MAJOR_CLASS.setdefault(
            len(shape), (tuple(range(len(shape))), (False,) * len(shape))
        )
    stride = t.stride()
    order = tuple(sorted(range(len(shape)), key=lambda i: -stride[i]))  # stable: ties keep the logical order
    dense = row_major(tuple(shape[i] for i in order))
    if any(stride[i] != step for i, step in zip(order, dense)):
        return None
    return order, tuple(n == 1 for n in shape)


def strided_class(t: torch.Tensor) -> tuple | None:
    """A key for a tensor that :func:`layout_class` refuses because it is not dense (``q`` and ``k`` sliced out of
    one ``qkv`` tensor, as Swin v2 normalises them): the order of its strides, which dims have size 1 and which
    stride 0. Only rules whose kernels are seen to ignore the input's strides take it (:data:`STRIDED_INPUTS`);
    a kernel that follows them does so by comparing strides, which the order gives, except between equal strides
    of dims of size > 1 (a self-overlapping view), which get no class."""
    if not t.is_meta or t.numel() == 0:
        return None
    shape, stride = t.shape, t.stride()
    order = tuple(sorted(range(len(shape)), key=lambda i: -stride[i]))
    wide = [stride[i] for i in order if shape[i] != 1]
    if any(a == b for a, b in pairwise(wide)):
        return None
    return "strided", order, tuple(n == 1 for n in shape), tuple(d == 0 for d in stride)


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


def _rule_convolution(b: dict) -> tuple | None:
    """Any convolution (``aten.convolution``: 1-3-D, grouped, dilated, transposed): every stage of a CNN meets
    new shapes, and the kernel (a Python meta function) costs as much as twenty cached ops. Where the arguments
    are not what the kernel accepts (channels, sizes that leave no output, lists of the wrong length) the rule
    steps aside and the kernel raises its own error."""
    x, w, bias = b["input"], b["weight"], b["bias"]
    k = w.dim() - 2
    params = [list(b[name]) for name in ("stride", "padding", "dilation", "output_padding")]
    groups, transposed = b["groups"], b["transposed"]
    if k < 1 or x.dim() != w.dim() or any(len(p) != k or not all(type(v) is int for v in p) for p in params):
        return None
    stride, padding, dilation, output_padding = params
    if not isinstance(groups, int) or groups < 1 or type(transposed) is not bool:
        return None
    c_in, c_out = (w.shape[0], w.shape[1] * groups) if transposed else (w.shape[1] * groups, w.shape[0])
    if x.shape[1] != c_in or (bias is not None and tuple(bias.shape) != (c_out,)) or w.shape[0] % groups:
        return None
    sizes = []
    for n, kn, s_, p, d, op in zip(x.shape[2:], w.shape[2:], stride, padding, dilation, output_padding):
        if transposed:
            sizes.append((n - 1) * s_ - 2 * p + d * (kn - 1) + op + 1)
        else:
            sizes.append((n + 2 * p - d * (kn - 1) - 1) // s_ + 1 if s_ > 0 else 0)
    if min(sizes) < 1 or min(stride) < 1 or min(dilation) < 1 or min(padding) < 0:
        return None
    return (transposed, groups, bias is None, *map(tuple, params)), [(x.shape[0], c_out, *sizes)]


def _rule_index(b: dict) -> tuple | None:
    """``x[idx]`` with integer index tensors (Swin's relative position bias, indexed in every block): the
    indexed dims are replaced by the indexes' broadcast shape, in place when they are adjacent, else in front
    (NumPy's rule, as ``meta_index_Tensor`` builds it). Masks (bool, int8) size the output by their values:
    no rule."""
    x, indices = b["self"], list(b["indices"])
    given = [(i, t) for i, t in enumerate(indices) if t is not None]
    if (
        not given
        or len(indices) > x.dim()
        or any(t.dtype not in (torch.int64, torch.int32) for _, t in given)
        # A 0-dim index: the kernel re-strides its output by sizes the key does not hold (a tie between strides
        # breaks by the sizes), so the first call's strides would not hold for the next call of the same key.
        or any(t.dim() == 0 for _, t in given)
    ):
        return None
    replaced = broadcast_shape([tuple(t.shape) for _, t in given])
    if replaced is None:
        return None
    shape, first, last = tuple(x.shape), given[0][0], given[-1][0]
    if last - first + 1 == len(given):
        out = (*shape[:first], *replaced, *shape[last + 1 :])
    else:
        out = (*replaced, *(n for i, n in enumerate(shape) if i >= len(indices) or indices[i] is None))
    return (tuple(t is None for t in indices),), [out]


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
    torch.ops.aten.convolution.default: _rule_convolution,
}
# Rules for functional ops tagged as sizing their outputs by values (``dynamic_output_shape``) because of some
# arguments only; each rule declines those (``index`` with a boolean mask), so the outputs it makes are a
# function of the metadata like the others'. Kept apart: SHAPE_RULES holds only ops whose every call is.
# Ops whose rule also answers for inputs that are not dense (see strided_class): vector_norm's kernel reduces
# into a fresh row-major tensor whatever the input's strides (checked on the first call of each key, as always).
STRIDED_INPUTS = {torch.ops.aten.linalg_vector_norm.default}
VALUE_FREE_RULES: dict[Any, Callable[[dict], tuple | None]] = {
    torch.ops.aten.index.Tensor: _rule_index,
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
        if rule is None and (func in SHAPE_RULES or func in VALUE_FREE_RULES):
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
                key.append((value.dtype, _size_ones(value.shape)))
            else:
                key.append((type(value), value))
        for name, value in kwargs.items():
            if isinstance(value, torch.Tensor):
                tensors.append(value)
                key.append((name, value.dtype, _size_ones(value.shape)))
            else:
                key.append((name, type(value), value))
        if not tensors:
            return None
        for t in tensors:
            if not is_row_major(t):
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
                if cls is None and func in STRIDED_INPUTS:
                    cls = strided_class(value)
                if cls is None:
                    return None
                classes.append((name, value.dtype, cls))
            elif isinstance(value, (list, tuple)) and any(isinstance(v, torch.Tensor) for v in value):
                # A list of optional tensors (``index``'s indices): each one's dtype and class, None where absent.
                found = []
                for v in value:
                    cls = layout_class(v) if isinstance(v, torch.Tensor) else None
                    if cls is None and v is not None:
                        return None
                    found.append(None if v is None else (v.dtype, cls))
                classes.append((name, tuple(found)))
        ruled = (SHAPE_RULES.get(func) or VALUE_FREE_RULES[func])(bound)
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


def _size_ones(shape: torch.Size) -> tuple[bool, ...] | int:
    """Which dims of ``shape`` have size 1 (part of a rule's key), or just the rank where none has: the same
    information, without a tuple built per operand of every elementwise op."""
    return tuple([n == 1 for n in shape]) if 1 in shape else len(shape)


def pointwise_agrees(kind: int, shape: tuple[int, ...], out: Any, inputs: list[torch.Tensor]) -> Any:
    """What the rule of :meth:`LearnedRules.pointwise` learns from the kernel's output for a new key: the dtype
    (or True, in place) where the kernel gave what the rule would have, else None."""
    if kind == IN_PLACE:
        return True if inputs and out is inputs[0] else None
    dtypes = fresh_row_major(out, [shape], inputs) if isinstance(out, torch.Tensor) else None
    return dtypes[0] if dtypes else None
