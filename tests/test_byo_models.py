"""Bring your own model: import-path specs with arguments, --model-kwargs, factories that fail (offline
downloads above all), and models that return dicts, tuples or dataclasses. The factories are stand-ins of the
project's own (tests/byo_models.py), so neither torchvision nor smp is needed."""

from __future__ import annotations

import json
import urllib.error
from pathlib import Path

import pytest
import torch

import atrous
from atrous.cli import main
from atrous.errors import ModelError, SpecError
from atrous.models.registry import download_failure, resolve_model
from atrous.rf import analyze
from atrous.rf.analyze import named_outputs, select_output
from atrous.spec import parse_kwargs, split_import_path, with_kwargs

NO_WEIGHTS = "weights=None,weights_backbone=None"


def run(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def rf_json(capsys: pytest.CaptureFixture, *argv: str) -> dict:
    code, out, err = run(capsys, "rf", *argv, "--json")
    assert code == 0, err
    return json.loads(out)


def summary(data: dict) -> dict[str, tuple]:
    return {o["name"]: (o["shape"], o["rf"], o["stride"], o["padding"]) for o in data["outputs"]}


# ---- specs ----------------------------------------------------------------------------------------------


def test_spec_values_are_python_literals_and_zoo_forms_still_parse() -> None:
    assert parse_kwargs("rates=1,2,5,width=32,preset=gridded,flag=true,none=null", "s") == {
        "rates": (1, 2, 5),
        "width": 32,
        "preset": "gridded",
        "flag": True,
        "none": None,
    }
    assert parse_kwargs(
        "weights=None,dilate=[False,True,True],size=(3, 4),name='a,b',lr=1e-3,k=-2,d={'x': [1, 2]}", "s"
    ) == {
        "weights": None,
        "dilate": [False, True, True],
        "size": (3, 4),
        "name": "a,b",
        "lr": 0.001,
        "k": -2,
        "d": {"x": [1, 2]},
    }
    # An apostrophe inside a word is not a quote (paths in data specs).
    assert parse_kwargs("root=/data/it's,size=8", "s") == {"root": "/data/it's", "size": 8}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("dilate=[False,True", "unclosed ']' in s"),
        ("dilate=False]", "unmatched ']' in s"),
        ("name='abc", 'unclosed "\'" in s'),
    ],
)
def test_unbalanced_specs_are_spec_errors(text: str, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        parse_kwargs(text, "s")


def test_import_paths_split_from_zoo_specs() -> None:
    assert split_import_path("torchvision.models.segmentation:fcn_resnet50:weights_backbone=None") == (
        "torchvision.models.segmentation",
        "fcn_resnet50",
        "weights_backbone=None",
    )
    assert split_import_path("my_models:build") == ("my_models", "build", "")
    assert split_import_path("unet:width=16,depth=2") is None
    assert split_import_path("convstack") is None


def test_with_kwargs_writes_arguments_that_read_back() -> None:
    kwargs = {"weights": None, "dilate": [False, True], "name": "a,b", "lr": 0.1}
    spec = with_kwargs("pkg.mod:factory:num_classes=3", kwargs)
    assert spec == "pkg.mod:factory:num_classes=3,weights=None,dilate=[False, True],name='a,b',lr=0.1"
    assert parse_kwargs(split_import_path(spec)[2], "s") == {"num_classes": 3, **kwargs}
    assert with_kwargs("convstack", {"preset": "gridded"}) == "convstack:preset='gridded'"
    assert with_kwargs("pkg.mod:factory", {}) == "pkg.mod:factory"


# ---- the API --------------------------------------------------------------------------------------------


def test_resolve_model_passes_spec_and_keyword_arguments() -> None:
    model = resolve_model(
        "byo_models:seg_net:replace_stride_with_dilation=[True,True],num_classes=5",
        weights=None,
        weights_backbone=None,
    )
    assert model.classifier.out_channels == 5 and model.classifier.dilation == (4, 4)
    report = analyze(
        resolve_model(f"byo_models:seg_net:{NO_WEIGHTS},replace_stride_with_dilation=[True,True]"),
        (3, 32, 32),
    )
    # torchvision's semantics: dilation instead of stride keeps the RF (31) and shrinks the output stride to 2.
    assert [(o.name, o.rf, o.stride, o.padding) for o in report.outputs] == [
        ("out", [31, 31], [2, 2], [15, 15]),
        ("aux", [7, 7], [2, 2], [3, 3]),
    ]


def test_a_downloading_factory_is_a_model_error_from_its_url_error() -> None:
    with pytest.raises(ModelError, match=r"pass weights=None, weights_backbone=None") as info:
        resolve_model("byo_models:seg_net")
    assert isinstance(info.value.__cause__, urllib.error.URLError)


def test_download_failure_finds_the_network_error_under_a_library_error() -> None:
    try:
        resolve_model("byo_models:chained_download")
    except ModelError as exc:
        cause = download_failure(exc.__cause__)
    assert isinstance(cause, ConnectionResetError) and cause.errno == 104
    assert download_failure(ValueError("depth must be even")) is None
    assert download_failure(RuntimeError("Failed to download https://example.org/w.pth")) is not None


def test_outputs_are_named_by_key_field_and_index() -> None:
    t = torch.zeros(1)
    nested = {"out": t, "extra": (t, [None, t]), "n": 3}
    assert [name for name, _ in named_outputs(nested)] == ["out", "extra.0", "extra.1.1"]
    assert [name for name, _ in named_outputs((t, t))] == ["0", "1"]
    assert [name for name, _ in named_outputs(t)] == ["out"]
    model = resolve_model("byo_models:DataclassNet")
    report = analyze(model, (1, 16, 16))
    assert [(o.name, o.rf) for o in report.outputs] == [("logits", [7, 7]), ("hidden", [3, 3])]
    with pytest.raises(ModelError, match="no output 'score'; its outputs are logits, hidden"):
        report.output("score")


def test_select_output_makes_the_model_return_one_tensor() -> None:
    model = select_output(resolve_model("byo_models:PairNet:encoder_weights=None"), "1")
    x = torch.randn(1, 1, 8, 8)
    torch.testing.assert_close(model(x), model.edges(x))
    assert [(o.name, o.rf) for o in analyze(model, (1, 8, 8)).outputs] == [("out", [5, 5])]


# ---- the command line -----------------------------------------------------------------------------------


def test_rf_with_spec_arguments_names_dict_outputs(capsys: pytest.CaptureFixture) -> None:
    spec = f"byo_models:seg_net:{NO_WEIGHTS},replace_stride_with_dilation=[False,True]"
    assert summary(rf_json(capsys, spec, "--input", "3,32,32")) == {
        "out": ([1, 3, 8, 8], [31, 31], [4, 4], [15, 15]),
        "aux": ([1, 3, 8, 8], [7, 7], [4, 4], [3, 3]),
    }


def test_model_kwargs_json_overrides_the_spec(capsys: pytest.CaptureFixture) -> None:
    data = rf_json(
        capsys,
        "byo_models:seg_net:weights='DEFAULT'",
        "--model-kwargs",
        '{"weights": null, "weights_backbone": null, "replace_stride_with_dilation": [true, true]}',
        "--input",
        "3,32,32",
    )
    assert summary(data)["out"] == ([1, 3, 16, 16], [31, 31], [2, 2], [15, 15])


def test_rf_at_an_output_picked_by_name(capsys: pytest.CaptureFixture) -> None:
    spec = f"byo_models:seg_net:{NO_WEIGHTS}"
    data = rf_json(capsys, spec, "--input", "3,32,32", "--at", "0,0", "--output", "aux")
    # aux (stride 4, padding 3) at (0, 0) sees input [-3, 3] per axis: 4 pixels inside the image.
    assert data["support_at"] == {"output": "aux", "index": [0, 0], "pixels": 16, "box": [[0, 3], [0, 3]]}
    code, out, _ = run(capsys, "rf", spec, "--input", "3,32,32", "--at", "0,0")
    assert code == 0 and "in-image support of output pixel (0, 0) of 'out': 256 input pixels" in out


def test_rf_table_shows_every_output_name(capsys: pytest.CaptureFixture) -> None:
    code, out, _ = run(capsys, "rf", "byo_models:PairNet:encoder_weights=None", "--input", "1,16,16")
    assert code == 0
    rows = [line.split("│")[1:4] for line in out.splitlines() if line.startswith("│")]
    assert [[cell.strip() for cell in row] for row in rows] == [["0", "2×16×16", "3"], ["1", "1×16×16", "5"]]


def test_erf_of_a_named_output(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    common = ["--input", "3,32,32", "--samples", "2", "--batch", "2", "--json"]
    kwargs = ["--model-kwargs", '{"weights": null, "weights_backbone": null}']
    code, out, err = run(
        capsys,
        "erf",
        "byo_models:seg_net",
        *kwargs,
        "--output",
        "aux",
        "--out",
        str(tmp_path / "a.png"),
        *common,
    )
    assert code == 0, err
    (aux,) = json.loads(out)
    assert aux["name"] == "byo_models:seg_net (output aux)" and aux["rf"] == [7, 7]
    assert aux["position"] == [4, 4] and aux["shape"] == [32, 32]
    code, out, _ = run(
        capsys, "erf", "byo_models:seg_net", *kwargs, "--out", str(tmp_path / "b.png"), *common
    )
    (first,) = json.loads(out)
    assert code == 0 and first["rf"] == [31, 31] and first["position"] == [2, 2]  # "out", 4x4


def test_models_row_for_an_import_path(capsys: pytest.CaptureFixture) -> None:
    code, out, _ = run(
        capsys,
        "models",
        "byo_models:seg_net:weights=None",
        "--model-kwargs",
        '{"weights_backbone": null}',
        "--input",
        "3,32,32",
        "--json",
    )
    assert code == 0
    (row,) = json.loads(out)
    assert row["name"] == f"byo_models:seg_net:{NO_WEIGHTS}" and row["task"] == "custom"
    assert row["params"] == (3 * 9 * 8 + 8) + 2 * (8 * 9 * 8 + 8) + (8 * 9 * 3 + 3) + (8 * 3 + 3)
    # Convolution FLOPs, 2 per multiply-add: stem 16x16, stages 8x8 and 4x4, classifier 4x4, aux 8x8.
    assert row["flops"] == 2 * (8 * 27 * 256 + 8 * 72 * 64 + 8 * 72 * 16 + 3 * 72 * 16 + 3 * 8 * 64)
    assert row["rf"] == [31, 31] and row["output_stride"] == 8 and row["min_size"] is None


def test_models_zoo_spec_with_model_kwargs(capsys: pytest.CaptureFixture) -> None:
    code, out, _ = run(
        capsys,
        "models",
        "convstack",
        "--model-kwargs",
        '{"preset": "gridded"}',
        "--input",
        "3,32,32",
        "--json",
    )
    (row,) = json.loads(out)
    assert code == 0 and row["name"] == "convstack:preset='gridded'"
    assert row["rf"] == [13, 13] and row["holes"] == [6, 6]


OFFLINE = "<urlopen error [Errno -3] Temporary failure in name resolution>"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["rf", "byo_models:seg_net", "--input", "3,32,32"],
            f"atrous: error: byo_models:seg_net() raised URLError: {OFFLINE}; it tried to download weights "
            "(offline?): pass weights=None, weights_backbone=None, "
            "e.g. 'byo_models:seg_net:weights=None,weights_backbone=None'\n",
        ),
        (
            ["rf", "byo_models:seg_net:weights=None", "--input", "3,32,32"],
            "pass weights_backbone=None, e.g. 'byo_models:seg_net:weights=None,weights_backbone=None'\n",
        ),
        (
            ["rf", "byo_models:PairNet", "--input", "1,16,16"],
            "byo_models:PairNet() raised LocalEntryNotFoundError: An error happened while trying to locate",
        ),
        (
            ["erf", "byo_models:PairNet", "--input", "1,16,16"],
            "pass encoder_weights=None, e.g. 'byo_models:PairNet:encoder_weights=None'\n",
        ),
        (
            ["models", "byo_models:chained_download"],
            "raised RuntimeError: could not load the encoder (from ConnectionResetError: [Errno 104] "
            "Connection reset by peer); it tried to download weights (offline?): pass its weights argument",
        ),
        (
            ["rf", "byo_models:broken:depth=5", "--input", "3,8,8"],
            "byo_models:broken(depth=5) raised ValueError: depth must be even, got 5; check its arguments",
        ),
        (
            ["rf", "byo_models:seg_net:weight=None", "--input", "3,8,8"],
            "has no argument 'weight'; did you mean 'weights' or 'weights_backbone'?",
        ),
        (
            ["rf", "byo_models:instance:bias=False", "--input", "1,8,8"],
            "byo_models:instance is a module instance, not a factory: it takes no arguments (bias given)",
        ),
        (
            ["rf", "byo_models:seg_net:replace_stride_with_dilation=[False,True", "--input", "3,8,8"],
            "unclosed ']' in model spec",
        ),
        (
            ["rf", "byo_models:DataclassNet", "--input", "1,16,16", "--output", "score"],
            "the model has no output 'score'; its outputs are logits, hidden",
        ),
        (
            ["erf", "byo_models:DataclassNet", "--input", "1,16,16", "--output", "score"],
            "the model has no output 'score'; its outputs are logits, hidden",
        ),
        (
            ["rf", "convstack", "--input", "3,8,8", "--model-kwargs", '{"width": 8'],
            "--model-kwargs '{\"width\": 8' is not valid JSON",
        ),
        (["rf", "convstack", "--input", "3,8,8", "--model-kwargs", "[8]"], "must be a JSON object"),
        (
            ["rf", "convstack", "--input", "3,8,8", "--model-kwargs", '{"depth": 2}'],
            "has no argument 'depth'",
        ),
        (["models", "--model-kwargs", '{"width": 8}'], "--model-kwargs needs one model"),
        (
            [
                "erf",
                "convstack",
                "--checkpoint",
                "nowhere",
                "--model-kwargs",
                '{"width": 8}',
                "--input",
                "3,8,8",
            ],
            "--model-kwargs does not apply to --checkpoint",
        ),
    ],
)
def test_byo_errors_are_one_line_with_exit_2(
    capsys: pytest.CaptureFixture, argv: list[str], message: str
) -> None:
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("atrous: error: ") and message in err


