"""Lab presets: how much each exercise runs. ``tiny`` is a CI smoke run, ``quick`` the default, ``full`` the
seed's scale."""

from __future__ import annotations

from dataclasses import dataclass

from atrous.errors import AtrousError


@dataclass(frozen=True)
class Preset:
    name: str
    ex1_flops_size: int = 64  # FLOPs of the Exercise 1 stacks are counted at this input size


PRESETS = {name: Preset(name) for name in ("tiny", "quick", "full")}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise AtrousError(f"unknown lab preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]
