"""The lab end to end on the tiny preset: files, results.json schema, no NaN, reproducibility."""

from __future__ import annotations

import hashlib
import io
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rich.console import Console

from atrous.cli import main
from atrous.errors import AtrousError
from atrous.lab import convergence, registration, runner
from atrous.lab.runner import run_lab
from atrous.lab.stats import NOT_CONVERGED

pytestmark = pytest.mark.usefixtures("cpu_only")  # exact equality between runs: see conftest


def _no_nan(text: str) -> dict:
    def refuse(token: str) -> None:
        raise AssertionError(f"results.json contains {token}")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    a, b = tmp_path_factory.mktemp("lab_a"), tmp_path_factory.mktemp("lab_b")
    run_lab("tiny", a)
    run_lab("tiny", b, workers=1)  # another process layout must not change a single number
    return a, b


def test_report_files_and_schema(two_runs: tuple[Path, Path]) -> None:
    run = two_runs[0]
    results = _no_nan((run / "results.json").read_text())
    assert {"ex1", "ex2", "ex3", "ex4", "ex5", "meta"} <= set(results)
    for row in results["ex1"]["rows"]:
        assert {"kernel", "rates", "rf", "holes", "params", "flops"} <= set(row)
    md = (run / "report.md").read_text()
    for image in re.findall(r"!\[[^]]*\]\(([^)]+)\)", md):
        assert (run / image).is_file(), image
    html = (run / "report.html").read_text()
    assert '<img src="data:image/png;base64,' in html and 'src="ex' not in html  # self-contained
    assert "Rerun alone: `atrous lab --only ex5 --preset tiny`" in md
    assert "wall_seconds" in json.loads((run / "timings.json").read_text())


def test_ex1_numbers_match_hand_arithmetic(two_runs: tuple[Path, Path]) -> None:
    rows = {r["name"]: r for r in json.loads((two_runs[0] / "results.json").read_text())["ex1"]["rows"]}
    assert {k: r["rf"] for k, r in rows.items()} == {
        "standard": 7,
        "dilated": 15,
        "dilated4": 31,
        "large": 19,
        "hdc": 17,
        "gridded": 13,
    }
    for r in rows.values():  # layers x k^2 x 64 x 64 weights; FLOPs = 2 x params x 64 x 64 pixels
        assert (
            r["params"] == len(r["rates"]) * r["kernel"] ** 2 * 64 * 64
            and r["flops"] == 2 * r["params"] * 4096
        )
    assert rows["gridded"]["holes"] == [1, 3, 5, 7, 9, 11]


def test_ex5_rfs_come_from_the_engine_and_are_hole_free(two_runs: tuple[Path, Path]) -> None:
    ex5 = json.loads((two_runs[0] / "results.json").read_text())["ex5"]
    (task,) = ex5.values()
    assert [pt["rf"] for pt in task["points"]] == [5, 9, 17] and task["needed_rf"] == 9
    assert "| 5 | kernel=3,3,1,1,1,rates=1,1,1,1,1 | 0 |" in (two_runs[0] / "report.md").read_text()


def test_two_runs_give_identical_results(two_runs: tuple[Path, Path]) -> None:
    a, b = (json.loads((run / "results.json").read_text()) for run in two_runs)
    assert a == b


