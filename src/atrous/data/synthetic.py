"""Synthetic segmentation tasks whose labels are visible in the image, and one whose answer needs a known RF.

Every sample is a pure function of ``(seed, split, index)``: its random stream is
``numpy.random.default_rng([seed, split, index])``, never a global RNG, so DataLoader workers and DDP ranks
neither duplicate nor diverge, and a run is reproducible.

Images are float32 (C, H, W): a piecewise-constant picture (background 0, objects ``snr``) plus unit Gaussian
noise, so ``snr`` is the contrast-to-noise ratio. Masks are int64 (H, W).

Tasks
-----
``shapes``  discs (optionally squares, ellipses) brighter than the background; binary mask. The seed's task
            made learnable: the image now carries the mask.
``scale``   objects of two sizes, identical in intensity and texture; label 1 = small, 2 = large. What tells
            them apart is only their extent, so the answer needs a receptive field (see :func:`needed_rf`).
``multiscale``  objects of K sizes spread geometrically over a wide range (4 to 48 px by default) in one image;
            label k = size class k. Accuracy per class shows which receptive fields serve which scales.

The receptive field ``scale`` needs (squares of side ``s`` among squares of side ``L > s``): objects never touch
each other or the border, so along a row the object pixels form runs of length ``s`` or ``L``. A pixel at
column offset ``k`` (0..s-1) of a small square is told apart from a large square only if its window shows both
ends of its run along some axis: the background pixels at distance ``k + 1`` and ``s - k``. For every pixel of
a small square that takes a window of half-width ``s`` (the far end from a corner pixel), i.e. an RF of
``2 s + 1``. Below that, corner windows of small squares are identical to corner windows of large squares in
the noise-free image, so no model can label them better than the class prior
(``tests/data/test_synthetic.py`` checks both directions on generated samples). For discs of diameter ``d``
the same argument with chords gives at most ``2 d + 1``.

That is a class's need; pixels differ. :meth:`SyntheticTask.need_map` gives each pixel of a ``scale`` or
``multiscale`` sample of squares its own need (see :func:`need_block`): the centre of a small square needs far
less than its corners, and a pixel of the largest class only a run longer than the next size.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch
from torch.utils.data import Dataset

from atrous.errors import SpecError

SPLITS = {"train": 0, "val": 1, "test": 2}
CACHE_BYTES = 256 * 2**20  # a split at most this large is rendered once and kept (64 x 64: ~12,000 samples)
# Rendered splits, shared by every instance with the same parameters in this process (the lab trains several
# models on each task and seed in one worker: each drew the same 320 images again, ~0.2 s a run), the least
# recently used dropped first beyond CACHE_BYTES in all. The items are shared tensors: callers must not change
# them in place (none does: batches are stacked copies).
_RENDERED: OrderedDict[str, tuple[int, dict[int, tuple[torch.Tensor, torch.Tensor]]]] = OrderedDict()


def _rendered(key: str, nbytes: int) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """The shared item store of the split ``key`` (of ``nbytes`` when whole)."""
    if key in _RENDERED:
        _RENDERED.move_to_end(key)
        return _RENDERED[key][1]
    while _RENDERED and sum(size for size, _ in _RENDERED.values()) + nbytes > CACHE_BYTES:
        _RENDERED.popitem(last=False)  # an instance that holds the dropped store keeps it
    _RENDERED[key] = (nbytes, {})
    return _RENDERED[key][1]


@dataclass
class Obj:
    kind: str  # "square", "disc", "ellipse"
    cy: float
    cx: float
    extent: int  # side or diameter in pixels
    label: int
    aspect: float = 1.0
    angle: float = 0.0

    def box(self) -> tuple[int, int, int, int]:
        """(y0, x0, y1, x1), half-open, of the pixels the object may cover."""
        half = self.extent / 2
        return (
            int(np.floor(self.cy - half)),
            int(np.floor(self.cx - half)),
            int(np.ceil(self.cy + half)),
            int(np.ceil(self.cx + half)),
        )


def render(objs: list[Obj], size: tuple[int, int]) -> np.ndarray:
    """Label map (H, W) int64: 0 background, else the object's label (later objects on top)."""
    mask = np.zeros(size, dtype=np.int64)
    for o in objs:
        if o.kind == "square":
            y0, x0 = int(round(o.cy - o.extent / 2)), int(round(o.cx - o.extent / 2))
            mask[y0 : y0 + o.extent, x0 : x0 + o.extent] = o.label
            continue
        y0, x0, y1, x1 = o.box()
        y0, x0, y1, x1 = max(y0, 0), max(x0, 0), min(y1, size[0]), min(x1, size[1])
        yy, xx = np.mgrid[y0:y1, x0:x1]
        dy, dx = yy + 0.5 - o.cy, xx + 0.5 - o.cx
        r = o.extent / 2
        if o.kind == "disc":
            inside = dy * dy + dx * dx <= r * r
        else:  # ellipse: semi-axes r and r * aspect, rotated
            c, s = np.cos(o.angle), np.sin(o.angle)
            u, v = c * dx + s * dy, -s * dx + c * dy
            inside = (u / r) ** 2 + (v / (r * o.aspect)) ** 2 <= 1
        mask[y0:y1, x0:x1][inside] = o.label
    return mask


