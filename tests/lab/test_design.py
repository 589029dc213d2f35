"""The lab's designs come from the RF engine: regimes, twins at matched cost, predictions, stopping rule."""

from __future__ import annotations

import time
from dataclasses import replace

import pytest

from atrous.lab import calibrate, design, ex2_unets, ex3_aspp
from atrous.lab.jobs import Job
from atrous.lab.presets import get_preset
from atrous.lab.runner import EXERCISES


def test_regime_a_needs_more_than_the_twin_sees_and_regime_b_less() -> None:
    a, b = design.regimes(21, 34, 13, n=100, min_size=32)
    assert (a.small, a.large, a.need, a.size) == (13, 19, 27, 48)  # need halfway: (21 + 34) // 2 = 27
    assert (b.small, b.large, b.need, b.size) == (3, 7, 7, 32)  # need <= half of the smallest RF, 13
    assert a.data == "scale:size=48,n=100,small=13,large=19"
    with pytest.raises(ValueError, match="no object size needs an RF between 20 and 21"):
        design.regimes(20, 21, 13, n=100, min_size=32)


def test_the_dilated_unet_is_a_hole_free_twin_at_the_same_cost() -> None:
    standard, dilated = design.unets(16, 1, 3, 48)
    assert (standard.rf, dilated.rf, dilated.holes) == (18, 34, 0)
    assert dilated.spec == "dilated_unet:width=16,depth=1,bottleneck_rates=3,3"
    assert (dilated.params, dilated.flops) == (standard.params, standard.flops) and design.matched(
        dilated, standard
    )


def test_every_quick_comparison_is_designed_to_discriminate() -> None:
    plan = ex3_aspp.plan(get_preset("quick"))
    (ra, contests_a), (rb, contests_b) = plan
    for c in contests_a + contests_b:
        if c.kind == "rf":
            assert design.matched(c.a, c.b)
            assert c.b.rf < ra.need <= c.a.rf  # regime (a): the twin is blind, the dilated model sees
            assert rb.need <= c.b.rf  # regime (b): both see
    assert [c.predict(ra)[0] for c in contests_a] == ["better", "better", "worse"]
    assert [c.predict(rb)[0] for c in contests_b] == ["tie", "tie", "worse"]
    assert [r for r, _ in ex2_unets.plan(get_preset("quick"))] == [ra, rb]
    stride = contests_a[2]  # DeepLab's control sees the need too: the output stride is the only difference
    assert stride.a.label == "DeepLab (deeplabv3_small, logits on its stride grid)"
    assert (
        stride.b.label.startswith("dilated U-Net") and stride.b.sees(ra.need) and stride.a.output_stride == 8
    )


def test_predictions_state_their_reason() -> None:
    m = lambda rf, stride=1: design.Model("m", "x", rf, 0, 1, 1.0, stride)  # noqa: E731
    assert design.predict_rf(m(30), m(10), 21) == ("better", "RF 30 >= needed 21 > RF 10")
    assert design.predict_rf(m(10), m(None), 21)[0] == "worse"
    assert design.predict_rf(m(8), m(10), 21) == (
        "tie",
        "both RFs (8, 10) < needed 21: neither separates every pixel",
    )
    assert design.predict_stride(m(None, 8), m(18), 12)[0] == "worse"
    assert design.predict_stride(m(None, 8), m(18), 16)[0] == "tie"


