"""The lab's stopping rule and run health, on hand-made curves, and the property the audit rests on: a run the rule
stops is exactly the beginning of a longer run with the same seed."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from atrous.lab import audit, convergence
from atrous.lab.convergence import (
    ANNEAL_FACTOR,
    BELOW_FLOOR,
    CONVERGED,
    FLOOR_SLACK,
    IMPROVING,
    MIN_EPOCHS,
    TRIVIAL,
    WINDOW,
)
from atrous.lab.jobs import Job, run_job
from atrous.train.loop import TIMING_KEYS

pytestmark = pytest.mark.usefixtures("cpu_only")


OK = [0.9, 0.8, 0.7]  # every class predicted
NO_REACH = {"out_of_reach": [], "floors": []}  # a run's record of what its RF decides: nothing known


def flat(miou: list[float]) -> list[float]:
    """A training loss that no longer falls, one value per epoch of ``miou``."""
    return [0.3] * len(miou)


def test_never_stops_before_the_minimum_even_on_a_flat_start() -> None:
    start = [0.48] * (MIN_EPOCHS - 1)
    assert not convergence.should_stop(start, flat(start), OK)
    assert convergence.should_stop(
        [0.48] * MIN_EPOCHS, flat([0.48] * MIN_EPOCHS), OK
    )  # flat for longer than the window: a plateau
    # Solved is solved, however early: a run at >= SOLVED cannot leave more than the audit's tolerance.
    solved, almost = [0.2] * (MIN_EPOCHS - 2) + [convergence.SOLVED], [0.2] * (MIN_EPOCHS - 2) + [0.989]
    assert convergence.should_stop(solved, flat(solved), OK)
    assert not convergence.should_stop(almost, flat(almost), OK)


def test_a_late_climb_keeps_the_run_going() -> None:
    curve = [0.48] * MIN_EPOCHS + [0.50, 0.60, 0.75]
    assert not convergence.should_stop(
        curve, flat(curve), OK
    )  # the last WINDOW epochs gained more than MIN_GAIN
    # The rule fires on the first epoch whose window adds nothing: here the first epoch at the minimum.
    assert convergence.stop_epoch([0.48] * 20, flat([0.48] * 20), [OK] * 20) == MIN_EPOCHS
    rising = [0.1 * min(e, 9) for e in range(1, 21)]  # climbs to 0.9 at epoch 9, then flat
    assert convergence.stop_epoch(rising, flat(rising), [OK] * 20) == 9 + WINDOW


def test_a_dip_while_the_training_loss_falls_keeps_the_run_going() -> None:
    """The shape of Exercise 4's rate-3 head on audit seeds 51 and 52: its validation mIoU dips from 0.95 to 0.93
    while its training loss falls by more than half, then climbs to 0.97. The mIoU alone calls the dip a plateau;
    the falling loss says the model is still learning. A model that overfits (mIoU down, loss flat) stops."""
    dip = [0.5, 0.7, 0.85, 0.9, 0.93, 0.94, 0.945, 0.95, 0.95, 0.945, 0.94, 0.935, 0.93, 0.93, 0.935, 0.94]
    falling = [0.5 * 0.9**e for e in range(len(dip))]  # a tenth off every epoch: 47 % over a window of 6
    assert convergence.plateaued(dip, flat(dip)) and not convergence.plateaued(dip, falling)
    assert not convergence.should_stop(dip, falling, OK) and convergence.should_stop(dip, flat(dip), OK)
    # The loss's own window: flat once its lowest of the last WINDOW epochs is within MAX_LOSS_DROP of before.
    edge = [1.0] * MIN_EPOCHS + [1 - convergence.MAX_LOSS_DROP] * WINDOW
    assert convergence.plateaued([0.6] * len(edge), edge)
    assert not convergence.plateaued([0.6] * len(edge), [*edge[:-1], edge[-1] - 0.01])
    # A drop of more than MAX_LOSS_DROP that happened WINDOW + 1 epochs ago is before the window: flat.
    old_drop = [1.0] * (MIN_EPOCHS - 1) + [0.5] * (WINDOW + 1)
    assert convergence.plateaued([0.6] * len(old_drop), old_drop)
    new_drop = [1.0] * MIN_EPOCHS + [0.5] * WINDOW  # the drop at the window's first epoch: inside it
    assert not convergence.plateaued([0.6] * len(new_drop), new_drop)
    with pytest.raises(ValueError, match="training loss"):
        convergence.should_stop(dip, falling[:-1], OK)
    with pytest.raises(ValueError, match="training loss"):
        convergence.plateaued(dip, falling[:-1])


def test_a_falling_loss_neither_delays_a_solved_run_nor_counts_as_converged_at_the_cap() -> None:
    falling = [0.5 * 0.8**e for e in range(20)]
    solved = [0.5, 0.8, 0.95, 0.992] + [0.995] * 16
    assert convergence.stop_epoch(solved, falling, [OK] * 20) == 4  # solved is solved, whatever the loss does
    flat_miou = [0.7] * 20
    assert convergence.stop_epoch(flat_miou, falling, [OK] * 20) == 20  # never fires: trains to the cap
    assert convergence.health(flat_miou, falling, OK) == IMPROVING
    assert convergence.health(flat_miou, flat(flat_miou), OK) == CONVERGED


def test_solved_stops_at_once() -> None:
    fast = [0.5, 0.9, 0.98, 0.999] + [1.0] * 20
    assert convergence.stop_epoch(fast, flat(fast), [OK] * 24) == 4
    # The partial-solution clause comes first: no stop while a class is never predicted.
    assert convergence.stop_epoch(fast[:4], flat(fast[:4]), [OK, [1.0, 0.0, 0.99], [1.0, 0.0, 0.99], OK]) == 4


def test_never_stops_on_a_partial_solution() -> None:
    """The audit's context module (seed 40): 0.61 mIoU with the small class never predicted for 30 epochs, then
    solved. A plateau with a dead class is not a reason to stop."""
    dead, alive = [1.0, 0.0, 0.83], [1.0, 0.95, 0.99]
    curve, ious = [0.61] * 20 + [0.98] * 10, [dead] * 20 + [alive] * 10
    assert not convergence.should_stop(
        [0.61] * 20, flat([0.61] * 20), dead
    )  # flat for 20 epochs: a plateau, but a class is dead
    assert (
        convergence.stop_epoch(curve, flat(curve), ious) == 21 + WINDOW
    )  # after the climb, a full window without gain

    plateau = [0.7] * (MIN_EPOCHS + WINDOW)
    assert convergence.health(plateau, flat(plateau), [0.9, 0.5, 0.6]) == CONVERGED
    assert convergence.health([*plateau[:-1], 0.9], flat([*plateau[:-1], 0.9]), [0.9, 0.5, 0.6]) == IMPROVING
    assert (
        convergence.health([0.5] * 3, flat([0.5] * 3), [0.9, 0.5, 0.6]) == IMPROVING
    )  # the cap came before the minimum
    # Background and the large class learnt, the small class never predicted (check seed 20's dilated U-Net).
    assert convergence.health(plateau, flat(plateau), [0.977, 0.0, 1.0]) == TRIVIAL
    assert convergence.health(plateau, flat(plateau), [0.81, None, 0.005]) == TRIVIAL
    assert (
        convergence.health(plateau, flat(plateau), [0.81, None, 0.02]) == CONVERGED
    )  # an absent class is not a failure


def test_audit_reads_the_rule_off_the_long_curve() -> None:
    job = Job("m", "d", 40, steps=8 * 4, batch_size=8, lr=1e-3, label="x")
    curve = [0.3, 0.5, 0.6, 0.7, 0.8, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9] + [0.95] * 12
    history = [
        {"step": 4 * (e + 1), "train_loss": 0.3, "val": {"miou": m, "iou": [0.9, m, m]}}
        for e, m in enumerate(curve)
    ]
    row = audit.audit_run(job, {"history": history, **NO_REACH}, epoch_steps=4)
    # The cap is 8 epochs (32 steps / 4), before the plateau is seen: the rule trains all 8.
    assert row["stop_epoch"] == 8 and row["miou_at_stop"] == 0.9 and row["miou_long"] == 0.95
    assert row["left_on_table"] == pytest.approx(0.05) and row["health_at_stop"] == IMPROVING
    summary = audit.summarize([row, {**row, "left_on_table": 0.0, "label": "y"}])
    assert summary["within_tolerance"] == 1 and summary["share_within"] == 0.5 and not summary["meets_target"]
    assert summary["called_converged"] == 0  # both stopped at the cap still improving
    called = {**row, "health_at_stop": CONVERGED}
    summary = audit.summarize([called, {**called, "left_on_table": 0.0}, {**row, "left_on_table": 0.0}])
    assert (summary["called_converged"], summary["converged_within"], summary["within_tolerance"]) == (
        2,
        1,
        2,
    )
    assert "Of the 2 runs the rule called converged, 1 are within" in audit.markdown(summary, [called])

    # The audit reads the loss too: a flat mIoU over a falling loss is still learning. Cap 20 epochs here.
    job20 = replace(job, steps=4 * 20)
    curve = [0.5, 0.7, 0.8] + [0.85] * 21
    loss = [1.0, 0.6, 0.4] + [0.3 * 0.8**e for e in range(15)] + [0.3 * 0.8**14] * 6
    history = [
        {"step": 4 * (e + 1), "train_loss": lo, "val": {"miou": m, "iou": [0.9, m, m]}}
        for e, (m, lo) in enumerate(zip(curve, loss))
    ]
    row = audit.audit_run(job20, {"history": history, **NO_REACH}, epoch_steps=4)
    assert row["stop_epoch"] == 20 and row["health_at_stop"] == IMPROVING  # the loss fell until epoch 18
    for h in history:
        h["train_loss"] = 0.3
    row = audit.audit_run(job20, {"history": history, **NO_REACH}, epoch_steps=4)
    assert row["stop_epoch"] == MIN_EPOCHS and row["health_at_stop"] == CONVERGED


def test_a_stopped_run_is_the_prefix_of_a_longer_one(tmp_path: Path) -> None:
    """Constant learning rate after warm-up, and weight averaging that does not know the budget: the first epochs
    of a run do not depend on how many steps it may take, which the audit relies on; the audit's long runs differ
    only in their last epochs, which anneal (their learning rate read back from the run's own records)."""
    short = Job("convstack:width=4", "scale:size=16,n=32,small=2,large=5", 3, 12, 8, 3e-3, warmup=2, ema=0.9)
    long = replace(short, steps=40, stop_early=False)  # 10 epochs of 4 steps: the last 3 annealed
    a, b = run_job(replace(short, stop_early=False), str(tmp_path)), run_job(long, str(tmp_path))

    def strip(history: list[dict]) -> list[dict]:
        return [{k: v for k, v in h.items() if k not in TIMING_KEYS} for h in history]

    assert len(b["history"]) == 10
    # The rate each epoch ran at: full for 7 epochs, then the last 3 annealed.
    assert [h["lr"] for h in b["history"]] == pytest.approx([3e-3] * 7 + [3e-3 * ANNEAL_FACTOR] * 3)
    rule_run = run_job(short, str(tmp_path))  # the lab's own run: the rule, a constant rate
    assert strip(rule_run["history"]) == strip(b["history"])[: len(rule_run["history"])]
    assert a["health"] in (CONVERGED, IMPROVING, TRIVIAL)


def test_final_anneal_covers_the_last_epochs() -> None:
    factors = [convergence.final_anneal(16 * e, 16, 24 * 16) for e in range(1, 25)]
    assert factors == [1.0] * 20 + [ANNEAL_FACTOR] * 4  # set after epoch 21: epochs 22-24 run annealed


def test_a_class_out_of_the_models_reach_is_not_a_training_failure() -> None:
    """Rates 1,1,1 (RF 13) on squares of 13 and 19 px: even their centres need a wider window to tell the two
    sizes apart, so neither class can be decided anywhere; the dilated twin (RF 33) can. Never predicting a class
    out of reach leaves the run healthy; the same curve with the class within reach is a partial solution."""
    from atrous.lab.jobs import out_of_reach

    data = "scale:size=48,n=8,small=13,large=19"
    assert out_of_reach("aspp_net:width=4,rates=1,1,1", data) == {1, 2}
    assert out_of_reach("aspp_net:width=4,rates=1,3,6", data) == frozenset()
    assert (
        out_of_reach("aspp_net:width=4,rates=1,1,1", "shapes:size=16,n=4") == frozenset()
    )  # no size classes
    plateau, dead = [0.6] * (MIN_EPOCHS + WINDOW), [0.9, 0.0, 0.8]
    assert convergence.health(plateau, flat(plateau), dead) == TRIVIAL
    excused = convergence.Reach(out_of_reach=frozenset({1}))
    assert convergence.health(plateau, flat(plateau), dead, excused) == CONVERGED
    assert convergence.stop_epoch(plateau, flat(plateau), [dead] * len(plateau), excused) == MIN_EPOCHS


def test_never_stops_below_the_floor_its_rf_guarantees() -> None:
    """The undilated context module of regime (a) (RF 21, floors about 0.93, 0.66 and 0.81; check seed 200,
    48-epoch curve, rounded): flat at 0.62 mIoU with the small class at 0.25 from epoch 4 to 16, then it climbs
    to 0.91 with every class above its floor. Without the floor the rule stopped it at epoch 12."""
    reach = convergence.Reach(floors=(0.93, 0.66, 0.81))
    stuck, done = [1.0, 0.25, 0.62], [1.0, 0.82, 0.90]
    curve, ious = [0.62] * 16 + [0.91] * 12, [stuck] * 16 + [done] * 12
    assert convergence.stop_epoch(curve, flat(curve), ious) == MIN_EPOCHS  # the rule without floors
    assert convergence.stop_epoch(curve, flat(curve), ious, reach) == 17 + WINDOW
    assert convergence.health(curve[:16], flat(curve[:16]), stuck, reach) == BELOW_FLOOR
    # The slack: a class may end up to FLOOR_SLACK below its floor (noise-free squares are what the floor
    # assumes), not further; a class absent from the split (None) is not judged.
    at_slack = [1.0, 0.66 - FLOOR_SLACK + 0.001, 0.81]
    beyond = [1.0, 0.66 - FLOOR_SLACK - 0.001, 0.81]
    assert convergence.health(curve[:16], flat(curve[:16]), at_slack, reach) == CONVERGED
    assert convergence.health(curve[:16], flat(curve[:16]), beyond, reach) == BELOW_FLOOR
    assert convergence.health(curve[:16], flat(curve[:16]), [1.0, None, 0.81], reach) == CONVERGED
    # A class never predicted is reported as such, whatever its floor.
    assert convergence.health(curve[:16], flat(curve[:16]), [1.0, 0.0, 0.81], reach) == TRIVIAL
    # A solved run stops whatever its floors (check seed 240's 12 px class at 0.977 where the floor is 1).
    full, solved = convergence.Reach(floors=(1.0, 1.0, 1.0)), [0.5, 0.8, 0.991]
    assert convergence.stop_epoch(solved, flat(solved), [[0.999, 0.977, 0.996]] * 3, full) == 3
    assert convergence.health(solved, flat(solved), [0.999, 0.977, 0.996], full) == CONVERGED
    # A floor of 1 is not held (check seed 302: Exercise 4's rate 6 flat at 0.984-0.987 for 50 epochs, its 12 px
    # class at 0.968): such a run stops on its plateau; a floor below 1 is held however near 1.
    plateau, covered = [0.5, 0.9] + [0.986] * 20, [1.0, 0.968, 0.99]
    assert convergence.stop_epoch(plateau, flat(plateau), [covered] * len(plateau), full) == MIN_EPOCHS
    assert convergence.health(plateau, flat(plateau), covered, full) == CONVERGED
    nearly = convergence.Reach(floors=(1.0, 0.999, 1.0))
    assert convergence.health(plateau, flat(plateau), covered, nearly) == BELOW_FLOOR


def test_the_audit_counts_a_stop_below_the_floor_as_a_partial_solution_the_long_run_escapes() -> None:
    """The audit reads the floors of a run's record: a stop on a plateau below the floor is no stop (the rule
    trains on), and a long run that escapes such a plateau only after the cap counts as an escaped partial
    solution. With the floors unknown the same curve stops on its plateau."""
    job = Job("m", "d", 40, steps=4 * 20, batch_size=8, lr=1e-3, label="x")
    curve = [0.62] * 24 + [0.91] * 6
    stuck, done = [1.0, 0.25, 0.62], [1.0, 0.82, 0.9]
    history = [
        {"step": 4 * (e + 1), "train_loss": 0.3, "val": {"miou": m, "iou": stuck if m < 0.9 else done}}
        for e, m in enumerate(curve)
    ]
    floors = {"out_of_reach": [], "floors": [0.93, 0.66, 0.81]}
    row = audit.audit_run(job, {"history": history, **floors}, epoch_steps=4)
    assert row["stop_epoch"] == 20 and row["health_at_stop"] == BELOW_FLOOR and row["partial_escaped"]
    assert audit.summarize([row])["partial_escaped"] == ["x"]
    row = audit.audit_run(job, {"history": history, **NO_REACH}, epoch_steps=4)
    assert (
        row["stop_epoch"] == MIN_EPOCHS and row["health_at_stop"] == CONVERGED and not row["partial_escaped"]
    )
    assert convergence.partial(0.62, stuck, convergence.Reach(floors=(0.93, 0.66, 0.81)))
    assert not convergence.partial(0.995, stuck, convergence.Reach(floors=(0.93, 0.66, 0.81)))  # solved


def test_floors_come_from_the_validation_pixels_the_rf_covers() -> None:
    """``jobs.floors``: the same counts as ``bands.need_counts`` split at the model's RF; none for tasks without
    per-pixel needs or for logits repeated over stride blocks; 1 for every class of a model that sees all."""
    from atrous.lab.bands import iou_floors, iou_loss_bound, need_counts
    from atrous.lab.jobs import floors

    data = "scale:size=48,n=8,small=13,large=19"
    pixels = need_counts(data, 0)
    got = floors("aspp_net:width=4,rates=3", data)  # RF 21, between the classes' needs
    assert got == pytest.approx([1 - iou_loss_bound(pixels, c, 21) for c in range(3)])
    assert min(got) > 0 and max(got) < 1
    # By hand from the counts: the background's floor is its pixels over them plus every object pixel beyond 21.
    assert got[0] == pytest.approx(pixels[0].sum() / (pixels[0].sum() + pixels[1:, 22:].sum()))
    assert floors("aspp_net:width=4,rates=1,1,1", data)[1:] == (0.0, 0.0)  # RF 13: nothing of either class
    assert floors("aspp_net:width=4,rates=1,3,6,image_pooling=true", data) == (1.0, 1.0, 1.0)  # global
    assert floors("aspp_net:width=4,rates=3", "shapes:size=16,n=4") == ()
    # Logits from a grid 8 px apart cannot draw a square to the pixel, repeated or resized bilinearly.
    assert floors("deeplabv3_small:aspp_channels=8,rates=1,2,3,upsample=nearest", data) == ()
    assert floors("deeplabv3_small:aspp_channels=8,rates=1,2,3", data) == ()
    # A class with no pixel in the split has no floor (its IoU is not measured either) and is not judged.
    assert iou_floors(np.array([[5, 0, 0], [0, 0, 0], [0, 0, 2]]), 1) == (pytest.approx(5 / 7), None, 0.0)
    reach = convergence.Reach(floors=(0.9, None, 0.8))
    assert not convergence.below_floor([0.9, 0.0, 0.8 - FLOOR_SLACK + 0.001], reach)
    assert convergence.below_floor([0.9, 0.0, 0.8 - FLOOR_SLACK - 0.001], reach)
    with pytest.raises(ValueError, match="3 class floors against 2 class IoUs"):
        convergence.below_floor([1.0, 1.0], reach)


def test_a_class_no_stride_block_is_mostly_of_is_out_of_reach_of_nearest_logits() -> None:
    """Logits repeated over 8 x 8 blocks: 3 px squares are never the most frequent label of a block of the lab's
    regime (b) images, so the small class is out of reach; bilinear logits can place it between grid points."""
    from atrous.lab.jobs import block_outvoted, out_of_reach

    data, spec = "scale:size=32,n=64,small=3,large=7", "deeplabv3_small:aspp_channels=8,rates=1,2,3"
    assert out_of_reach(f"{spec},upsample=nearest", data) == {1}
    assert out_of_reach(spec, data) == frozenset()
    # Without image pooling the RF is finite: the stride's verdict joins the RF's (which excuses nothing here).
    assert out_of_reach(f"{spec},image_pooling=false,upsample=nearest", data, seed=3) == {1}

    class Labels:  # two 16 x 16 images, blocks of 8, counted by hand
        size, num_classes = 16, 4

        def __init__(self) -> None:
            a = torch.zeros(16, 16, dtype=torch.long)
            a[0:3, 0:3] = 1  # 9 of block (0, 0): outvoted by background
            a[8:16, 8:16] = 2  # all of block (1, 1)
            b = torch.zeros(16, 16, dtype=torch.long)
            b[0:8, 8:12] = 3  # half of block (0, 1): a tie with background counts as a win
            self.maps = [a, b]

        def __len__(self) -> int:
            return 2

        def __getitem__(self, i: int):
            return None, self.maps[i]

    assert block_outvoted(Labels(), 8) == {1}
    assert block_outvoted(Labels(), 5) == frozenset()  # 16 is not a multiple of 5: no aligned blocks
