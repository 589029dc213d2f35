"""Prediction on large images: lazy TIFF reads, band-by-band TIFF masks, GeoTIFF tags, previews, bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

import atrous
from atrous.cli import main
from atrous.data.preview import to_rgb
from atrous.train.checkpoint import save_checkpoint
from atrous.train.predict import PredictError, TiffReader

SPEC = "unet:width=4,depth=2"
GEO = [
    (33550, "d", 3, (0.5, 0.5, 0.0), True),  # ModelPixelScale
    (33922, "d", 6, (0.0, 0.0, 0.0, 500000.0, 4000000.0, 0.0), True),  # ModelTiepoint
    (34735, "H", 8, (1, 1, 0, 1, 1024, 0, 1, 1), True),  # GeoKeyDirectory: one key
]


def small_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = atrous.create_model(SPEC, num_classes=3)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_var.fill_(0.5)
    return model.eval()


def rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def whole_image_mask(model: torch.nn.Module, pixels: np.ndarray) -> np.ndarray:
    x = torch.from_numpy(pixels).permute(2, 0, 1).float()[None] / 255
    with torch.no_grad():
        return model(x)[0].argmax(0).numpy().astype(np.uint8)


@pytest.fixture
def run(tmp_path: Path) -> Path:
    """A checkpoint of the small model, as ``atrous train`` writes one (no normalisation, three classes)."""
    model = small_model()
    meta = {
        "model": SPEC,
        "model_kwargs": {"num_classes": 3},
        "in_channels": 3,
        "class_names": ["a", "b", "c"],
    }
    save_checkpoint(tmp_path / "run", 1, model.state_dict(), {}, meta, ("last", "best"))
    return tmp_path / "run"


def test_to_rgb_on_an_image_larger_than_torch_quantile_takes() -> None:
    """3000 x 4000 RGB (3.6e7 values > 2^24): the stretch comes from a subsample, the ramp maps to 0..255."""
    ramp = torch.linspace(0, 1, 3000 * 4000).reshape(1, 3000, 4000).expand(3, -1, -1)
    out = to_rgb(ramp)
    assert out.shape == (3000, 4000, 3) and out.dtype == np.uint8
    assert out[0, 0, 0] == 0 and out[-1, -1, 0] == 255
    assert abs(int(out[1500, 0, 0]) - 127) <= 1  # the middle row starts half-way up the ramp


@pytest.mark.parametrize(
    "layout",
    [
        {"tile": (32, 48), "compression": "zlib"},
        {"rowsperstrip": 7, "compression": "zlib"},
        {"rowsperstrip": 7},  # uncompressed strips: read row by row, the requested columns only
        {"compression": "zlib"},
        {"tile": (32, 48), "byteorder": ">"},
    ],
)
def test_tiff_regions_are_read_lazily_and_exactly(tmp_path: Path, layout: dict) -> None:
    pixels = rgb(101, 133)
    path = tmp_path / "in.tif"
    tifffile.imwrite(path, pixels, **layout)
    reader = TiffReader(path)
    assert reader.shape == (101, 133, 3)
    for y0, y1 in ((0, 1), (5, 40), (31, 33), (90, 101)):
        np.testing.assert_array_equal(reader[y0:y1], pixels[y0:y1])
        for x0, x1 in ((0, 133), (3, 50), (47, 49), (120, 133)):
            np.testing.assert_array_equal(reader[y0:y1, x0:x1], pixels[y0:y1, x0:x1])


def test_a_tiled_tiff_holds_the_segments_of_one_request_whatever_its_width(tmp_path: Path) -> None:
    """Requests in row-major order of tiles: segments above or left of the request are dropped, so what is
    held is the request's own segments (up to 4 x 3 tiles of 32 x 48 here) and, at the start of a row, those
    the previous row's last request left below it: never a row of the image (63 tiles wide)."""
    pixels = rgb(200, 3000)
    path = tmp_path / "wide.tif"
    tifffile.imwrite(path, pixels, tile=(32, 48), compression="zlib")
    reader = TiffReader(path)
    held = []
    for y0 in (0, 60, 120):
        for x0 in range(0, 3000 - 80, 70):
            np.testing.assert_array_equal(
                reader[y0 : y0 + 80, x0 : x0 + 80], pixels[y0 : y0 + 80, x0 : x0 + 80]
            )
            held.append(reader.held_bytes())
    assert max(held) <= 2 * 4 * 3 * 32 * 48 * 3  # two requests of 4 x 3 segments