def test_calibration_times_the_jobs_own_models() -> None:
    """One timing per model and task (seeds and learning rates share it); a 16x wider stack, on the same images,
    takes longer per step; the estimate adds up each job's steps and validation passes at those rates."""
    data = "scale:size=32,n=32,small=4,large=8"
    small = Job("convstack:width=4,rates=1,1", data, 0, 10, 8, 1e-3)
    large = Job("convstack:width=64,rates=1,1", data, 0, 10, 8, 1e-3)
    again = Job("convstack:width=4,rates=1,1", data, 1, 10, 8, 5e-3, warmup=2)
    speeds = calibrate.measure([small, large, again], workers=1)
    assert len(speeds) == 2 and calibrate.kind(small).key == calibrate.kind(again).key
    fast, slow = speeds[calibrate.kind(small).key], speeds[calibrate.kind(large).key]
    assert 0 < fast.step < slow.step and fast.validation > 0 and fast.fixed >= 0
    one = calibrate.job_seconds(small, speeds)
    assert one == pytest.approx(10 * fast.step + 3 * fast.validation + fast.fixed)  # 3 epochs of 4 batches
    assert calibrate.expected_seconds([small, large], speeds, workers=2) == pytest.approx(
        (one + calibrate.job_seconds(large, speeds)) / 2
    )
    assert calibrate.longest_first([small, large, again], speeds)[0] == large


def test_a_jobs_images_are_drawn_before_its_steps_are_timed(monkeypatch: pytest.MonkeyPatch) -> None:
    """After ``render_splits`` no training or validation image of the run is drawn again in this process, so the
    steps the calibration times are the model's alone."""
    from collections import OrderedDict

    from atrous.data import synthetic
    from atrous.data.synthetic import SyntheticTask
    from atrous.lab.jobs import render_splits
    from atrous.train.config import TrainConfig
    from atrous.train.setup import load_datasets

    monkeypatch.setattr(synthetic, "_RENDERED", OrderedDict())  # nothing drawn before, in this process
    cfg = TrainConfig(
        model="convstack:width=4", data="scale:size=32,n=40,small=4,large=8", steps=1, seed=123, device="cpu"
    )
    # On a GPU the images are composed on the device and the store is never read: nothing is drawn.
    render_splits(replace(cfg, device="cuda"))
    assert not synthetic._RENDERED
    render_splits(cfg)

    def drawn_again(self: SyntheticTask, index: int) -> None:
        raise AssertionError(f"{self.split} image {index} drawn during training")

    monkeypatch.setattr(SyntheticTask, "render_item", drawn_again)
    train, val = load_datasets(cfg)
    assert len(train) == 40 and len(val) >= 10
    for split in (train, val):
        for index in range(len(split)):
            split[index]


def test_a_timing_run_is_read_per_step_and_per_validation_pass() -> None:
    """6 steps in 1.3 s of which the first took 0.3 s: 0.2 s a step after it; two epochs (4 steps each) made two
    validation passes of 0.25 s; the job's other 0.5 s are its fixed part."""
    result = {
        "steps": 6,
        "history": [{}, {}],
        "timing": {"train_seconds": 1.3, "first_step_seconds": 0.3, "val_seconds": 0.5, "job_seconds": 2.2},
    }
    step, validation, fixed = calibrate._rates(result)
    assert (step, validation, fixed) == pytest.approx((0.2, 0.25, 2.2 - 6 * 0.2 - 0.5))


def test_the_estimate_takes_each_exercise_s_share_of_the_caps() -> None:
    """Shares by job: a run expected to take half its cap costs its half; an unlisted one, all of it."""
    data = "scale:size=32,n=32,small=4,large=8"
    half, whole = (Job(f"convstack:width={w},rates=1,1", data, 0, 8, 8, 1e-3) for w in (4, 5))
    speeds = {
        calibrate.kind(j).key: calibrate.Speed(step=0.5, validation=1.0, fixed=2.0) for j in (half, whole)
    }
    got = calibrate.expected_seconds([half, whole], speeds, workers=1, shares={half.key: 0.5})
    assert got == pytest.approx((4 * 0.5 + 1.0 + 2.0) + (8 * 0.5 + 2 * 1.0 + 2.0))
    p = get_preset("quick")
    assert 0 < p.step_share("ex4") < 1 and p.step_share("ex9") == 1.0  # listed, and unlisted: the whole cap


