"""``data stats``: objects found against an independent flood fill and against what the generators promise;
coverage against the gradient oracle and the lab's needed RF; bad input as one line."""

from __future__ import annotations

import json
from collections import Counter, deque
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from atrous.cli import main
from atrous.data import build_dataset
from atrous.data.components import components
from atrous.data.coverage import ModelView, coverage, covered_flags
from atrous.data.stats import DatasetError, scan, size_buckets, summary
from atrous.data.synthetic import needed_rf
from atrous.models.registry import create_model
from atrous.rf import schedule
from oracle import gradient_support


def flood_fill(mask: np.ndarray) -> list[tuple[tuple[int, int, int, int], int]]:
    """(box, area) of every 4-connected component by breadth-first search: shares no code with the runs."""
    seen = np.zeros_like(mask, dtype=bool)
    out = []
    for y, x in zip(*np.nonzero(mask)):
        if seen[y, x]:
            continue
        queue, pix = deque([(y, x)]), []
        seen[y, x] = True
        while queue:
            a, b = queue.popleft()
            pix.append((a, b))
            for c, d in ((a + 1, b), (a - 1, b), (a, b + 1), (a, b - 1)):
                if 0 <= c < mask.shape[0] and 0 <= d < mask.shape[1] and mask[c, d] and not seen[c, d]:
                    seen[c, d] = True
                    queue.append((c, d))
        ys, xs = zip(*pix)
        out.append(((min(ys), min(xs), max(ys) + 1, max(xs) + 1), len(pix)))
    return sorted(out)


@pytest.mark.parametrize("seed", range(4))
def test_components_match_flood_fill(seed: int) -> None:
    mask = np.random.default_rng(seed).random((23, 31)) < 0.45  # many shapes, diagonals, one-pixel runs
    got = sorted((c.box, c.area) for c in components(mask))
    assert got == flood_fill(mask)
    assert len(got) > 20


def test_scale_extents_are_the_generator_sides() -> None:
    ds = build_dataset("scale:size=64,small=6,large=20,n=30")
    objs = scan(ds, progress=False)
    promised = [o for i in range(len(ds)) for o in ds.sample(i)[2]]
    assert len(objs.found) == len(promised)  # gap >= 2: objects never merge
    for label, side in ((1, 6), (2, 20)):
        found = objs.of_class(label)
        assert {(f.obj.height, f.obj.width, f.obj.area) for f in found} == {(side, side, side * side)}
        assert len(found) == sum(o.label == label for o in promised)
    data = summary(objs)
    assert [c["extent"]["p5"] for c in data["classes"]] == [6, 20]
    assert [c["border"] for c in data["classes"]] == [0, 0]  # place() keeps a gap to the border
    mask_pixels = sum((ds.sample(i)[1] == 2).sum() for i in range(len(ds)))
    assert data["classes"][1]["pixel_share"] == pytest.approx(mask_pixels / (30 * 64 * 64))


def test_multiscale_extents_are_the_size_classes() -> None:
    ds = build_dataset("multiscale:n=12")
    data = summary(scan(ds, progress=False))
    assert [c["extent"]["max"] for c in data["classes"]] == ds.extents
    assert [c["extent"]["p5"] for c in data["classes"]] == ds.extents


def test_coverage_matches_gradient_support() -> None:
    """Each object's flag against the oracle's support at the object's centre pixel."""
    ds = build_dataset("scale:size=40,small=4,large=10,n=4")
    objs = scan(ds, progress=False)
    model = create_model("convstack:rates=1,2,1", norm=None)  # RF 9: covers the small side, not the large
    view = ModelView(model, "stack", 3)
    flags = []
    for f in objs.found:
        grad = gradient_support(model, (3, 40, 40), f.obj.centre)
        top, left, crop = f.obj.crop(0, f.size)
        flags.append(bool(grad[top : top + crop.shape[0], left : left + crop.shape[1]][crop].all()))
    got = coverage(objs, view)["classes"]
    labels = np.array([f.obj.label for f in objs.found])
    assert got[1]["objects_covered"] == np.mean(np.array(flags)[labels == 1]) == 1.0
    assert got[2]["objects_covered"] == np.mean(np.array(flags)[labels == 2]) == 0.0


def test_holes_count_as_not_covered() -> None:
    objs = scan(build_dataset("scale:size=48,small=5,large=11,n=6"), progress=False)
    gridded = ModelView(create_model("convstack:rates=2,2,2"), "gridded", 3)  # RF 13, holes at odd offsets
    solid = ModelView(create_model("convstack:rates=1,2,3"), "solid", 3)  # RF 13, hole-free
    assert coverage(objs, solid)["classes"][2]["objects_covered"] == 1.0
    assert coverage(objs, gridded)["classes"][2]["objects_covered"] == 0.0


