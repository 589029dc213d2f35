"""Device resolution and the requests a machine cannot honour: one line, exit 2, nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from atrous import device as dev
from atrous.cli import main
from atrous.device import DeviceError, check_compile, check_precision, resolve_device


def fake_gpus(monkeypatch: pytest.MonkeyPatch, count: int, bf16: bool = True) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "Tesla T4")


def test_auto_is_cuda_exactly_when_a_gpu_is_present(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    fake_gpus(monkeypatch, 2)
    assert resolve_device("auto") == torch.device("cuda", 0)
    assert resolve_device("auto", local_rank=1) == torch.device("cuda", 1)  # torchrun: the rank's own GPU
    assert resolve_device("cuda:1") == torch.device("cuda", 1)


@pytest.mark.parametrize(
    ("name", "gpus", "message"),
    [
        ("cuda:3", 1, "this machine has 1 GPU(s), cuda:0 to cuda:0; pick one of those"),
        ("cuda", 0, "no CUDA GPU is available on this machine; use the cpu device"),
        ("cuda:x", 1, "the GPU index must be a number"),
        ("tpu", 1, "use auto, cpu or cuda[:N]"),
    ],
)
def test_impossible_devices_are_named_with_the_fix(
    monkeypatch: pytest.MonkeyPatch, name: str, gpus: int, message: str
) -> None:
    if gpus:
        fake_gpus(monkeypatch, gpus)
    else:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(
        DeviceError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")
    ):
        resolve_device(name)


def test_bf16_on_a_gpu_without_it_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_gpus(monkeypatch, 1, bf16=False)
    with pytest.raises(DeviceError, match="precision bf16: Tesla T4 has no bf16 support; use fp32"):
        check_precision("bf16", torch.device("cuda", 0))
    check_precision("fp32", torch.device("cuda", 0))
    check_precision("bf16", torch.device("cpu"))  # slow on most CPUs, but it runs


def test_compile_without_its_compiler_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dev.shutil, "which", lambda name: None)
    with pytest.raises(
        DeviceError, match=r"needs a C\+\+ compiler \(apt-get install g\+\+\); or train without compiling"
    ):
        check_compile(torch.device("cpu"))


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--device", "cuda:3"], "device cuda:3: "),
        (["--compile", "--device", "cpu"], "compile: torch.compile on a CPU needs a C++ compiler"),
    ],
)
def test_train_refuses_before_writing_anything(
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    extra: list[str],
    message: str,
) -> None:
    monkeypatch.setattr(dev.shutil, "which", lambda name: None)
    out = tmp_path / "run"
    argv = ["train", "--model", "convstack:width=4", "--data", "shapes:size=16,n=8", "--epochs", "1"]
    assert main([*argv, "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not out.exists()


@pytest.mark.parametrize("command", [["eval", "--checkpoint", "x", "--data", "shapes"], ["bench", "gpu"]])
def test_other_commands_refuse_an_absent_gpu(
    capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch, command: list[str]
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main([*command, "--device", "cuda"]) == 2
    assert "no CUDA GPU is available on this machine" in capsys.readouterr().err
    assert main(["bench", "gpu", "--device", "cpu"]) == 2
    assert "atrous bench gpu needs a CUDA GPU" in capsys.readouterr().err
