"""Where each input spatial axis lives in a tensor, through views, permutes and flattening.

A tensor derived from an (N, C, H, W) input usually carries H at dim 2 and W at dim 3, but ``permute`` moves
them (channels-last MLPs), ``view`` can merge them with other dims (``x.view(N * H * W, C)`` before a Linear)
and split them back. A ``Loc`` records the dim an axis lives in and how to read the axis index from the dim
index: ``(index // inner) % size``. A tensor that no longer indexes an axis (after a reduction or ``select``)
has no Loc for it; its map along that axis is then the same for every element.

Attention code splits an axis across dims: Swin's window partition views ``(N, H, W, C)`` as
``(N, H // w, w, W // w, w, C)``, so the row index is ``w * i + j`` with ``i`` and ``j`` in different dims. Such an
axis is a :class:`Split`: mixed-radix digits (:class:`Part`), each read from one dim like a Loc. Digits keep the
weight they had in the unsplit axis, so the same digit can be recognised in two tensors (queries and keys) even
after an op removed other digits. Token sequences with extra tokens (a class token concatenated in front of the
patch tokens) keep their positions through ``Loc.offset``: the extra tokens carry no position.

Space-to-depth written as views (TResNet's stem) is the same split with the low digits in the **channel** dim:
``(B, C, H, W) -> (B, bs * bs * C, H / bs, W / bs)`` makes each axis a Split of an in-block digit in dim 1 and a
block digit in dim 2 or 3. Nothing else is needed to represent it; the ops that meet it decide per digit
(``rules.base.spatial_op``): a convolution mixing channels reads the in-block digits whole (output ``(i, j)``
reads the whole block of each tap) and the output is an ordinary axis again, while a depthwise op keeps them
and depth-to-space brings them back out. Depth-to-space of channels that carried no digit leaves an axis that
owns its dim but steps ``k`` indexes per position (:func:`upsampled`); the view rule makes it an ordinary axis
read through ``index // k``, as nearest upsampling would.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from math import prod

import numpy as np


@dataclass(frozen=True)
class Loc:
    dim: int
    inner: int
    size: int
    plain: bool = True  # the dim holds this axis alone (the usual case; ops that resize a dim need it)
    offset: int = 0  # dim indexes before ``offset`` (and past the positions) are extra tokens, no position


@dataclass(frozen=True)
class Part:
    """One digit of a split axis: ``(index // inner) % size`` of ``dim``, worth ``weight`` in the unsplit axis."""

    dim: int
    inner: int
    size: int
    weight: int


@dataclass(frozen=True)
class Split:
    """An axis spread over several dims; ``parts`` by increasing weight, at least two, each of size > 1."""

    parts: tuple[Part, ...]

    @property
    def size(self) -> int:
        """Positions in the axis as this tensor indexes it (the digits present, in mixed radix)."""
        return prod(p.size for p in self.parts)

    @property
    def dims(self) -> set[int]:
        return {p.dim for p in self.parts}


Layout = tuple[Loc | Split | None, ...]


def parts_of(loc: Loc | Split) -> tuple[Part, ...]:
    return loc.parts if isinstance(loc, Split) else (Part(loc.dim, loc.inner, loc.size, 1),)


def current_weights(parts: tuple[Part, ...]) -> list[int]:
    """Weight of each digit in the index the tensor carries (digits removed by a reduction close up)."""
    out, acc = [], 1
    for p in sorted(parts, key=lambda p: p.weight):
        out.append(acc)
        acc *= p.size
    order = sorted(range(len(parts)), key=lambda i: parts[i].weight)
    result = [0] * len(parts)
    for rank, i in enumerate(order):
        result[i] = out[rank]
    return result


def from_parts(parts: list[Part], shape: tuple[int, ...]) -> Loc | Split | None:
    """The canonical Loc or Split for a set of digits: size-1 digits dropped, neighbours in one dim merged, a
    single digit that is the whole axis written as a Loc."""
    parts = sorted((p for p in parts if p.size > 1), key=lambda p: p.weight)
    merged: list[Part] = []
    for p in parts:
        last = merged[-1] if merged else None
        if (
            last is not None
            and last.dim == p.dim
            and last.inner * last.size == p.inner
            and last.weight * last.size == p.weight
        ):
            merged[-1] = Part(last.dim, last.inner, last.size * p.size, last.weight)
        else:
            merged.append(p)
    if not merged:
        return None
    if len(merged) == 1:
        # One digit left (the others reduced away): the dim is an ordinary axis again, counted in its own
        # steps (a sum over each window leaves one index per window, like a pooling of stride w).
        p = merged[0]
        return Loc(p.dim, p.inner, p.size, p.inner == 1 and p.size == shape[p.dim])
    return Split(tuple(merged))


def move(loc: Loc | Split | None, where: dict[int, int] | int | Callable[[int], int]) -> Loc | Split | None:
    """The same axis with its dims renumbered: ``where`` maps old dims to new ones, or is a shift for all."""

    def new(d: int) -> int:
        if isinstance(where, int):
            return d + where
        return where[d] if isinstance(where, dict) else where(d)

    if loc is None:
        return None
    if isinstance(loc, Split):
        return Split(tuple(Part(new(p.dim), p.inner, p.size, p.weight) for p in loc.parts))
    return replace(loc, dim=new(loc.dim))


def rows_at(loc: Loc | Split, at: dict[int, int]) -> np.ndarray:
    """The indexes along an axis (rows of a map over it) held by the elements whose dims ``at`` have the given
    indexes, whatever the other dims hold. A grid position of a tensor that keeps digits of the axis in its
    channel dim (space-to-depth, then a depthwise op) holds every block position of those channels."""
    if isinstance(loc, Loc) and loc.offset:
        i = at.get(loc.dim, loc.offset) - loc.offset
        return np.arange(loc.size) if loc.dim not in at else np.array([i] if 0 <= i < loc.size else [], int)
    parts = parts_of(loc)
    v = np.arange(prod(p.size for p in parts))
    keep = np.ones(len(v), dtype=bool)
    for p, w in zip(parts, current_weights(parts)):
        if p.dim in at:
            keep &= (v // w) % p.size == (at[p.dim] // p.inner) % p.size
    return np.flatnonzero(keep)


def input_layout(ndim: int, spatial: int) -> Layout:
    """(N, C, *spatial): axis ``a`` lives in dim ``ndim - spatial + a``."""
    first = ndim - spatial
    return tuple(Loc(first + a, 1, 0) for a in range(spatial))


def with_sizes(layout: Layout, shape: tuple[int, ...]) -> Layout:
    """Fill in the sizes of plain locs from a shape."""
    return tuple(
        Loc(loc.dim, loc.inner, shape[loc.dim], True) if isinstance(loc, Loc) and loc.plain else loc
        for loc in layout
    )


def axis_at_dim(layout: Layout, dim: int) -> int | None:
    """The axis living alone in ``dim``, or None. Raises ValueError if ``dim`` mixes an axis with others."""
    found = [a for a, loc in enumerate(layout) if loc is not None and dim in dims_of(loc)]
    if not found:
        return None
    if len(found) > 1 or isinstance(layout[found[0]], Split) or not layout[found[0]].plain:
        raise ValueError(f"dim {dim} holds several input axes")
    return found[0]


def occupants(layout: Layout, dim: int) -> list[tuple[int, Part]]:
    """The digits living in ``dim``, as (axis, digit) pairs (a plain Loc counts as one digit of weight 1)."""
    return [(a, p) for a, loc in enumerate(layout) if loc is not None for p in parts_of(loc) if p.dim == dim]


def sole_digit(layout: Layout, dim: int, size: int) -> tuple[int, Part] | None:
    """(axis, digit) when one digit is all ``dim`` holds (its index is the dim index itself), else None."""
    found = occupants(layout, dim)
    if len(found) == 1 and found[0][1].inner == 1 and found[0][1].size == size:
        loc = layout[found[0][0]]
        if not (isinstance(loc, Loc) and loc.offset):
            return found[0]
    return None


def upsampled(layout: Layout, axis: int, shape: tuple[int, ...]) -> int | None:
    """``k`` when axis ``axis`` is a Loc that owns its dim but reads only every ``k``-th step of it (the dim
    index is ``k * position + s``, with ``s`` from dims that held no axis: depth-to-space written as views, or
    nearest upsampling by expand and reshape), else None."""
    loc = layout[axis]
    if not isinstance(loc, Loc) or loc.offset or loc.inner <= 1 or loc.inner * loc.size != shape[loc.dim]:
        return None
    return loc.inner if len(occupants(layout, loc.dim)) == 1 else None


def dims_of(loc: Loc | Split) -> set[int]:
    return loc.dims if isinstance(loc, Split) else {loc.dim}


def dims_with_axes(layout: Layout) -> set[int]:
    return {d for loc in layout if loc is not None for d in dims_of(loc)}


def channel_dim(layout: Layout, shape: tuple[int, ...]) -> int | None:
    """Dim 1 of an (N, C, ...) tensor when it carries no spatial axis: the dim whose segments we track."""
    if len(shape) >= 2 and 1 not in dims_with_axes(layout):
        return 1
    return None


def contiguous_strides(shape: tuple[int, ...]) -> list[int]:
    return [prod(shape[d + 1 :]) for d in range(len(shape))]


def _split_part(
    p: Part, old_strides: list[int], new_strides: list[int], new: tuple[int, ...]
) -> list[Part] | None:
    """The digits of ``p`` after a view: one per new dim that holds some of its range of the row-major linear
    index, or None when a new dim boundary cuts the digit off-grid (its index can no longer be read)."""
    step = p.inner * old_strides[p.dim]
    top = step * p.size
    pieces = []
    for d, (st, size) in enumerate(zip(new_strides, new)):
        lower, upper = max(step, st), min(top, st * size)
        if size == 1 or lower >= upper:
            continue
        # On grid: the piece starts on a digit boundary of both, and the new dim ends on one of the piece's
        # (a dim of 12 over a digit of 8 would mix the next digit's low bits into its top values).
        if lower % step or lower % st or upper % lower or (st * size) % upper:
            return None
        pieces.append(Part(d, lower // st, upper // lower, p.weight * (lower // step)))
    return pieces if prod(q.size for q in pieces) == p.size else None


def _move_tokens(loc: Loc, old: tuple[int, ...], new: tuple[int, ...]) -> Loc | None:
    """A token dim with extra tokens survives a view only as a whole (batch dims of size 1 merged into it)."""
    old_strides, new_strides = contiguous_strides(old), contiguous_strides(new)
    lo, hi = old_strides[loc.dim], old_strides[loc.dim] * old[loc.dim]
    for d, (st, size) in enumerate(zip(new_strides, new)):
        if st * size == hi and lo % st == 0:
            f = lo // st
            return Loc(d, loc.inner * f, loc.size, False, loc.offset * f)
    return None


def reshape(
    layout: Layout, old: tuple[int, ...], new: tuple[int, ...]
) -> tuple[Layout, list[int], list[int]]:
    """Layout after a view/reshape (row-major order is kept). Returns (layout, dropped, lost) where ``dropped``
    are axes of size 1 that no longer have a dim and ``lost`` axes whose index cannot be read any more (a dim
    cut off-grid). Splitting an axis across dims is followed exactly (it becomes a :class:`Split`)."""
    old_strides, new_strides = contiguous_strides(old), contiguous_strides(new)
    result: list[Loc | Split | None] = []
    dropped, lost = [], []
    for axis, loc in enumerate(layout):
        if loc is None:
            result.append(None)
            continue
        if isinstance(loc, Loc) and loc.size == 1:
            result.append(None)
            dropped.append(axis)
            continue
        if isinstance(loc, Loc) and loc.offset:
            placed = _move_tokens(loc, old, new)
        else:
            pieces: list[Part] | None = []
            for p in parts_of(loc):
                sub = _split_part(p, old_strides, new_strides, new)
                if sub is None:
                    pieces = None
                    break
                pieces += sub
            placed = from_parts(pieces, new) if pieces is not None else None
        if placed is None:
            lost.append(axis)
        result.append(placed)
    return tuple(result), dropped, lost


def permute(layout: Layout, perm: list[int]) -> Layout:
    """Layout after ``permute(perm)``: new dim i is old dim perm[i]."""
    where = {old: new for new, old in enumerate(perm)}
    return tuple(move(loc, where) for loc in layout)
