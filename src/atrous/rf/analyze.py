"""Exact receptive fields of any PyTorch model: :func:`analyze` records the graph and propagates over it.

Two exact views share the rule table:

* the **theoretical** receptive field of the network extended to an infinite input (Araujo et al.): periodic
  index maps (:mod:`atrous.rf.support`) give extent, stride, padding, centre, holes and per-phase windows,
  whatever the input size, like the published values (ResNet-50: 427 / 32 / 213);
* the **in-image** support for one output pixel of this input size (:meth:`RFReport.support`), where borders
  and zero padding cut paths: exactly what a gradient of that output pixel can reach.

The work is split by job: :mod:`atrous.rf.algebra` (the two set algebras, unions of products),
:mod:`atrous.rf.propagate` (over the recorded graph), :mod:`atrous.rf.report` (what is reported, per tensor and
axis) and :mod:`atrous.rf.outputs` (a model's outputs by name).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import nn

from atrous.errors import InputShapeError
from atrous.rf.algebra import PeriodicAlgebra
from atrous.rf.graph import record
from atrous.rf.outputs import as_named_dict, named_outputs, select_output
from atrous.rf.propagate import Propagation
from atrous.rf.report import AxisRF, LayerRow, PhaseWindow, RFReport, TensorRF, tensor_rf
from atrous.rf.rules import CONSTANT_PACKETS, Options

# The names callers import from here (``from atrous.rf.analyze import select_output``) stay importable.
__all__ = [
    "AxisRF",
    "LayerRow",
    "PhaseWindow",
    "RFReport",
    "TensorRF",
    "analyze",
    "named_outputs",
    "select_output",
]


def _parse_shape(input_shape: Sequence[int]) -> tuple[int, ...]:
    shape = tuple(int(s) for s in input_shape)
    if not 2 <= len(shape) <= 4 or any(s < 1 for s in shape):
        raise InputShapeError(
            f"input shape {tuple(input_shape)} must be (C, L), (C, H, W) or (C, D, H, W) with positive sizes"
        )
    return shape


def analyze(
    model: nn.Module | Callable[[], nn.Module],
    input_shape: Sequence[int],
    *,
    train_view: bool = False,
    ignore_statistics: bool = False,
) -> RFReport:
    """Exact receptive fields of ``model`` for inputs of ``input_shape`` = (C, *spatial), batch excluded.

    ``train_view`` shows training semantics (BatchNorm batch statistics make the RF global);
    ``ignore_statistics`` treats all normalisation statistics as constants (the structural RF).
    Nothing of input size is allocated: the model runs on shape-only tensors, unless it reads tensor values in
    Python (``.item()``, ``bool()`` of a tensor, data-dependent shapes): then it runs once on real tensors of this
    shape, and ``RFReport.recorded_on`` and a note on every output say so.
    """
    shape = _parse_shape(input_shape)
    if not isinstance(model, nn.Module) and callable(model):
        model = model()
    naming = model.register_forward_hook(as_named_dict)
    try:
        graph = record(model, (1, *shape), CONSTANT_PACKETS)
    finally:
        naming.remove()
    options = Options(train_batchnorm=train_view, ignore_statistics=ignore_statistics)
    prop = Propagation(graph, options)
    periodic = prop.run(PeriodicAlgebra(), with_paths=True)
    outputs = [tensor_rf(prop, periodic[node], node, name) for name, node in graph.outputs.items()]
    if graph.recording_note:  # never silently: every output's notes say it, so the printed table does too
        for out in outputs:
            out.notes.append(graph.recording_note)
    return RFReport(
        shape,
        outputs,
        graph,
        options,
        prop,
        periodic,
        recorded_on=graph.recorded_on,
        recording_note=graph.recording_note,
    )