# ---- training a model from outside the zoo --------------------------------------------------------------
def test_train_an_import_path_model_then_load_and_evaluate_it(tmp_path: Path, capsys) -> None:
    """The factory gets the data's class count through its own argument, the config records it, and
    ``atrous.load`` rebuilds the same model: its metrics on the validation split are the run's last ones."""
    from atrous.data import build_dataset
    from atrous.models.foreign import ForeignSegmenter
    from atrous.train.evaluate import evaluate

    out = tmp_path / "run"
    data = "shapes:size=32,n=32"
    spec = f"byo_models:seg_net:{NO_WEIGHTS}"
    # On the CPU, not --device auto: the claim is that the loaded model scores exactly (1e-6) what the run
    # recorded. On a GPU the run would validate on images composed on the device (CUDA's noise, not the CPU's
    # numpy noise) with cuDNN's kernels, and ``evaluate`` below scores CPU-drawn images on the CPU: other
    # images and other rounding, a different number. Training on GPUs is tests/train/test_devices.py's.
    code, _, err = run(
        capsys,
        "train",
        "--model",
        spec,
        "--data",
        data,
        "--epochs",
        "2",
        "--batch-size",
        "8",
        "--device",
        "cpu",
        "--out",
        str(out),
    )
    assert code == 0, err
    assert json.loads((out / "config.json").read_text())["model_kwargs"] == {"num_classes": 2}
    model = atrous.load(out / "last")
    assert isinstance(model, ForeignSegmenter) and model.num_classes == 2
    last = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][-1]
    val = build_dataset(f"{data},split=val", split="val")
    assert evaluate(model, val, 8)["miou"] == pytest.approx(last["val"]["miou"], abs=1e-6)


