"""One row per zoo model: parameters, FLOPs, receptive field (from the engine), output stride."""

from __future__ import annotations

from collections.abc import Sequence

from atrous.errors import InputShapeError
from atrous.flops import count_flops, count_params
from atrous.models.registry import create_model, list_models, model_info
from atrous.rf import analyze
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
