"""Datasets: built-in synthetic tasks and real formats, all addressed by spec strings."""

from atrous.data.specs import build_dataset, describe

__all__ = ["build_dataset", "describe"]
