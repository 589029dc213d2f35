"""Exact receptive fields of any PyTorch model: ``analyze(model, (C, H, W))``."""

from atrous.rf.analyze import AxisRF, RFReport, TensorRF, analyze

__all__ = ["AxisRF", "RFReport", "TensorRF", "analyze"]
