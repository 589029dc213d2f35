"""Exact tiling: stitched logits equal whole-image logits for every zoo model with a finite receptive field."""

from __future__ import annotations

import itertools

import pytest
import torch

from atrous import create_model
from atrous.models.registry import list_models, model_info
from atrous.train.tiling import TilingError, axis_windows, plan_tiles, tiled_logits

# spec, image sizes (odd ones included), tile sizes: the tiles are a little larger than twice the margin, so
# every image is cut into several rows and columns of tiles and the last tile does not divide the image.
EXACT = {
    "unet": ("unet:width=4,depth=2", [(70, 93), (67, 130)], [64, 80]),
    "dilated_unet": ("dilated_unet:width=4,depth=2", [(133, 161)], [100, 120]),
    "seed_unet": ("seed_unet", [(101, 131)], [96]),
    "seed_dilated_unet": ("seed_dilated_unet", [(173, 197)], [160]),
    "convstack": ("convstack:width=4", [(70, 93)], [24, 33]),
    "convstack_dilated": ("convstack:preset=dilated,width=4", [(70, 93)], [40]),
    "convstack_gridded": ("convstack:preset=gridded,width=4", [(41, 57)], [20]),
    "context": ("context", [(101, 117)], [96]),
    "context_large": ("context_large", [(83, 101)], [80]),
    # Models that resize their features to the input's size: exact at multiples of their period.
    "aspp_net": ("aspp_net:width=4", [(72, 96)], [80]),
    # an odd height in one tile row: the tiles span it as the image does, so only W must be a multiple
    "aspp_net_one_row": ("aspp_net:width=4", [(71, 200)], [80]),
    "unet_bilinear": ("unet:width=4,depth=2,up=bilinear", [(100, 128)], [96]),
    "deeplabv3_small_no_pooling": ("deeplabv3_small:image_pooling=False,rates=[1,2]", [(560, 568)], [552]),
}
# Resize to the input's size at a size that is not a multiple of the period: the output drifts, refused.
DRIFTING = {
    "aspp_net": ("aspp_net:width=4", (70, 93), 80),
    "unet_bilinear": ("unet:width=4,depth=2,up=bilinear", (101, 128), 96),
    "deeplabv3_small_no_pooling": ("deeplabv3_small:image_pooling=False,rates=[1,2]", (557, 568), 552),
}
# Global receptive field (image pooling, GroupNorm over space): refused unless approximate.
GLOBAL = {
    "deeplabv3_small": "deeplabv3_small",
    "deeplabv3plus_small": "deeplabv3plus_small",
    "seed_deeplab": "seed_deeplab",
    "unet_groupnorm": "unet:width=4,depth=2,norm=group",
}
# The full-size DeepLabs share the small ones' code (ResNet + ASPP with image pooling); building them costs
# seconds, and their geometry is checked once, below. context_resnet18 shares deeplabv3's forward
# (BackboneSegmenter); its reach (376 px at stride 8) needs tiles of 760+ px: its own test below.
COVERED_ELSEWHERE = {
    "deeplabv3",
    "deeplabv3_resnet50",
    "deeplabv3_resnet101",
    "deeplabv3plus",
    "context_resnet18",
}


def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random weights and BatchNorm statistics: no identity initialisation hides a wrong tile."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=gen))
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=gen))
    return model.eval()


def test_every_segmentation_model_is_covered() -> None:
    names = {n for n in list_models() if model_info(n).task == "segmentation"}
    covered = {s.split(":")[0] for s, _, _ in EXACT.values()} | {s.split(":")[0] for s in GLOBAL.values()}
    assert names - covered - COVERED_ELSEWHERE == set()


