"""Every command on every device present (the CPU here, the GPU too under make gpu-check), and the parts of the
loop that exist for GPUs: on-device synthetic data, persistent workers, deferred divergence checks, no syncs."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from rich.console import Console

from atrous.cli import main
from atrous.data import build_dataset
from atrous.data.synthetic import MaskItems
from atrous.device import compile_unavailable
from atrous.lab.runner import device_name
from atrous.train import loop
from atrous.train.batches import BatchStream, epoch_batches
from atrous.train.config import TrainConfig
from atrous.train.distributed import Dist
from atrous.train.loop import TIMING_KEYS, Trainer, TrainingDiverged, fit
from datasets import folder_dataset
from poison import poison_loss


def test_on_device_composition_keeps_masks_and_draws_unit_noise_per_sample(device: str) -> None:
    task = build_dataset("scale:size=48,n=12,small=4,large=10,snr=3")
    items = MaskItems(task)
    idx = torch.tensor([3, 7, 11])
    masks = torch.stack([items[i][1] for i in idx.tolist()]).to(device)
    images, long_masks = task.compose(idx.to(device), masks)
    assert images.device.type == device and long_masks.dtype == torch.int64
    for row, i in enumerate(idx.tolist()):
        _, cpu_mask = task[i]
        assert torch.equal(long_masks[row].cpu(), cpu_mask)  # same objects as the CPU path
        noise = images[row].cpu() - 3.0 * (cpu_mask > 0).float()
        assert abs(float(noise.mean())) < 0.05 and abs(float(noise.std()) - 1.0) < 0.05
    # A pure function of the sample: the same noise whatever the batch it is composed in.
    alone, _ = task.compose(idx[1:2].to(device), masks[1:2])
    assert torch.equal(alone[0], images[1])
    assert not torch.equal(images[0], images[1])


def test_batch_stream_with_persistent_workers_matches_the_main_process(tmp_path: Path) -> None:
    """Augmented real data: workers kept across epochs must still augment for the epoch they are given."""
    ds = build_dataset(
        f"folder:{folder_dataset(tmp_path / 'data')}", split="train", augment=True, crop=16, seed=1
    )
    plan = epoch_batches(len(ds), 3, 1, 0)
    inline = BatchStream(ds, torch.device("cpu"), workers=0)
    pooled = BatchStream(ds, torch.device("cpu"), workers=2)
    for epoch in (0, 1):
        a = list(inline(plan, epoch))
        b = list(pooled(plan, epoch))
        assert all(torch.equal(x, y) and torch.equal(m, n) for (x, m), (y, n) in zip(a, b))
    first, second = next(iter(inline(plan, 0))), next(iter(inline(plan, 1)))
    assert not torch.equal(first[0], second[0])  # the epoch reached the augmentation


def _records(run: Path) -> list[dict]:
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in lines]


def test_commands_run_on_the_device(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch, device: str
) -> None:
    # Training validates in channels-last, ``atrous eval`` in the default layout: on a GPU, other cuDNN kernels.
    # cuDNN convolutions default to TF32 (10-bit mantissa, ~1e-3 relative error), which can flip the argmax of
    # the many near-tied pixels of a 4-step model and move mIoU by more than 1e-3. In IEEE fp32 the two layouts
    # differ by ~1e-6 relative, which flips a pixel only at a near-exact tie: 1e-3 of mIoU (several pixels of
    # the 32 x 32 x 32 validation set) then covers it. What is tested is that eval reproduces the run's score,
    # not TF32's rounding, so TF32 is off here (the legacy switch: it sets cuDNN's conv and RNN flags together;
    # cuBLAS's TF32 is off by default, and these models have no matrix products).
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    run = tmp_path / "run"
    data = "scale:size=32,n=16,small=4,large=10"
    argv = ["train", "--model", "unet:width=4,depth=1", "--data", data, "--epochs", "2", "--batch-size", "8"]
    assert main([*argv, "--device", device, "--out", str(run), "--checkpoint-every", "1"]) == 0
    recs = _records(run)
    assert [r["step"] for r in recs] == [2, 4] and all(math.isfinite(r["train_loss"]) for r in recs)
    capsys.readouterr()
    val = data.replace("n=16", "n=32")  # the validation set training made (a quarter, at least 32)
    assert main(["eval", "--checkpoint", str(run / "last"), "--data", val, "--json", "--device", device]) == 0
    scores = json.loads(capsys.readouterr().out)
    # cuDNN may choose other algorithms between runs and layouts: an fp32 rounding difference can flip a pixel
    # at a near-exact tie on a GPU (see the TF32 note above).
    assert scores["miou"] == pytest.approx(recs[-1]["val"]["miou"], abs=1e-6 if device == "cpu" else 1e-3)
    images = tmp_path / "images"
    images.mkdir()
    np.save(images / "a.npy", np.random.default_rng(0).standard_normal((3, 40, 52)).astype(np.float32))
    out = tmp_path / "pred"
    assert main(["predict", str(images), "--checkpoint", str(run), "--out", str(out), "--tile", "24",
                 "--overlap", "8", "--device", device]) == 0  # fmt: skip
    assert (out / "a.png").is_file()
    assert (
        main(["export", "--checkpoint", str(run), "--out", str(tmp_path / "m.onnx"), "--device", device]) == 0
    )
    assert f"PyTorch ({device}" in capsys.readouterr().out
    erf = ["erf", "convstack:width=4", "--input", "3,24,24", "--samples", "4", "--json", "--device", device]
    assert main([*erf, "--out", str(tmp_path / "erf.png")]) == 0
    assert json.loads(capsys.readouterr().out)[0]["rf"] == [7, 7]  # three 3x3 convolutions


def test_deferred_divergence_check_names_the_first_bad_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The GPU path (no read per step) on the CPU: the first non-finite step is kept and reported."""
    poison_loss(monkeypatch, from_call=3, factor=float("inf"))
    cfg = TrainConfig(
        model="convstack:width=4", data="shapes:size=16,n=16", epochs=1, batch_size=4, out=str(tmp_path / "r")
    )
    trainer = Trainer(cfg, False, False, Console(quiet=True), Dist())
    trainer.eager_checks = False
    with pytest.raises(
        TrainingDiverged, match=r"non-finite \(nan or inf\) at step 3 \(epoch 1\); no checkpoint"
    ):
        trainer.run(None)


