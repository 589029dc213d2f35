"""Real formats on tiny datasets built on the fly: the good path and every problem, each naming its file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from atrous.cli import main
from atrous.data import build_dataset
from atrous.data.files import DatasetError, voc_palette
from atrous.data.specs import check_dataset
from atrous.data.transforms import JointAugment


def save_rgb(path: Path, h: int, w: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)


def save_index(path: Path, mask: np.ndarray, palette: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(mask.astype(np.uint8), mode="L")
    if palette:
        im = im.convert("P")
        im.putpalette([c for rgb in voc_palette() for c in rgb])
    im.save(path)


def make_voc(root: Path, bad: bool = False) -> Path:
    ids = ["2007_000001", "2007_000002", "2007_000003"]
    for i, key in enumerate(ids):
        save_rgb(root / "JPEGImages" / f"{key}.jpg", 20, 24, i)
        mask = np.zeros((20, 24), dtype=np.uint8)
        mask[5:12, 6:15] = 15  # person
        mask[4, 5:16] = 255  # VOC's ignore border
        save_index(root / "SegmentationClass" / f"{key}.png", mask, palette=True)
    listing = root / "ImageSets" / "Segmentation"
    listing.mkdir(parents=True)
    (listing / "train.txt").write_text("\n".join(ids[:2]) + "\n")
    (listing / "val.txt").write_text(ids[2] + "\n")
    if bad:
        m = np.zeros((20, 24), dtype=np.uint8)
        m[0, 0] = 37  # out of range for 21 classes
        save_index(root / "SegmentationClass" / f"{ids[1]}.png", m, palette=True)
    return root


def make_folder(root: Path) -> Path:
    for i, stem in enumerate(["a", "b", "c"]):
        save_rgb(root / "images" / f"{stem}.png", 16, 18, i)
        mask = np.zeros((16, 18), dtype=np.uint8)
        mask[2:8, 3:9] = i % 3
        save_index(root / "masks" / f"{stem}.png", mask)
    (root / "classes.json").write_text(
        json.dumps(
            [
                {"name": n, "color": c}
                for n, c in [("bg", [0, 0, 0]), ("cat", [255, 0, 0]), ("dog", [0, 255, 0])]
            ]
        )
    )
    return root


def test_voc_good_path(tmp_path: Path) -> None:
    root = make_voc(tmp_path / "VOC2012")
    train = build_dataset(f"voc:{root}:split=train")
    val = build_dataset(f"voc:{root}", split="val")
    assert (len(train), len(val), train.num_classes, train.ignore_index) == (2, 1, 21, 255)
    x, y = train[0]
    assert x.shape == (3, 20, 24) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert set(y.unique().tolist()) == {0, 15, 255}  # palette PNG read as indices
    assert check_dataset(f"voc:{root}") == (2, [])


def test_folder_good_path_with_classes_json(tmp_path: Path) -> None:
    ds = build_dataset(f"folder:{make_folder(tmp_path / 'f')}")
    assert len(ds) == 3 and ds.class_names == ["bg", "cat", "dog"] and ds.palette[1] == (255, 0, 0)
    assert ds[2][1].max() == 2


def test_every_problem_is_reported_with_its_file(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "f")
    save_rgb(root / "images" / "no_mask.png", 16, 18)  # image without mask
    save_index(root / "masks" / "no_image.png", np.zeros((16, 18)))  # mask without image
    save_rgb(root / "images" / "small.png", 16, 18)
    save_index(root / "masks" / "small.png", np.zeros((10, 18)))  # size mismatch
    save_rgb(root / "images" / "broken.png", 16, 18)
    (root / "masks" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")  # corrupt
    save_rgb(root / "images" / "colour.png", 16, 18)
    save_rgb(root / "masks" / "colour.png", 16, 18)  # an RGB mask: wrong mode
    save_rgb(root / "images" / "value.png", 16, 18)
    save_index(root / "masks" / "value.png", np.full((16, 18), 7))  # 7 outside 3 classes
    total, problems = check_dataset(f"folder:{root}")
    found = {(Path(p.path).name, p.kind) for p in problems}
    assert found == {
        ("no_mask.png", "missing-mask"),
        ("no_image.png", "missing-image"),
        ("small.png", "size-mismatch"),
        ("broken.png", "unreadable"),
        ("colour.png", "bad-mode"),
        ("value.png", "bad-value"),
    }
    assert total == 7  # pairs found by name, problems included
    with pytest.raises(DatasetError, match=r"problem\(s\) in .*pass skip_bad to leave") as caught:
        build_dataset(f"folder:{root}", check=True)
    assert "pass --skip-bad to leave" in caught.value.for_cli()
    ds = build_dataset(f"folder:{root}", check=True, skip_bad=True)
    assert len(ds) == 3 and len(ds.skipped) == 6


def test_voc_value_out_of_range(tmp_path: Path) -> None:
    root = make_voc(tmp_path / "VOC2012", bad=True)
    _, problems = check_dataset(f"voc:{root}")
    assert [(Path(p.path).name, p.kind) for p in problems] == [("2007_000002.png", "bad-value")]
    assert "37" in problems[0].message


def test_cli_data_check_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    good = make_voc(tmp_path / "good")
    assert main(["data", "check", str(good)]) == 0
    assert "no problems" in capsys.readouterr().out
    bad = make_voc(tmp_path / "bad", bad=True)
    assert main(["data", "check", str(bad)]) == 1
    out = capsys.readouterr().out
    assert "bad-value" in out and "2007_000002.png" in out and "1 problem(s)" in out
    assert main(["data", "check", str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_loading_a_file_that_went_bad_raises_naming_it(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "f")
    ds = build_dataset(f"folder:{root}")
    (root / "images" / "b.png").write_bytes(b"garbage")
    with pytest.raises(DatasetError, match=r"cannot read image .*b\.png"):
        ds[1]


def test_joint_augmentation_is_deterministic_and_pads_with_ignore() -> None:
    image = torch.rand(3, 20, 30)
    mask = torch.randint(0, 4, (20, 30))
    aug = JointAugment(crop=32, ignore_index=255)
    a = aug(image, mask, seed=5)
    b = aug(image, mask, seed=5)
    c = aug(image, mask, seed=6)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and not torch.equal(a[0], c[0])
    img, m = a
    assert img.shape == (3, 32, 32) and m.shape == (32, 32)
    assert set(m.unique().tolist()) <= {0, 1, 2, 3, 255} and (m == 255).any()  # padded area is ignored


def test_real_data_preview(tmp_path: Path) -> None:
    root = make_voc(tmp_path / "VOC2012")
    assert main(["data", "preview", f"voc:{root}", "--out", str(tmp_path / "grid.png"), "--count", "2"]) == 0
    assert Image.open(tmp_path / "grid.png").size[0] > 48
