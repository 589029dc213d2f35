"""Rich tables for receptive-field reports (the CLI prints them; the lab reuses the cell formats)."""

from __future__ import annotations

from fractions import Fraction

from rich.table import Table

from atrous.rf.report import RFReport, TensorRF


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


def outputs_table(report: RFReport) -> Table:
    table = Table(title=f"Receptive fields for input {tuple(report.input_shape)}")
    for col in ("output", "shape", "RF", "stride", "pad", "holes", "cover", "aligned", "notes"):
        table.add_column(col, overflow="fold")
    for t in report.outputs:
        cover = "-" if t.area_coverage is None else f"{t.area_coverage:.1%}"
        notes = "; ".join(t.notes + [a.note for a in t.axes if a.note])
        table.add_row(
            t.name,
            "×".join(map(str, t.shape[1:])),
            rf_cell(t),
            fmt_axes([a.stride for a in t.axes]),
            fmt_axes([a.padding for a in t.axes]),
            holes_cell(t),
            cover,
            "yes" if t.aligned else "no",
            notes,
        )
    return table


def layers_table(report: RFReport) -> Table:
    """One row per module call (its last op), in execution order; ops outside modules get their own row."""
    rows = report.layers()
    table = Table(title="Receptive field after each layer")
    for col in ("#", "module", "op", "shape", "RF", "stride", "holes", "aligned"):
        table.add_column(col, overflow="fold")
    for i, row in enumerate(rows):
        if i + 1 < len(rows) and rows[i + 1].module == row.module:
            continue
        t = row.tensor
        table.add_row(
            str(row.node),
            row.module or "<model>",
            row.op,
            "×".join(map(str, row.shape[1:])),
            rf_cell(t),
            fmt_axes([a.stride for a in t.axes]),
            holes_cell(t),
            "yes" if t.aligned else "no",
        )
    return table