def test_tiff_in_tiff_out_equals_whole_image_with_geotags_and_probabilities(tmp_path: Path) -> None:
    model = small_model()
    pixels = rgb(150, 211)
    src = tmp_path / "scene.tif"
    tifffile.imwrite(src, pixels, tile=(64, 64), extratags=GEO, photometric="rgb")
    result = atrous.predict(model, src, tmp_path / "out" / "scene.tif", tile=80, probabilities=True)
    assert result.plan.exact and result.plan.count(150, 211) > 4
    mask = tifffile.imread(result.mask)
    np.testing.assert_array_equal(mask, whole_image_mask(model, pixels))
    with tifffile.TiffFile(result.mask) as tif:
        page = tif.pages.first
        assert page.is_tiled and page.photometric == tifffile.PHOTOMETRIC.PALETTE
        assert page.tags[33550].value == (0.5, 0.5, 0.0)
        assert page.tags[33922].value[3:5] == (500000.0, 4000000.0)
        assert page.tags[34735].value == (1, 1, 0, 1, 1024, 0, 1, 1)
    probs = tifffile.imread(result.probabilities)
    assert probs.shape == (150, 211, 3) and probs.dtype == np.float16
    np.testing.assert_allclose(probs.astype(np.float32).sum(-1), 1, atol=5e-3)
    agree = (probs.argmax(-1) == mask).mean()
    assert agree > 0.99  # float16 can tie two close classes
    overlay = Image.open(result.overlay)
    assert overlay.size == (211, 150)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "scene.tif",
        "scene_overlay.png",
        "scene_probs.tif",
    ]


def test_array_and_lazy_inputs_give_the_same_mask(tmp_path: Path) -> None:
    model = small_model(1)
    pixels = rgb(97, 140, seed=3)
    expected = whole_image_mask(model, pixels)
    np.testing.assert_array_equal(atrous.predict(model, pixels, tile=64).mask, expected)
    np.save(tmp_path / "p.npy", pixels)
    lazy = np.load(tmp_path / "p.npy", mmap_mode="r")
    np.testing.assert_array_equal(atrous.predict(model, lazy, tile=64).mask, expected)
    png = atrous.predict(model, pixels, tmp_path / "m.png", tile=64)
    np.testing.assert_array_equal(np.asarray(Image.open(png.mask)), expected)


