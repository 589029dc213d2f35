"""The training loop as users run it: determinism, resumption after a real SIGKILL, torchrun, bad input."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

import atrous
from atrous.cli import main
from atrous.train.checkpoint import CheckpointError, load_into
from atrous.train.config import ConfigError, TrainConfig
from atrous.train.loop import TIMING_KEYS, TrainingDiverged, fit
from datasets import folder_dataset
from poison import poison_loss

pytestmark = pytest.mark.usefixtures("cpu_only")  # exact equality between runs: see conftest

# deeplabv3_small has dropout in its ASPP: resuming must restore the RNG too, not only the weights.
TRAIN = [
    "train",
    "--model",
    "deeplabv3_small:aspp_channels=16",
    "--data",
    "scale:size=32,n=48,small=4,large=10",
    "--epochs",
    "5",
    "--batch-size",
    "8",
    "--lr",
    "3e-3",
    "--checkpoint-every",
    "4",
]
TRAIN_STEPS = 30  # 5 epochs of 6 batches


def tiny_train(out: Path, *extra: str) -> list[str]:
    """The smallest real training run: a 4-channel conv stack, one epoch of 8 images."""
    return [
        "train",
        "--model",
        "convstack:width=4",
        "--data",
        "shapes:size=16,n=8",
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--out",
        str(out),
        *extra,
    ]


def metrics(run: Path) -> list[dict]:
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in rec.items() if k not in TIMING_KEYS} for rec in lines]


def cli(*argv: str, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "atrous", *argv], capture_output=True, text=True, env=env, **kw
    )


def test_same_seed_gives_identical_metrics(tmp_path: Path) -> None:
    for name in ("a", "b"):
        assert cli(*TRAIN, "--out", str(tmp_path / name)).returncode == 0
    assert metrics(tmp_path / "a") == metrics(tmp_path / "b")
    assert len(metrics(tmp_path / "a")) == 5


def test_clip_grad_scales_the_step_down_to_the_given_norm(tmp_path: Path) -> None:
    """Plain SGD at lr 1 steps by the gradient itself, so one step from the same start (same seed) with two small
    clip norms c1, c2 must end (c2 - c1) apart, along the unclipped step; and a bad value is refused."""
    from atrous.train.inference import load

    def one_step(clip: float) -> torch.Tensor:
        cfg = TrainConfig(
            model="convstack:width=4",
            data="shapes:size=16,n=8",
            steps=1,
            batch_size=8,
            lr=1.0,
            optimizer="sgd",
            momentum=0.0,
            weight_decay=0.0,
            schedule="constant",
            clip_grad=clip,
            out=str(tmp_path / f"clip-{clip}"),
        )
        fit(cfg, overwrite=True)
        return torch.cat(
            [p.detach().flatten() for p in load(tmp_path / f"clip-{clip}" / "last").parameters()]
        )

    small, larger, off = one_step(1e-4), one_step(3e-4), one_step(0.0)
    gap = small - larger
    assert gap.norm().item() == pytest.approx(2e-4, rel=1e-3)
    full = small - off  # the unclipped gradient minus a tiny step along it
    assert torch.nn.functional.cosine_similarity(gap, full, dim=0).item() == pytest.approx(1.0, abs=1e-4)
    assert full.norm().item() > 100 * 3e-4  # the clip norms were below the gradient's: both clipped
    with pytest.raises(ConfigError, match="clip_grad must be >= 0"):
        TrainConfig(model="unet", data="shapes", steps=1, clip_grad=-1.0).validate()


@pytest.mark.parametrize("trial", [0, 1])
def test_sigkill_then_resume_gives_the_uninterrupted_metrics(tmp_path: Path, trial: int) -> None:
    """Trial 1 also averages the weights: the average and the raw weights must both survive the kill."""
    ref, run = tmp_path / "ref", tmp_path / "run"
    train = [*TRAIN, "--ema", "0.9"] if trial else TRAIN
    assert cli(*train, "--out", str(ref)).returncode == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "atrous", *train, "--out", str(run)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while not (run / "last").exists() and time.time() < deadline:
        time.sleep(0.005)
    # Any moment after the first checkpoint, but well before the end: on a fast day this machine runs a step of
    # this model in about 25 ms, and a kill after the last checkpoint would test nothing.
    time.sleep(random.Random(trial).uniform(0.0, 0.15))
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    killed_at = json.loads((run / "last" / "checkpoint.json").read_text())["step"]
    assert 0 < killed_at < TRAIN_STEPS
    resumed = cli(*train, "--out", str(run), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stdout
    assert metrics(run) == metrics(ref)


def test_weight_averaging_is_what_validation_sees_and_the_checkpoint_holds(tmp_path: Path) -> None:
    from atrous.train.checkpoint import load_state
    from atrous.train.evaluate import evaluate
    from atrous.train.inference import load
    from atrous.train.setup import load_datasets

    cfg = TrainConfig(
        model="convstack:width=4",
        data="shapes:size=16,n=16",
        steps=8,
        batch_size=4,
        ema=0.5,
        out=str(tmp_path),
    )
    result = fit(cfg, overwrite=True)
    averaged = load(tmp_path / "last")
    raw = load_state(tmp_path / "last")["raw_model"]
    assert any(not torch.equal(raw[k], v) for k, v in averaged.state_dict().items() if k in raw)
    val = load_datasets(cfg)[1]
    assert evaluate(averaged, val, 4)["miou"] == result.history[-1]["val"]["miou"]
    with pytest.raises(ConfigError, match="ema must be in"):
        TrainConfig(model="unet", data="shapes", steps=1, ema=1.0).validate()


@pytest.mark.parametrize(
    ("steps", "until", "last_step"),
    [(10, None, 10), (12, lambda record: record["epoch"] == 2, 8)],  # the step total mid-epoch; ``until``
)
def test_without_epoch_checkpoints_one_checkpoint_at_the_end_equals_the_last_epochs(
    tmp_path: Path, steps: int, until, last_step: int
) -> None:
    """The lab's runs (never resumed) write one checkpoint when training ends, however it ends: the same weights,
    optimizer, scheduler and loop state as the ``last`` that a run checkpointing every epoch leaves, and nothing
    else."""
    from atrous.train.checkpoint import load_state, load_weights

    def run(name: str, epoch_checkpoints: bool):
        cfg = TrainConfig(
            model="convstack:width=4",
            data="shapes:size=16,n=16",
            steps=steps,  # epochs of 4 batches
            batch_size=4,
            ema=0.5,
            out=str(tmp_path / name),
        )
        fit(cfg, overwrite=True, until=until, epoch_checkpoints=epoch_checkpoints)
        return tmp_path / name

    def same(a, b) -> bool:
        if isinstance(a, dict):
            return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
        if isinstance(a, (list, tuple)):
            return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
        return torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b

    every, end = run("every", True), run("end", False)
    assert [p.name for p in (end / "checkpoints").iterdir()] == [f"step-{last_step:08d}"]
    assert (end / "last").is_symlink() and not (end / "best").exists()
    assert (every / "best").exists()  # the default keeps its best epoch too
    assert same(load_weights(end / "last"), load_weights(every / "last"))
    state, reference = load_state(end / "last"), load_state(every / "last")
    assert state["loop"]["step"] == last_step
    for key in ("loop", "raw_model", "optimizer", "scheduler", "ema_n_averaged"):
        assert same(state[key], reference[key]), key


def test_torchrun_two_processes_match_one(tmp_path: Path) -> None:
    """2 gloo ranks with per-rank batch 4 == 1 process with batch 8, within 1e-5 relative.

    Exact up to float summation order when the loss decomposes over samples (CE, per-image Dice) and nothing
    couples samples; BatchNorm (per-rank statistics on CPU, no SyncBatchNorm on gloo) and batch-level Dice
    (each rank's Dice covers its half of the batch) make ranks differ slightly, as in any DDP setup."""
    args = [
        "train",
        "--model",
        "convstack:norm=none,width=8,preset=dilated",
        "--data",
        "shapes:size=32,n=32",
        "--epochs",
        "2",
        "--batch-size",
        "8",
        "--lr",
        "3e-3",
        "--loss",
        "ce",
    ]
    assert cli(*args, "--out", str(tmp_path / "one")).returncode == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    two = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            "atrous",
            *args,
            "--out",
            str(tmp_path / "two"),
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    assert two.returncode == 0, two.stderr[-2000:]
    one, dist = metrics(tmp_path / "one"), metrics(tmp_path / "two")
    assert len(one) == len(dist) == 2
    for a, b in zip(one, dist):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-5)
        assert b["val"]["miou"] == pytest.approx(a["val"]["miou"], abs=1e-3)