def test_the_auxiliary_output_of_a_dict_model_is_trained(tmp_path: Path) -> None:
    """``{"out", "aux"}`` outputs (torchvision's): the aux logits enter the loss with ``aux_weight``."""
    from atrous.train.config import TrainConfig
    from atrous.train.loop import fit

    def first_loss(aux_weight: float) -> float:
        cfg = TrainConfig(
            model=f"byo_models:seg_net:{NO_WEIGHTS}",
            data="shapes:size=32,n=16",
            steps=2,
            batch_size=8,
            aux_weight=aux_weight,
            out=str(tmp_path / str(aux_weight)),
        )
        return fit(cfg).history[0]["train_loss"]

    assert first_loss(0.5) > first_loss(0.0) * 1.2


def test_smp_style_arguments_and_low_resolution_logits(tmp_path: Path, capsys) -> None:
    """``classes`` and ``in_channels`` are filled from the data; half-resolution logits are resized to the
    input, so the model trains, loads and predicts at any size."""
    out = tmp_path / "run"
    code, _, err = run(
        capsys,
        "train",
        "--model",
        "byo_models:HalfResNet:encoder_weights=None",
        "--data",
        "shapes:size=32,n=16",
        "--steps",
        "2",
        "--batch-size",
        "8",
        "--out",
        str(out),
    )
    assert code == 0, err
    assert json.loads((out / "config.json").read_text())["model_kwargs"] == {"classes": 2, "in_channels": 3}
    assert atrous.load(out)(torch.zeros(1, 3, 37, 50)).shape == (1, 2, 37, 50)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (f"byo_models:seg_net:{NO_WEIGHTS},num_classes=5", "predicts 5 classes but the data has 2; give its"),
        (
            "byo_models:seg_net",
            "it tried to download weights (offline?): pass weights=None, weights_backbone",
        ),
        ("byo_models:DataclassNet", "cannot take a (3, 32, 32) input: RuntimeError"),
    ],
)
def test_import_path_models_that_cannot_train_are_one_line(
    tmp_path: Path, capsys, spec: str, message: str
) -> None:
    out = tmp_path / "run"
    code, _, err = run(
        capsys, "train", "--model", spec, "--data", "shapes:size=32,n=16", "--steps", "1", "--out", str(out)
    )
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert not out.exists()


