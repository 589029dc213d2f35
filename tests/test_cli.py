"""The command line as a user types it: JSON shapes, one-line errors with exit status 2."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from atrous.cli import main


def run(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_rf_json_schema(capsys: pytest.CaptureFixture) -> None:
    code, out, _ = run(capsys, "rf", "convstack:preset=gridded", "--input", "3,32,32", "--json", "--layers")
    assert code == 0
    data = json.loads(out)
    assert data["input"] == [3, 32, 32]
    (o,) = data["outputs"]
    for key in (
        "name",
        "shape",
        "rf",
        "stride",
        "padding",
        "holes",
        "coverage",
        "aligned",
        "phases",
        "global",
    ):
        assert key in o
    assert o["rf"] == [13, 13] and o["stride"] == [1, 1] and o["padding"] == [6, 6]
    assert o["holes"] == [[1, 3, 5, 7, 9, 11]] * 2 and o["aligned"] is True and o["global"] is False
    assert [layer["rf"][0] for layer in data["layers"] if layer["op"] == "convolution"] == [5, 9, 13, 13]


def test_rf_table_and_support_at(capsys: pytest.CaptureFixture) -> None:
    code, out, _ = run(capsys, "rf", "convstack:preset=dilated", "--input", "3,64,64", "--at", "0,0")
    assert code == 0
    # The table's row for the output, cell by cell (RF 15, stride 1, padding 7, no holes), not "15" anywhere.
    row = next(line for line in out.splitlines() if line.lstrip("│ ").startswith("out "))
    cells = [c.strip() for c in row.strip("│ ").split("│")]
    assert cells[:6] == ["out", "2×64×64", "15", "1", "7", "0"], cells
    assert "in-image support of output pixel (0, 0): 64 input pixels" in out


def test_user_factory_by_import_path(
    capsys: pytest.CaptureFixture, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "my_models.py").write_text(
        textwrap.dedent("""
        from torch import nn
        def build():
            return nn.Sequential(nn.Conv2d(1, 4, 5, stride=2), nn.ReLU(), nn.Conv2d(4, 1, 3))
    """)
    )
    monkeypatch.chdir(tmp_path)
    code, out, _ = run(capsys, "rf", "my_models:build", "--input", "1,40,40", "--json")
    assert code == 0
    assert json.loads(out)["outputs"][0]["rf"] == [9, 9]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["rf", "convstak", "--input", "3,8,8"], "did you mean 'convstack'"),
        (["rf", "convstack", "--input", "3,x"], "--input '3,x' must be comma-separated integers"),
        (["rf", "convstack", "--input", "1,16,16"], "built for 3 input channels but got 1"),
        (["rf", "convstack:width=8,depth=2", "--input", "3,8,8"], "has no argument 'depth'"),
        (["rf", "nowhere.pkg:make", "--input", "3,8,8"], "cannot import 'nowhere.pkg'"),
        (["rf", "convstack", "--input", "3,16,16", "--at", "99,0"], "outside output"),
        (["schedule", "1,0,2"], "dilation rates must be positive integers"),
        (["lab", "--only", "ex9"], "unknown exercise 'ex9'"),
    ],
)
def test_errors_are_one_line_with_exit_2(
    capsys: pytest.CaptureFixture, argv: list[str], message: str
) -> None:
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("atrous: error: ") and message in err


def test_schedule_suggest_json(capsys: pytest.CaptureFixture) -> None:
    code, out, _ = run(capsys, "schedule", "--suggest", "67", "--json", "--limit", "2")
    assert code == 0
    rows = json.loads(out)
    assert rows[0]["rf"] == 67 and rows[0]["hole_free"] and len(rows) == 2


def test_console_entry_point_runs_as_a_module() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "atrous", "rf", "convstack", "--input", "3,16,16", "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(proc.stdout)["outputs"][0]["rf"] == [7, 7]


def test_models_json_for_one_spec(capsys: pytest.CaptureFixture) -> None:
    code, out, _ = run(capsys, "models", "convstack:preset=gridded", "--input", "3,32,32", "--json")
    assert code == 0
    (row,) = json.loads(out)
    assert row["rf"] == [13, 13] and row["holes"] == [6, 6] and row["output_stride"] == 1
    assert row["params"] == 3 * 9 * 64 + 2 * 9 * 64 * 64 + 64 * 2 + 2 + 3 * 64 * 2  # convs, head, BatchNorms


def test_models_rejects_an_input_below_the_minimum(capsys: pytest.CaptureFixture) -> None:
    code, _, err = run(capsys, "models", "unet", "--input", "3,16,16")
    assert code == 2 and "needs H and W >= 32" in err