def test_lab_options_errors(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    assert main(["lab", "--preset", "tiny", "--only", "ex9", "--out", str(tmp_path)]) == 2
    assert "unknown exercise 'ex9'" in capsys.readouterr().err
    assert main(["lab", "--preset", "tiny", "--seeds", "x", "--out", str(tmp_path)]) == 2
    assert "--seeds 'x'" in capsys.readouterr().err
    # The audit must not look at the seeds the preset reports (tiny reports seed 0).
    assert main(["lab", "--audit", "--preset", "tiny", "--seeds", "0,40", "--out", str(tmp_path)]) == 2
    assert "must not use the seeds the preset reports ([0])" in capsys.readouterr().err


def test_every_comparison_states_prediction_measurement_and_agreement(two_runs: tuple[Path, Path]) -> None:
    results = json.loads((two_runs[0] / "results.json").read_text())
    for ex in ("ex2", "ex3"):
        assert set(results[ex]["regimes"]) == {"a", "b"}
        for regime in results[ex]["regimes"].values():
            assert regime["regime"]["needed_rf"] == 2 * regime["regime"]["small"] + 1
            for c in regime["comparisons"]:
                assert c["prediction"] in ("better", "worse", "tie") and c["because"]
                # Tiny's 12-step runs cannot converge: every verdict must say so rather than agree or disagree.
                assert c["agreement"] == NOT_CONVERGED and c["judgement"]["healthy"] is False
                assert c["measurement"]["verdict"] == "inconclusive (one seed)"  # tiny runs one seed
    for size in results["ex4"]["by_size"].values():
        assert size["needed_rf"] > 0 and isinstance(size["covering"], list)
    (task,) = results["ex5"].values()
    assert task["prediction"]["saturation_rf"] == 9 and task["agreement"]["saturation_rf"] == NOT_CONVERGED
    # Two epochs are below the rule's minimum: no tiny run may count as converged.
    health = results["meta"]["health"]
    assert sum(health.values()) == 23 and set(health) <= {convergence.IMPROVING, convergence.TRIVIAL}
    md = (two_runs[0] / "report.md").read_text()
    assert md.index("registered before training:") < md.index("prediction, measurement, agreement")


def test_without_a_terminal_the_lab_prints_a_line_per_run(tmp_path: Path) -> None:
    out = io.StringIO()
    run_lab("tiny", tmp_path, only="ex5", console=Console(file=out, force_terminal=False, width=80))
    text = out.getvalue()
    assert re.search(r"expected about \d+ s on this machine", text)
    assert re.search(r"\[1/3\] ex5 RF \d+ \(objects 4px\), seed 0: val mIoU \d\.\d{3} after \d+ steps", text)
    timings = json.loads((tmp_path / "timings.json").read_text())
    assert timings["exercises"]["ex5"]["runs"] == 3 and timings["exercises"]["ex5"]["run_seconds"] > 0


def test_workers_leave_when_the_lab_is_killed(tmp_path: Path) -> None:
    lab = subprocess.Popen(
        [sys.executable, "-m", "atrous", "lab", "--preset", "tiny", "--out", str(tmp_path), "--workers", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    lines = [lab.stdout.readline() for _ in range(4)]  # registration, plan, then the first finished run
    assert any("[1/" in line for line in lines)  # training has started in the workers
    workers = [
        int(p)
        for p in subprocess.run(["pgrep", "-P", str(lab.pid)], capture_output=True, text=True).stdout.split()
    ]
    assert workers
    lab.kill()
    lab.wait()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and any(running(w) for w in workers):
        time.sleep(0.5)
    assert not [w for w in workers if running(w)]


def running(pid: int) -> bool:
    """A live process (an exited one the container's init has not reaped yet is a zombie, state Z)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_predictions_are_registered_before_any_run_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = {}
    train = runner.run_jobs

    def check_then_train(jobs, root, *args, **kwargs):
        seen["runs_before"] = root.exists() and any(root.iterdir())
        seen["text"] = (tmp_path / registration.FILE).read_text()
        return train(jobs, root, *args, **kwargs)

    monkeypatch.setattr(runner, "run_jobs", check_then_train)
    out = io.StringIO()
    run_lab("tiny", tmp_path, only="ex5", console=Console(file=out, width=200))
    assert seen["runs_before"] is False
    registered = json.loads(seen["text"])
    assert registered["exercises"]["ex5"]["small_4"]["saturation_rf"] == 9
    assert registered["rules"]["margin"] == 0.05
    digest = hashlib.sha256(seen["text"].encode()).hexdigest()
    assert (tmp_path / registration.FILE).read_text() == seen["text"]  # unchanged by training
    assert f"sha256 {digest}" in out.getvalue() and digest in (tmp_path / "report.md").read_text()
    assert json.loads((tmp_path / "results.json").read_text())["meta"]["predictions_sha256"] == digest


def test_a_changed_registration_is_refused(tmp_path: Path) -> None:
    digest = registration.register(tmp_path, {"x": 1})
    assert registration.read_back(tmp_path, digest) == {"x": 1}
    (tmp_path / registration.FILE).write_text('{"x": 2}')
    with pytest.raises(AtrousError, match="changed during training"):
        registration.read_back(tmp_path, digest)
