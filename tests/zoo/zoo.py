"""Real models, tried as a user would: a broad sample of timm, torchvision, Hugging Face transformers and
segmentation_models_pytorch families built with random weights (configs only, nothing downloaded), each
analysed at a small input and compared with the gradient oracle at the centre and a corner of two of its
outputs (a middle feature map, where borders cut the support, and the deepest one).

Shared by ``tests/zoo/test_real_models.py`` (pass or fail per model) and ``benchmarks/rf_zoo.py`` (the table
for BENCHMARKS.md). Verdicts:

* ``exact``: the engine's in-image support equals the oracle's at every probe;
* ``over``: the engine's support strictly contains the oracle's somewhere (never less anywhere); the report's
  notes are kept, since an over-approximation must be said;
* ``UNDER``: the engine misses a pixel the oracle reaches: a wrong answer, always a failure;
* ``refused``: :class:`~atrous.errors.UnsupportedOpError`, with its message;
* ``slow``: the analysis did not finish within the time limit;
* ``error``: anything else (the exception), including a model the oracle or the library cannot build.
"""

from __future__ import annotations

import signal
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from atrous.errors import UnsupportedOpError
from atrous.rf import analyze
from oracle import positive_copy

# Refused (or too slow) today: gaps of issue 19 still open, each with its reason; the suite says when they start
# passing. None since 2026-12-02: VOLO, TResNet, Sequencer2d, XCiT, GhostNetV2, Encodec, EdgeNeXt, MobileViTv2,
# GCViT, NextViT, smp MAnet and Inception-NeXt are checked like every other model.
KNOWN_GAPS: dict[str, str] = {}


@dataclass(frozen=True)
class Entry:
    family: str  # the library: timm, torchvision, transformers, smp
    name: str
    build: Callable[[], nn.Module] = field(repr=False, compare=False)
    shape: tuple[int, ...]  # (C, *spatial)
    inputs: int = 2  # oracle inputs (union): softmax and normalisation Jacobians can vanish by accident

    @property
    def id(self) -> str:
        return f"{self.family}:{self.name}"

    @property
    def known_gap(self) -> str | None:
        return KNOWN_GAPS.get(self.name)


@dataclass
class Result:
    entry: Entry
    verdict: str
    seconds: float | None = None  # the analysis alone (recording and propagation), not the oracle
    detail: str = ""
    notes: list[str] = field(default_factory=list)  # the report's notes: approximations and global fields

    @property
    def input(self) -> str:
        return "x".join(str(s) for s in self.entry.shape[1:])


class _Outputs(nn.Module):
    """A model reduced to channels-first feature maps (N, C, *spatial): the oracle indexes ``[0, :, *index]``
    and a one-tensor-per-output model keeps the engine's and the oracle's output names in step."""

    def __init__(self, model: nn.Module, pick: Callable[[Any], list[torch.Tensor]]) -> None:
        super().__init__()
        self.model, self.pick = model, pick

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.pick(self.model(x))


