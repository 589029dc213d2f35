"""Dataset specs: ``shapes:size=64,n=2000``, ``scale:small=8,large=24``, ``multiscale``, ``folder:/path``,
``voc:/path/VOC2012:split=train``. The same strings work on the CLI and in the API."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from atrous.data.files import (
    VOC_CLASSES,
    DatasetError,
    FileDataset,
    Problem,
    check_pair,
    folder_pairs,
    infer_num_classes,
    read_classes_json,
    voc_pairs,
    voc_palette,
)
from atrous.data.synthetic import TASKS
from atrous.data.transforms import JointAugment
from atrous.errors import SpecError, did_you_mean, option
from atrous.spec import parse_kwargs

REAL = ("folder", "voc")


@dataclass
class DataSpec:
    name: str
    path: Path | None
    options: dict[str, Any]


def parse_data_spec(spec: str) -> DataSpec:
    name, _, rest = spec.partition(":")
    name = name.strip()
    if name in TASKS:
        return DataSpec(name, None, parse_kwargs(rest, f"data spec {spec!r}"))
    if name in REAL:
        path, options = rest, ""
        head, sep, tail = rest.rpartition(":")
        if sep and "=" in tail:
            path, options = head, tail
        if not path:
            raise SpecError(f"data spec {spec!r} needs a path: {name}:/path/to/data")
        return DataSpec(name, Path(path).expanduser(), parse_kwargs(options, f"data spec {spec!r}"))
    raise SpecError(
        f"unknown dataset {name!r}{did_you_mean(name, [*TASKS, *REAL])}; use one of "
        f"{', '.join([*TASKS, *REAL])} (e.g. shapes:size=64, folder:/path, voc:/path/VOC2012:split=train)"
    )


def _synthetic(ds: DataSpec, split: str | None, seed: int | None):
    cls = TASKS[ds.name]
    options = dict(ds.options)
    if split is not None:
        options.setdefault("split", split)
    if seed is not None:
        options.setdefault("seed", seed)
    fields = set(cls.__dataclass_fields__) - {"class_names"}
    unknown = [k for k in options if k not in fields]
    if unknown:
        raise SpecError(
            f"{ds.name} has no option {unknown[0]!r}{did_you_mean(unknown[0], fields)}; "
            f"options: {', '.join(sorted(fields))}"
        )
    return cls(**options)


def real_pairs(ds: DataSpec, split: str | None) -> tuple[list, list[Problem], list[str], list, int]:
    """(pairs, pairing problems, class names, palette, ignore index) of a folder or VOC dataset."""
    if ds.path is None or not ds.path.exists():
        raise DatasetError(f"dataset path {ds.path} does not exist")
    ignore = int(ds.options.get("ignore", 255))
    if ds.name == "voc":
        pairs, problems = voc_pairs(ds.path, ds.options.get("split", split or "train"))
        return pairs, problems, list(VOC_CLASSES), voc_palette(), ignore
    pairs, problems = folder_pairs(ds.path)
    palette = None
    if (ds.path / "classes.json").is_file():
        names, palette, json_ignore = read_classes_json(ds.path)
        ignore = json_ignore if json_ignore is not None and "ignore" not in ds.options else ignore
    elif "classes" in ds.options:
        names = [f"class {i}" for i in range(int(ds.options["classes"]))]
    else:  # no declaration: the largest label found decides (`data check` then cannot flag values)
        names = [f"class {i}" for i in range(infer_num_classes(pairs, ignore))]
    return pairs, problems, names, palette or voc_palette(), ignore


def check_dataset(spec: str, split: str | None = None) -> tuple[int, list[Problem]]:
    """Scan a real dataset completely: (number of pairs, every problem found, each naming its file)."""
    ds = parse_data_spec(spec if ":" in spec else f"folder:{spec}")
    if ds.name not in REAL:
        return 0, []
    pairs, problems, names, _, ignore = real_pairs(ds, split)
    for pair in pairs:
        problems += check_pair(pair, len(names), ignore)
    return len(pairs), problems


def detect_layout(path: str) -> str:
    """A bare path is a VOC folder if it has ImageSets/Segmentation, else a folder dataset."""
    p = Path(path)
    return f"voc:{path}" if (p / "ImageSets" / "Segmentation").is_dir() else f"folder:{path}"


def build_dataset(
    spec: str,
    split: str | None = None,
    seed: int | None = None,
    augment: bool = False,
    crop: int | None = None,
    check: bool = False,
    skip_bad: bool = False,
):
    """A dataset from a spec. Real data: pairing problems always stop the build (unless ``skip_bad``, which
    records what it skipped in ``dataset.skipped``); ``check`` also reads every file first."""
    ds = parse_data_spec(spec)
    if ds.name in TASKS:
        return _synthetic(ds, split, seed)
    pairs, problems, names, palette, ignore = real_pairs(ds, split)
    if check:
        for pair in pairs:
            problems += check_pair(pair, len(names), ignore)
    if problems and not skip_bad:
        raise DatasetError(
            f"{len(problems)} problem(s) in {ds.path}, first: {problems[0].line()}; run `atrous data check "
            f"{ds.path}` for the full list, or pass {option('skip_bad')} to leave those files out"
        )
    bad = {p.path for p in problems}
    kept = [p for p in pairs if str(p.image) not in bad and str(p.mask) not in bad]
    if not kept:
        raise DatasetError(f"no usable image/mask pairs in {ds.path}")
    crop = crop if crop is not None else ds.options.get("crop")
    aug = JointAugment(crop=crop, ignore_index=ignore) if augment else None
    return FileDataset(kept, names, palette, ignore, ds.path, aug, seed or 0, skipped=problems, name=ds.name)


def describe(dataset) -> str:
    return (
        f"{getattr(dataset, 'name', type(dataset).__name__)}: {len(dataset)} samples, "
        f"{dataset.num_classes} classes ({', '.join(dataset.class_names)})"
    )
