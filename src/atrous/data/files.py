"""Datasets of image/mask files: the ``folder`` layout and Pascal VOC 2012.

Loading never skips a file silently: a pairing problem is found when the dataset is built, a file that cannot
be read raises :class:`DatasetError` naming it, and ``atrous data check`` scans everything up front.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from atrous.data.transforms import JointAugment, normalize
from atrous.errors import OptionError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
MASK_MODES = ("L", "P", "I;16", "I")


class DatasetError(OptionError):
    """A dataset that cannot be used as given (missing, unpaired, corrupt or mislabelled files)."""


def voc_palette(n: int = 256) -> list[tuple[int, int, int]]:
    """The Pascal VOC colour map: the bits of the class index spread over the high bits of R, G and B."""
    palette = []
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette.append((r, g, b))
    return palette


VOC_CLASSES = [
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
]


@dataclass
class Pair:
    key: str
    image: Path
    mask: Path


@dataclass
class Problem:
    path: str
    kind: str  # missing-mask, missing-image, missing-listed, unreadable, size-mismatch, bad-mode, bad-value
    message: str

    def line(self) -> str:
        return f"{self.path}: {self.message}"


def load_image(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB; grayscale and palette images are converted, alpha is dropped."""
    try:
        with Image.open(path) as im:
            return np.array(im.convert("RGB"))
    except Exception as exc:
        raise DatasetError(f"cannot read image {path}: {exc}") from None


def load_mask(path: Path) -> np.ndarray:
    """(H, W) int64 class indices from an index or palette PNG (palette masks store indices already)."""
    try:
        with Image.open(path) as im:
            if im.mode not in MASK_MODES:
                raise DatasetError(
                    f"mask {path} has mode {im.mode}; masks must be single-channel index images "
                    "(L, P or 16-bit), not colour images"
                )
            return np.asarray(im).astype(np.int64)
    except DatasetError:
        raise
    except Exception as exc:
        raise DatasetError(f"cannot read mask {path}: {exc}") from None


@dataclass
class FileDataset(Dataset):
    pairs: list[Pair]
    class_names: list[str]
    palette: list[tuple[int, int, int]]
    ignore_index: int = 255
    root: Path = Path()
    augment: JointAugment | None = None
    seed: int = 0
    epoch: int = 0
    skipped: list[Problem] = field(default_factory=list)
    in_channels: int = 3
    name: str = "folder"

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.pairs)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        pair = self.pairs[index]
        image = torch.from_numpy(load_image(pair.image)).permute(2, 0, 1).float() / 255
        mask = torch.from_numpy(load_mask(pair.mask))
        if mask.shape != image.shape[1:]:
            raise DatasetError(
                f"mask {pair.mask} is {tuple(mask.shape)} but image {pair.image} is "
                f"{tuple(image.shape[1:])}; run `atrous data check {self.root}`"
            )
        if self.augment is not None:
            image, mask = self.augment(image, mask, seed=hash((self.seed, self.epoch, index)) & 0x7FFFFFFF)
        return normalize(image), mask


def _stems(folder: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES:
            found.setdefault(p.stem, p)
    return found


def read_classes_json(root: Path) -> tuple[list[str], list[tuple[int, int, int]] | None, int | None]:
    """``classes.json``: a list of {"name", "color"} or {"classes": [...], "ignore_index": 255}."""
    path = root / "classes.json"
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path} is not valid JSON: {exc}") from None
    ignore = None
    if isinstance(data, dict):
        ignore = data.get("ignore_index")
        data = data.get("classes", [])
    if not isinstance(data, list) or not data:
        raise DatasetError(
            f"{path} must hold a non-empty list of classes ({{'name': ..., 'color': [r, g, b]}})"
        )
    names = [c["name"] if isinstance(c, dict) else str(c) for c in data]
    colors = [tuple(c["color"]) for c in data if isinstance(c, dict) and "color" in c]
    return names, colors if len(colors) == len(names) else None, ignore


def folder_pairs(root: Path) -> tuple[list[Pair], list[Problem]]:
    images_dir, masks_dir = root / "images", root / "masks"
    for d in (images_dir, masks_dir):
        if not d.is_dir():
            raise DatasetError(
                f"{root} is not a folder dataset: {d} is missing (expected images/ and masks/)"
            )
    images, masks = _stems(images_dir), _stems(masks_dir)
    problems = [
        Problem(str(p), "missing-mask", f"image has no mask masks/{stem}.png")
        for stem, p in images.items()
        if stem not in masks
    ]
    problems += [
        Problem(str(p), "missing-image", "mask has no image with the same name in images/")
        for stem, p in masks.items()
        if stem not in images
    ]
    pairs = [Pair(stem, images[stem], masks[stem]) for stem in images if stem in masks]
    return pairs, problems


def voc_pairs(root: Path, split: str) -> tuple[list[Pair], list[Problem]]:
    listing = root / "ImageSets" / "Segmentation" / f"{split}.txt"
    if not listing.is_file():
        raise DatasetError(f"{root} is not a VOC 2012 folder: {listing} is missing (split={split!r})")
    pairs, problems = [], []
    for key in listing.read_text().split():
        image, mask = root / "JPEGImages" / f"{key}.jpg", root / "SegmentationClass" / f"{key}.png"
        if not image.is_file():
            problems.append(Problem(str(image), "missing-listed", f"listed in {listing.name} but missing"))
        elif not mask.is_file():
            problems.append(Problem(str(mask), "missing-listed", f"listed in {listing.name} but missing"))
        else:
            pairs.append(Pair(key, image, mask))
    return pairs, problems


def check_pair(pair: Pair, num_classes: int, ignore_index: int) -> list[Problem]:
    """Everything that can be wrong with one image/mask pair, each problem naming the file."""
    problems = []
    sizes = {}
    for path, role in ((pair.image, "image"), (pair.mask, "mask")):
        try:
            with Image.open(path) as im:
                im.load()
                sizes[role] = im.size
                if role == "mask":
                    if im.mode not in MASK_MODES:
                        problems.append(
                            Problem(
                                str(path),
                                "bad-mode",
                                f"mask mode {im.mode}: must be an index image (L, P or 16-bit)",
                            )
                        )
                        continue
                    values = np.unique(np.asarray(im))
                    bad = [int(v) for v in values if v >= num_classes and v != ignore_index]
                    if bad:
                        problems.append(
                            Problem(
                                str(path),
                                "bad-value",
                                f"mask values {bad[:5]} outside 0..{num_classes - 1} "
                                f"(ignore value {ignore_index})",
                            )
                        )
        except Exception as exc:
            problems.append(
                Problem(str(path), "unreadable", f"cannot read {role}: {type(exc).__name__}: {exc}")
            )
    if len(sizes) == 2 and sizes["image"] != sizes["mask"]:
        problems.append(
            Problem(
                str(pair.mask),
                "size-mismatch",
                f"mask is {sizes['mask'][0]}x{sizes['mask'][1]} but image {pair.image.name} is "
                f"{sizes['image'][0]}x{sizes['image'][1]} (W x H)",
            )
        )
    return problems


def infer_num_classes(pairs: list[Pair], ignore_index: int) -> int:
    top = 0
    for pair in pairs:
        try:
            values = np.unique(load_mask(pair.mask))
        except DatasetError:
            continue
        values = values[values != ignore_index]
        if values.size:
            top = max(top, int(values.max()))
    return top + 1