@pytest.mark.parametrize("key", list(EXACT))
def test_stitched_logits_equal_whole_image(key: str) -> None:
    spec, sizes, tiles = EXACT[key]
    model = randomize(create_model(spec))
    gen = torch.Generator().manual_seed(1)
    for h, w in sizes:
        image = torch.randn(3, h, w, generator=gen)
        with torch.no_grad():
            whole = model(image[None])[0]
        for tile in tiles:
            plan = plan_tiles(model, (h, w), 3, tile=tile)
            rows, cols = plan.windows(h, w)
            assert plan.exact and not plan.whole and len(rows) * len(cols) >= 2, (spec, tile)
            assert any((r.stop - r.start) % plan.period[0] for r in rows) == bool(h % plan.period[0])
            got = tiled_logits(model, image, plan, batch=3)
            assert got.shape == whole.shape
            # 1e-4 at logits of order 1: fp32 convolutions round differently at another tile shape, and
            # random weights blow some models' logits up to hundreds (context_large: ~900).
            scale = max(1.0, whole.abs().max().item())
            assert (got - whole).abs().max().item() <= 1e-4 * scale, (spec, h, w, tile, scale)
            if whole.shape[0] > 1:
                top2 = whole.topk(2, dim=0).values
                differ = got.argmax(0) != whole.argmax(0)
                assert not differ[(top2[0] - top2[1]) > 1e-4].any()


