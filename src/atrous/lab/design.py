"""The designs of Exercises 2 and 3, chosen by the exact RF engine before anything trains.

A comparison of a dilated model with its undilated twin can answer "does dilation let the model see the
context it needs?" only if the task needs more context than the twin sees and no more than the dilated model
sees. ``scale`` makes the need exact: separating every pixel of an object of side ``s`` from a larger one needs
an RF of ``2 s + 1`` (``atrous.data.synthetic``). So the engine measures the two U-Nets' RFs, and the object
sizes follow from them:

* regime (a), context needed: ``2 s + 1`` halfway between the standard and the dilated U-Net's RF: dilation is
  predicted to win;
* regime (b), the control: ``2 s + 1`` at most half the standard U-Net's RF: both see enough, a tie is
  predicted.

Twins are built to cost the same: the dilated U-Net has the standard one's bottleneck convolutions with other
rates (the largest hole-free pair up to ``max_rate``), the context module and ASPP keep their shapes with all
rates 1. ``matched`` checks parameters and FLOPs within 10 %.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from functools import lru_cache

from atrous.data.synthetic import needed_rf
from atrous.flops import count_flops, count_params
from atrous.models.registry import create_model
from atrous.models.stride import logit_stride, min_width
from atrous.rf import analyze

COST_TOLERANCE = 0.10
GAP = 2  # background pixels between objects (the scale task's default)
UNDILATED_CONTEXT = ",".join(["1"] * 7)  # the context module's seven rates, all 1


@dataclass(frozen=True)
class Model:
    label: str
    spec: str
    rf: int | None  # per axis, from the engine; None: global
    holes: int  # per axis, in the RF window
    params: int
    flops: float  # per image at the regime's size (nominal)
    output_stride: int

    def sees(self, need: int) -> bool:
        return self.rf is None or self.rf >= need

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Regime:
    key: str  # "a" or "b"
    title: str
    small: int
    large: int
    size: int
    n: int

    @property
    def need(self) -> int:
        return needed_rf(self.small)

    @property
    def data(self) -> str:
        return f"scale:size={self.size},n={self.n},small={self.small},large={self.large}"

    def to_json(self) -> dict:
        return {**asdict(self), "needed_rf": self.need, "data": self.data}


@lru_cache(maxsize=256)
def describe(label: str, spec: str, size: int, classes: int = 3) -> Model:
    with warnings.catch_warnings():  # a gridded candidate warns; the engine's hole count is what we use
        warnings.simplefilter("ignore")
        model = create_model(spec, num_classes=classes)
    out = analyze(model, (3, size, size)).outputs[0]
    rf = None if out.global_ else int(out.rf[0])
    holes = 0 if out.global_ else int(out.axes[0].hole_count)
    # The stride of the logits before their final resize: a U-Net's decoder brings them back to full
    # resolution (its ``output_stride`` is that of its bottleneck); DeepLab resizes from its output stride.
    stride = logit_stride(model)
    return Model(label, spec, rf, holes, count_params(model), count_flops(model, (3, size, size)), stride)


@lru_cache(maxsize=32)
def dilated_unet_rates(width: int, depth: int, max_rate: int, size: int) -> tuple[int, int]:
    """The two bottleneck rates (a <= b <= max_rate) giving the U-Net the largest hole-free RF."""
    best: tuple[int, int, int] | None = None
    for b in range(1, max_rate + 1):
        for a in range(1, b + 1):
            m = describe("", f"dilated_unet:width={width},depth={depth},bottleneck_rates={a},{b}", size)
            if m.holes == 0 and m.rf is not None and (best is None or m.rf > best[0]):
                best = (m.rf, a, b)
    assert best is not None  # rates (1, 1) are the standard U-Net: hole-free
    return best[1], best[2]


def unets(width: int, depth: int, max_rate: int, size: int) -> tuple[Model, Model]:
    a, b = dilated_unet_rates(width, depth, max_rate, size)
    standard = describe("U-Net", f"unet:width={width},depth={depth}", size)
    dilated = describe(
        f"dilated U-Net ({a},{b})", f"dilated_unet:width={width},depth={depth},bottleneck_rates={a},{b}", size
    )
    return standard, dilated


def regimes(low_rf: int, high_rf: int, smallest_rf: int, n: int, min_size: int) -> list[Regime]:
    """(a): need halfway between ``low_rf`` (the largest RF of an undilated model) and ``high_rf`` (the smallest
    RF of a dilated one); (b): need at most half of ``smallest_rf``, the smallest RF of any model compared.
    Large objects are half as big again (at least 4 px more), and the image holds two of them side by side."""
    small_a = ((low_rf + high_rf) // 2 - 1) // 2
    small_b = max(2, (smallest_rf - 1) // 4)
    if not low_rf < needed_rf(small_a) <= high_rf:
        raise ValueError(f"no object size needs an RF between {low_rf} and {high_rf}")
    out = []
    for key, title, small in (("a", "context needed", small_a), ("b", "control", small_b)):
        large = small + max(4, small // 2)
        size = max(min_size, -(-2 * (large + 2 * GAP) // 8) * 8)
        out.append(Regime(key, title, small, large, size, n))
    return out


def matched(a: Model, b: Model) -> bool:
    return (
        abs(a.params - b.params) <= COST_TOLERANCE * b.params
        and abs(a.flops - b.flops) <= COST_TOLERANCE * b.flops
    )


def predict_rf(a: Model, b: Model, need: int) -> tuple[str, str]:
    """(better | worse | tie, why) for ``a`` vs ``b`` on a task needing RF ``need``."""

    def rf(m: Model) -> str:
        return "global" if m.rf is None else str(m.rf)

    sa, sb = a.sees(need), b.sees(need)
    if sa and not sb:
        return "better", f"RF {rf(a)} >= needed {need} > RF {rf(b)}"
    if sb and not sa:
        return "worse", f"RF {rf(a)} < needed {need} <= RF {rf(b)}"
    if sa:
        return "tie", f"both RFs ({rf(a)}, {rf(b)}) >= needed {need}"
    return "tie", f"both RFs ({rf(a)}, {rf(b)}) < needed {need}: neither separates every pixel"


def predict_stride(a: Model, b: Model, small: int) -> tuple[str, str]:
    """Objects narrower than two output strides: the logits are upsampled from a grid ``stride`` pixels
    apart, so an object's boundary band (about a stride wide on each side) covers most of it."""
    if a.output_stride > b.output_stride and small < min_width(a.output_stride):
        return "worse", (
            f"output stride {a.output_stride} vs {b.output_stride}: {small}px objects are narrower than two "
            f"strides ({min_width(a.output_stride)}px)"
        )
    return "tie", f"output stride {a.output_stride}: {small}px objects span at least two strides"