@pytest.mark.parametrize(
    ("args", "code", "stream", "text"),
    [
        (["schedule", "2,2,2"], 0, "stdout", "M_2 = 2"),
        (["schedule", "0"], 2, "stderr", "atrous: error:"),
    ],
)
def test_a_torchrun_rank_exits_with_its_status_and_all_its_output(
    args: list[str], code: int, stream: str, text: str
) -> None:
    """Ranks leave through os._exit (see distributed.exit_rank): the status and the buffered output survive."""
    env = {**os.environ, "WORLD_SIZE": "2"}
    out = subprocess.run([sys.executable, "-m", "atrous", *args], capture_output=True, text=True, env=env)
    assert out.returncode == code, out.stderr
    assert text in getattr(out, stream)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    poison_loss(monkeypatch, from_call=5, factor=float("nan"))
    cfg = TrainConfig(
        model="convstack:width=4",
        data="shapes:size=16,n=16",
        steps=10,
        batch_size=2,
        checkpoint_every=2,
        out=str(tmp_path / "run"),
    )
    with pytest.raises(
        TrainingDiverged, match=r"loss became nan at step 5 .*last good checkpoint .*\(step 4\)"
    ):
        fit(cfg)
    assert json.loads((tmp_path / "run" / "last" / "checkpoint.json").read_text())["step"] == 4


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--model", "unett", "--data", "shapes"], "unknown model 'unett'"),
        (["--model", "unet", "--data", "shapez"], "unknown dataset 'shapez'"),
        (["--model", "convstack:num_classes=5", "--data", "shapes"], "predicts 5 classes but the data has 2"),
        (["--model", "convstack", "--data", "shapes", "--lr", "0"], "--lr must be in (0, 10]"),
        (["--model", "convstack", "--data", "shapes", "--batch-size", "0"], "--batch-size must be >= 1"),
        (["--model", "convstack", "--data", "shapes", "--device", "cuda:99"], "device cuda:99: "),
        (
            ["--model", "convstack", "--data", "shapes", "--optimizer", "adam"],
            "--optimizer 'adam' is not one of",
        ),
        (["--model", "convstack", "--data", "FOLDER", "--val", "none"], "problem(s) in"),
    ],
)
def test_bad_input_is_one_line_and_leaves_no_run_dir(
    tmp_path: Path, capsys: pytest.CaptureFixture, extra: list[str], message: str
) -> None:
    folder = folder_dataset(tmp_path / "data", bad=True)
    extra = [str(folder) if x == "FOLDER" else x for x in extra]
    extra = [f"folder:{folder}" if x == str(folder) else x for x in extra]
    out = tmp_path / "run"
    assert main([*(x for x in ["train", "--epochs", "1"]), *extra, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not out.exists()


def test_existing_runs_are_protected(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    args = tiny_train(tmp_path / "run")
    assert main(args) == 0
    capsys.readouterr()
    assert main(args) == 2
    assert "already holds another run; pass --overwrite" in capsys.readouterr().err
    assert main([*args, "--resume", "--lr", "0.5"]) == 2
    assert "--resume with a changed config: lr differ" in capsys.readouterr().err
    assert main([*args, "--overwrite"]) == 0


def test_python_callers_read_parameter_names_and_the_cli_reads_flags(tmp_path: Path) -> None:
    """One message, two spellings: ``fit(TrainConfig(batch_size=0))`` names ``batch_size``, the CLI
    ``--batch-size``; values formatted into the message (a path with braces) are left as they are."""
    out = tmp_path / "{run}"
    with pytest.raises(ConfigError) as caught:
        fit(
            TrainConfig(
                model="convstack:width=4", data="shapes:size=16,n=8", epochs=1, batch_size=0, out=str(out)
            )
        )
    assert str(caught.value) == "batch_size must be >= 1, got 0"
    assert caught.value.for_cli() == "--batch-size must be >= 1, got 0"
    cfg = TrainConfig(
        model="convstack:width=4", data="shapes:size=16,n=8", steps=1, batch_size=4, out=str(out)
    )
    fit(cfg)
    with pytest.raises(ConfigError) as caught:
        fit(cfg)
    assert str(caught.value) == (
        f"{out} already holds another run; pass overwrite to replace it, resume to continue it, or choose "
        "another out"
    )
    assert caught.value.for_cli().endswith(
        "pass --overwrite to replace it, --resume to continue it, or choose another --out"
    )
    assert caught.value.for_cli().startswith(f"{out} already")


def test_corrupt_and_foreign_checkpoints_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    assert main(tiny_train(run)) == 0
    model = atrous.load(run)
    assert isinstance(model, torch.nn.Module) and not model.training
    with pytest.raises(CheckpointError, match=r"another architecture|does not fit"):
        load_into(atrous.create_model("unet", width=4, depth=1), run / "last")
    weights = run / "last" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])  # truncated
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(run / "last"), "--data", "shapes:size=16,n=8"]) == 2
    assert "is corrupt: model.safetensors does not match" in capsys.readouterr().err