@pytest.mark.cuda
def test_a_training_step_never_waits_for_the_gpu(tmp_path: Path) -> None:
    cfg = TrainConfig(
        model="unet:width=8,depth=2",
        data="scale:size=64,n=32",
        steps=4,
        batch_size=8,
        device="cuda",
        precision="bf16",
        out=str(tmp_path / "r"),
    )
    trainer = Trainer(cfg, False, False, Console(quiet=True), Dist(device=torch.device("cuda")))
    trainer.net = loop.WithAux(trainer.model)
    x, y = next(iter(trainer.stream(epoch_batches(32, 8, 0, 0)[:1])))
    trainer._step(x, y)  # warm-up: cuDNN and the allocator may sync once
    torch.cuda.set_sync_debug_mode("error")
    try:
        trainer._step(x, y)
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.cuda
def test_gpu_runs_reproduce_and_compile(tmp_path: Path) -> None:
    common = dict(
        model="unet:width=8,depth=2", data="scale:size=48,n=32", epochs=2, batch_size=8, device="cuda"
    )
    a = fit(TrainConfig(**common, out=str(tmp_path / "a")), console=Console(quiet=True))
    b = fit(TrainConfig(**common, out=str(tmp_path / "b")), console=Console(quiet=True))
    assert [r["val"]["miou"] for r in a.history] == pytest.approx(
        [r["val"]["miou"] for r in b.history], abs=0.02
    )
    c = fit(TrainConfig(**common, compile=True, out=str(tmp_path / "c")), console=Console(quiet=True))
    assert c.first_step_seconds is not None and c.first_step_seconds > 0
    assert math.isfinite(c.history[-1]["train_loss"])


@pytest.mark.cuda
def test_the_lab_trains_on_the_gpu_and_says_so(tmp_path: Path) -> None:
    assert main(["lab", "--preset", "tiny", "--only", "ex2", "--device", "cuda", "--out", str(tmp_path)]) == 0
    meta = json.loads((tmp_path / "results.json").read_text())["meta"]
    # ``--device cuda`` is resolved before the run to the GPU it uses (resolve_device: cuda:0 in one process),
    # and the report names that GPU and that index, not the request.
    assert meta["device"] == f"{torch.cuda.get_device_name(0)} (cuda:0)"
    assert "trained on" in (tmp_path / "report.md").read_text()


def test_the_lab_names_the_gpu_it_resolved(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The GPU test above, on the CPU: ``atrous lab --device cuda`` hands the lab the resolved device, and the
    report's name for it is the card and that index ("(cuda:0)"), never the bare request "(cuda)"."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H200")
    named = []
    monkeypatch.setattr(
        "atrous.lab.runner.run_lab", lambda device, **kwargs: named.append(device_name(device))
    )
    assert main(["lab", "--preset", "tiny", "--only", "ex2", "--device", "cuda", "--out", str(tmp_path)]) == 0
    assert named == ["NVIDIA H200 (cuda:0)"]


@pytest.mark.skipif(
    compile_unavailable(torch.device("cpu")) is not None,
    reason="torch.compile cannot run on this CPU (no C++ compiler)",
)
def test_compile_trains_and_reports_its_compile_time(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    argv = ["train", "--model", "convstack:width=4", "--data", "shapes:size=16,n=16", "--epochs", "1"]
    assert (
        main([*argv, "--batch-size", "4", "--compile", "--device", "cpu", "--out", str(tmp_path / "r")]) == 0
    )
    assert re.search(
        r"torch\.compile: the first step \(compilation\) took \d+\.\d s", capsys.readouterr().out
    )
    assert math.isfinite(_records(tmp_path / "r")[0]["train_loss"])
