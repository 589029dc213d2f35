"""Tables for receptive-field reports, dilation schedules (and the model zoo, through :class:`FitTable`).

Every table fits the console it is printed on, 80 columns included. Only the columns that name things (module
paths, op names) or hold prose may break, and only after their natural separators (the dots of a module path,
the underscores of an op name, spaces), so every line still reads as a piece of a name; numbers never break.
Notes are said once each, below the table, never in a column.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction

from rich import box
from rich.console import Console, ConsoleOptions
from rich.table import Table

from atrous.rf.report import RFReport, TensorRF
from atrous.rf.schedule import ScheduleCheck

GAP = 2  # spaces between two columns of the compact style (see the padding in :meth:`FitTable._table`)
BOXED_GAP, BOXED_EDGES = 3, 4  # rich's default box: " │ " between columns, "│ " and " │" at the edges
NARROWEST = 8  # a breakable column is not narrowed below this: shorter pieces stop reading as names


@dataclass
class FitTable:
    """A table that fits the console: in rich's box when it fits whole, else without the box's rules and with
    its breakable columns narrowed; then its notes, below."""

    title: str
    columns: Sequence[str]
    rows: list[Sequence[str]]
    breaks: Mapping[str, str] = field(default_factory=dict)  # column -> characters its cells may break after
    right: frozenset[str] = frozenset()  # columns of numbers, aligned right
    notes: list[tuple[str, str]] = field(default_factory=list)  # (label, text), one line each below the table

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> Iterator[Table]:
        # A table that fits whole keeps rich's familiar box; one that does not drops the box's rules, which
        # cost 3 columns a gap, before any name has to break.
        widths = self._natural_widths()
        boxed = sum(widths) + BOXED_GAP * (len(widths) - 1) + BOXED_EDGES <= options.max_width
        yield self._table(widths if boxed else self._narrowed(widths, options.max_width), boxed)
        if self.notes:
            grid = Table.grid(padding=(0, 1, 0, 0))
            grid.add_column(no_wrap=True)
            grid.add_column(overflow="fold")  # prose: wraps at spaces, within the console
            for label, text in self.notes:
                grid.add_row(label, text)
            yield grid

    def _natural_widths(self) -> list[int]:
        return [
            max(len(line) for text in (col, *cells) for line in text.split("\n"))
            for col, cells in self._cols()
        ]

    def _narrowed(self, natural: list[int], max_width: int) -> list[int]:
        """The widest breakable column narrowed first, one character at a time, until the table fits."""
        widths = list(natural)
        free = max_width - GAP * (len(widths) - 1)
        breakable = [i for i, col in enumerate(self.columns) if col in self.breaks]
        while sum(widths) > free:
            i = max(breakable, key=lambda j: widths[j], default=None)
            if i is None or widths[i] <= NARROWEST:
                break  # rich folds whatever is still too wide
            widths[i] -= 1
        return widths

    def _cols(self) -> Iterator[tuple[str, list[str]]]:
        for i, col in enumerate(self.columns):
            yield col, [row[i] for row in self.rows]

    def _table(self, widths: list[int], boxed: bool) -> Table:
        if boxed:
            table = Table(title=self.title)
        else:
            table = Table(
                title=self.title,
                box=box.SIMPLE_HEAD,
                show_edge=False,
                pad_edge=False,
                padding=(0, GAP - 1, 0, 0),
            )
        for col, width in zip(self.columns, widths):
            justify = "right" if col in self.right else "left"
            table.add_column(self._cell(col, col, width), justify=justify, overflow="fold")
        for row in self.rows:
            table.add_row(
                *(self._cell(col, text, width) for col, text, width in zip(self.columns, row, widths))
            )
        return table

    def _cell(self, col: str, text: str, width: int) -> str:
        return break_after(text, width, self.breaks[col]) if col in self.breaks else text


def break_after(text: str, width: int, separators: str) -> str:
    """``text`` in lines of at most ``width`` characters, each line ending just after one of ``separators``
    (so ``backbone.layer2.0.downsample.0`` breaks into whole path parts); a part longer than ``width`` is cut."""
    parts = re.findall(f"[^{re.escape(separators)}]*[{re.escape(separators)}]?", text)
    lines = [""]
    for part in filter(None, parts):
        if lines[-1] and len(lines[-1]) + len(part.rstrip(" ")) > width:
            lines[-1] = lines[-1].rstrip(" ")
            lines.append("")
        lines[-1] += part
    cut = [line[i : i + width] for line in lines for i in range(0, max(len(line), 1), width)]
    return "\n".join(line.rstrip(" ") for line in cut)


def fmt_fraction(x: Fraction | None) -> str:
    if x is None:
        return "-"
    return str(x.numerator) if x.denominator == 1 else f"{x.numerator}/{x.denominator}"


def fmt_axes(values: list, sep: str = "×") -> str:
    """One value per spatial axis, collapsed when all axes agree."""
    texts = [
        v if isinstance(v, str) else fmt_fraction(v) if isinstance(v, Fraction) or v is None else str(v)
        for v in values
    ]
    return texts[0] if len(set(texts)) == 1 else sep.join(texts)


def rf_cell(t: TensorRF) -> str:
    return fmt_axes(["global" if a.global_ else str(a.rf) for a in t.axes])


def holes_cell(t: TensorRF) -> str:
    return fmt_axes([str(a.hole_count) if not a.global_ else "-" for a in t.axes], sep="/")


def tensor_notes(t: TensorRF) -> list[str]:
    """Each note of a tensor once: an axis note that every axis has is said once, one that only some axes have
    names them (``H: ...``)."""
    axes_by_note: dict[str, list[str]] = {}
    for a in t.axes:
        if a.note:
            axes_by_note.setdefault(a.note, []).append(a.name)
    axis_notes = [
        note if len(names) == len(t.axes) else f"{', '.join(names)}: {note}"
        for note, names in axes_by_note.items()
    ]
    return list(dict.fromkeys(t.notes + axis_notes))


def outputs_table(report: RFReport) -> FitTable:
    rows, notes = [], []
    for t in report.outputs:
        cover = "-" if t.area_coverage is None else f"{t.area_coverage:.1%}"
        rows.append(
            (
                t.name,
                "×".join(map(str, t.shape[1:])),
                rf_cell(t),
                fmt_axes([a.stride for a in t.axes]),
                fmt_axes([a.padding for a in t.axes]),
                holes_cell(t),
                cover,
                "yes" if t.aligned else "no",
            )
        )
        notes += [(f"note ({t.name}):", note) for note in tensor_notes(t)]
    return FitTable(
        f"Receptive fields for input {tuple(report.input_shape)}",
        ("output", "shape", "RF", "stride", "pad", "holes", "cover", "aligned"),
        rows,
        breaks={"output": "."},
        right=frozenset({"RF", "stride", "pad", "holes", "cover"}),
        notes=notes,
    )


def layers_table(report: RFReport) -> FitTable:
    """One row per module call (its last op), in execution order; ops outside modules get their own row."""
    rows = report.layers()
    shown = []
    for i, row in enumerate(rows):
        if i + 1 < len(rows) and rows[i + 1].module == row.module:
            continue
        t = row.tensor
        shown.append(
            (
                str(row.node),
                row.module or "<model>",
                row.op,
                "×".join(map(str, row.shape[1:])),
                rf_cell(t),
                fmt_axes([a.stride for a in t.axes]),
                holes_cell(t),
                "yes" if t.aligned else "no",
            )
        )
    return FitTable(
        "Receptive field after each layer",
        ("#", "module", "op", "shape", "RF", "stride", "holes", "aligned"),
        shown,
        breaks={"module": ".", "op": "_"},
        right=frozenset({"#", "RF", "stride", "holes"}),
    )


def schedule_table(results: Sequence[ScheduleCheck], kernel: int) -> FitTable:
    rows = [
        (
            ",".join(map(str, r.rates)),
            str(r.rf),
            str(len(r.holes)),
            str(list(r.holes)) if r.holes else "-",
            r.hdc.verdict,
        )
        for r in results
    ]
    return FitTable(
        f"Dilation schedules, kernel {kernel}",
        ("rates", "RF", "holes", "hole positions", "HDC rule"),
        rows,
        breaks={"rates": ",", "hole positions": " ", "HDC rule": " "},
        right=frozenset({"RF", "holes"}),
    )
