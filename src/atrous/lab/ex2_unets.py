"""Exercise 2: does dilation let a U-Net see the context it needs, at the same cost, without losing
resolution? A standard U-Net against its dilated twin (same convolutions, other bottleneck rates), in the two
regimes ``design`` derives from their RFs."""

from __future__ import annotations

from pathlib import Path

from atrous.lab import compare, design
from atrous.lab.jobs import Job
from atrous.lab.presets import Preset
from atrous.lab.report import Section

KEY = "ex2"


def regimes(p: Preset) -> list[design.Regime]:
    """Regime (a) must fall between the RFs of both pairs whose RFs are fixed: the U-Nets here and the context
    module of Exercise 3 (ASPP's rates are chosen afterwards, to cover regime (a)); regime (b) below the RF of
    every model compared, Exercise 3's undilated ASPP included."""
    standard, dilated = design.unets(p.unet_width, p.unet_depth, p.max_rate, p.size)
    ctx = p.context
    context = design.describe("", ctx, p.size)
    flat = design.describe("", f"{ctx},context_rates={design.UNDILATED_CONTEXT}", p.size)
    flat_aspp = design.describe("", f"aspp_net:width={p.aspp_width},rates=1,1,1", p.size)
    low, high = max(standard.rf, flat.rf), min(dilated.rf, context.rf)
    return design.regimes(low, high, min(standard.rf, flat.rf, flat_aspp.rf), p.n, p.min_size)


def plan(p: Preset) -> list[tuple[design.Regime, list[compare.Contest]]]:
    out = []
    for regime in regimes(p):
        standard, dilated = design.unets(p.unet_width, p.unet_depth, p.max_rate, regime.size)
        out.append((regime, [compare.Contest(dilated, standard, "rf", "miou")]))
    return out


def jobs(p: Preset, seeds: list[int]) -> list[Job]:
    return compare.jobs(p, plan(p), seeds, KEY)


def predictions(p: Preset, seeds: list[int]) -> dict:
    return compare.predictions(plan(p))


def section(p: Preset, seeds: list[int], results: dict, run_dir: Path, registered: dict) -> Section:
    title = "Exercise 2: standard vs dilated U-Net, where context is needed and where it is not"
    return compare.section(KEY, title, p, plan(p), seeds, results, run_dir, registered)
