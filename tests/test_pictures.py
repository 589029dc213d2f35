"""RF pictures show exactly what the engine computed: the drawn arrays are compared with the report."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest

from atrous.models.registry import create_model
from atrous.rf import analyze, schedule
from atrous.rf.pictures import HOLE, REACHED, rf_figure, schedule_figure


def drawn(fig: plt.Figure) -> list[np.ndarray]:
    return [np.asarray(im.get_array()) for ax in fig.axes for im in ax.images]


@pytest.fixture
def keep_figures(monkeypatch: pytest.MonkeyPatch) -> list[plt.Figure]:
    """The figures the drawing functions make, kept open for inspection instead of closed after saving."""
    figures: list[plt.Figure] = []
    monkeypatch.setattr(plt, "close", lambda fig=None: figures.append(fig))
    return figures


def test_support_picture_is_the_exact_in_image_support_with_its_holes(
    tmp_path: Path, keep_figures: list[plt.Figure]
) -> None:
    report = analyze(create_model("convstack:rates=2,2,2"), (3, 32, 32))
    path = rf_figure(report, tmp_path / "rf.png", at=(0, 0))
    assert path.stat().st_size > 10_000
    canvas = drawn(keep_figures[0])[0]
    support = report.support((0, 0))
    assert np.array_equal(canvas == REACHED, support)
    # Grey exactly on the window's holes inside the image: rows/cols 0..6 of the 13-wide box centred on (0, 0),
    # with every odd offset a hole (rates 2, 2, 2).
    holes = canvas == HOLE
    assert holes[:7, :7].sum() == 49 - 16 and not holes[7:, :].any() and not holes[:, 7:].any()
    assert np.array_equal(support[:7:2, :7:2], np.ones((4, 4), bool))


def test_unaligned_outputs_get_one_window_per_phase(tmp_path: Path, keep_figures: list[plt.Figure]) -> None:
    report = analyze(create_model("unet:width=4,depth=1"), (3, 16, 16))
    rf_figure(report, tmp_path / "rf.png")
    titles = [ax.get_title() for ax in keep_figures[0].axes]
    assert "phases see different windows" in titles
    assert sum(t.startswith("pixel (8, ") for t in titles) == 2  # stride-2 upsampling: two phases per axis


def test_global_outputs_say_so_instead_of_a_box(tmp_path: Path, keep_figures: list[plt.Figure]) -> None:
    report = analyze(create_model("deeplabv3_small"), (3, 32, 32))
    rf_figure(report, tmp_path / "rf.png")
    ax = keep_figures[0].axes[0]
    assert ax.get_xlabel().startswith("global RF") and not ax.patches


def test_schedule_picture_marks_the_holes(tmp_path: Path, keep_figures: list[plt.Figure]) -> None:
    schedule_figure([schedule.check([2, 2, 2]), schedule.check([1, 2, 5])], tmp_path / "s.png")
    line, line2, square, _ = drawn(keep_figures[0])  # row 1: the 1-D supports; row 2: the 2-D ones
    expected = np.array([REACHED if o % 2 == 0 else HOLE for o in range(13)])
    assert np.array_equal(line[0], expected)
    assert square.shape == (13, 13) and (square == HOLE).sum() == 13 * 13 - 7 * 7
    assert (line2 == REACHED).all() and line2.shape == (1, 17)
    titles = " ".join(ax.get_title().replace("\n", " ") for ax in keep_figures[0].axes)
    assert "r_1 = 2 != 1" in titles and "6 holes per axis" in titles


def test_cli_writes_the_figure_the_page_and_the_schedule_picture(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from atrous.cli import main

    png, page = tmp_path / "rf.png", tmp_path / "rf.html"
    argv = ["rf", "convstack:rates=2,2,2", "--input", "3,32,32", "--at", "0,0", "--json"]
    assert main([*argv, "--plot", str(png), "--html", str(page)]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["support_at"]["pixels"] == 16  # --json stays machine-readable
    assert f"wrote {png}" in captured.err and png.stat().st_size > 10_000
    assert '<canvas id="output">' in page.read_text()
    assert main(["schedule", "2,2,2", "--plot", str(tmp_path / "s.png")]) == 0
    assert (tmp_path / "s.png").stat().st_size > 5_000