@pytest.mark.parametrize(
    "spec", ["scale:size=40,small=4,large=12,n=8", "multiscale:size=48,max_extent=12,n=6"]
)
def test_every_pixel_coverage_switches_at_the_lab_needed_rf(spec: str) -> None:
    """The lab's criterion (every pixel sees its object and one pixel beyond): full coverage of a class of
    side s from RF needed_rf(s) = 2 s + 1 on, none two pixels below. Checked on the smallest class, the one
    the lab's need is about: a large object two pixels from the border is not covered by every pixel at its
    need, because paths through a wide-rate layer's zero padding are cut (the engine and the gradient oracle
    agree on that), which the lab's unbounded-input derivation does not see."""
    ds = build_dataset(spec)
    objs = scan(ds, progress=False)
    for label, side in [(1, ds.extents[0])]:
        need = needed_rf(side)
        for rf, share in ((need, 1.0), (need - 2, 0.0)):
            rates = ",".join(map(str, schedule.suggest(rf, limit=1)[0].rates))
            view = ModelView(create_model(f"convstack:rates={rates}"), rates, 3)
            got = coverage(objs, view, margin=1, anchor="every")["classes"][label]["objects_covered"]
            assert got == share, (spec, side, rf)


def test_global_rf_covers_everything_and_says_why() -> None:
    objs = scan(build_dataset("scale:size=32,small=4,large=12,n=3"), progress=False)
    cov = coverage(objs, ModelView(create_model("deeplabv3_small"), "dl", 3))
    assert all(row["objects_covered"] == 1.0 for row in cov["classes"].values())
    assert "global" in cov["notes"][0] and "aten.mean" in cov["notes"][0]


def write_folder(root: Path, masks: list[np.ndarray]) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i, m in enumerate(masks):
        Image.fromarray(np.zeros((*m.shape, 3), np.uint8)).save(root / "images" / f"{i}.png")
        Image.fromarray(m.astype(np.uint8)).save(root / "masks" / f"{i}.png")
    (root / "classes.json").write_text(json.dumps(["bg", "cat", "dog"]))
    return root


