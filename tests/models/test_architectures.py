"""Architecture facts: parameter counts, torchvision compatibility, ASPP rates, identity init, bad input."""

from __future__ import annotations

import importlib.util
import json
import warnings
from functools import cache
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from safetensors import safe_open

import atrous
from atrous.errors import InputShapeError, ModelError
from atrous.flops import count_params
from atrous.models.context import ContextModule
from atrous.models.deeplab import load_torchvision_weights
from atrous.models.unet import GriddingWarning
from atrous.rf import analyze
from oracle import gradient_support


@pytest.mark.parametrize(
    ("spec", "kwargs", "params"),
    [
        ("seed_unet", {}, 2_356_929),  # the seed's own count, sigmoid head conv included
        (
            "deeplabv3_resnet50",
            {"aux_loss": True},
            42_004_074,
        ),  # torchvision's deeplabv3_resnet50(aux_loss=True)
        ("resnet50", {"num_classes": 1000}, 25_557_032),  # torchvision's resnet50
        ("resnet18", {"num_classes": 1000}, 11_689_512),  # torchvision's resnet18
        ("unet", {}, 7_763_074),  # ours: width 32, depth 4, no conv bias before BatchNorm
        ("seed_dilated_unet", {}, 2_947_521),
        ("seed_deeplab", {}, 2_979_969),  # the seed's ASPP also had 6 x 256 conv biases before BatchNorm
    ],
)
def test_parameter_counts(spec: str, kwargs: dict, params: int) -> None:
    assert count_params(atrous.create_model(spec, **kwargs)) == params


def test_torchvision_outputs_match_when_installed(tmp_path: Path) -> None:
    tv = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    theirs = tv.models.segmentation.deeplabv3_resnet50(
        weights=None, weights_backbone=None, num_classes=21, aux_loss=True
    ).eval()
    torch.save(theirs.state_dict(), tmp_path / "tv.pt")
    ours = load_torchvision_weights(
        atrous.create_model("deeplabv3_resnet50", aux_loss=True), tmp_path / "tv.pt"
    ).eval()
    x = torch.randn(1, 3, 96, 80)
    with torch.no_grad():
        ref = theirs(x)
        out, aux = ours.forward_aux(x)
    torch.testing.assert_close(out, ref["out"])
    torch.testing.assert_close(aux, ref["aux"])


# torchvision parity without torchvision (no CPU build of it fits the pinned torch): the reference file holds
# torchvision 0.29.1's state_dict names and shapes and its outputs with every tensor filled by a rule of its name
# and shape; scripts/make_torchvision_reference.py wrote it and holds the rule, the input and the model table.
ROOT = Path(__file__).resolve().parents[2]
# Relative to the output's largest |logit|, and for each value. The reference is reproduced to 0.0 here (torch
# 2.13 vs 2.14.1), and float32 itself is within 2e-6 of float64: 50x headroom for another CPU's kernels. Real
# errors are far above: BatchNorm eps 1e-3 instead of 1e-5 in the one norm of the ASPP's pooling branch moves
# the logits by 1.5e-3, the ASPP's rate 36 as 35 by 1e-3, align_corners=True by 5e-2.
PARITY_TOL = 1e-4


PARITY_MODELS = ["resnet18", "resnet34", "resnet50", "resnet101", "deeplabv3_resnet50", "deeplabv3_resnet101"]


@cache
def torchvision_reference() -> tuple[ModuleType, dict[str, torch.Tensor], dict[str, dict]]:
    """(the script as a module, the reference tensors, per-model metadata)."""
    spec = importlib.util.spec_from_file_location(
        "make_torchvision_reference", ROOT / "scripts" / "make_torchvision_reference.py"
    )
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    with safe_open(str(script.OUT), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a mapping)
        models = json.loads(f.metadata()["models"])
    # The file, the script's table and this test's list name the same models: none is left unchecked.
    assert sorted(models) == sorted(script.MODELS) == sorted(PARITY_MODELS)
    return script, tensors, models