@pytest.mark.parametrize(("n", "refused"), [(17, True), (18, False)])
def test_epochs_ending_on_a_batch_the_model_cannot_train_on_are_refused_first(
    tmp_path: Path, capsys, n: int, refused: bool
) -> None:
    """17 samples at batch 8 end every epoch on one sample; BatchNorm after global pooling cannot train on it.
    Said before anything is written, with the fix; 18 samples train."""
    out = tmp_path / "run"
    code, _, err = run(
        capsys,
        "train",
        "--model",
        "byo_models:PooledContext",
        "--data",
        f"shapes:size=16,n={n}",
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--out",
        str(out),
    )
    if refused:
        assert code == 2 and err.count("\n") == 1, err
        assert "17 training samples at --batch-size 8 end every epoch on a batch of 1" in err
        assert "Expected more than 1 value per channel" in err
        assert not out.exists()
    else:
        assert code == 0, err


def test_the_batch_of_one_probe_leaves_the_model_as_it_was() -> None:
    from atrous.models.foreign import batch_of_one_failure
    from atrous.models.registry import create_model
    from byo_models import PooledContext

    model = create_model("deeplabv3_small", num_classes=2).eval()  # zoo models train on one sample
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    assert batch_of_one_failure(model, 3, 32) is None
    assert not model.training and torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert isinstance(batch_of_one_failure(PooledContext(), 3, 16), ValueError)
