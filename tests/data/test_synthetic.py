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
from atrous.data.synthetic import Scale, needed_rf
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