def _two_levels(maps: Sequence[torch.Tensor], reductions: Sequence[int]) -> list[torch.Tensor]:
    """A middle level (the first at stride >= 8, where a corner pixel still sees only part of a small image)
    and the deepest; one map when they coincide."""
    mid = next((i for i, r in enumerate(reductions) if r >= 8), len(maps) // 2)
    return [maps[mid], maps[-1]] if mid != len(maps) - 1 else [maps[-1]]


# --- timm -----------------------------------------------------------------------------------------------------


def _timm(name: str, **kwargs: Any) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import timm

        model = timm.create_model(name, pretrained=False, features_only=True, **kwargs)
        info = model.feature_info
        channels, reductions = info.channels(), info.reduction()

        def pick(out: Sequence[torch.Tensor]) -> list[torch.Tensor]:
            maps = []
            for t, c in zip(out, channels):
                if t.shape[1] != c and t.shape[-1] == c:  # NHWC levels (Swin, ...)
                    t = t.permute(0, t.dim() - 1, *range(1, t.dim() - 1))
                maps.append(t)
            return _two_levels(maps, reductions)

        return _Outputs(model, pick)

    return build


S64 = (3, 64, 64)
TIMM: list[tuple[str, dict[str, Any], tuple[int, ...]]] = [
    # convolutional
    ("resnet18", {}, S64),
    ("resnet50d", {}, S64),
    ("resnext26ts", {}, S64),
    ("seresnext26d_32x4d", {}, S64),
    ("res2net50_14w_8s", {}, S64),
    ("resnest14d", {}, S64),
    ("regnetx_002", {}, S64),
    ("regnety_002", {}, S64),
    ("densenet121", {}, S64),
    ("dla34", {}, S64),
    ("dpn48b", {}, S64),
    ("legacy_xception", {}, (3, 72, 72)),
    ("xception41", {}, S64),
    ("repvgg_a0", {}, S64),
    ("vgg11", {}, S64),
    ("inception_v3", {}, (3, 96, 96)),
    ("hrnet_w18_small", {}, S64),
    ("cspresnet50", {}, S64),
    ("cspdarknet53", {}, S64),
    ("selecsls42b", {}, S64),
    ("ese_vovnet19b_dw", {}, S64),
    ("hgnetv2_b0", {}, S64),
    ("nf_resnet26", {}, S64),
    ("convnext_atto", {}, S64),
    ("convnextv2_atto", {}, S64),
    ("efficientnet_b0", {}, S64),
    ("efficientnetv2_rw_t", {}, S64),
    ("mixnet_s", {}, S64),
    ("mobilenetv2_050", {}, S64),
    ("mobilenetv3_small_100", {}, S64),
    ("mobilenetv4_conv_small", {}, S64),
    ("lcnet_050", {}, S64),
    ("fbnetc_100", {}, S64),
    ("mnasnet_small", {}, S64),
    ("rexnet_100", {}, S64),
    ("ghostnet_100", {}, S64),
    ("repvit_m1", {}, S64),
    ("inception_next_atto", {}, S64),
    ("rdnet_tiny", {}, S64),
    ("starnet_s1", {}, S64),
    ("mambaout_femto", {}, S64),
    # MetaFormers, hybrids and attention
    ("poolformer_s12", {}, S64),
    ("poolformerv2_s12", {}, S64),
    ("convformer_s18", {}, S64),
    ("fastvit_t8", {}, S64),
    ("edgenext_xx_small", {}, S64),
    ("mobilevit_xxs", {}, S64),
    ("mobilevitv2_050", {}, S64),
    ("efficientvit_b0", {}, S64),
    ("levit_128s", {"img_size": 64}, S64),
    ("coatnet_nano_rw_224", {"img_size": 64}, S64),
    ("maxvit_nano_rw_256", {"img_size": 64}, S64),
    ("vit_tiny_patch16_224", {"img_size": 64}, S64),
    ("deit_tiny_patch16_224", {"img_size": 64}, S64),
    ("cait_xxs24_224", {"img_size": 64}, S64),
    ("pit_ti_224", {"img_size": 64}, S64),
    ("twins_pcpvt_small", {}, S64),
    ("pvt_v2_b0", {}, S64),
    ("swin_tiny_patch4_window7_224", {"img_size": 64, "window_size": 4}, S64),
    ("swinv2_tiny_window8_256", {"img_size": 64, "window_size": 4}, S64),
    ("davit_tiny", {}, S64),
    ("focalnet_tiny_srf", {}, S64),
    ("gcvit_xxtiny", {"img_size": 64}, S64),
    ("hiera_tiny_224", {"img_size": (64, 64)}, S64),
    ("nextvit_small", {}, S64),
    # known gaps (issue 19)
    ("volo_d1_224", {"img_size": 64}, S64),
    ("tresnet_m", {}, S64),
    ("sequencer2d_s", {}, S64),
    ("xcit_nano_12_p16_224", {"img_size": 64}, S64),
    ("ghostnetv2_100", {}, S64),
]


# --- torchvision segmentation ------------------------------------------------------------------------------------


def _torchvision(name: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        from torchvision.models import segmentation

        model = getattr(segmentation, name)(weights=None, weights_backbone=None, num_classes=3)
        return _Outputs(model, lambda out: [out["out"]])

    return build


TORCHVISION = [
    "fcn_resnet50",
    "deeplabv3_resnet50",
    "deeplabv3_mobilenet_v3_large",
    "lraspp_mobilenet_v3_large",
]


# --- Hugging Face transformers ----------------------------------------------------------------------------------


def _hf_upernet_on(backbone) -> nn.Module:
    """UperNet's decode head (small, no auxiliary head) on a given backbone config."""
    from transformers import UperNetConfig, UperNetForSemanticSegmentation

    config = UperNetConfig(
        backbone_config=backbone,
        hidden_size=32,
        auxiliary_in_channels=64,
        num_labels=3,
        use_auxiliary_head=False,
    )
    return _Outputs(UperNetForSemanticSegmentation(config), lambda out: [out.logits])


def _hf_upernet() -> nn.Module:
    from transformers import ConvNextConfig

    stages = ["stage1", "stage2", "stage3", "stage4"]
    return _hf_upernet_on(
        ConvNextConfig(depths=[1, 1, 1, 1], hidden_sizes=[16, 32, 64, 128], out_features=stages)
    )


def _hf_upernet_swin() -> nn.Module:
    from transformers import SwinConfig

    backbone = SwinConfig(
        image_size=64,
        embed_dim=16,
        depths=[2, 2, 2, 2],
        num_heads=[1, 1, 2, 2],
        window_size=4,
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )
    return _hf_upernet_on(backbone)


def _hf_backbone(kind: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import transformers as T

        configs = {
            "swin": lambda: T.SwinConfig(
                image_size=64, embed_dim=16, depths=[2, 2, 2, 2], num_heads=[1, 1, 2, 2], window_size=4
            ),
            "swinv2": lambda: T.Swinv2Config(
                image_size=64, embed_dim=16, depths=[2, 2, 2, 2], num_heads=[1, 1, 2, 2], window_size=4
            ),
            "convnext": lambda: T.ConvNextConfig(depths=[1, 1, 2, 1], hidden_sizes=[16, 32, 64, 128]),
            "resnet": lambda: T.ResNetConfig(
                depths=[1, 1, 1, 1], hidden_sizes=[16, 32, 64, 128], embedding_size=16
            ),
            "dinov2": lambda: T.Dinov2Config(
                image_size=64,
                patch_size=8,
                hidden_size=32,
                num_hidden_layers=2,
                num_attention_heads=2,
                intermediate_size=64,
            ),
            "pvt_v2": lambda: T.PvtV2Config(hidden_sizes=[16, 32, 64, 128], num_attention_heads=[1, 1, 2, 2]),
            "hiera": lambda: T.HieraConfig(
                image_size=[64, 64],
                embed_dim=16,
                depths=[1, 1, 1, 1],
                num_heads=[1, 1, 2, 2],
                query_stride=[2, 2],
                masked_unit_size=[8, 8],
            ),
        }
        config = configs[kind]()
        stages = config.stage_names[1:]
        config.out_features = list(dict.fromkeys([stages[(len(stages) - 1) // 2], stages[-1]]))
        model = T.AutoBackbone.from_config(config)
        return _Outputs(model, lambda out: list(out.feature_maps))

    return build


def _hf_segformer() -> nn.Module:
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    config = SegformerConfig(
        hidden_sizes=[16, 32, 64, 128], num_attention_heads=[1, 1, 2, 2], decoder_hidden_size=32, num_labels=3
    )
    return _Outputs(SegformerForSemanticSegmentation(config), lambda out: [out.logits])


def _hf_dpt() -> nn.Module:
    from transformers import DPTConfig, DPTForDepthEstimation

    config = DPTConfig(
        image_size=64,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=2,
        intermediate_size=64,
        backbone_out_indices=[0, 1, 2, 3],
        neck_hidden_sizes=[8, 16, 32, 32],
        fusion_hidden_size=16,
        head_hidden_size=8,
    )
    return _Outputs(DPTForDepthEstimation(config), lambda out: [out.predicted_depth[:, None]])


def _hf_mobilevit() -> nn.Module:
    from transformers import MobileViTConfig, MobileViTForSemanticSegmentation

    config = MobileViTConfig(
        image_size=64, num_labels=3, hidden_sizes=[32, 48, 64], neck_hidden_sizes=[8, 8, 16, 16, 24, 32, 64]
    )
    return _Outputs(MobileViTForSemanticSegmentation(config), lambda out: [out.logits])


def _hf_wav2vec2() -> nn.Module:
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    # The published feature encoder (7 convolutions, RF 400 samples, stride 320) at full width 512.
    model = Wav2Vec2Model(Wav2Vec2Config()).feature_extractor
    return _Outputs(model, lambda out: [out])


class _Mono(nn.Module):
    """(N, 1, L) audio as the (N, L) the model takes."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x[:, 0])


def _hf_wav2vec2_mono() -> nn.Module:
    return _Mono(_hf_wav2vec2())


def _hf_encodec() -> nn.Module:
    from transformers import EncodecConfig, EncodecModel

    config = EncodecConfig(num_filters=8, hidden_size=16, upsampling_ratios=[4, 2], codebook_size=16)
    return _Outputs(EncodecModel(config).encoder, lambda out: [out])


TRANSFORMERS: list[tuple[str, Callable[[], nn.Module], tuple[int, ...]]] = [
    ("hf_swin", _hf_backbone("swin"), S64),
    ("hf_swinv2", _hf_backbone("swinv2"), S64),
    ("hf_convnext", _hf_backbone("convnext"), S64),
    ("hf_resnet", _hf_backbone("resnet"), S64),
    ("hf_dinov2", _hf_backbone("dinov2"), S64),
    ("hf_pvt_v2", _hf_backbone("pvt_v2"), S64),
    ("hf_hiera", _hf_backbone("hiera"), S64),
    ("hf_upernet_convnext", _hf_upernet, S64),
    ("hf_upernet_swin", _hf_upernet_swin, S64),
    ("hf_segformer", _hf_segformer, S64),
    ("hf_dpt", _hf_dpt, S64),
    ("hf_mobilevit", _hf_mobilevit, S64),
    ("hf_wav2vec2_encoder", _hf_wav2vec2_mono, (1, 2000)),
    ("hf_encodec", _hf_encodec, (1, 1200)),
]


# --- segmentation_models_pytorch ----------------------------------------------------------------------------------


def _smp(arch: str, encoder: str = "resnet18") -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import segmentation_models_pytorch as smp

        model = getattr(smp, arch)(encoder_name=encoder, encoder_weights=None, classes=3)
        return _Outputs(model, lambda out: [out])

    return build


SMP: list[tuple[str, str] | tuple[str, str, tuple[int, ...]]] = [
    ("Unet", "resnet18"),
    ("UnetPlusPlus", "resnet18"),
    ("DeepLabV3Plus", "resnet18"),
    ("DeepLabV3", "resnet18"),
    ("FPN", "resnet18"),
    ("Linknet", "resnet18"),
    ("PSPNet", "resnet18"),
    ("PAN", "resnet18", (3, 128, 128)),  # its feature pyramid attention pools the stride-32 map 8x more
    ("MAnet", "resnet18"),
    ("UPerNet", "resnet18"),
    ("Segformer", "resnet18"),
    ("Unet", "mit_b0"),
]


def sample() -> list[Entry]:
    """Every model of the zoo, in table order."""
    entries = [Entry("timm", name, _timm(name, **kw), shape) for name, kw, shape in TIMM]
    entries += [Entry("torchvision", name, _torchvision(name), S64) for name in TORCHVISION]
    entries += [Entry("transformers", name, build, shape) for name, build, shape in TRANSFORMERS]
    entries += [Entry("smp", f"{s[0]}/{s[1]}", _smp(s[0], s[1]), s[2] if len(s) > 2 else S64) for s in SMP]
    return entries


# --- the check ----------------------------------------------------------------------------------------------------


class AnalysisTimeout(Exception):
    pass


@contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Interrupt the block after ``seconds`` (main thread, POSIX): a model that takes longer is a finding."""

    def expire(signum: int, frame: Any) -> None:
        raise AnalysisTimeout(f"not finished after {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def oracle_supports(
    model: nn.Module,
    shape: Sequence[int],
    probes: dict[int, list[tuple[int, ...]]],
    inputs: int,
    seed: int = 0,
) -> dict[tuple[int, tuple[int, ...]], np.ndarray]:
    """The gradient oracle (``tests/oracle.py``: positive, distinct float64 weights; union over ``inputs``
    positive inputs) for several probes of several outputs, from one positive copy and one forward per input."""
    gen = torch.Generator().manual_seed(seed)
    oracle = positive_copy(model, gen)
    found = {(o, p): np.zeros(shape[1:], dtype=bool) for o, ps in probes.items() for p in ps}
    for _ in range(inputs):
        x = (torch.rand(1, *shape, generator=gen, dtype=torch.float64) + 0.5).requires_grad_(True)
        outs = oracle(x)
        for o, p in found:
            (grad,) = torch.autograd.grad(outs[o][(0, slice(None), *p)].sum(), x, retain_graph=True)
            found[o, p] |= (grad[0].abs().sum(0) > 0).numpy()
    return found


def probes_of(shape: Sequence[int]) -> list[tuple[int, ...]]:
    """The centre and the first corner of an output of spatial ``shape``."""
    return sorted({tuple(n // 2 for n in shape), tuple(0 for _ in shape)})


def check(entry: Entry, limit_s: float = 30.0) -> Result:
    """Analyse ``entry`` and compare with the oracle; never raises (the verdict says what happened)."""
    torch.manual_seed(0)
    try:
        model = entry.build().eval()
    except Exception as e:
        return Result(entry, "error", detail=f"build: {type(e).__name__}: {e}")
    start = time.perf_counter()
    try:
        with time_limit(limit_s):
            report = analyze(model, entry.shape)
    except UnsupportedOpError as e:
        return Result(entry, "refused", time.perf_counter() - start, detail=str(e))
    except AnalysisTimeout as e:
        return Result(entry, "slow", time.perf_counter() - start, detail=str(e))
    except Exception as e:
        tb = traceback.extract_tb(e.__traceback__)[-1]
        where = f" ({tb.filename.rsplit('/', 1)[-1]}:{tb.lineno})"
        return Result(entry, "error", time.perf_counter() - start, detail=f"{type(e).__name__}: {e}{where}")
    seconds = time.perf_counter() - start
    probes = {i: probes_of(o.shape[2:]) for i, o in enumerate(report.outputs)}
    try:
        expected = oracle_supports(model, entry.shape, probes, entry.inputs)
    except Exception as e:
        return Result(entry, "error", seconds, detail=f"oracle: {type(e).__name__}: {e}")
    under, over = [], []
    for (o, p), want in expected.items():
        got = report.support(p, output=report.outputs[o].name)
        where = f"output {report.outputs[o].name} {tuple(report.outputs[o].shape)} at {p}"
        sizes = f"engine {int(got.sum())} px, oracle {int(want.sum())} px"
        if (want & ~got).any():
            under.append(f"{where}: {sizes}, {int((want & ~got).sum())} missed")
        elif (got & ~want).any():
            over.append(f"{where}: {sizes}")
    notes = sorted(
        {n for out in report.outputs for n in out.notes if "approx" in n or n.startswith("global")}
    )
    if under:
        return Result(entry, "UNDER", seconds, detail="; ".join(under))
    if over:
        return Result(entry, "over", seconds, detail="; ".join(over), notes=notes)
    return Result(entry, "exact", seconds)
