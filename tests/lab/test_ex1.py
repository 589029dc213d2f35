"""Exercise 1 of the lab: every number comes from the engine and counters, and matches hand arithmetic."""

from __future__ import annotations

import json
from pathlib import Path

from atrous.lab.runner import run_lab


def test_ex1_table_values(tmp_path: Path) -> None:
    paths = run_lab("tiny", tmp_path, only="ex1")
    rows = {r["name"]: r for r in json.loads(paths["json"].read_text())["ex1"]["rows"]}
    expected_rf = {"standard": 7, "dilated": 15, "dilated4": 31, "large": 19, "hdc": 17, "gridded": 13}
    assert {k: r["rf"] for k, r in rows.items()} == expected_rf
    # Hand counts: layers x k^2 x 64 x 64 weights (no bias); FLOPs = 2 x params x 64 x 64 output pixels.
    for r in rows.values():
        assert r["params"] == len(r["rates"]) * r["kernel"] ** 2 * 64 * 64
        assert r["flops"] == 2 * r["params"] * 64 * 64
    assert rows["gridded"]["holes"] == [1, 3, 5, 7, 9, 11]
    assert all(r["hole_count"] == 0 for k, r in rows.items() if k != "gridded")
    for key in ("kernel", "rates", "rf", "holes", "params", "flops"):
        assert all(key in r for r in rows.values())
    assert (tmp_path / "report.html").stat().st_size > 10_000  # the figure is embedded
    assert "| gridded | 3 | 2, 2, 2 | 13 | 6 |" in paths["md"].read_text()
