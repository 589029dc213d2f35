"""``atrous suggest``: the ranking rule, agreement with the lab's needed RF, and the table."""

from __future__ import annotations

import json

from atrous.cli import main
from atrous.data import build_dataset
from atrous.data.stats import scan
from atrous.data.synthetic import needed_rf
from atrous.suggest import rank, suggest


def row(label: str, flops: int, holes: int, worst: float, params: int = 10) -> dict:
    return {"label": label, "flops": flops, "holes": holes, "worst": worst, "params": params}


def test_hole_free_wins_a_tie_of_cost() -> None:
    rows = [
        row("gridded", 100, 6, 1.0, params=5),
        row("solid", 100, 0, 1.0, params=9),
        row("cheap", 50, 0, 0.5),
    ]
    ok, rest = rank(rows, 0.95)
    assert [r["label"] for r in ok] == ["solid", "gridded"]
    assert [r["label"] for r in rest] == ["cheap"]


def test_suggestion_agrees_with_the_lab_needed_rf() -> None:
    """scale, the lab's criterion (every pixel sees its object and one pixel beyond, small class): the
    cheapest conv stack that covers every small object has RF exactly needed_rf(small); the one below does not."""
    objs = scan(build_dataset("scale:size=40,small=4,large=12,n=8"), progress=False)
    data = suggest(objs, target=1.0, margin=1, anchor="every", classes=[1])
    assert data["needed_window"] == {"small (4px)": needed_rf(4)}
    stacks = [r for r in data["covering"] if r["spec"].startswith("convstack")]
    assert min(r["rf"] for r in stacks) == needed_rf(4)
    below = [
        r for r in data["not_covering"] if r["spec"].startswith("convstack") and r["rf"] == needed_rf(4) - 2
    ]
    assert below and below[0]["worst"] == 0.0
    assert all(r["holes"] == 0 or r["worst"] < 1.0 for r in stacks if r["rf"] == needed_rf(4))


def test_cli_table_fits_80_columns(capsys) -> None:
    assert main(["suggest", "multiscale:size=48,max_extent=12,n=4", "--top", "5"]) == 0
    out = capsys.readouterr().out
    assert max(len(line) for line in out.splitlines()) <= 80
    assert "1 " in out and "candidates cover the target" in out
    assert main(["suggest", "multiscale:size=48,max_extent=12,n=4", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["covering"] and all(r["worst"] >= 0.95 for r in data["covering"])
    flops = [r["flops"] for r in data["covering"]]
    assert flops == sorted(flops)