def parity_outputs(script: ModuleType, name: str, out: torch.Tensor | dict[str, torch.Tensor]) -> dict:
    """What the reference records of a model's outputs: all logits of a classifier; per-class statistics and a
    strided sample of a segmenter's ``out`` and ``aux``."""
    if not isinstance(out, dict):
        return {f"{name}/logits": out}
    return {
        k: v
        for key, logits in out.items()
        for k, v in script.segmenter_record(f"{name}/{key}", logits).items()
    }


def assert_matches_reference(
    got: dict[str, torch.Tensor], reference: dict[str, torch.Tensor], name: str
) -> None:
    expected = {k: v for k, v in reference.items() if k.startswith(f"{name}/")}
    assert sorted(got) == sorted(expected)
    for key, ref in expected.items():
        output = key if key.endswith("/logits") else key.rsplit("/", 1)[0]  # e.g. deeplabv3_resnet50/aux
        scale = max(
            v.abs().max().item() for k, v in expected.items() if k == output or k.startswith(f"{output}/")
        )
        torch.testing.assert_close(
            got[key], ref, rtol=PARITY_TOL, atol=PARITY_TOL * scale, msg=lambda m, key=key: f"{key}: {m}"
        )


@pytest.mark.parametrize("name", PARITY_MODELS)
def test_outputs_match_the_torchvision_reference(name: str) -> None:
    script, reference, models = torchvision_reference()
    _, _, ours, kwargs, shape = script.MODELS[name]
    model = atrous.create_model(ours, **kwargs).eval()
    # Names, shapes and dtypes exactly as torchvision's: a state_dict saved from torchvision loads strictly.
    assert {k: (s, d) for k, s, d in script.entries(model)} == {
        k: (s, d) for k, s, d in models[name]["state_dict"]
    }
    # The same values as torchvision had: else a difference below would be the fill rule's, not the model's.
    assert script.fill_(model) == pytest.approx(models[name]["fill_checksum"], rel=1e-12)
    x = script.make_input(shape)
    with torch.no_grad():
        out = dict(zip(("out", "aux"), model.forward_aux(x))) if kwargs.get("aux_loss") else model(x)
    assert_matches_reference(parity_outputs(script, name, out), reference, name)


@pytest.mark.parametrize("name", ["resnet18", "deeplabv3_resnet50"])
def test_the_torchvision_reference_is_what_torchvision_computes_when_installed(name: str) -> None:
    pytest.importorskip("torchvision")
    script, reference, models = torchvision_reference()
    theirs = script.build_torchvision(name).eval()
    assert script.entries(theirs) == models[name]["state_dict"]
    assert script.fill_(theirs) == pytest.approx(models[name]["fill_checksum"], rel=1e-12)
    with torch.no_grad():
        out = theirs(script.make_input(script.MODELS[name][4]))
    assert_matches_reference(parity_outputs(script, name, out), reference, name)


def test_weights_round_trip_strictly_and_refuse_a_mismatch(tmp_path: Path) -> None:
    torch.manual_seed(0)
    src = atrous.create_model("resnet18", num_classes=1000).eval()
    torch.save(src.state_dict(), tmp_path / "r18.pt")
    dst = load_torchvision_weights(
        atrous.create_model("resnet18", num_classes=1000), tmp_path / "r18.pt"
    ).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(src(x), dst(x))
    with pytest.raises(ModelError, match="does not match this model"):
        load_torchvision_weights(atrous.create_model("resnet34", num_classes=1000), tmp_path / "r18.pt")
    with pytest.raises(ModelError, match="does not fit this model"):
        load_torchvision_weights(atrous.create_model("resnet18", num_classes=10), tmp_path / "r18.pt")
    with pytest.raises(ModelError, match="does not exist"):
        load_torchvision_weights(src, tmp_path / "missing.pt")


