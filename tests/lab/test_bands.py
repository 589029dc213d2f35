"""Accuracy by needed-RF band, checked with hand-built models whose every answer is known."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from atrous.data import build_dataset
from atrous.errors import SpecError
from atrous.lab.bands import ambiguous_accuracy, band_accuracy, iou_loss_bound, need_counts, tally

SNR = 50.0  # bright pixels ~ N(50, 1), background ~ N(0, 1): thresholding at 25 is exact
SCALE = f"scale:size=48,n=8,snr={SNR:g},small=6,large=16"
MULTI = f"multiscale:size=48,n=8,snr={SNR:g},max_extent=24"


def largest_class_model(classes: int) -> torch.nn.Module:
    """A 1x1 conv set by hand: background logit 0, the largest class's mean(x) - snr/2 (positive exactly on
    bright pixels), every other class -1000. So: every bright pixel is called the largest class."""
    conv = torch.nn.Conv2d(3, classes, 1)
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.fill_(-1000.0)
        conv.bias[0] = 0.0
        conv.weight[classes - 1] = 1 / 3
        conv.bias[classes - 1] = -SNR / 2
    return conv


class EdgeModel(torch.nn.Module):
    """Two classes: a bright pixel with background in its 3x3 neighbourhood is "small" (1), a bright pixel
    without is "large" (2). Per square of side e its answers are fixed: the e^2 - (e-2)^2 border pixels
    say small, the (e-2)^2 inner ones large."""

    def __init__(self) -> None:
        super().__init__()
        self.seen_training: bool | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen_training = self.training
        bright = (x.mean(1, keepdim=True) > SNR / 2).float()
        inner = -F.max_pool2d(-bright, 3, stride=1, padding=1)  # min over the 3x3 neighbourhood
        return torch.cat([1 - bright, bright - inner, inner], 1)


def val_masks(spec: str) -> np.ndarray:
    """The masks of the validation split as the lab's runs see it for seed 0, from an explicit spec: n = max(32,
    8 // 4) = 32, split val, seed 0."""
    ds = build_dataset(spec + ",n=32,split=val,seed=0")
    return np.stack([ds[i][1].numpy() for i in range(len(ds))])


def squares(spec: str, seed: int = 0) -> dict[int, int]:
    """Number of squares per label in the seed's validation split."""
    ds = build_dataset(spec + f",n=32,split=val,seed={seed}")
    counts: dict[int, int] = {}
    for i in range(len(ds)):
        for o in ds.sample(i)[2]:
            counts[o.label] = counts.get(o.label, 0) + 1
    return counts


def test_edge_model_accuracy_by_band_is_the_per_square_fraction() -> None:
    # Side 6 among [6, 16] (test_synthetic): need 9 where an offset is 2..3 (20 pixels), 11 or 13 elsewhere
    # (16). Edge pixels (an offset 0 or 5) among the 16: all but the 4 with both offsets in {1, 4}: 12 -> 0.75;
    # among the 20: an offset in {0, 5} and the other in 2..3: 8 -> 0.4.
    # Side 16: a run of 7 > 6 decides, so need > 9 only where both offsets are in {0, 1, 14, 15} (16 pixels);
    # inner ones (offsets 1..14) among them: both in {1, 14}: 4 -> 0.25; the other 240 hold 196 - 4 = 192
    # inner pixels -> 0.8.
    assert squares(SCALE) == {1: 67, 2: 60}
    model = EdgeModel()
    model.train()
    small, large = band_accuracy(model, SCALE, 9)
    assert model.seen_training is False and model.training  # ran in eval mode, then restored
    assert small == {
        "class": "small (6px)",
        "ambiguous": {"pixels": 16 * 67, "correct": 12 * 67, "accuracy": 0.75},
        "decidable": {"pixels": 20 * 67, "correct": 8 * 67, "accuracy": 0.4},
    }
    assert large == {
        "class": "large (16px)",
        "ambiguous": {"pixels": 16 * 60, "correct": 4 * 60, "accuracy": 0.25},
        "decidable": {"pixels": 240 * 60, "correct": 192 * 60, "accuracy": 0.8},
    }
    assert ambiguous_accuracy(model, SCALE, 9) == [0.75, 0.25]
    # RF 11: only the corners (need 13) stay ambiguous; small corners are edges, large corners are not inner.
    assert ambiguous_accuracy(model, SCALE, 11) == [1.0, 0.0]
    # RF 13 and a global RF decide every pixel: accuracy over the whole class, 20 / 36 and 196 / 256.
    for rf in (13, None):
        small, large = band_accuracy(model, SCALE, rf)
        assert small["ambiguous"] == {"pixels": 0, "correct": 0, "accuracy": None}
        assert small["decidable"]["accuracy"] == pytest.approx(20 / 36)
        assert large["decidable"]["accuracy"] == pytest.approx(196 / 256)
    assert ambiguous_accuracy(model, SCALE, None) == [None, None]


