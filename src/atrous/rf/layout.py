"""Where each input spatial axis lives in a tensor, through views, permutes and flattening.

A tensor derived from an (N, C, H, W) input usually carries H at dim 2 and W at dim 3, but ``permute`` moves
them (channels-last MLPs), ``view`` can merge them with other dims (``x.view(N * H * W, C)`` before a Linear)
and split them back. A ``Loc`` records the dim an axis lives in and how to read the axis index from the dim
index: ``(index // inner) % size``. A tensor that no longer indexes an axis (after a reduction or ``select``)
has no Loc for it; its map along that axis is then the same for every element.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod


@dataclass(frozen=True)
class Loc:
    dim: int
    inner: int
    size: int
    plain: bool = True  # the dim holds this axis alone (the usual case; ops that resize a dim need it)


Layout = tuple[Loc | None, ...]


def input_layout(ndim: int, spatial: int) -> Layout:
    """(N, C, *spatial): axis ``a`` lives in dim ``ndim - spatial + a``."""
    first = ndim - spatial
    return tuple(Loc(first + a, 1, 0) for a in range(spatial))


def with_sizes(layout: Layout, shape: tuple[int, ...]) -> Layout:
    """Fill in the sizes of plain locs from a shape."""
    return tuple(
        None if loc is None else Loc(loc.dim, loc.inner, shape[loc.dim], True) if loc.plain else loc
        for loc in layout
    )


def axis_at_dim(layout: Layout, dim: int) -> int | None:
    """The axis living alone in ``dim``, or None. Raises ValueError if ``dim`` mixes an axis with others."""
    found = [a for a, loc in enumerate(layout) if loc is not None and loc.dim == dim]
    if not found:
        return None
    if len(found) > 1 or not layout[found[0]].plain:
        raise ValueError(f"dim {dim} holds several input axes")
    return found[0]


def dims_with_axes(layout: Layout) -> set[int]:
    return {loc.dim for loc in layout if loc is not None}


def channel_dim(layout: Layout, shape: tuple[int, ...]) -> int | None:
    """Dim 1 of an (N, C, ...) tensor when it carries no spatial axis: the dim whose segments we track."""
    if len(shape) >= 2 and 1 not in dims_with_axes(layout):
        return 1
    return None


def contiguous_strides(shape: tuple[int, ...]) -> list[int]:
    return [prod(shape[d + 1 :]) for d in range(len(shape))]


def reshape(
    layout: Layout, old: tuple[int, ...], new: tuple[int, ...]
) -> tuple[Layout, list[int], list[int]]:
    """Layout after a view/reshape (row-major order is kept). Returns (layout, dropped, lost) where ``dropped``
    are axes of size 1 that no longer have a dim and ``lost`` axes whose index cannot be read from a single dim
    any more (a spatial dim split across dims)."""
    old_strides, new_strides = contiguous_strides(old), contiguous_strides(new)
    result: list[Loc | None] = []
    dropped, lost = [], []
    for axis, loc in enumerate(layout):
        if loc is None:
            result.append(None)
            continue
        if loc.size == 1:
            result.append(None)
            dropped.append(axis)
            continue
        linear = loc.inner * old_strides[loc.dim]  # step of the axis in the row-major linear index
        placed = None
        for d, (step, size) in enumerate(zip(new_strides, new)):
            if size > 1 and step <= linear < step * size:
                inner = linear // step
                if linear % step == 0 and size % (inner * loc.size) == 0:
                    placed = Loc(d, inner, loc.size, inner == 1 and size == loc.size)
                break
        if placed is None:
            result.append(None)
            lost.append(axis)
        else:
            result.append(placed)
    return tuple(result), dropped, lost


def permute(layout: Layout, perm: list[int]) -> Layout:
    """Layout after ``permute(perm)``: new dim i is old dim perm[i]."""
    where = {old: new for new, old in enumerate(perm)}
    return tuple(
        None if loc is None else Loc(where[loc.dim], loc.inner, loc.size, loc.plain) for loc in layout
    )