@pytest.mark.parametrize(("os_", "rates"), [(8, (12, 24, 36)), (16, (6, 12, 18)), (32, (3, 6, 9))])
def test_aspp_rates_follow_the_output_stride(os_: int, rates: tuple[int, ...]) -> None:
    model = atrous.create_model("deeplabv3_small", output_stride=os_)
    assert model.classifier[0].rates == rates and model.output_stride == os_


def test_deeplab_backbone_widths_from_the_spec() -> None:
    """``widths=`` sets the four stage widths of the backbone (the lab's narrow DeepLab), nothing else: the output
    stride and the RF are the default model's."""
    narrow = atrous.create_model("deeplabv3_small:widths=8,16,32,64", num_classes=3).eval()
    wide = atrous.create_model("deeplabv3_small", num_classes=3).eval()
    assert [narrow.backbone.layer1[0].conv1.out_channels, narrow.backbone.layer4[0].conv2.out_channels] == [
        8,
        64,
    ]
    assert narrow.classifier[0].convs[0][0].in_channels == 64
    assert count_params(narrow.backbone) < count_params(wide.backbone) / 3  # widths halved: about a quarter
    rf = [analyze(m, (3, 48, 48)).outputs[0] for m in (narrow, wide)]
    assert (rf[0].rf, rf[0].stride) == (rf[1].rf, rf[1].stride)
    assert narrow(torch.randn(1, 3, 40, 48)).shape == (1, 3, 40, 48)
    plus = atrous.create_model("deeplabv3plus_small:widths=8,16,32,64", num_classes=3).eval()
    assert plus.reduce[0].in_channels == 8  # the decoder reads the narrow stride-4 features
    assert plus(torch.randn(1, 3, 40, 48)).shape == (1, 3, 40, 48)
    for bad in ("8,16,32", "8,16,32,0", "8,16,-32,64", "8,16,32,64,128"):
        with pytest.raises(ModelError, match=rf"^widths={bad}: give four positive integers, one per stage"):
            atrous.create_model(f"deeplabv3_small:widths={bad}")


def test_dilated_backbone_follows_torchvision_semantics() -> None:
    r = atrous.create_model("resnet18", output_stride=8)
    # Layer3 and layer4 replace their stride by dilation; the first block keeps the previous dilation.
    assert [b.conv1.dilation[0] for b in r.layer3] == [1, 2] and [b.conv2.dilation[0] for b in r.layer3] == [
        2,
        2,
    ]
    assert [b.conv1.dilation[0] for b in r.layer4] == [2, 4] and r.layer4[0].conv1.stride == (1, 1)
    mg = atrous.create_model("resnet50", output_stride=16, multi_grid=(1, 2, 4))
    assert [b.conv2.dilation[0] for b in mg.layer4] == [2, 4, 8]


def test_output_stride_is_measured_by_the_rf_engine() -> None:
    for os_ in (8, 16, 32):
        report = analyze(atrous.create_model("resnet_small", output_stride=os_), (3, 64, 64))
        assert report.outputs[0].stride == [os_, os_]


def test_deeplabv3plus_decoder_and_aux_head() -> None:
    plus = atrous.create_model("deeplabv3plus_small")
    assert plus.reduce[0].out_channels == 48
    model = atrous.create_model("deeplabv3_small", aux_loss=True).eval()
    out, aux = model.forward_aux(torch.randn(1, 3, 45, 51))
    assert out.shape == aux.shape == (1, 2, 45, 51)


def test_image_pooling_trains_at_batch_one() -> None:
    model = atrous.create_model("deeplabv3_small").train()
    model(torch.randn(1, 3, 32, 32)).mean().backward()  # torchvision raises here
    pool_bn = model.classifier[0].convs[-1][2]
    assert pool_bn.num_batches_tracked.item() == 0  # running statistics were used, not updated


