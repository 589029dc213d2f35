"""Prediction on images of any size: ``atrous.predict`` and ``atrous predict``.

Memory is bounded by the tiles in flight, not by the image: each tile's input is read on its own (TIFF and
BigTIFF lazily, from the segments it touches; ``.npy`` memory-mapped; PNG and JPEG have no random access and are
decoded whole), tiles are cut by :mod:`atrous.train.tiling` (exact by default; the kept cores form a regular
grid), and each core of the class mask is written as it comes, as one tile of a tiled, compressed TIFF (a
palette PNG for small images). Nothing of a row of tiles is held, except where the format forces it: compressed
strips span the width, and cores that are not a multiple of 16 px are re-cut through bands of rows. The overlay
is a downscaled preview.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from atrous.data.files import load_image, voc_palette
from atrous.data.preview import overlay, to_rgb
from atrous.data.transforms import normalize
from atrous.errors import AtrousError
from atrous.train.tiling import TilePlan, Window, iter_tiles, plan_tiles

PNG_LIMIT = 4096 * 4096  # masks above this many pixels are written as tiled TIFF
PREVIEW_SIDE = 2048  # the overlay's longer side, at most
TIFF_TILE = 256
GEO_TAGS = (33550, 33922, 34264, 34735, 34736, 34737)  # pixel scale, tie points, transform, GeoKeys, params
TIFF_SUFFIXES = (".tif", ".tiff")


class PredictError(AtrousError):
    """An image, an output path or an option predict cannot use."""


# -- sources: the image, one region at a time ----------------------------------------------------------------


@dataclass
class Source:
    """A (C, H, W) model input read by regions: ``region(y0, y1, x0, x1)`` is the prepared float
    (C, y1 - y0, x1 - x0)."""

    name: str
    height: int
    width: int
    channels: int
    read: Callable[[int, int, int, int], torch.Tensor]
    geo_tags: list[tuple] = field(default_factory=list)
    lazy: bool = True
    tiff: bool = False
    # fill(y0, y1, x0, x1, out): the region written into ``out`` (C, h, w) float, in one pass (no temporaries)
    fill: Callable[[int, int, int, int, torch.Tensor], None] | None = None
    prepared_channels: int | None = None  # C of the prepared input (what ``fill`` writes)

    def fill_region(self, y0: int, y1: int, x0: int, x1: int, out: torch.Tensor) -> None:
        assert self.fill is not None
        self._reading(self.fill, y0, y1, x0, x1, out)

    def region(self, y0: int, y1: int, x0: int, x1: int) -> torch.Tensor:
        return self._reading(self.read, y0, y1, x0, x1)

    def _reading(self, how: Callable, y0: int, y1: int, x0: int, x1: int, *out: torch.Tensor) -> Any:
        """``how(y0, y1, x0, x1, *out)``, a failed read named in one line (our own errors pass unchanged)."""
        try:
            return how(y0, y1, x0, x1, *out)
        except AtrousError:
            raise
        except Exception as exc:
            raise PredictError(
                f"cannot read rows {y0}-{y1}, columns {x0}-{x1} of {self.name}: {exc} "
                "(is the file truncated or corrupt?)"
            ) from None


def _adapted(channels: int, in_channels: int) -> bool:
    """Images an RGB model takes anyway: grey (replicated to RGB) and RGBA (alpha dropped)."""
    return in_channels == 3 and channels in (1, 4)


def _channel_error(name: str, channels: int, in_channels: int) -> PredictError:
    return PredictError(
        f"{name} has {channels} channels; the model takes {in_channels} (convert the image, or use a model "
        f"trained on {channels}-channel input)"
    )


def _channels(a: np.ndarray, in_channels: int, name: str) -> np.ndarray:
    """(h, w[, S]) pixels -> (h, w, C): grey replicated and alpha dropped for an RGB model (views if it can)."""
    a = a if a.ndim == 3 else a[:, :, None]
    if a.shape[2] == in_channels:
        return a
    if not _adapted(a.shape[2], in_channels):
        raise _channel_error(name, a.shape[2], in_channels)
    return np.broadcast_to(a, (*a.shape[:2], 3)) if a.shape[2] == 1 else a[:, :, :3]


def _prepare_into(
    pixels: np.ndarray, normalization: str | None, in_channels: int, name: str, out: torch.Tensor
) -> None:
    """(h, w[, S]) pixels -> ``out`` (C, h, w) float the way training prepared images: integers scaled to
    [0, 1] by their type's maximum, grey replicated and alpha dropped for an RGB model, ImageNet normalisation
    if the checkpoint says so; floats taken as they are. One strided pass from the pixels into ``out``."""
    a = _channels(pixels, in_channels, name)
    if not a.flags.writeable:  # torch wants writeable memory (a memmap or a broadcast view is not)
        a = np.array(a)
    x = torch.from_numpy(a).permute(2, 0, 1)
    if np.issubdtype(a.dtype, np.integer):
        torch.div(x, float(np.iinfo(a.dtype).max), out=out)
        if normalization == "imagenet":
            out.copy_(normalize(out))
    else:
        out.copy_(x)


def _prepare(pixels: np.ndarray, normalization: str | None, in_channels: int, name: str) -> torch.Tensor:
    a = _channels(pixels, in_channels, name)
    out = torch.empty(a.shape[2], a.shape[0], a.shape[1])
    _prepare_into(a, normalization, in_channels, name, out)
    return out


def array_source(
    array: Any, normalization: str | None = None, in_channels: int = 3, name: str = "the image"
) -> Source:
    """A source over an (H, W[, C]) pixel array, in memory or lazy (numpy memmap, zarr, dask, anything that
    slices rows); a (C, H, W) ``torch.Tensor`` is taken as the model's input as it is."""
    if isinstance(array, torch.Tensor):
        if array.dim() != 3:
            raise PredictError(f"a tensor image must be (C, H, W), got shape {tuple(array.shape)}")
        t = array
        return Source(
            name,
            t.shape[1],
            t.shape[2],
            t.shape[0],
            lambda y0, y1, x0, x1: t[:, y0:y1, x0:x1].float(),
            lazy=False,
        )
    shape = tuple(array.shape)
    if len(shape) not in (2, 3):
        raise PredictError(f"{name} has shape {shape}: give an (H, W) or (H, W, C) array")
    h, w = shape[:2]
    channels = shape[2] if len(shape) == 3 else 1

    def read(y0: int, y1: int, x0: int, x1: int) -> torch.Tensor:
        return _prepare(np.asarray(array[y0:y1, x0:x1]), normalization, in_channels, name)

    def fill(y0: int, y1: int, x0: int, x1: int, out: torch.Tensor) -> None:
        _prepare_into(np.asarray(array[y0:y1, x0:x1]), normalization, in_channels, name, out)

    prepared = in_channels if _adapted(channels, in_channels) else channels
    return Source(name, h, w, channels, read, fill=fill, prepared_channels=prepared)


