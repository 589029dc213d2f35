"""The tables of ``atrous rf``, ``atrous schedule`` and ``atrous models`` read at 80 columns: no line is longer,
names break only after their separators, and each note is said once, below the table."""

from __future__ import annotations

import io
from fractions import Fraction

import pytest
from rich.console import Console

from atrous import cli
from atrous.models.summary import models_table, summarize
from atrous.rf.render import break_after, tensor_notes
from atrous.rf.report import AxisRF, TensorRF

WIDTH = 80


def printed(monkeypatch: pytest.MonkeyPatch, *argv: str) -> list[str]:
    """What the command prints on an 80-column terminal, line by line."""
    buf = io.StringIO()
    monkeypatch.setattr(cli, "console", Console(file=buf, width=WIDTH))
    assert cli.main(list(argv)) == 0
    return buf.getvalue().splitlines()


def test_rf_tables_fit_80_columns_and_say_the_note_once(monkeypatch: pytest.MonkeyPatch) -> None:
    lines = printed(monkeypatch, "rf", "unet", "--input", "3,48,48", "--layers")
    assert max(map(len, lines)) <= WIDTH
    text = "\n".join(lines)
    note = "16 output phases see different windows (stride 1)"
    assert text.count(note) == 1
    # The note is a line of its own after the outputs table, not a cell of it.
    (out_row,) = [line for line in lines if line.startswith("│ out ")]  # this one fits in a box
    cells = [cell.strip() for cell in out_row.split("│")[1:-1]]
    assert cells == ["out", "2×48×48", "204", "1", "94", "0", "100.0%", "no"]
    assert lines[-1] == f"note (out): {note}".ljust(len(lines[-1]))
    # A long op name breaks after an underscore, so both halves read as parts of the name.
    pool = lines.index(next(line for line in lines if " pool " in line))
    assert lines[pool].split() == ["11", "pool", "max_pool2d_with_", "32×24×24", "6", "2", "0", "yes"]
    assert lines[pool + 1].split() == ["indices"]


def test_schedule_table_fits_80_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    lines = printed(monkeypatch, "schedule", "4,4,4,8,8")
    assert max(map(len, lines)) <= WIDTH
    row = next(line for line in lines if line.startswith("4,4,4,8,8"))
    assert row.split()[:3] == ["4,4,4,8,8", "57", "42"]
    # The 42 hole positions wrap after their commas within their column: every number stays whole.
    header = next(line for line in lines if line.startswith("rates"))
    lo, hi = header.index("hole positions"), header.index("HDC rule")
    column = " ".join(line[lo:hi] for line in lines[lines.index(row) :])
    assert [int(p.strip("[],")) for p in column.split()] == [p for p in range(1, 56) if p % 4]


def test_models_table_fits_80_columns_with_summaries_below() -> None:
    rows = summarize((3, 64, 64), ["deeplabv3plus_small", "convstack"])
    buf = io.StringIO()
    Console(file=buf, width=WIDTH).print(models_table(rows, (3, 64, 64)))
    lines = buf.getvalue().splitlines()
    assert max(map(len, lines)) <= WIDTH
    assert lines[3].split() == [
        "deeplabv3plus_small",
        "segmentation",
        "670,898",
        "0.079",
        "global",
        "16",
        "32",
    ]
    assert lines[5].startswith("deeplabv3plus_small DeepLabv3+ on a narrow ResNet for small images")


def test_break_after_keeps_whole_parts() -> None:
    assert break_after("backbone.layer2.0.downsample.0", 17, ".") == "backbone.layer2.\n0.downsample.0"
    assert break_after("max_pool2d_with_indices", 17, "_") == "max_pool2d_with_\nindices"
    assert break_after("short", 17, ".") == "short"
    assert break_after("averyveryverylongpart", 8, ".") == "averyver\nyverylon\ngpart"  # no separator: cut


def axis(name: str, note: str | None) -> AxisRF:
    return AxisRF(
        name=name, rf=3, global_=False, stride=Fraction(1), coverage=1.0, aligned=note is None, note=note
    )


def test_an_axis_note_is_said_once_and_names_its_axes_when_not_all_have_it() -> None:
    both = TensorRF("out", (1, 2, 8, 8), [axis("H", "2 phases"), axis("W", "2 phases")], ["a note"], None)
    assert tensor_notes(both) == ["a note", "2 phases"]
    one = TensorRF("out", (1, 2, 8, 8), [axis("H", "2 phases"), axis("W", None)], [], None)
    assert tensor_notes(one) == ["H: 2 phases"]