def test_context_module_identity_initialisation() -> None:
    x = torch.rand(2, 5, 30, 30)
    with torch.no_grad():
        assert torch.allclose(ContextModule(5, "basic")(x), x, atol=1e-6)
        assert torch.allclose(ContextModule(5, "basic", act="leaky")(x), x, atol=1e-6)  # x >= 0: the identity
        large = ContextModule(5, "large")(x)
        wide = ContextModule(5, "basic", width=3)
        layers = [m for m in wide.layers if isinstance(m, torch.nn.Conv2d)]
        out = wide(x)
    assert (large - x).abs().max() < 0.5 and not torch.allclose(large, x)
    # Three copies of each class's path, their symmetry broken by the noise: close to the identity, not equal.
    assert [c.out_channels for c in layers] == [15] * 7 + [5]
    assert (out - x).abs().max() < 0.5 and not torch.allclose(out, x)
    with pytest.raises(ModelError, match="width=2: give an integer >= 1, for the basic variant only"):
        ContextModule(5, "large", width=2)


def test_context_module_names_an_unknown_activation() -> None:
    with pytest.raises(ModelError, match="act='gelu': use one of relu, leaky"):
        atrous.create_model("context:act=gelu")


def test_nearest_logits_are_constant_on_each_stride_block() -> None:
    """``upsample=nearest`` repeats each stride-8 logit over its 8 x 8 block; bilinear logits vary inside it."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 40, 48)
    for upsample, constant in (("nearest", True), ("bilinear", False)):
        torch.manual_seed(1)
        out = atrous.create_model(f"deeplabv3_small:upsample={upsample}").eval()(x)
        blocks = out.reshape(2, 2, 5, 8, 6, 8)
        spread = (blocks.amax((3, 5)) - blocks.amin((3, 5))).max().item()
        assert (spread == 0) == constant, (upsample, spread)


def test_normalised_scores_give_a_class_dead_at_the_context_module_a_gradient() -> None:
    """A class whose front-end score is negative everywhere: the freshly built context module's first ReLU
    blocks every gradient to it (identity init: its channel is the only one reading that score), so it can stay
    unpredicted; batch-normalised scores are positive on part of the image and let the gradient through."""
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 3, (4, 32, 32))
    grads = {}
    for wiring in ("scores=raw", "scores=norm", "scores=raw,act=leaky"):
        torch.manual_seed(0)
        net = atrous.create_model(f"context:num_classes=3,{wiring}").train()
        with torch.no_grad():
            net.front.head.bias[1] = -1e3  # class 1 scores far below zero at every pixel
        torch.nn.functional.cross_entropy(net(x), y).backward()
        grads[wiring] = net.front.head.weight.grad[1].abs().sum().item()
    # Leaky ReLUs pass the negative score on, scaled by 0.1 per layer: a small gradient, but not none.
    assert grads["scores=raw"] == 0.0 and grads["scores=norm"] > 1e-3 and grads["scores=raw,act=leaky"] > 0, (
        grads
    )


def test_context_module_rf_per_layer() -> None:
    report = analyze(ContextModule(4), (4, 100, 100))
    assert [r.tensor.rf[0] for r in report.layers() if r.op == "convolution"] == [3, 5, 9, 17, 33, 65, 67, 67]


def test_dilated_unet_checks_its_schedule() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        atrous.create_model("dilated_unet")  # default (1, 2, 4): hole-free, no warning
    with pytest.warns(GriddingWarning, match="leave 6 holes"):
        atrous.create_model("dilated_unet", bottleneck_rates=(2, 2, 2))


def test_unet_rf_without_pooling_branches_against_oracle() -> None:
    """Discriminating oracle checks (no global branch): bilinear U-Net, ASPP without image pooling."""
    for spec in (
        "unet:up=bilinear,depth=2,width=4",
        "deeplabv3_small:image_pooling=false",
        "deeplabv3_small:image_pooling=false,upsample=nearest",
        "deeplabv3plus_small:image_pooling=false",
    ):
        torch.manual_seed(0)
        model = atrous.create_model(spec)
        shape = (3, 67, 71)
        report = analyze(model, shape)
        assert not report.outputs[0].global_
        for index in [(33, 35), (0, 0), (66, 3)]:
            assert np.array_equal(report.support(index), gradient_support(model, shape, index)), (spec, index)


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: atrous.create_model("unett"), ModelError, "did you mean 'unet'"),
        (
            lambda: atrous.create_model("unet", widht=8),
            ModelError,
            "has no argument 'widht'.*did you mean 'width'",
        ),
        (lambda: atrous.create_model("deeplabv3_small", output_stride=12), ModelError, "output_stride=12"),
        (
            lambda: atrous.create_model("unet")(torch.randn(1, 1, 64, 64)),
            InputShapeError,
            "3 input channels but got 1",
        ),
        (lambda: atrous.create_model("unet")(torch.randn(1, 3, 20, 64)), InputShapeError, "H and W >= 32"),
        (lambda: atrous.create_model("convstack:preset=huge"), ModelError, "unknown convstack preset"),
        (lambda: atrous.create_model("deeplabv3_small:upsample=cubic"), ModelError, "upsample='cubic'"),
        (lambda: atrous.create_model("context:scores=probs"), ModelError, "scores='probs': use one of raw"),
    ],
)
def test_bad_input(call, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        call()


@pytest.mark.parametrize("spec", ["unet", "dilated_unet", "convstack"])
def test_every_spelling_of_no_norm_gives_the_same_model_with_biases(spec: str) -> None:
    # norm=False once built a U-Net whose convs had neither a norm nor a bias (7,757,186 parameters, not 7,760,130)
    counts = {norm: count_params(atrous.create_model(spec, norm=norm)) for norm in (None, "none", False)}
    assert len(set(counts.values())) == 1, counts
    plain = atrous.create_model(spec, norm=False)
    convs = [m for m in plain.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(m.bias is not None for m in convs)
    normed = [m for m in atrous.create_model(spec).modules() if isinstance(m, torch.nn.Conv2d)]
    # with BatchNorm only the 1x1 classifier, which no norm follows, keeps its bias
    assert [m.kernel_size for m in normed if m.bias is not None] == [(1, 1)]


def test_resnet_takes_torchvisions_norm_layer_and_names_its_stages() -> None:
    from atrous.models.resnet import resnet

    def group(channels: int) -> torch.nn.Module:
        return torch.nn.GroupNorm(8, channels)

    model = resnet(18, num_classes=None, norm_layer=group)
    norms = {type(m).__name__ for m in model.modules() if "Norm" in type(m).__name__}
    assert norms == {"GroupNorm"}
    assert model.state_dict().keys() == resnet(18, num_classes=None).state_dict().keys() - {
        k
        for k in resnet(18, num_classes=None).state_dict()
        if k.endswith(("running_mean", "running_var", "tracked"))
    }
    feats = model.features(torch.randn(1, 3, 64, 64))
    assert {k: tuple(v.shape[1:]) for k, v in feats.items()} == {
        "layer1": (64, 16, 16),
        "layer2": (128, 8, 8),
        "layer3": (256, 4, 4),
        "layer4": (512, 2, 2),
    }
    assert model.channels == {"layer1": 64, "layer2": 128, "layer3": 256, "layer4": 512}


def test_models_register_where_they_are_defined() -> None:
    from atrous.models import deeplab, resnet
    from atrous.models.registry import model_info, register

    assert model_info("deeplabv3_small").factory is deeplab.deeplabv3
    assert model_info("deeplabv3_small").defaults == {
        "backbone": "resnet_small",
        "num_classes": 2,
        "aspp_channels": 64,
    }
    assert model_info("resnet101").factory is resnet.resnet_backbone
    with pytest.raises(ValueError, match="'unet' registered twice"):
        register("unet", "again")(deeplab.deeplabv3)
