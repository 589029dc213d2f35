"""A model spec is parsed once, where it enters, and travels down to the factory as one ``ModelSpec``."""

from __future__ import annotations

import dataclasses
import sys

import pytest

import atrous.spec
from atrous.data import build_dataset
from atrous.errors import ModelError
from atrous.models.registry import create_model, model_spec, resolve_model
from atrous.spec import ModelSpec
from atrous.train.config import TrainConfig
from atrous.train.setup import build_model

NO_WEIGHTS = "weights=None,weights_backbone=None"
DATA = "scale:size=24,n=4,small=3,large=7"  # three classes


def count_parses(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the spec-parsing functions called from now on, from any atrous module: every module that
    imported one gets a counting stand-in, so a parse added anywhere on the way is seen."""
    calls: list[str] = []
    for name in ("split_spec", "split_import_path", "parse_kwargs"):
        real = getattr(atrous.spec, name)

        def counting(*args, _real=real, _name=name):
            calls.append(_name)
            return _real(*args)

        for module_name, module in list(sys.modules.items()):
            if module_name.split(".")[0] == "atrous" and getattr(module, name, None) is real:
                monkeypatch.setattr(module, name, counting)
    return calls


@pytest.mark.parametrize(
    ("spec", "parses"),
    [
        # A zoo model that the data makes rebuild (3 classes, not its default 2): the longest trip.
        ("convstack:width=4", ["split_spec", "parse_kwargs"]),
        # An import path: the zoo is asked first, then the path is split.
        (f"byo_models:seg_net:{NO_WEIGHTS}", ["split_spec", "split_import_path", "parse_kwargs"]),
    ],
)
def test_fit_parses_the_model_spec_once(
    spec: str, parses: list[str], monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    data = build_dataset(DATA)
    cfg = TrainConfig(model=spec, data=DATA, out=str(tmp_path))
    calls = count_parses(monkeypatch)
    model, built = build_model(cfg, data)
    assert calls == parses
    assert model.num_classes == 3 and built.model_kwargs  # the data's class count went in


def test_a_parsed_spec_is_not_read_again() -> None:
    """Functions given a ``ModelSpec`` use its fields: its text is only quoted, never parsed."""
    unreadable = "((not a spec"
    zoo = dataclasses.replace(model_spec("convstack:width=4"), text=unreadable)
    assert create_model(zoo, num_classes=3).num_classes == 3
    assert resolve_model(zoo).in_channels == 3
    foreign = dataclasses.replace(
        model_spec(f"byo_models:seg_net:{NO_WEIGHTS},num_classes=5"), text=unreadable
    )
    assert resolve_model(foreign).classifier.out_channels == 5


def test_a_spec_is_parsed_into_name_path_arguments_and_defaults() -> None:
    zoo = model_spec("deeplabv3_resnet50:num_classes=21")
    assert (zoo.zoo, zoo.name, zoo.factory, dict(zoo.args)) == (
        True,
        "deeplabv3_resnet50",
        None,
        {"num_classes": 21},
    )
    assert zoo.defaults == {"backbone": "resnet50"}  # registered with the name
    assert zoo.arguments({"aux_loss": True}) == {"backbone": "resnet50", "num_classes": 21, "aux_loss": True}
    assert zoo.given({"aux_loss": True}) == {"num_classes": 21, "aux_loss": True}  # what the user chose
    path = model_spec("pkg.mod:build:width=[1,2]")
    assert (path.zoo, path.name, path.factory, dict(path.args)) == (
        False,
        "pkg.mod",
        ("pkg.mod", "build"),
        {"width": [1, 2]},
    )
    assert path.with_kwargs({"weights": None}) == "pkg.mod:build:width=[1,2],weights=None"
    assert model_spec("pkg.mod:build").with_kwargs({"weights": None}) == "pkg.mod:build:weights=None"
    unknown = model_spec("convstak:(")  # an unknown name's arguments are never read: the name is the error
    assert (unknown.zoo, unknown.factory, dict(unknown.args)) == (False, None, {})
    with pytest.raises(ModelError, match="unknown model 'convstak'"):
        resolve_model(unknown)
    assert model_spec(zoo) is zoo
    assert isinstance(zoo, ModelSpec)