def test_sizes_and_missing_class(tmp_path: Path, capsys) -> None:
    a, b = np.zeros((32, 32), int), np.zeros((40, 48), int)
    a[2:8, 3:9] = 1
    b[0:10, 0:4] = 1  # touches the border
    root = write_folder(tmp_path / "d", [a, b])
    assert main(["data", "stats", f"folder:{root}", "--model", "convstack:rates=1,2", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    cat, dog = data["classes"]
    assert (cat["objects"], cat["border"], cat["height"]["max"], cat["width"]["max"]) == (2, 1, 10, 6)
    assert dog["objects"] == 0 and dog["note"] == "no objects of class 'dog' in 2 masks"
    assert set(data["by_size"]) == {"32x32", "40x48"}
    assert set(data["coverage"]["classes"]["1"]["by_size"]) == {"32x32", "40x48"}
    # RF 7 from the centre: the 6 x 6 square is covered, the 10 x 4 bar is not.
    assert data["coverage"]["classes"]["1"]["objects_covered"] == 0.5
    # One bucket: both images judged at 32 x 32, the bar in the top-left sub-rectangle of its image (it
    # touches that corner), so the answers do not change.
    argv = ["data", "stats", f"folder:{root}", "--model", "convstack:rates=1,2", "--json", "--max-sizes", "1"]
    assert main(argv) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["size_buckets"] == [{"analysed_at": [32, 32], "sizes": [[32, 32], [40, 48]]}]
    assert data["coverage"]["classes"]["1"]["objects_covered"] == 0.5
    assert set(data["coverage"]["classes"]["1"]["by_size"]) == {"32x32"}


def test_size_buckets_are_sub_rectangles_of_their_members() -> None:
    rng = np.random.default_rng(0)
    sizes = Counter(
        {(int(h), int(w)): int(n) for h, w, n in rng.integers([100, 100, 1], [500, 500, 9], (60, 3))}
    )
    at = size_buckets(sizes, 8)
    assert set(at) == set(sizes) and len(set(at.values())) == 8
    for rep in set(at.values()):
        members = [s for s in at if at[s] == rep]
        assert rep == (min(h for h, _ in members), min(w for _, w in members))
    assert size_buckets(sizes, 60) == {s: s for s in sizes}
    # The greedy merge keeps like with like: two tight clusters of sizes end up in two buckets at their minima.
    two = Counter({(300 + i, 400 + i): 1 for i in range(5)} | {(400 + i, 300 + i): 1 for i in range(5)})
    assert sorted(set(size_buckets(two, 2).values())) == [(300, 400), (400, 300)]


def many_sizes_folder(root: Path) -> Path:
    """Fourteen masks of fourteen sizes, a square of side 6-13 in each, some at a border or a corner, and a
    90 x 90 mask with a 50 px square in the middle."""
    rng = np.random.default_rng(1)
    masks = []
    for i in range(14):
        m = np.zeros((40 + 3 * i, 64 - 2 * i), int)
        side = 6 + i % 8
        y = [0, m.shape[0] - side, int(rng.integers(0, m.shape[0] - side))][i % 3]
        x = [m.shape[1] - side, 0, int(rng.integers(0, m.shape[1] - side))][i % 3]
        m[y : y + side, x : x + side] = 1 + i % 2
        masks.append(m)
    big = np.zeros((90, 90), int)
    big[20:70, 20:70] = 1
    return write_folder(root, [*masks, big])


@pytest.mark.parametrize(("rates", "most"), [("1,2,3,4", 3), ("1,2,4,8,16", 1)])
def test_buckets_never_overstate_coverage(tmp_path: Path, rates: str, most: int) -> None:
    """A stride-1 stack judged in size buckets against every size on its own, object by object: a bucket
    never covers an object that its own image does not. With RF 21 and 3 buckets the answers are
    the same; with RF 63 and one bucket (at 40 x 38) the 50 px square, covered in its 90 x 90 image, does
    not fit the bucket and is the one object lost."""
    objs = scan(build_dataset(f"folder:{many_sizes_folder(tmp_path / 'd')}"), progress=False)
    view = ModelView(create_model(f"convstack:rates={rates}"), rates, 3)
    exact = covered_flags(objs, view)
    at = size_buckets(objs.sizes, most)
    assert len(set(at.values())) == most
    bucketed = covered_flags(objs, view, at=at)
    assert not (bucketed & ~exact).any()
    lost = [f.obj.height for f, b, e in zip(objs.found, bucketed, exact) if e and not b]
    assert lost == ([] if most == 3 else [50])
    if most == 3:
        assert exact.sum() == 14  # every small square: the comparison is not between two empty sets


def test_many_sizes_on_the_command_line(tmp_path: Path, capsys) -> None:
    root = many_sizes_folder(tmp_path / "d")
    assert (
        main(["data", "stats", f"folder:{root}", "--model", "convstack:rates=1,2", "--max-sizes", "3"]) == 0
    )
    out = capsys.readouterr().out
    text = " ".join(out.split())  # rich wraps at 80 columns
    assert "15 image sizes, in 3 buckets" in text and "a smaller image only adds borders" in text
    assert main(["suggest", f"folder:{root}", "--max-sizes", "3", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert len(data["size_buckets"]) == 3 and len(data["sizes"]) == 15


def test_bad_input_is_one_line(tmp_path: Path, capsys) -> None:
    empty = tmp_path / "empty"
    (empty / "images").mkdir(parents=True)
    (empty / "masks").mkdir()
    blank = write_folder(tmp_path / "blank", [np.zeros((16, 16), int)])
    for argv in (
        ["data", "stats", f"folder:{empty}"],
        ["data", "stats", f"folder:{blank}"],
        ["suggest", f"folder:{blank}"],
        ["data", "stats", "scale:n=2", "--erf"],
        ["data", "stats", "nonsense:x"],
        ["suggest", f"folder:{empty}"],
        ["suggest", "scale:n=2", "--max-sizes", "0"],
        ["data", "stats", "scale:n=2", "--model", "convstack", "--max-sizes", "0"],
        ["suggest", "scale:n=2", "--top", "0"],
        ["suggest", "scale:n=2", "--classes", "1,9"],
        ["suggest", "scale:n=2", "--classes", "-1"],
    ):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("atrous: error:") and err.count("\n") == 1, err
    with pytest.raises(DatasetError, match="no objects in 1 masks"):
        summary(scan(build_dataset(f"folder:{blank}"), progress=False))


def brute_thickness(mask: np.ndarray) -> int:
    """The largest t with a t x t square of True somewhere, by trying every square."""
    h, w = mask.shape
    return max(
        t for t in range(1, min(h, w) + 1)
        if any(mask[y : y + t, x : x + t].all() for y in range(h - t + 1) for x in range(w - t + 1))
    )  # fmt: skip


@pytest.mark.parametrize("seed", range(3))
def test_thickness_is_the_largest_inner_square(seed: int) -> None:
    rng = np.random.default_rng(seed)
    mask = np.zeros((24, 24), bool)
    for y, x, h, w in rng.integers([0, 0, 1, 1], [18, 18, 14, 14], (4, 4)):
        mask[y : y + h, x : x + w] = True  # overlapping rectangles: L shapes, crosses, bars
    for c in components(mask):
        alone = np.zeros_like(mask)
        for r, s, e in zip(c.rows, c.starts, c.ends):
            alone[r, s:e] = True
        assert c.thickness == brute_thickness(alone)
    bar = np.zeros((12, 12), bool)
    bar[1:11, 4:7] = True
    assert components(bar)[0].thickness == 3  # 10 x 3: as thick as its narrow side, not its extent