def _npy_source(path: Path) -> Source:
    """A ``.npy`` array (C, H, W), memory-mapped and passed as it is (synthetic tasks are arrays)."""
    try:
        a = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as exc:
        raise PredictError(f"cannot read {path} as a .npy array: {exc}") from None
    if a.ndim != 3:
        raise PredictError(f"{path} has shape {a.shape}; a .npy image must be (C, H, W)")
    return Source(
        str(path),
        a.shape[1],
        a.shape[2],
        a.shape[0],
        lambda y0, y1, x0, x1: torch.from_numpy(np.array(a[:, y0:y1, x0:x1])).float(),
    )


class TiffReader:
    """Regions of a TIFF page, decoded from the tiles or strips they touch (no zarr needed).

    Memory follows the request, not the image: decoded segments stay only while a later request in row-major
    order can use them (those below the request's top and not left of its first column), so a tiled TIFF
    holds about one tile's segments whatever its width. Segments a tile row shares with the next (the margin)
    are decoded again rather than held for the whole width. Uncompressed strips are read row by row, only the
    requested columns. Compressed strips span the width: those a request touches are decoded and held until it
    moves below them (one tile row of the input: the format allows no less short of decoding strips again
    for every tile)."""

    def __init__(self, path: Path) -> None:
        import tifffile

        self.path = path
        try:
            self.tif = tifffile.TiffFile(path)
            series = self.tif.series[0]
            self.page = series.levels[0].pages[0] if series.levels else self.tif.pages.first
        except Exception as exc:
            raise PredictError(f"cannot read {path} as TIFF: {exc} (is it truncated or corrupt?)") from None
        page = self.page
        self.shape = tuple(page.shape)
        self.dtype = page.dtype
        if len(series.shape) > len(
            page.shape
        ):  # pages stacked into one series: reading one would drop the rest
            raise PredictError(
                f"{path} holds {math.prod(series.shape[: len(series.shape) - len(page.shape)])} images of "
                f"{page.shape[0]}x{page.shape[1]} (a multi-page TIFF, series shape {tuple(series.shape)}); "
                "predict reads one image per file: save each page to its own file"
            )
        if (page.planarconfig != 1 and page.samplesperpixel > 1) or page.imagedepth > 1:
            raise PredictError(
                f"{path}: planar (one plane per channel) or volumetric TIFF is not supported; save it with "
                "interleaved channels (tifffile: planarconfig='contig')"
            )
        self.samples = page.samplesperpixel
        self.seg_h = page.tilelength if page.is_tiled else page.rowsperstrip or page.imagelength
        self.seg_w = page.tilewidth if page.is_tiled else page.imagewidth
        self.n_x = -(-page.imagewidth // self.seg_w)
        # Uncompressed strips of whole bytes: rows are at known offsets, read the requested columns only.
        self.raw = (
            not page.is_tiled
            and page.compression == 1
            and page.fillorder == 1
            and page.bitspersample == 8 * self.dtype.itemsize
            and all(page.databytecounts)
        )
        self._cache: dict[tuple[int, int], np.ndarray] = {}
        self.geo_tags = [
            (t.code, int(t.dtype), t.count, t.value, True) for t in page.tags.values() if t.code in GEO_TAGS
        ]

    def _read(self, offset: int, count: int, what: str) -> bytes:
        fh = self.tif.filehandle
        fh.seek(offset)
        data = fh.read(count)
        if len(data) < count:
            raise PredictError(f"{self.path} is truncated: {what} ends past the end of the file")
        return data

    def _segment(self, iy: int, ix: int) -> np.ndarray:
        """Segment (tile or strip) ``(iy, ix)``, (rows, cols, samples), decoded once while requests need it."""
        key = (iy, ix)
        if key in self._cache:
            return self._cache[key]
        page = self.page
        index = iy * self.n_x + ix
        if page.databytecounts[index] == 0:  # a sparse tile: zeros
            seg = np.zeros((self.seg_h, self.seg_w, self.samples), self.dtype)
        else:
            data = self._read(page.dataoffsets[index], page.databytecounts[index], f"segment {index}")
            try:
                seg, _, _ = page.decode(data, index)
            except Exception as exc:
                raise PredictError(f"cannot decode segment {index} of {self.path}: {exc}") from None
            seg = seg.reshape(seg.shape[-3:])
        self._cache[key] = seg
        return seg

    def _raw_rows(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        page, s = self.page, self.samples
        item = self.dtype.itemsize
        stored = self.dtype.newbyteorder(self.tif.byteorder)
        out = np.empty((y1 - y0, x1 - x0, s), self.dtype)
        row_bytes, count = page.imagewidth * s * item, (x1 - x0) * s * item
        for y in range(y0, y1):
            strip = y // self.seg_h
            offset = page.dataoffsets[strip] + (y - strip * self.seg_h) * row_bytes + x0 * s * item
            data = self._read(offset, count, f"strip {strip}")
            out[y - y0] = np.frombuffer(data, stored).reshape(x1 - x0, s)
        return out

    def __getitem__(self, key: slice | tuple[slice, slice]) -> np.ndarray:
        rows, cols = key if isinstance(key, tuple) else (key, slice(None))
        y0, y1, _ = rows.indices(self.page.imagelength)
        x0, x1, _ = cols.indices(self.page.imagewidth)
        if self.raw:
            out = self._raw_rows(y0, y1, x0, x1)
        else:
            # Requests come in row-major order of tiles: segments above this one's top, or left of its first
            # column, are not needed again until the next tile row (which decodes them again if it must).
            top, left = y0 // self.seg_h, x0 // self.seg_w
            self._cache = {k: v for k, v in self._cache.items() if k[0] >= top and k[1] >= left}
            out = np.empty((y1 - y0, x1 - x0, self.samples), self.dtype)
            for iy in range(top, (y1 - 1) // self.seg_h + 1):
                for ix in range(left, (x1 - 1) // self.seg_w + 1):
                    seg = self._segment(iy, ix)
                    sy, sx = iy * self.seg_h, ix * self.seg_w
                    a0, a1 = max(y0, sy), min(y1, sy + seg.shape[0])
                    b0, b1 = max(x0, sx), min(x1, sx + seg.shape[1])
                    out[a0 - y0 : a1 - y0, b0 - x0 : b1 - x0] = seg[a0 - sy : a1 - sy, b0 - sx : b1 - sx]
        return out if len(self.shape) == 3 else out[:, :, 0]

    def held_bytes(self) -> int:
        """Bytes of decoded segments held now (what tests bound)."""
        return sum(v.nbytes for v in self._cache.values())


def _tiff_source(path: Path, normalization: str | None, in_channels: int) -> Source:
    rows = TiffReader(path)
    source = array_source(rows, normalization, in_channels, str(path))
    source.geo_tags, source.tiff = rows.geo_tags, True
    return source


def open_source(image: Any, meta: dict[str, Any] | None = None, in_channels: int = 3) -> Source:
    """A source for a path (TIFF lazily, ``.npy`` memory-mapped, PNG/JPEG decoded whole), an array (H, W[, C])
    or lazy array of pixels, or a (C, H, W) tensor taken as the model's input."""
    normalization = (meta or {}).get("normalization")
    if isinstance(image, (str, Path)):
        path = Path(image)
        if not path.is_file():
            raise PredictError(f"input {path} does not exist")
        if path.suffix == ".npy":
            return _npy_source(path)
        if path.suffix.lower() in TIFF_SUFFIXES:
            return _tiff_source(path, normalization, in_channels)
        pixels = load_image(path)  # PNG, JPEG, BMP: no random access, decoded whole
        source = array_source(pixels, normalization, in_channels, str(path))
        source.lazy = False
        return source
    return array_source(image, normalization, in_channels)


# -- the prediction stream --------------------------------------------------------------------------------------


def _classes(logits: torch.Tensor) -> np.ndarray:
    """Class indices (uint8) of (K, h, w) logits: argmax, or logit > 0 for a single-logit binary model."""
    if logits.shape[0] == 1:
        return (logits[0] > 0).view(torch.uint8).numpy()
    # argmax over the leading (strided) axis is slow on the CPU; K passes over contiguous planes are not.
    # Strictly greater keeps the first of tied classes, as argmax does.
    pred = (logits[1] > logits[0]).view(torch.uint8)  # bool and uint8 share a layout: no copy
    if logits.shape[0] > 2:
        best = torch.maximum(logits[0], logits[1])
        for k in range(2, logits.shape[0]):
            pred.masked_fill_(logits[k] > best, k)
            torch.maximum(best, logits[k], out=best)
    return pred.numpy()


def _probabilities(logits: torch.Tensor) -> np.ndarray:
    p = torch.sigmoid(logits) if logits.shape[0] == 1 else torch.softmax(logits, 0)
    return p.permute(1, 2, 0).to(torch.float16).numpy()


@dataclass
class Piece:
    """One tile's kept core: rows ``[y0, y1)``, columns ``[x0, x1)`` of the mask (and probabilities)."""

    y0: int
    y1: int
    x0: int
    x1: int
    mask: np.ndarray  # (h, w) uint8
    probs: np.ndarray | None  # (h, w, K) float16


def pieces(
    model: nn.Module,
    source: Source,
    plan: TilePlan,
    batch: int = 4,
    probabilities: bool = False,
    on_tile: Callable[[int, int], None] | None = None,
    on_window: Callable[[Window, Window, torch.Tensor], None] | None = None,
) -> Iterator[Piece]:
    """The mask, one tile's core at a time in row-major order; each core's logits become classes (and
    probabilities) at once, so nothing of a row is held."""
    if source.channels != model.in_channels and not _adapted(source.channels, model.in_channels):
        raise _channel_error(source.name, source.channels, model.in_channels)

    def keep(core: torch.Tensor) -> tuple[np.ndarray, np.ndarray | None]:
        return _classes(core), _probabilities(core) if probabilities else None

    size = (source.height, source.width)
    fill = (
        (source.prepared_channels, source.fill_region) if source.fill and source.prepared_channels else None
    )
    for rw, cw, (classes, p) in iter_tiles(
        model, source.region, size, plan, batch, on_tile, on_window, keep, fill
    ):
        yield Piece(rw.core_start, rw.core_stop, cw.core_start, cw.core_stop, classes, p)


def _rows(stream: Iterator[np.ndarray | None], plan: TilePlan, size: tuple[int, int]) -> Iterator[np.ndarray]:
    """Pieces' arrays (row-major, as :func:`pieces` yields them) -> bands of whole rows: for writers whose
    tiles do not line up with the cores (the band holds one row of cores: it grows with the image's width)."""
    rows, cols = plan.windows(*size)
    for _ in rows:
        parts = [next(stream) for _ in cols]
        yield np.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]


def sample_discrepancy(model: nn.Module, source: Source, plan: TilePlan) -> str:
    """For approximate tiles: the centre tile's kept logits against a reference with more context (the whole
    image when it holds at most 4 Mpx, else the tile's core with four times the margin), as one line."""
    h, w = source.height, source.width
    rows, cols = plan.windows(h, w)
    rw, cw = rows[len(rows) // 2], cols[len(cols) // 2]
    device = next(model.parameters()).device
    with torch.no_grad():
        tile = model(source.region(rw.start, rw.stop, cw.start, cw.stop)[None].to(device))[0]
        got = tile[
            :,
            rw.core_start - rw.start : rw.core_stop - rw.start,
            cw.core_start - cw.start : cw.core_stop - cw.start,
        ]
        if h * w <= 4 * 1024 * 1024:
            ref_win = (Window(0, h, 0, h), Window(0, w, 0, w))
            what = "whole-image inference"
        else:
            m = 4 * max(max(plan.margin[0]), max(plan.margin[1]))
            p0, p1 = plan.period
            ref_win = (
                Window(max(0, (rw.core_start - m) // p0 * p0), min(h, rw.core_stop + m), 0, 0),
                Window(max(0, (cw.core_start - m) // p1 * p1), min(w, cw.core_stop + m), 0, 0),
            )
            what = f"the same tile with a {m}-pixel margin"
        a, b = ref_win
        ref = model(source.region(a.start, a.stop, b.start, b.stop)[None].to(device))[0]
        ref = ref[
            :,
            rw.core_start - a.start : rw.core_stop - a.start,
            cw.core_start - b.start : cw.core_stop - b.start,
        ]
    diff = (got - ref).abs().max().item()
    flips = float(
        (torch.from_numpy(_classes(got.cpu())) != torch.from_numpy(_classes(ref.cpu()))).float().mean()
    )
    return (
        f"approximate tiles: on the centre tile (rows {rw.core_start}-{rw.core_stop}, cols "
        f"{cw.core_start}-{cw.core_stop}) logits differ from {what} by up to {diff:.3g}; "
        f"{100 * flips:.3f}% of its pixels change class"
    )


# -- writers ----------------------------------------------------------------------------------------------------


def _tiff_tiles(stream: Iterator[np.ndarray], width: int, tile: int = TIFF_TILE) -> Iterator[np.ndarray]:
    """Bands of rows (any heights) -> the TIFF's tiles in row-major order (tifffile pads the edge ones)."""
    pending: list[np.ndarray] = []
    held = 0
    for band in stream:
        pending.append(band)
        held += band.shape[0]
        while held >= tile:
            rows = np.concatenate(pending, axis=0)
            top, rest = rows[:tile], rows[tile:]
            for x in range(0, width, tile):
                yield top[:, x : x + tile]
            pending, held = ([rest] if rest.shape[0] else []), rest.shape[0]
    if held:
        rows = np.concatenate(pending, axis=0)
        for x in range(0, width, tile):
            yield rows[:, x : x + tile]


def tiff_layout(plan: TilePlan, size: tuple[int, int]) -> tuple[int, int] | None:
    """The TIFF tile (H, W) that is exactly one core, when the plan allows it (cores a multiple of 16 pixels,
    as TIFF tiles must be): then each core is written as it comes, and nothing of a row is held. None: the
    cores are re-cut into 256-pixel TIFF tiles through bands of rows."""
    if plan.core is None:
        return None
    layout = []
    for n, t, c in zip(size, plan.tile, plan.core):
        if n <= t:  # one core spans this axis: one TIFF tile, padded
            layout.append(-(-n // 16) * 16)
        elif c % 16:
            return None
        else:
            layout.append(c)
    return layout[0], layout[1]


def _tiff_chunks(
    stream: Iterator[np.ndarray], plan: TilePlan, size: tuple[int, int]
) -> tuple[Iterator[np.ndarray], tuple[int, int]]:
    """Pieces' arrays in row-major order -> the TIFF's tiles in row-major order, and the TIFF's tile shape."""
    layout = tiff_layout(plan, size)
    if layout is not None:
        return stream, layout
    return _tiff_tiles(_rows(stream, plan, size), size[1]), (TIFF_TILE, TIFF_TILE)


def _boxes(plan: TilePlan, size: tuple[int, int]) -> Iterator[tuple[int, int, int, int]]:
    """The cores' (y0, y1, x0, x1), in the order :func:`pieces` yields them."""
    rows, cols = plan.windows(*size)
    for rw in rows:
        for cw in cols:
            yield rw.core_start, rw.core_stop, cw.core_start, cw.core_stop


def _colormap(palette: list) -> np.ndarray:
    cmap = np.zeros((3, 256), dtype=np.uint16)
    for i, rgb in enumerate(palette[:256]):
        cmap[:, i] = [c * 257 for c in rgb]
    return cmap


def _write_tiff(
    path: Path, stream: Iterator[np.ndarray], plan: TilePlan, shape: tuple, dtype: Any, **kwargs: Any
) -> None:
    """A tiled, zlib-compressed (Big)TIFF from the pieces' arrays in row-major order."""
    import tifffile

    nbytes = math.prod(shape) * np.dtype(dtype).itemsize
    chunks, tile = _tiff_chunks(stream, plan, shape[:2])
    tifffile.imwrite(
        path,
        chunks,
        shape=shape,
        dtype=dtype,
        tile=tile,
        compression="zlib",
        compressionargs={"level": 1},
        bigtiff=nbytes > 2**31,
        # tifffile gathers this many bytes of tiles per pass to compress them in threads (default 256 MB);
        # a fixed number of tiles, whatever the image's size
        buffersize=1 << 23,
        maxworkers=1,  # the tiles compress in a fraction of their forward pass; leave the cores to torch
        **kwargs,
    )


class _Preview:
    """Every ``step``-th row and column of the input (taken from each tile's input as it goes by) and of the
    mask (from each piece): a downscaled preview whose size does not depend on the image's."""

    def __init__(self, source: Source) -> None:
        self.step = step = max(1, -(-max(source.height, source.width) // PREVIEW_SIDE))
        shape = (-(-source.height // step), -(-source.width // step))
        self.image = torch.zeros(source.channels, *shape)  # re-made with the prepared channel count below
        self.mask = np.zeros(shape, dtype=np.uint8)

    def window(self, rw: Window, cw: Window, x: torch.Tensor) -> None:
        s = self.step
        y0, x0 = -(-rw.core_start // s) * s, -(-cw.core_start // s) * s
        if y0 >= rw.core_stop or x0 >= cw.core_stop:
            return
        part = x[:, y0 - rw.start : rw.core_stop - rw.start : s, x0 - cw.start : cw.core_stop - cw.start : s]
        if self.image.shape[0] != part.shape[0]:
            self.image = torch.zeros(part.shape[0], *self.image.shape[1:])
        self.image[:, y0 // s : y0 // s + part.shape[1], x0 // s : x0 // s + part.shape[2]] = part

    def add(self, piece: Piece) -> None:
        s = self.step
        y, x = -(-piece.y0 // s) * s, -(-piece.x0 // s) * s
        if y < piece.y1 and x < piece.x1:
            part = piece.mask[y - piece.y0 :: s, x - piece.x0 :: s]
            self.mask[y // s : y // s + part.shape[0], x // s : x // s + part.shape[1]] = part

    def draw(self, palette: list) -> np.ndarray:
        return overlay(to_rgb(self.image), self.mask, palette, 255)


def _temporary(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.partial{path.suffix}")


@dataclass
class Prediction:
    mask: Path | np.ndarray
    overlay: Path | None
    probabilities: Path | None
    plan: TilePlan
    notes: list[str]


def predict(
    model: nn.Module | str | Path,
    image: Any,
    out: str | Path | None = None,
    *,
    tile: int | str | None = "auto",
    overlap: int | None = None,
    approximate: int | None = None,
    batch: int = 4,
    probabilities: bool = False,
    preview: bool = True,
    overwrite: bool = False,
    device: str | torch.device | None = None,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
) -> Prediction:
    """Segment an image of any size: a path (TIFF/BigTIFF read lazily; PNG/JPEG decoded whole; ``.npy``
    (C, H, W) memory-mapped), an (H, W[, C]) pixel array or lazy array, or a (C, H, W) tensor.

    ``model``: a module or a checkpoint (run directory). ``out``: the mask's path (``.png`` palette image or
    ``.tif`` tiled TIFF written tile by tile, GeoTIFF tags kept from a GeoTIFF input); None returns the mask as
    an array in ``Prediction.mask``. Tiles are exact by default (see :func:`atrous.train.tiling.plan_tiles`
    for ``tile``, ``overlap``, ``approximate``). ``probabilities`` writes ``<mask>_probs.tif`` (float16,
    one sample per class); ``preview`` writes ``<mask>_overlay.png`` downscaled to 2048 px at most."""
    from atrous.train.inference import load

    say = log or (lambda line: None)
    if batch < 1:
        raise PredictError(f"batch {batch}: give at least 1 tile per forward pass")
    if out is None and probabilities:
        raise PredictError("probabilities are written next to the mask: give an output path (out=...)")
    if isinstance(model, (str, Path)):
        model = load(model, device or "cpu")
    elif device is not None:
        model = model.to(device)
    model.eval()
    meta = getattr(model, "atrous_meta", {}) or {}
    in_channels = int(getattr(model, "in_channels", 3))
    source = open_source(image, meta, in_channels)
    if not source.lazy and isinstance(image, (str, Path)):
        say(
            f"{source.name}: PNG/JPEG have no random access, so the image is decoded whole (use TIFF for lazy reads)"
        )
    size = (source.height, source.width)
    plan = plan_tiles(model, size, in_channels, tile, overlap, approximate)
    notes = [*plan.warnings]
    say(f"{source.name}: {size[0]}x{size[1]}, {plan.count(*size)} tiles; {plan.describe()}")
    for line in plan.warnings:
        say(f"warning: {line}")
    if not plan.exact and not plan.whole:
        line = sample_discrepancy(model, source, plan)
        notes.append(line)
        say(line)
    palette = [tuple(c) for c in meta.get("palette") or voc_palette()]
    targets: dict[str, Path] = {}
    if out is not None:
        mask_path = Path(out)
        if mask_path.suffix.lower() not in (".png", *TIFF_SUFFIXES):
            raise PredictError(f"mask path {mask_path}: use a .png or .tif name")
        if mask_path.suffix.lower() == ".png" and source.height * source.width > PNG_LIMIT:
            raise PredictError(
                f"{source.name} has {source.height * source.width:,} pixels; a PNG mask is written whole: "
                f"name the mask {mask_path.with_suffix('.tif').name} (tiled TIFF, written tile by tile)"
            )
        targets["mask"] = mask_path
        if preview:
            targets["overlay"] = mask_path.with_name(mask_path.stem + "_overlay.png")
        if probabilities:
            targets["probabilities"] = mask_path.with_name(mask_path.stem + "_probs.tif")
        for path in targets.values():
            if path.exists() and not overwrite:
                raise PredictError(f"{path} exists; choose another output or pass overwrite (--overwrite)")
        mask_path.parent.mkdir(parents=True, exist_ok=True)
    temps = {k: _temporary(p) for k, p in targets.items()}
    shot = _Preview(source) if "overlay" in targets else None
    ticker = _Progress(plan.count(*size), size[0] * size[1], source.name) if progress else None
    writers: list[_ProbWriter] = []  # the probabilities' writer, started with the first piece
    try:
        stream = pieces(
            model,
            source,
            plan,
            batch,
            probabilities,
            ticker.tick if ticker else None,
            shot.window if shot is not None else None,
        )
        result: Path | np.ndarray
        if out is None:
            mask = np.empty(size, dtype=np.uint8)
            for piece in stream:
                mask[piece.y0 : piece.y1, piece.x0 : piece.x1] = piece.mask
            result = mask
        else:

            def masks() -> Iterator[np.ndarray]:
                for piece in stream:
                    if shot is not None:
                        shot.add(piece)
                    if piece.probs is not None:
                        if not writers:  # the class count is the logits' (a foreign model need not say it)
                            writers.append(
                                _ProbWriter(temps["probabilities"], plan, size, piece.probs.shape[2])
                            )
                        writers[0].put(piece.probs)
                    yield piece.mask

            if targets["mask"].suffix.lower() == ".png":
                whole = np.empty(size, dtype=np.uint8)  # at most PNG_LIMIT pixels
                for piece, m in zip(_boxes(plan, size), masks()):
                    whole[piece[0] : piece[1], piece[2] : piece[3]] = m
                im = Image.fromarray(whole, mode="P")
                im.putpalette([v for rgb in palette[:256] for v in rgb])
                im.save(temps["mask"], format="PNG")
            else:
                _write_tiff(
                    temps["mask"],
                    masks(),
                    plan,
                    size,
                    np.uint8,
                    photometric="palette",
                    colormap=_colormap(palette),
                    extratags=source.geo_tags,
                )
            if writers:
                writers[0].close()
            result = targets["mask"]
            if shot is not None:
                Image.fromarray(shot.draw(palette)).save(temps["overlay"], format="PNG", compress_level=1)
            for key, path in targets.items():
                os.replace(temps[key], path)
    except BaseException:
        if writers:
            writers[0].abort()
        for path in temps.values():
            path.unlink(missing_ok=True)
        raise
    finally:
        if ticker is not None:
            ticker.stop()
    return Prediction(result, targets.get("overlay"), targets.get("probabilities"), plan, notes)


class _ProbWriter:
    """Class probabilities (H, W, K) float16 as a tiled TIFF, fed piece by piece from the mask's stream: a
    second writer runs in a thread, bounded queue between them (so memory stays two pieces)."""

    def __init__(self, path: Path, plan: TilePlan, size: tuple[int, int], classes: int) -> None:
        import queue
        import threading

        self.queue: queue.Queue = queue.Queue(maxsize=2)
        self.error: BaseException | None = None
        k = max(classes, 1)

        def feed() -> Iterator[np.ndarray]:
            while (item := self.queue.get()) is not None:
                yield item

        def run() -> None:
            try:
                _write_tiff(
                    path,
                    feed(),
                    plan,
                    (*size, k),
                    np.float16,
                    photometric="minisblack",
                    planarconfig="contig",
                )
            except BaseException as exc:  # reported by close()
                self.error = exc
                while self.queue.get() is not None:  # drain, so the producer never blocks
                    pass

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def put(self, probs: np.ndarray | None) -> None:
        if self.error is not None:
            raise self.error
        self.queue.put(probs)

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join()
        if self.error is not None:
            raise self.error

    def abort(self) -> None:
        if self.thread.is_alive():
            try:
                self.queue.put(None, timeout=10)
            except Exception:  # a writer that stopped draining: it is a daemon thread, left to die with us
                return
            self.thread.join(timeout=10)


class _Progress:
    """A rich progress bar: tiles done, pixels per second, time left."""

    def __init__(self, tiles: int, pixels: int, name: str) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("tiles  {task.fields[rate]}"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=False,
        )
        self.task = self.bar.add_task(Path(name).name, total=tiles, rate="")
        self.start, self.pixels = time.perf_counter(), 0
        self.bar.start()

    def tick(self, tiles: int, pixels: int) -> None:
        self.pixels += pixels
        rate = self.pixels / max(time.perf_counter() - self.start, 1e-9)
        self.bar.update(self.task, advance=tiles, rate=f"{rate / 1e6:.2f} Mpx/s")

    def stop(self) -> None:
        self.bar.stop()
