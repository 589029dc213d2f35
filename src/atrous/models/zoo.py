"""Registers every zoo model (imported lazily by the registry)."""

from __future__ import annotations

from atrous.models.blocks import convstack
from atrous.models.registry import register

register("convstack", "conv stack: presets standard/dilated/dilated4/large/hdc/gridded, or rates=...")(
    convstack
)