def test_the_seed_selects_the_validation_split_as_in_training() -> None:
    # A run with seed s validates on the split drawn with seed s (the spec has no seed=): 73 small squares.
    assert squares(SCALE, seed=1) == {1: 73, 2: 60}
    small, _ = band_accuracy(EdgeModel(), SCALE, 9, seed=1)
    assert small["ambiguous"] == {"pixels": 16 * 73, "correct": 12 * 73, "accuracy": 0.75}


def test_largest_class_model_is_right_exactly_on_the_largest_class() -> None:
    # Extents [4, 10, 24]. Side 4: h >= max(k + 1, 4 - k) = 4, 3, 3, 4: need 9 at the 4 corners, 7 elsewhere.
    # Side 10 (both ends): h >= 10, 9, 8, 7, 6, 6, 7, 8, 9, 10: need 13 only where an offset is 4..5 (36
    # pixels), more on the other 8 x 8 = 64. Side 24, the largest (a run of 11 > 10): h = 10 - k at k < 5,
    # need 21 - 2k, 11 from k = 5 to 18: need > 13 where both offsets are in 0..3 or 20..23: 64 of 576.
    assert squares(MULTI) == {1: 68, 2: 53, 3: 26}
    model = largest_class_model(4)
    at13, at7 = band_accuracy(model, MULTI, 13), band_accuracy(model, MULTI, 7)
    assert [b["class"] for b in at13] == ["4px", "10px", "24px"]
    counts = [[(b["ambiguous"]["pixels"], b["decidable"]["pixels"]) for b in bands] for bands in (at13, at7)]
    assert counts[0] == [(0, 16 * 68), (64 * 53, 36 * 53), (64 * 26, 512 * 26)]
    assert counts[1] == [(4 * 68, 12 * 68), (100 * 53, 0), (576 * 26, 0)]
    masks = val_masks(MULTI)
    for c, b in enumerate(at13, start=1):
        amb, dec = b["ambiguous"], b["decidable"]
        assert amb["pixels"] + dec["pixels"] == (masks == c).sum()  # every pixel of the class, once
        assert amb["correct"] + dec["correct"] == (masks == c).sum() * (c == 3)
    assert [(b["ambiguous"]["accuracy"], b["decidable"]["accuracy"]) for b in at13] == [
        (None, 0.0),
        (0.0, 0.0),
        (1.0, 1.0),
    ]
    assert ambiguous_accuracy(model, MULTI, 7) == [0.0, 0.0, 1.0]


def test_the_iou_a_short_rf_can_cost_is_counted_before_any_model_runs() -> None:
    """The counts of the test above, read without a model; then the bound by hand. At RF 13 (see above) the
    24 px class has 64 of its 576 pixels per square beyond reach (m), the 10 px class 64 of 100 (f, which the
    model may call 24 px), the 4 px class none: IoU >= (N - m) / (N + f)."""
    pixels = need_counts(MULTI)
    assert np.array_equal(pixels, tally(largest_class_model(4), MULTI).pixels)
    m, f, n = 64 * 26, 64 * 53, 576 * 26
    assert iou_loss_bound(pixels, 3, 13) == pytest.approx((m + f) / (n + f))
    assert iou_loss_bound(pixels, 2, 13) == pytest.approx((64 * 53 + 64 * 26) / (100 * 53 + 64 * 26))
    assert iou_loss_bound(pixels, 1, 13) == pytest.approx(64 * 79 / (16 * 68 + 64 * 79))  # all of it is f
    assert iou_loss_bound(pixels, 3, 49) == 0.0  # an RF that covers every need costs nothing


def test_one_pass_splits_at_any_rf() -> None:
    t = tally(EdgeModel(), SCALE)
    assert t.bands(9) == band_accuracy(EdgeModel(), SCALE, 9)
    assert t.ambiguous(11) == [1.0, 0.0]
    assert t.pixels[0].sum() == t.pixels[0, 1] == 32 * 48 * 48 - 36 * 67 - 256 * 60  # background: need 1


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("shapes:size=48,n=8", "only the scale and multiscale tasks"),
        ("scale:size=48,n=8,shape=disc", "squares only"),
    ],
)
def test_tasks_without_exact_needs_are_refused(data: str, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        band_accuracy(EdgeModel(), data, 9)
