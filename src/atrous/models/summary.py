"""One row per zoo model: parameters, FLOPs, receptive field (from the engine), output stride."""

from __future__ import annotations

from collections.abc import Sequence

from atrous.errors import InputShapeError
from atrous.flops import count_flops, count_params
from atrous.models.registry import create_model, list_models, model_info
from atrous.rf import analyze
from atrous.rf.render import FitTable
from atrous.spec import split_spec


def summarize(input_shape: Sequence[int], names: list[str] | None = None) -> list[dict]:
    rows = []
    for spec in names or list_models():
        info = model_info(split_spec(spec)[0])
        model = create_model(spec)
        shape = tuple(input_shape)
        if min(shape[1:]) < model.min_size:
            raise InputShapeError(f"{spec} needs H and W >= {model.min_size}; --input {shape} is smaller")
        out = analyze(model, shape).outputs[0]
        rows.append(
            {
                "name": spec,
                "task": info.task,
                "params": count_params(model),
                "flops": count_flops(model, shape),
                "rf": out.rf,
                "rf_global": out.global_,
                "holes": [a.hole_count for a in out.axes],
                "output_stride": model.output_stride,
                "min_size": model.min_size,
                "summary": info.summary,
            }
        )
    return rows


def models_table(rows: list[dict], input_shape: Sequence[int]) -> FitTable:
    """The rows of :func:`summarize` as a table; each model's summary is prose, so it goes below the table."""
    cells = []
    for r in rows:
        rf = "global" if r["rf_global"] else "×".join(map(str, sorted(set(r["rf"]))))
        cells.append(
            (
                r["name"],
                r["task"],
                f"{r['params']:,}",
                f"{r['flops'] / 1e9:.3f}",
                rf,
                str(r["output_stride"]),
                "-" if r["min_size"] is None else str(r["min_size"]),
            )
        )
    return FitTable(
        f"atrous zoo (FLOPs and RF at input {','.join(map(str, input_shape))})",
        ("name", "task", "params", "GFLOPs", "RF", "stride", "min size"),
        cells,
        breaks={"name": "_.:", "stride": " "},
        right=frozenset({"params", "GFLOPs", "RF", "stride", "min size"}),
        notes=[(r["name"], r["summary"]) for r in rows],
    )