def place(rng: np.random.Generator, extents: list[int], size: tuple[int, int], gap: int, tries: int = 60):
    """Top-left-free positions for objects of the given extents, largest first, at least ``gap`` background
    pixels apart and from the border. Objects that do not fit after ``tries`` attempts are dropped."""
    placed: list[tuple[int, int, int]] = []  # (y0, x0, extent)
    for e in sorted(extents, reverse=True):
        hi_y, hi_x = size[0] - e - gap, size[1] - e - gap
        if hi_y < gap or hi_x < gap:
            continue
        # All candidate positions at once; keep the first that clears every placed object by `gap`.
        ys = rng.integers(gap, hi_y + 1, size=tries)
        xs = rng.integers(gap, hi_x + 1, size=tries)
        ok = np.ones(tries, dtype=bool)
        for py, px, pe in placed:
            ok &= (ys + e + gap <= py) | (py + pe + gap <= ys) | (xs + e + gap <= px) | (px + pe + gap <= xs)
        first = np.flatnonzero(ok)
        if first.size:
            placed.append((int(ys[first[0]]), int(xs[first[0]]), e))
    return placed


@dataclass
class SyntheticTask(Dataset):
    """Base: ``n`` samples of ``size`` x ``size``; subclasses draw the objects of one sample."""

    n: int = 1000
    size: int = 64
    snr: float = 3.0
    seed: int = 0
    split: str = "train"
    channels: int = 3
    name: ClassVar[str] = ""
    class_names: list[str] = field(default_factory=list, init=False)
    ignore_index: ClassVar[int] = 255
    # Samples are pure functions of their index and never augmented, so a small task renders each once: the lab
    # trains 20-30 epochs over the same 256 images, and drawing them took ~40 % of a small model's step.
    _items: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise SpecError(f"split {self.split!r} is not one of {', '.join(SPLITS)}")
        if self.n < 1 or self.size < 8:
            raise SpecError(f"{self.name}: need n >= 1 and size >= 8, got n={self.n}, size={self.size}")
        self.class_names = self.make_class_names()
        self.validate()
        if self.cached:  # the key: the class and every parameter (the dataclass's repr leaves the items out)
            self._items = _rendered(
                f"{type(self).__module__}.{type(self).__qualname__}:{self!r}", self.nbytes
            )

    # -- to override ---------------------------------------------------------------------------------------
    def make_class_names(self) -> list[str]:
        raise NotImplementedError

    def validate(self) -> None:
        """Raise SpecError for parameters that cannot make a sample."""

    def objects(self, rng: np.random.Generator) -> list[Obj]:
        raise NotImplementedError

    # -- the dataset -----------------------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def in_channels(self) -> int:
        return self.channels

    def __len__(self) -> int:
        return self.n

    def rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, SPLITS[self.split], index])

    def sample(self, index: int) -> tuple[np.ndarray, np.ndarray, list[Obj]]:
        """(clean image without noise (H, W), label map, objects) of sample ``index``."""
        if not 0 <= index < self.n:
            raise IndexError(f"sample {index} out of range for {self.n} samples")
        rng = self.rng(index)
        objs = self.objects(rng)
        mask = render(objs, (self.size, self.size))
        return (mask > 0).astype(np.float32) * self.snr, mask, objs

    def need_map(self, index: int) -> np.ndarray:
        """Per-pixel needed RF of sample ``index`` (int64, H x W); only tasks of size classes have one."""
        raise SpecError(
            f"{self.name}: no per-pixel needed RF; only the scale and multiscale tasks (of squares) have size "
            "classes"
        )

    @property
    def cached(self) -> bool:
        """Whether items are kept in memory: while the whole split (images and masks) fits in CACHE_BYTES."""
        return self.nbytes <= CACHE_BYTES

    @property
    def nbytes(self) -> int:
        """The whole split in memory: float32 images, int64 masks."""
        return self.n * self.size * self.size * (4 * self.channels + 8)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if index in self._items:
            return self._items[index]
        item = self.render_item(index)
        if self.cached:
            self._items[index] = item
        return item

    def render_item(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        clean, mask, _ = self.sample(index)
        # Noise has its own stream, also a pure function of (seed, split, index).
        noise = np.random.default_rng([self.seed, SPLITS[self.split], index, 1]).standard_normal(
            (self.channels, self.size, self.size), dtype=np.float32
        )
        return torch.from_numpy(noise + clean), torch.from_numpy(mask)

    # -- generation on the device ------------------------------------------------------------------------------
    # At 512 x 512 drawing the Gaussian noise on the CPU (and moving it between processes) caps a DataLoader at a
    # few hundred images per second, below what one GPU trains. The objects and masks are cheap, so the CPU
    # makes those (as uint8) and the device draws the noise and composes the images. The noise then comes from
    # the device's generator, seeded per sample from (seed, split, index): a pure function of the sample on a
    # given device type, with the same distribution as, but not bit-equal to, the CPU path's numpy noise.

    def mask_item(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(index, uint8 mask) of sample ``index``: what the CPU side of on-device generation makes."""
        _, mask, _ = self.sample(index)
        return torch.tensor(index), torch.from_numpy(mask.astype(np.uint8))

    def noise_seed(self, index: int) -> int:
        state = np.random.SeedSequence([self.seed, SPLITS[self.split], index, 1]).generate_state(2, np.uint32)
        return (int(state[0]) << 31) ^ int(state[1])

    def compose(self, indices: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (N, C, H, W) and int64 masks on ``masks.device`` from ``mask_item``'s (index, mask) batches."""
        device = masks.device
        gen = torch.Generator(device)
        noise = torch.empty(len(masks), self.channels, *masks.shape[1:], device=device)
        for row, index in zip(noise, indices.tolist()):
            gen.manual_seed(self.noise_seed(index))
            row.normal_(generator=gen)
        images = noise.add_((masks > 0).unsqueeze(1).to(noise.dtype), alpha=self.snr)
        return images, masks.long()


class MaskItems(Dataset):
    """A synthetic task seen through ``mask_item``: the CPU half of on-device generation."""

    def __init__(self, task: SyntheticTask) -> None:
        self.task = task

    def __len__(self) -> int:
        return len(self.task)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.task.mask_item(index)


@dataclass
class Shapes(SyntheticTask):
    """Binary: bright discs (and optionally squares / ellipses) on a noisy background."""

    name: ClassVar[str] = "shapes"
    kinds: tuple[str, ...] = ("disc",)
    min_extent: int | None = None  # default size // 6: diameters 10-30 px at 64 x 64, the seed's circles
    max_extent: int | None = None  # default size * 15 // 32
    max_objects: int = 3

    def make_class_names(self) -> list[str]:
        return ["background", "object"]

    def validate(self) -> None:
        if isinstance(self.kinds, str):
            self.kinds = (self.kinds,)
        self.min_extent = self.min_extent if self.min_extent is not None else max(2, self.size // 6)
        self.max_extent = (
            self.max_extent if self.max_extent is not None else max(self.min_extent, self.size * 15 // 32)
        )
        bad = [k for k in self.kinds if k not in ("disc", "square", "ellipse")]
        if bad:
            raise SpecError(f"shapes: unknown kind {bad[0]!r}; use disc, square or ellipse")
        if not 2 <= self.min_extent <= self.max_extent < self.size:
            raise SpecError(
                f"shapes: need 2 <= min_extent <= max_extent < size, got {self.min_extent}, "
                f"{self.max_extent}, size {self.size}"
            )

    def objects(self, rng: np.random.Generator) -> list[Obj]:
        count = int(rng.integers(1, self.max_objects + 1))
        objs = []
        for _ in range(count):
            e = int(rng.integers(self.min_extent, self.max_extent + 1))
            c = rng.uniform(e / 2, self.size - e / 2, size=2)
            kind = self.kinds[int(rng.integers(len(self.kinds)))]
            objs.append(Obj(kind, c[0], c[1], e, 1, rng.uniform(0.5, 1.0), rng.uniform(0, np.pi)))
        return objs


@dataclass
class Scale(SyntheticTask):
    """Two object sizes, same intensity and texture; label = size class (1 small, 2 large)."""

    name: ClassVar[str] = "scale"
    small: int = 8
    large: int = 24
    shape: str = "square"
    min_objects: int = 3
    max_objects: int = 6
    gap: int = 2

    def make_class_names(self) -> list[str]:
        return ["background", f"small ({self.small}px)", f"large ({self.large}px)"]

    def validate(self) -> None:
        if self.shape not in ("square", "disc"):
            raise SpecError(f"scale: shape must be square or disc, got {self.shape!r}")
        if not 1 <= self.small < self.large:
            raise SpecError(f"scale: need 1 <= small < large, got small={self.small}, large={self.large}")
        if self.large + 2 * self.gap > self.size:
            raise SpecError(f"scale: large={self.large} does not fit in size={self.size} with gap {self.gap}")

    @property
    def needed_rf(self) -> int:
        """RF (per axis) that separates every pixel of a small object from large ones: ``2 * small + 1``."""
        return needed_rf(self.small)

    @property
    def extents(self) -> list[int]:
        """Sides of the size classes, label order (as ``MultiScale.extents``)."""
        return [self.small, self.large]

    def need_map(self, index: int) -> np.ndarray:
        return square_need_map(self, index, self.extents)

    def objects(self, rng: np.random.Generator) -> list[Obj]:
        return size_class_objects(self, rng, [self.small, self.large])


def size_class_objects(task: Scale | MultiScale, rng: np.random.Generator, extents: list[int]) -> list[Obj]:
    """Objects of randomly chosen size classes, placed apart; label k + 1 for ``extents[k]``."""
    count = int(rng.integers(task.min_objects, task.max_objects + 1))
    chosen = [extents[int(c)] for c in rng.integers(0, len(extents), size=count)]
    placed = place(rng, chosen, (task.size, task.size), task.gap)
    return [Obj(task.shape, y + e / 2, x + e / 2, e, extents.index(e) + 1) for y, x, e in placed]


def needed_rf(small: int) -> int:
    return 2 * small + 1


def need_block(e: int, smaller: int | None, has_larger: bool) -> np.ndarray:
    """Needed RF (int64, e x e) of each pixel of a square of side ``e``: the smallest odd ``2 h + 1`` whose
    centred noise-free window tells the square, in isolation, from one of every other size class.
    ``smaller``: the largest class side below ``e`` (None: none); ``has_larger``: whether some class is larger.

    With half-width ``h``, a pixel at offset ``k`` along an axis sees ``v = min(e-1, k+h) - max(0, k-h) + 1``
    of the square's extent along it. A smaller square cannot show a run longer than its side, so the window
    rules out every smaller class once ``max(v_y, v_x) > smaller``; anything shorter along both axes a smaller
    square can reproduce. A larger square differs only where its end lies beyond ours, so the window rules
    out every larger class once it shows both ends along some axis: ``h >= max(k + 1, e - k)``. At ``h = e``
    both hold for every pixel, so the need is at most ``2 e + 1`` (reached at the corners when a larger class
    exists: ``needed_rf``)."""
    h = np.arange(e + 1)[:, None]  # (h, k): candidate half-widths by offset along one axis
    k = np.arange(e)[None, :]
    if smaller is None:
        beats_smaller = np.ones((e + 1, e, e), dtype=bool)
    else:
        longer = (np.minimum(e - 1, k + h) - np.maximum(0, k - h) + 1) > smaller  # (h, k)
        beats_smaller = longer[:, :, None] | longer[:, None, :]  # (h, ky, kx): along either axis
    if has_larger:
        both_ends = h >= np.maximum(k + 1, e - k)  # (h, k)
        beats_larger = both_ends[:, :, None] | both_ends[:, None, :]
    else:
        beats_larger = np.ones((e + 1, e, e), dtype=bool)
    # First half-width at which both hold; the conditions only grow with h, and h = e satisfies them.
    return 2 * np.argmax(beats_smaller & beats_larger, axis=0).astype(np.int64) + 1


def square_need_map(task: Scale | MultiScale, index: int, extents: list[int]) -> np.ndarray:
    """Per-pixel needed RF of sample ``index`` of a task of size classes ``extents``: background 1 (intensity
    alone decides), each square's pixels their :func:`need_block`."""
    if task.shape != "square":
        raise SpecError(
            f"{task.name}: per-pixel needs are derived for squares only, got shape={task.shape!r}; use "
            "shape=square"
        )
    _, _, objs = task.sample(index)
    blocks = class_need_blocks(extents)
    out = np.ones((task.size, task.size), dtype=np.int64)
    for o in objs:
        e = o.extent
        y0, x0 = int(round(o.cy - e / 2)), int(round(o.cx - e / 2))  # as render() places a square
        out[y0 : y0 + e, x0 : x0 + e] = blocks[e]
    return out


def class_need_blocks(extents: list[int]) -> dict[int, np.ndarray]:
    """:func:`need_block` of each size class's side, among the classes ``extents``."""
    sides = sorted(set(extents))
    blocks = {}
    for e in sides:
        below = [s for s in sides if s < e]
        blocks[e] = need_block(e, below[-1] if below else None, e < sides[-1])
    return blocks


@dataclass
class MultiScale(SyntheticTask):
    """Objects of ``classes`` sizes spread geometrically from ``min_extent`` to ``max_extent``; label = size class."""

    name: ClassVar[str] = "multiscale"
    size: int = 96
    min_extent: int = 4
    max_extent: int = 48
    classes: int = 3
    shape: str = "square"
    min_objects: int = 4
    max_objects: int = 8
    gap: int = 2

    @property
    def extents(self) -> list[int]:
        k, lo, hi = self.classes, self.min_extent, self.max_extent
        return [int(round(lo * (hi / lo) ** (i / (k - 1)))) for i in range(k)]

    def make_class_names(self) -> list[str]:
        return ["background", *[f"{e}px" for e in self.extents]]

    def validate(self) -> None:
        if self.classes < 2 or not 1 <= self.min_extent < self.max_extent:
            raise SpecError("multiscale: need classes >= 2 and 1 <= min_extent < max_extent")
        if self.max_extent + 2 * self.gap > self.size:
            raise SpecError(f"multiscale: max_extent={self.max_extent} does not fit in size={self.size}")
        if self.shape not in ("square", "disc"):
            raise SpecError(f"multiscale: shape must be square or disc, got {self.shape!r}")

    def objects(self, rng: np.random.Generator) -> list[Obj]:
        return size_class_objects(self, rng, self.extents)

    def need_map(self, index: int) -> np.ndarray:
        return square_need_map(self, index, self.extents)


TASKS: dict[str, type[SyntheticTask]] = {"shapes": Shapes, "scale": Scale, "multiscale": MultiScale}
