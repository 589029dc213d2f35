"""``scripts/gpu-check`` on the CPU: a lent GPU may come with minutes of device time, so the script must reach
the benchmark and its summary whatever the tests did, and say by its exit status whether anything failed. The
suite and the benchmark are replaced by a tiny test file and a stand-in command (the script's environment
knobs), so what is tested here is the script's own control flow, not the GPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu-check"
STAND_IN = {"gpu": {"device": "stand-in GPU", "rows": [{"config": "stand-in row", "img_s": 123.0}]}}

TESTS = """
import time

def test_passes():
    assert 1 + 1 == 2

def test_forced_failure():
    assert 1 + 1 == 3, "forced failure"

def test_hangs():
    time.sleep(600)
"""


def gpu_check(tmp_path: Path, tests: list[str], bench: str, **env: str) -> tuple[int, str, Path]:
    (tmp_path / "test_forced.py").write_text(TESTS)
    select = " ".join(f"{tmp_path / 'test_forced.py'}::{name}" for name in tests)
    out = tmp_path / "out"
    environ = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    environ.update(
        GPU_CHECK_OUT=str(out),
        GPU_CHECK_PYTHON=sys.executable,  # no GPU needed: the script runs as it would on one
        GPU_CHECK_PYTEST_ARGS=f"-p no:xdist {select}",
        GPU_CHECK_BENCH=bench,
        **env,
    )
    done = subprocess.run(
        ["bash", str(SCRIPT)], env=environ, capture_output=True, text=True, timeout=300, check=False
    )
    return done.returncode, done.stdout, out


def stand_in_bench(tmp_path: Path) -> str:
    """A benchmark that prints the JSON ``atrous bench gpu --json`` would, and leaves a mark that it ran."""
    (tmp_path / "result.json").write_text(json.dumps(STAND_IN))
    return f"touch {tmp_path / 'bench-ran'} && cat {tmp_path / 'result.json'}"


def test_a_failing_test_still_leaves_the_benchmark_and_a_summary_and_fails_the_check(tmp_path: Path) -> None:
    code, stdout, out = gpu_check(tmp_path, ["test_passes", "test_forced_failure"], stand_in_bench(tmp_path))
    assert code == 1
    assert (tmp_path / "bench-ran").is_file()  # the benchmark ran after the failure
    assert json.loads((out / "bench-gpu.json").read_text()) == STAND_IN
    summary = (out / "summary.txt").read_text()
    assert "tests: 1 passed, 1 failed, 0 errors, 0 skipped" in summary
    assert "test_forced_failure: AssertionError: forced failure" in summary
    assert "stand-in row" in summary and "img_s 123.0" in summary
    assert summary.rstrip().endswith("gpu-check: FAILED")
    assert stdout.rstrip().endswith(summary.rstrip())  # the summary is the last screen
    assert len(summary.splitlines()) <= 40
    assert (out / "junit.xml").is_file() and "forced failure" in (out / "pytest.log").read_text()


def test_all_passing_exits_0(tmp_path: Path) -> None:
    code, _, out = gpu_check(tmp_path, ["test_passes"], stand_in_bench(tmp_path))
    summary = (out / "summary.txt").read_text()
    assert code == 0, summary
    assert "tests: 1 passed, 0 failed, 0 errors, 0 skipped" in summary
    assert summary.rstrip().endswith("gpu-check: passed")


def test_a_hung_test_is_stopped_and_a_failing_benchmark_is_reported(tmp_path: Path) -> None:
    code, _, out = gpu_check(
        tmp_path,
        ["test_passes", "test_hangs"],
        "echo 'CUDA out of memory' >&2; exit 3",
        # Time enough to start pytest and reach the hanging test on a loaded machine: 20 s was not, once, while
        # the whole suite and a benchmark shared two cores (the interrupt came during start-up, so no location).
        GPU_CHECK_TEST_TIMEOUT="60",
    )
    summary = (out / "summary.txt").read_text()
    assert code == 1, summary
    assert "the tests were stopped at the time limit" in summary
    assert "stopped in " in summary and "test_forced.py:" in summary  # where it hung
    assert "bench gpu: no result (exit 3" in summary and "CUDA out of memory" in summary
    assert summary.rstrip().endswith("gpu-check: FAILED")