def test_context_resnet_tiles_exactly_with_large_tiles() -> None:
    """context_resnet18 reaches 376 px each side: 15 tiles of 800 px on a 904 x 1000 image (multiples of its
    period 8, where its final resize does not drift) reproduce whole-image inference."""
    model = randomize(create_model("context_resnet18:backbone=resnet_small"))
    image = torch.randn(3, 904, 1000, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        whole = model(image[None])[0]
    plan = plan_tiles(model, (904, 1000), 3, tile=800)
    rows, cols = plan.windows(904, 1000)
    assert plan.exact and len(rows) * len(cols) >= 4
    got = tiled_logits(model, image, plan, batch=2)
    assert (got - whole).abs().max().item() <= 1e-4 * max(1.0, whole.abs().max().item())
    assert torch.equal(got.argmax(0), whole.argmax(0))


def test_margins_come_from_the_engine() -> None:
    """U-Net depth 2: period 4 (two poolings), theoretical reach 23 px each side, margins rounded up to 24."""
    model = create_model("unet:width=4,depth=2").eval()
    plan = plan_tiles(model, (70, 93), 3, tile=64)
    assert plan.period == (4, 4)
    assert plan.reach == ((23, 23), (23, 23))
    assert plan.margin == ((24, 24), (24, 24))
    auto = plan_tiles(model, (2000, 3000), 3, tile="auto")
    assert auto.tile == (48 + 448, 48 + 448) and auto.exact


def test_a_margin_short_by_one_pixel_breaks_exactness() -> None:
    """The margin is tight: one pixel less (convstack, period 1) and tile borders differ."""
    model = randomize(create_model("convstack:preset=dilated,width=4"))
    image = torch.randn(3, 50, 61, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        whole = model(image[None])[0]
    exact = plan_tiles(model, (50, 61), 3, tile=30)
    assert exact.margin == ((7, 7), (7, 7))
    assert (tiled_logits(model, image, exact) - whole).abs().max() <= 1e-5
    short = plan_tiles(model, (50, 61), 3, tile=30, overlap=12)
    assert short.margin == ((6, 6), (6, 6)) and not short.exact
    assert "below the receptive-field reach (7 px)" in short.warnings[0]
    assert (tiled_logits(model, image, short) - whole).abs().max() > 1e-3


@pytest.mark.parametrize("key", list(DRIFTING))
def test_drifting_models_are_refused_at_sizes_off_their_period(key: str) -> None:
    spec, size, tile = DRIFTING[key]
    model = create_model(spec).eval()
    with pytest.raises(TilingError, match=r"drifts across the image.*pad the image to a multiple of"):
        plan_tiles(model, size, 3, tile=tile)
    plan = plan_tiles(model, size, 3, tile=tile, approximate=8)
    assert not plan.exact


@pytest.mark.parametrize("key", list(GLOBAL))
def test_global_models_are_refused_or_tiled_on_request(key: str) -> None:
    model = randomize(create_model(GLOBAL[key]))
    with pytest.raises(TilingError, match=r"receptive field is global.*--approximate-tiles"):
        plan_tiles(model, (100, 120), 3, tile=64)
    assert plan_tiles(model, (60, 64), 3, tile=64).whole  # one tile: whole-image inference, exact
    plan = plan_tiles(model, (100, 120), 3, tile=64, approximate=16)
    assert not plan.exact and plan.margin[0][0] >= 16
    image = torch.randn(3, 100, 120, generator=torch.Generator().manual_seed(3))
    assert tiled_logits(model, image, plan).shape[1:] == (100, 120)


def test_full_size_deeplabs_have_a_global_field_and_context_resnet_a_finite_one() -> None:
    from atrous.train.tiling import _geometry

    for name in ("deeplabv3", "deeplabv3plus"):
        assert all(g.global_ for g in _geometry(create_model(name), 3, (64, 64)))
    geo = _geometry(create_model("context_resnet18:backbone=resnet_small"), 3, (128, 128))
    assert [(g.period, g.global_, g.drift) for g in geo] == [(8, False, None)] * 2
    assert geo[0].before > 300


def test_a_tile_smaller_than_twice_the_margin_is_refused() -> None:
    model = create_model("context").eval()
    with pytest.raises(
        TilingError, match=r"tile 64 is smaller than twice the margin \(36 \+ 36.*at least 73"
    ):
        plan_tiles(model, (200, 200), 3, tile=64)


@pytest.mark.parametrize("n", [1, 7, 64, 65, 99, 100, 257, 1000])
@pytest.mark.parametrize("tile,period,before,after", [(64, 4, 24, 24), (30, 1, 7, 7), (552, 8, 136, 128)])
def test_axis_windows_cover_every_pixel_once_with_full_context(
    n: int, tile: int, period: int, before: int, after: int
) -> None:
    windows = axis_windows(n, tile, period, before, after)
    assert windows[0].core_start == 0 and windows[-1].core_stop == n
    for a, b in itertools.pairwise(windows):
        assert a.core_stop == b.core_start and a.core_start < a.core_stop
    for win in windows:
        assert win.start % period == 0 and win.start >= 0 and win.stop <= n
        assert win.start == 0 or win.start <= win.core_start - before
        assert win.stop == n or win.stop >= win.core_stop + after
    assert len({w.stop - w.start for w in windows}) <= 2
    if n > tile:  # the cores form a grid: a writer can stream each one as a tile of a tiled file
        core = tile - before - after
        assert [w.core_start for w in windows] == list(range(0, n, core))


def test_windows_that_share_their_input_run_once() -> None:
    """U-Net depth 2 at tile 64 (margins 24, cores 16) on 70 x 93: the last cores are narrower than the margin,
    so several edge windows end on the image's edge with the same span. Each span runs once, its cores are cut
    from that one output, they come out in row-major order, and the stitched logits still equal whole-image
    inference."""
    from atrous.train.tiling import iter_tiles

    model = randomize(create_model("unet:width=4,depth=2"))
    image = torch.randn(3, 70, 93, generator=torch.Generator().manual_seed(2))
    plan = plan_tiles(model, (70, 93), 3, tile=64)
    rows, cols = plan.windows(70, 93)
    spans = lambda ws: {(w.start, w.stop) for w in ws}  # noqa: E731
    assert len(spans(rows)) < len(rows) and len(spans(cols)) < len(cols)  # the case this test is about
    inputs: list[tuple[int, ...]] = []

    def on_window(rw, cw, x) -> None:
        inputs.append((rw.start, rw.stop, cw.start, cw.stop))

    region = lambda y0, y1, x0, x1: image[:, y0:y1, x0:x1]  # noqa: E731
    done = [
        (rw.core_start, cw.core_start)
        for rw, cw, _ in iter_tiles(model, region, (70, 93), plan, 3, on_window=on_window)
    ]
    assert len(inputs) == len(set(inputs)) == len(spans(rows)) * len(spans(cols)) == plan.count(70, 93)
    assert done == [(r.core_start, c.core_start) for r in rows for c in cols]
    with torch.no_grad():
        whole = model(image[None])[0]
    got = tiled_logits(model, image, plan, batch=3)
    assert (got - whole).abs().max().item() <= 1e-4 * max(1.0, whole.abs().max().item())
