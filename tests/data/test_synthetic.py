"""Synthetic tasks: pure functions of (seed, index), learnable, and `scale` provably needs its stated RF."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from atrous.data import build_dataset
from atrous.data.synthetic import Scale, need_block, needed_rf
from atrous.errors import SpecError


def digest(spec: str, indices: list[int]) -> str:
    ds = build_dataset(spec)
    h = hashlib.sha256()
    for i in indices:
        x, y = ds[i]
        h.update(x.numpy().tobytes())
        h.update(y.numpy().tobytes())
    return h.hexdigest()


@pytest.mark.parametrize(
    "spec", ["shapes:size=48", "scale:size=48,small=6,large=16", "multiscale:size=64,max_extent=32"]
)
def test_same_seed_and_index_give_identical_samples_in_another_process(spec: str) -> None:
    here = digest(spec, [0, 7, 123])
    code = (
        "import sys; sys.path.insert(0, 'tests/data'); from test_synthetic import digest; "
        f"print(digest({spec!r}, [0, 7, 123]))"
    )
    there = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert here == there


def test_worker_count_does_not_change_the_data() -> None:
    ds = build_dataset("scale:n=24,size=32,small=4,large=10")
    batches = []
    for workers in (0, 2):
        loader = DataLoader(ds, batch_size=8, num_workers=workers)
        batches.append(torch.cat([x for x, _ in loader]))
    assert torch.equal(*batches)


def test_splits_and_seeds_are_different_streams() -> None:
    a = build_dataset("shapes:size=32", split="train")[0][0]
    assert not torch.equal(a, build_dataset("shapes:size=32", split="val")[0][0])
    assert not torch.equal(a, build_dataset("shapes:size=32,seed=1")[0][0])
    assert torch.equal(a, build_dataset("shapes:size=32,seed=0")[0][0])


def test_shapes_is_learnable_by_a_linear_probe() -> None:
    """A 1x1 conv (a per-pixel linear classifier) beats the prior: the image carries the mask."""
    torch.manual_seed(0)
    train = build_dataset("shapes:size=48,n=64")
    x = torch.stack([train[i][0] for i in range(64)])
    y = torch.stack([train[i][1] for i in range(64)])
    probe = torch.nn.Conv2d(3, 2, 1)
    opt = torch.optim.Adam(probe.parameters(), lr=0.05)
    for _ in range(100):
        opt.zero_grad()
        F.cross_entropy(probe(x), y).backward()
        opt.step()
    pred = probe(x).argmax(1)
    dice = 2 * ((pred == 1) & (y == 1)).sum() / ((pred == 1).sum() + (y == 1).sum())
    fg = (y == 1).float().mean()
    prior_dice = 2 * fg / (1 + fg)  # best constant guess: everything foreground
    assert dice > 0.9 and prior_dice < 0.6


def windows(occupancy: np.ndarray, labels: np.ndarray, w: int) -> dict[int, set[bytes]]:
    """Every w x w window of the noise-free picture, by the label of its centre pixel; beyond the border is a
    distinct value (a model sees zero padding, which is not the background)."""
    r = w // 2
    padded = np.pad(occupancy.astype(np.int8), r, constant_values=-1)
    out: dict[int, set[bytes]] = {1: set(), 2: set()}
    ys, xs = np.nonzero(labels)
    for y, x in zip(ys, xs):
        out[int(labels[y, x])].add(padded[y : y + w, x : x + w].tobytes())
    return out


@pytest.mark.parametrize(("small", "large"), [(4, 12), (6, 14)])
def test_scale_needs_exactly_its_stated_rf(small: int, large: int) -> None:
    task = Scale(n=40, size=48, small=small, large=large)
    assert task.needed_rf == needed_rf(small) == 2 * small + 1
    below, at = {1: set(), 2: set()}, {1: set(), 2: set()}
    for i in range(task.n):
        clean, labels, _ = task.sample(i)
        for store, w in ((below, task.needed_rf - 2), (at, task.needed_rf)):
            found = windows(clean > 0, labels, w)
            store[1] |= found[1]
            store[2] |= found[2]
    # Below the bound some small-object windows are identical to large-object windows: no model can tell them.
    assert below[1] & below[2]
    # At the bound no window is shared: the classes are separable from the window alone.
    assert not at[1] & at[2]


def test_scale_labels_are_sizes_and_objects_never_touch() -> None:
    task = Scale(n=20, size=64, small=8, large=24)
    for i in range(task.n):
        _, labels, objs = task.sample(i)
        for o in objs:
            assert o.extent == (8 if o.label == 1 else 24)
        assert (labels[:2] == 0).all() and (labels[-2:] == 0).all()  # a gap to the border


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("scale:small=30,large=20", "need 1 <= small < large"),
        ("scale:large=80", "does not fit"),
        ("shapes:kinds=star", "unknown kind 'star'"),
        ("shapes:sizee=64", "has no option 'sizee'.*did you mean 'size'"),
        ("shape:size=64", "unknown dataset 'shape'.*did you mean 'shapes'"),
        ("multiscale:split=dev", "split 'dev'"),
    ],
)
def test_bad_specs(spec: str, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        build_dataset(spec)


def test_multiscale_classes_are_geometric_sizes() -> None:
    ds = build_dataset("multiscale")
    assert ds.extents == [4, 14, 48] and ds.num_classes == 4


# -- per-pixel needs (need_map) -------------------------------------------------------------------------------


def test_need_block_of_a_small_square_by_hand() -> None:
    # Side 6 among [6, 16]: only the larger class to rule out, so along an axis at offset k the window must show
    # both ends: h >= max(k + 1, 6 - k), i.e. h = 6, 5, 4, 4, 5, 6 for k = 0..5 (RF 13, 11, 9, 9, 11, 13). A
    # pixel takes the better axis: need = min(n(ky), n(kx)). Corner: min(13, 13) = 13 = needed_rf(6); centre
    # pixels (2..3, 2..3): max(3, 4) = max(4, 3) = 4, RF 2 * 4 + 1 = 9; so is every pixel with one offset in 2..3.
    n = [13, 11, 9, 9, 11, 13]
    expected = np.minimum.outer(n, n)
    assert expected[0, 0] == 13 and expected[2, 3] == 9 and expected[1, 1] == 11 and expected[0, 2] == 9
    assert np.array_equal(need_block(6, None, True), expected)


def test_need_block_of_the_largest_class_needs_only_a_run_longer_than_the_next_size() -> None:
    # Side 36 among [4, 12, 36]: nothing larger; any visible run longer than 12 rules out 4 and 12. At offset
    # k < 6 the window shows v = k + h + 1 rows (clipped at the top edge), so v >= 13 takes h = 12 - k: RF
    # 25 - 2k; from k = 6 to 29 it shows 2h + 1 >= 13 at h = 6: RF 13, symmetric at the far side.
    n = [25 - 2 * k for k in range(6)] + [13] * 24 + [25 - 2 * (35 - k) for k in range(30, 36)]
    block = need_block(36, 12, False)
    assert np.array_equal(block, np.minimum.outer(n, n))
    assert (
        block[0, 0] == 25 == needed_rf(12)
        and block[18, 18] == 13
        and block[0, 17] == 13
        and block[2, 4] == 17
    )


def test_need_block_of_a_middle_class_by_hand() -> None:
    # Side 12 among [4, 12, 36]: both ends along an axis rule out 36 and, showing a run of 12 > 4, rule out 4
    # too: h >= max(k + 1, 12 - k), e.g. k = 5: max(6, 7) = 7, RF 15 (the best any pixel gets); corner RF 25.
    block = need_block(12, 4, True)
    assert block[0, 0] == 25 == needed_rf(12) and block[5, 6] == 15 and block.min() == 15
    assert need_block(1, None, True)[0, 0] == 3  # a single pixel: both neighbours in view
    assert need_block(5, None, False)[0, 0] == 1  # one class only: nothing to tell apart


def axis_matches(e: int, s: int) -> np.ndarray:
    """(h, k) -> whether some square of side ``s`` covering the centre shows, along one axis of a window of
    half-width h centred at offset k of a square of side e, exactly what the side-e square shows there."""
    out = np.zeros((e + 1, e), dtype=bool)
    for h in range(e + 1):
        for k in range(e):
            ys = np.arange(k - h, k + h + 1)
            own = (ys >= 0) & (ys < e)
            a = np.arange(k - s + 1, k + 1)[:, None]  # every top end of an s-run through the centre
            out[h, k] = bool((((ys >= a) & (ys < a + s)) == own).all(1).any())
    return out


def brute_need(e: int, extents: list[int]) -> np.ndarray:
    """Needs by exhaustive comparison with every placement of every other size class. A square's occupancy
    in a window is the outer product of its row and column indicators; two with the centre pixel set in both
    are equal iff both factors are, so a window is reproduced by a side-s square iff both axes match."""
    decided = np.ones((e + 1, e, e), dtype=bool)
    for s in extents:
        if s != e:
            m = axis_matches(e, s)
            decided &= ~(m[:, :, None] & m[:, None, :])
    return 2 * np.argmax(decided, axis=0) + 1


@pytest.mark.parametrize("extents", [[6, 16], [4, 12, 36], [4, 14, 48], [3, 4, 5]])
def test_need_block_agrees_with_exhaustive_comparison(extents: list[int]) -> None:
    for i, e in enumerate(extents):
        block = need_block(e, extents[i - 1] if i else None, i < len(extents) - 1)
        assert np.array_equal(block, brute_need(e, extents)), (e, extents)


def test_need_map_of_scale_samples_peaks_at_the_class_need() -> None:
    task = Scale(n=20, size=48, small=6, large=16)
    peak_small = peak_large = 0
    for i in range(task.n):
        need, (_, mask, _) = task.need_map(i), task.sample(i)
        assert need.dtype == np.int64 and need.shape == mask.shape
        assert np.array_equal(need > 1, mask > 0)  # background 1, every object pixel more
        assert (need[mask == 0] == 1).all()
        if (mask == 1).any():
            assert need[mask == 1].max() == needed_rf(6) == 13 and need[mask == 1].min() == 9
            peak_small = max(peak_small, int(need[mask == 1].max()))
        if (mask == 2).any():
            peak_large = max(peak_large, int(need[mask == 2].max()))
    # Large squares are told from small ones by a run of 7 > 6: corners need h = 6, RF 13, like small corners.
    assert peak_small == 13 and peak_large == 13


def test_need_map_of_multiscale_matches_the_class_needs() -> None:
    task = build_dataset("multiscale:size=64,max_extent=32,n=16")
    assert task.extents == [4, 11, 32]
    peaks = {1: 0, 2: 0, 3: 0}
    for i in range(task.n):
        need, mask = task.need_map(i), task.sample(i)[1]
        assert np.array_equal(need > 1, mask > 0)
        for c in peaks:
            if (mask == c).any():
                peaks[c] = max(peaks[c], int(need[mask == c].max()))
    # 2s + 1 for the two smaller classes; the largest needs only a run longer than 11: 2 * 11 + 1.
    assert peaks == {1: 9, 2: 23, 3: 23}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("shapes:size=48", "only the scale and multiscale tasks"),
        ("scale:size=48,shape=disc", "squares only, got shape='disc'"),
        ("multiscale:size=64,max_extent=32,shape=disc", "squares only"),
    ],
)
def test_need_map_refuses_tasks_without_exact_needs(spec: str, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        build_dataset(spec).need_map(0)


def test_instances_with_the_same_parameters_share_their_rendered_items(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The lab builds each task and seed once per model: the images are drawn once per process."""
    from atrous.data import synthetic

    monkeypatch.setattr(synthetic, "_RENDERED", synthetic.OrderedDict())
    spec = "scale:size=16,n=4,small=3,large=6"
    first, again, other = (build_dataset(spec, seed=s) for s in (3, 3, 4))
    assert first[1][0] is again[1][0]  # drawn once, by the first
    assert not torch.equal(other[1][0], first[1][0])
    # Beyond CACHE_BYTES in all, the least recently built split is dropped (its holders keep their items).
    monkeypatch.setattr(synthetic, "CACHE_BYTES", first.nbytes * 2)
    build_dataset(spec, seed=5)
    assert len(synthetic._RENDERED) == 2 and first[1][0] is again[1][0]
    fresh = build_dataset(spec, seed=3)[1][0]
    assert fresh is not first[1][0] and torch.equal(fresh, first[1][0])  # drawn again, the same image
