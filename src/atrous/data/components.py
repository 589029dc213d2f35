"""Connected components of a mask, without scipy: row runs joined by a union-find.

A component is kept as its row runs (``row``, ``start``, ``end`` half-open), which is what the statistics and
the coverage checks need (extent, area, pixels), in memory proportional to the object's height, not its area.
Connectivity is 4 (edge neighbours), as ``scipy.ndimage.label``'s default: two squares that touch only at a
corner are two objects.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np


@dataclass(frozen=True)
class Component:
    """One object: its class, bounding box (y0, x0, y1, x1; half-open), pixel count and row runs (absolute)."""

    label: int
    box: tuple[int, int, int, int]
    area: int
    rows: np.ndarray
    starts: np.ndarray
    ends: np.ndarray

    @property
    def height(self) -> int:
        return self.box[2] - self.box[0]

    @property
    def width(self) -> int:
        return self.box[3] - self.box[1]

    @property
    def centre(self) -> tuple[int, int]:
        """The pixel at the centre of the bounding box (rounded down): the anchor of the coverage check, since
        it minimises the farthest reach to the box's edges."""
        y0, x0, y1, x1 = self.box
        return (y0 + y1 - 1) // 2, (x0 + x1 - 1) // 2

    def crop(self, margin: int = 0, shape: tuple[int, int] | None = None) -> tuple[int, int, np.ndarray]:
        """(top, left, bool array): the object's pixels in its box grown by ``margin`` (clipped to ``shape``),
        dilated by ``margin`` in the chessboard metric: what a window must show to see the object and a
        ``margin``-pixel ring of context around it."""
        y0, x0, y1, x1 = self.box
        h, w = y1 - y0, x1 - x0
        grid = np.zeros((h + 2 * margin, w + 2 * margin), dtype=bool)
        for r, s, e in zip(self.rows, self.starts, self.ends):
            grid[r - y0 + margin, s - x0 + margin : e - x0 + margin] = True
        if margin:
            grid = _dilate(grid, margin)
        top, left = y0 - margin, x0 - margin
        if shape is not None:  # what lies outside the image cannot be seen by any window: drop it
            t0, l0 = max(top, 0), max(left, 0)
            t1, l1 = min(top + grid.shape[0], shape[0]), min(left + grid.shape[1], shape[1])
            grid, top, left = grid[t0 - top : t1 - top, l0 - left : l1 - left], t0, l0
        return top, left, grid

    @cached_property
    def thickness(self) -> int:
        """The side of the largest square inside the object: how wide it is across its widest part. A bar
        10 x 3 is 3 thick, a one-pixel diagonal line 1, however large their boxes; it is what a coarse output
        grid erodes (:func:`atrous.models.stride.min_width`)."""
        _, _, fit = self.crop()  # fit[p]: a t x t square with top-left corner p lies inside the object
        t = 1
        while (grown := _grow(fit, t)).any():  # doubling, then binary lifting on the remaining bits
            fit, t = grown, 2 * t
        step = t // 2
        while step:
            if (grown := _grow(fit, step)).any():
                fit, t = grown, t + step
            step //= 2
        return t

    def touches_border(self, shape: tuple[int, int]) -> bool:
        y0, x0, y1, x1 = self.box
        return y0 == 0 or x0 == 0 or y1 == shape[0] or x1 == shape[1]


def _grow(fit: np.ndarray, u: int) -> np.ndarray:
    """From where a t x t square fits to where a (t + u) x (t + u) one does (u <= t): four t-squares at the
    corners' offsets cover it."""
    if u >= min(fit.shape):
        return np.zeros((0, 0), dtype=bool)
    return fit[:-u, :-u] & fit[u:, :-u] & fit[:-u, u:] & fit[u:, u:]


def _dilate(grid: np.ndarray, m: int) -> np.ndarray:
    """Chessboard dilation by ``m`` of a grid that already has ``m`` empty cells on each side (separable)."""
    out = grid.copy()
    for axis in (0, 1):
        src = out.copy()
        for d in range(1, m + 1):
            out |= np.roll(src, d, axis) | np.roll(
                src, -d, axis
            )  # the empty margin keeps rolls from wrapping
    return out


def row_runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows, starts, ends) of the horizontal runs of True in a bool (H, W) array, row-major order."""
    padded = np.zeros((mask.shape[0], mask.shape[1] + 2), dtype=np.int8)
    padded[:, 1:-1] = mask
    d = np.diff(padded, axis=1)
    rows, starts = np.nonzero(d == 1)
    _, ends = np.nonzero(d == -1)
    return rows, starts, ends


def components(mask: np.ndarray, label: int = 1) -> list[Component]:
    """The 4-connected components of a bool (H, W) mask, each tagged with ``label``, ordered by first pixel."""
    rows, starts, ends = row_runs(mask)
    n = len(rows)
    if n == 0:
        return []
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]  # path halving
            i = parent[i]
        return i

    first = np.searchsorted(rows, np.arange(mask.shape[0] + 1))
    for r in range(mask.shape[0] - 1):
        a0, a1, b1 = first[r], first[r + 1], first[r + 2]
        if a0 == a1 or a1 == b1:
            continue
        # Runs of each row are sorted and disjoint, so the runs below that overlap run a form one slice:
        # from the first ending after a starts to the first starting at or after a ends.
        lo = a1 + np.searchsorted(ends[a1:b1], starts[a0:a1], side="right")
        hi = a1 + np.searchsorted(starts[a1:b1], ends[a0:a1], side="left")
        for a, (first_b, end_b) in enumerate(zip(lo.tolist(), hi.tolist()), start=int(a0)):
            for b in range(first_b, end_b):
                ra, rb = root(a), root(b)
                if ra != rb:
                    parent[max(ra, rb)] = min(ra, rb)
    roots = np.array([root(i) for i in range(n)])
    ids, comp = np.unique(roots, return_inverse=True)
    order = np.argsort(comp, kind="stable")
    bounds = np.searchsorted(comp[order], np.arange(len(ids) + 1))
    out = []
    for c in range(len(ids)):
        idx = order[bounds[c] : bounds[c + 1]]
        r, s, e = rows[idx], starts[idx], ends[idx]
        box = (int(r.min()), int(s.min()), int(r.max()) + 1, int(e.max()))
        out.append(Component(label, box, int((e - s).sum()), r, s, e))
    return out


def objects(mask: np.ndarray, classes: list[int]) -> list[Component]:
    """Every object of the given class indices in an integer label map, class by class."""
    present = set(np.unique(mask).tolist())
    return [c for k in classes if k in present for c in components(mask == k, k)]