def test_the_forecast_follows_the_speed_of_the_finished_runs() -> None:
    """Runs that took twice their modelled time double the time left; the forecast at a quarter of the work is
    kept."""
    data = "scale:size=32,n=32,small=4,large=8"  # 4 batches of 8: an epoch is 4 steps
    jobs = [Job(f"convstack:width={w},rates=1,1", data, 0, 8, 8, 1e-3) for w in (4, 5, 6, 7)]
    speeds = {calibrate.kind(j).key: calibrate.Speed(step=0.5, validation=1.0, fixed=2.0) for j in jobs}
    each = 8 * 0.5 + 2 * 1.0 + 2.0  # 8 steps, 2 epochs, the fixed part
    forecast = calibrate.Forecast(jobs, speeds, workers=2, shares=1.0, start=time.perf_counter() - 100)
    report = calibrate.REPORT_SECONDS_PER_RUN * 4
    assert forecast.seconds_left() == pytest.approx(4 * each / 2 + report)
    # The first run stopped after 4 steps (one epoch), in twice its modelled time at those steps.
    forecast.finish(jobs[0], {"steps": 4, "timing": {"job_seconds": 2 * (4 * 0.5 + 1.0 + 2.0)}})
    assert forecast.seconds_left() == pytest.approx(2 * 3 * each / 2 + report)
    assert forecast.done_share == pytest.approx(5 / (5 + 3 * each)) and forecast.at_quarter is None
    forecast.finish(jobs[1], {"steps": 8, "timing": {"job_seconds": 2 * each}})
    # Set at the second finish, 100 s after the start: the elapsed time plus the time left then.
    assert forecast.at_quarter == pytest.approx(100 + forecast.seconds_left(), abs=1.0)


def test_the_forecast_spreads_the_steps_not_yet_taken_over_the_runs_left() -> None:
    """Half of the capped steps expected (16 of 32); the first run takes all 8 of its cap, so the three left
    share the 8 still expected: a third of their caps each."""
    data = "scale:size=32,n=32,small=4,large=8"
    jobs = [Job(f"convstack:width={w},rates=1,1", data, 0, 8, 8, 1e-3) for w in (4, 5, 6, 7)]
    speeds = {calibrate.kind(j).key: calibrate.Speed(step=0.5, validation=1.0, fixed=2.0) for j in jobs}
    forecast = calibrate.Forecast(jobs, speeds, workers=1, shares=0.5, start=time.perf_counter())
    first = calibrate.job_seconds(jobs[0], speeds)
    forecast.finish(jobs[0], {"steps": 8, "timing": {"job_seconds": first}})
    left = 3 * calibrate.job_seconds(jobs[1], speeds, 1 / 3)  # 3 steps each (round(8 / 3)), one epoch
    assert left == pytest.approx(3 * (3 * 0.5 + 1.0 + 2.0))
    assert forecast.seconds_left() == pytest.approx(left + calibrate.REPORT_SECONDS_PER_RUN * 4)


def test_size_class_needs_of_the_multiscale_task() -> None:
    from atrous.lab.ex4_multiscale import class_need

    # 4, 12, 36 px: the two smaller classes need both ends in view; the largest, a run longer than 12 px
    assert [class_need([4, 12, 36], c) for c in range(3)] == [9, 25, 25]


def test_one_rule_for_every_job() -> None:
    """No model gets its own step count: every quick job has the preset's cap and the stopping rule."""
    p = get_preset("quick")
    jobs = [j for key in EXERCISES for j in EXERCISES[key].jobs(p, [0, 1, 2])]
    assert {(j.steps, j.stop_early, j.lr, j.warmup, j.ema) for j in jobs} == {
        (p.steps, True, p.lr, p.warmup, p.ema)
    }


def test_a_job_without_the_stopping_rule_runs_all_its_steps(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from atrous.lab import jobs

    monkeypatch.setattr(
        jobs.convergence, "should_stop", lambda miou, loss, iou, reach=None: True
    )  # the rule would stop after one epoch
    job = Job("convstack:width=4", "shapes:size=16,n=16", 0, 8, 4, 1e-3)
    assert jobs.run_job(job, str(tmp_path))["steps"] == 4
    fixed = Job("convstack:width=4", "shapes:size=16,n=16", 0, 8, 4, 1e-3, stop_early=False)
    assert jobs.run_job(fixed, str(tmp_path))["steps"] == 8