def test_real_data_train_predict_export(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    folder = folder_dataset(tmp_path / "data")
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--model",
                "unet:width=4,depth=1",
                "--data",
                f"folder:{folder}",
                "--val",
                f"folder:{folder}",
                "--epochs",
                "1",
                "--batch-size",
                "2",
                "--crop",
                "16",
                "--out",
                str(run),
            ]
        )
        == 0
    )
    meta = json.loads((run / "best" / "checkpoint.json").read_text())
    assert meta["class_names"] == ["bg", "fg"] and meta["normalization"] == "imagenet"
    assert (
        main(
            [
                "predict",
                str(folder / "images"),
                "--checkpoint",
                str(run),
                "--out",
                str(tmp_path / "pred"),
                "--tile",
                "12",
                "--overlap",
                "4",
            ]
        )
        == 0
    )
    mask = Image.open(tmp_path / "pred" / "0.png")
    assert mask.mode == "P" and mask.size == (22, 20)
    assert (tmp_path / "pred" / "0_overlay.png").exists()
    capsys.readouterr()
    assert main(["export", "--checkpoint", str(run), "--out", str(tmp_path / "m.onnx")]) == 0
    out = capsys.readouterr().out
    diffs = [
        float(x.split(": ")[1].rstrip(",")) for x in out.replace("\n", " ").split("diff ")[1].split(", ")
    ]
    assert max(diffs) < 1e-4


def test_tensorboard_logging_or_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    args = tiny_train(tmp_path / "run", "--tensorboard")
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        assert main(args) == 2
        assert "needs the tensorboard package" in capsys.readouterr().err
        return
    assert main(args) == 0
    assert any((tmp_path / "run" / "tensorboard").iterdir())


def test_config_file_with_flags_overriding_it(tmp_path: Path) -> None:
    config = tmp_path / "run.json"
    config.write_text(
        json.dumps(
            {
                "model": "convstack:width=4",
                "data": "shapes:size=16,n=8",
                "epochs": 3,
                "batch_size": 4,
                "lr": 0.01,
            }
        )
    )
    assert main(["train", "--config", str(config), "--epochs", "1", "--out", str(tmp_path / "run")]) == 0
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (saved["epochs"], saved["lr"], saved["model"]) == (1, 0.01, "convstack:width=4")
    assert len(metrics(tmp_path / "run")) == 1
    config.write_text(json.dumps({"model": "convstack", "epochz": 3}))
    assert main(["train", "--config", str(config)]) == 2