def test_the_overlay_is_a_downscaled_preview(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("atrous.train.predict.PREVIEW_SIDE", 50)
    result = atrous.predict(small_model(), rgb(120, 230), tmp_path / "m.tif", tile=64)
    assert Image.open(result.overlay).size == (46, 24)  # every 5th row and column


def test_a_truncated_tiff_is_one_error_and_leaves_nothing(tmp_path: Path) -> None:
    src = tmp_path / "cut.tif"
    tifffile.imwrite(src, rgb(200, 200), tile=(64, 64), compression="zlib")
    data = src.read_bytes()
    src.write_bytes(data[: len(data) * 2 // 3])
    out = tmp_path / "out"
    with pytest.raises(PredictError, match=r"cut\.tif.*(truncated|corrupt)"):
        atrous.predict(small_model(), src, out / "cut.tif", tile=64)
    assert list(out.iterdir()) == []


def test_bad_inputs_are_one_line_each_on_the_command_line(
    tmp_path: Path, run: Path, capsys: pytest.CaptureFixture
) -> None:
    images = tmp_path / "images"
    images.mkdir()
    tifffile.imwrite(images / "a.tif", rgb(90, 120), tile=(32, 32))
    out = tmp_path / "pred"
    argv = ["predict", str(images), "--checkpoint", str(run), "--out", str(out), "--tile", "64"]
    assert main(argv) == 0
    assert "exact tiles of 64x64, margins 24/24 (H) 24/24 (W)" in capsys.readouterr().out
    assert tifffile.imread(out / "a.tif").shape == (90, 120)
    cases = [
        (argv, "a.tif exists; choose another output or pass overwrite (--overwrite)"),
        ([*argv[:-1], "40", "--overwrite"], "tile 40 is smaller than twice the margin (24 + 24 px along H)"),
        ([*argv[:-2], "--tile", "lots"], "--tile 'lots': give a number of pixels, auto or none"),
    ]
    tifffile.imwrite(
        tmp_path / "gray2.tif", rgb(50, 50)[:, :, :2], photometric="minisblack", planarconfig="contig"
    )
    cases.append(
        (
            ["predict", str(tmp_path / "gray2.tif"), "--checkpoint", str(run), "--out", str(out)],
            "gray2.tif has 2 channels; the model takes 3",
        )
    )
    tifffile.imwrite(tmp_path / "pages.tif", rgb(20, 30)[None].repeat(5, axis=0)[..., 0])  # 5 grey pages
    cases.append(
        (
            ["predict", str(tmp_path / "pages.tif"), "--checkpoint", str(run), "--out", str(out)],
            "pages.tif holds 5 images of 20x30 (a multi-page TIFF",
        )
    )
    (tmp_path / "junk.tif").write_bytes(b"II*\x00garbage")
    cases.append(
        (
            ["predict", str(tmp_path / "junk.tif"), "--checkpoint", str(run), "--out", str(out)],
            "cannot read",
        )
    )
    for args, message in cases:
        assert main(args) == 2, args
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    assert sorted(p.name for p in out.iterdir()) == ["a.tif", "a_overlay.png"]


def test_a_global_model_is_refused_then_tiled_approximately(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    model = atrous.create_model("deeplabv3_small").eval()
    pixels = rgb(100, 130)
    with pytest.raises(atrous.AtrousError, match="receptive field is global"):
        atrous.predict(model, pixels, tile=64)
    lines: list[str] = []
    result = atrous.predict(model, pixels, tile=64, approximate=16, log=lines.append)
    assert result.mask.shape == (100, 130) and not result.plan.exact
    assert any(line.startswith("approximate tiles: on the centre tile") for line in lines)
    assert "whole-image inference by up to" in result.notes[-1]


def test_eval_with_exact_tiles_gives_the_same_scores(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import json

    torch.manual_seed(0)
    model = atrous.create_model(SPEC, num_classes=2).eval()
    meta = {"model": SPEC, "model_kwargs": {"num_classes": 2}, "in_channels": 3}
    save_checkpoint(tmp_path / "run2", 1, model.state_dict(), {}, meta, ("last", "best"))
    base = ["eval", "--checkpoint", str(tmp_path / "run2"), "--data", "shapes:size=90,n=4", "--json"]
    scores = []
    for extra in ([], ["--tile", "64"]):
        assert main([*base, *extra]) == 0
        scores.append(json.loads(capsys.readouterr().out))
    assert scores[0]["miou"] == scores[1]["miou"] and scores[0]["iou"] == scores[1]["iou"]


def test_the_progress_bar_counts_tiles_and_pixels(capsys: pytest.CaptureFixture) -> None:
    result = atrous.predict(small_model(), rgb(90, 130), tile=64, progress=True)
    err = capsys.readouterr().err
    tiles = result.plan.count(90, 130)
    assert f"{tiles}/{tiles}" in err and "Mpx/s" in err


def test_peak_memory_does_not_grow_with_the_image_width(tmp_path: Path) -> None:
    """512 x 512 and 512 x 4096 tiled TIFFs through predict to a tiled TIFF mask: the peak of traced (numpy
    and Python) memory is the same. Holding one row of anything scaling with the width would show: one row of
    input segments (64 x 4096 x 3) is 786 KB, one row of mask cores (96 x 4096) 393 KB."""
    import tracemalloc

    model = small_model()
    peaks = {}
    for w in (512, 512, 4096):  # the first run imports and warms up
        src = tmp_path / f"in_{w}.tif"
        tifffile.imwrite(src, rgb(512, w), tile=(64, 64), compression="zlib")
        tracemalloc.start()
        try:
            result = atrous.predict(
                model, src, tmp_path / f"out_{w}.tif", tile=144, preview=False, overwrite=True
            )
            peaks[w] = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert result.plan.core == (96, 96)
    assert abs(peaks[4096] - peaks[512]) < 128 * 1024, peaks
    with tifffile.TiffFile(tmp_path / "out_4096.tif") as tif:
        assert (tif.pages.first.tilelength, tif.pages.first.tilewidth) == (96, 96)  # one core, one TIFF tile


@pytest.mark.parametrize("tile,tiff_tile", [(80, (32, 32)), (72, (256, 256))])
def test_cores_are_the_mask_tiff_tiles_when_they_can_be(tmp_path: Path, tile: int, tiff_tile: tuple) -> None:
    """Cores a multiple of 16 px (tile 80 - 2 x 24) are written as the TIFF's tiles, one by one; others
    (72 - 48 = 24) are re-cut into 256-px tiles through bands of rows. Both give the whole-image mask."""
    model = small_model(2)
    pixels = rgb(150, 211, seed=4)
    src = tmp_path / "in.tif"
    tifffile.imwrite(src, pixels, tile=(32, 32))
    result = atrous.predict(model, src, tmp_path / "m.tif", tile=tile, probabilities=True)
    np.testing.assert_array_equal(tifffile.imread(result.mask), whole_image_mask(model, pixels))
    for path in (result.mask, result.probabilities):
        with tifffile.TiffFile(path) as tif:
            assert (tif.pages.first.tilelength, tif.pages.first.tilewidth) == tiff_tile
    assert tifffile.imread(result.probabilities).shape == (150, 211, 3)
