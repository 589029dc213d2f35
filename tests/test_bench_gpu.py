"""``atrous bench gpu`` has to work the first time it meets a GPU: its code runs here on the CPU, shrunk."""

from __future__ import annotations

import pytest
import torch
from rich.console import Console

from atrous.bench.gpu import Setting, bench_gpu, datasheet_peak, print_gpu


def test_the_gpu_suite_runs_end_to_end_on_a_small_setting(capsys: pytest.CaptureFixture) -> None:
    setting = Setting(
        model="deeplabv3_small", batch=2, size=64, bare_steps=1, train_steps=3, matmul=256, compile=False
    )
    result = bench_gpu(torch.device("cpu"), workers=0, setting=setting)
    labels = [r["config"] for r in result["rows"]]
    assert labels[-1] == "atrous train, channels-last eager, data and all"
    assert all(r["img_s"] > 0 and r["mfu_measured"] > 0 for r in result["rows"])
    assert [d["pipeline"].split(",")[0] for d in result["data"]] == [
        "composed on the device",
        "drawn on the CPU",
    ]
    assert sum(p["share"] for p in result["profile"]) == pytest.approx(1.0)
    assert result["gflop_per_img"] > 0
    print_gpu(result, Console(width=100))
    assert "Training speed, same run" in capsys.readouterr().out


def test_datasheet_peaks_are_found_by_device_name() -> None:
    assert datasheet_peak("NVIDIA H100 80GB HBM3") == 989e12
    assert datasheet_peak("NVIDIA H200") == 989e12
    assert datasheet_peak("Some Future GPU") is None
