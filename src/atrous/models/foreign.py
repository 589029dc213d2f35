"""Models from outside the zoo (``package.module:factory[:key=value,...]``), trained, evaluated and loaded like
zoo models.

The factory gets the data's class count and input channels through the arguments it declares for them
(torchvision: ``num_classes``; segmentation_models_pytorch: ``classes``, ``in_channels``) unless the spec sets
them. Its model is wrapped so that the trainer sees what every zoo model offers: ``forward`` returns the main
logits at the input's size, ``forward_aux`` also the auxiliary logits.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from atrous.errors import ModelError, one_line
from atrous.models.base import Segmenter, resize_to
from atrous.models.registry import factory_parameters, model_spec, resolve_model
from atrous.rf.outputs import named_outputs
from atrous.spec import ModelSpec

CLASS_ARGUMENTS = ("num_classes", "classes")  # torchvision and timm, segmentation_models_pytorch
CHANNEL_ARGUMENTS = ("in_channels", "in_chans")  # segmentation_models_pytorch, timm
PROBE_SIDE = 64  # the probe forward's input side when the data's is unknown (at load)


def main_and_aux(out: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The main logits (the output named ``out``, else the first tensor) and the auxiliary ones (``aux``)."""
    leaves = dict(named_outputs(out))
    if not leaves:
        raise ModelError(f"the model returned {type(out).__name__}, which holds no tensor")
    main = leaves.get("out", next(iter(leaves.values())))
    return main, leaves.get("aux")


class ForeignSegmenter(Segmenter):
    """A user's model as a zoo model. Logits at another size than the input's are resized bilinearly (as
    torchvision's segmentation models do inside), so the loss sees one logit per pixel."""

    def __init__(self, model: nn.Module, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.model, self.in_channels, self.num_classes = model, in_channels, num_classes

    def forward_aux(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        self.check_input(x)
        main, aux = main_and_aux(self.model(x))
        size = x.shape[2:]
        return resize_to(main, size), None if aux is None else resize_to(aux, size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_aux(x)[0]


def data_arguments(
    spec: str | ModelSpec, kwargs: dict[str, Any], num_classes: int, in_channels: int
) -> dict[str, Any]:
    """``kwargs`` plus the data's class count and channels, through the arguments the factory declares for
    them, where neither the spec nor ``kwargs`` sets one."""
    s = model_spec(spec)
    if s.factory is None:  # not an import path: resolve_model says so
        return dict(kwargs)
    given = s.given(kwargs)
    params = factory_parameters(s) or {}
    out = dict(kwargs)
    for names, value in ((CLASS_ARGUMENTS, num_classes), (CHANNEL_ARGUMENTS, in_channels)):
        if not any(n in given for n in names):
            accepted = [n for n in names if n in params]
            if accepted:
                out[accepted[0]] = value
    return out


def build_foreign(
    spec: str | ModelSpec, kwargs: dict[str, Any], in_channels: int, side: int = PROBE_SIDE
) -> ForeignSegmenter:
    """The factory's model, wrapped; one probe forward (eval mode, batch 2, ``side`` x ``side``) finds its
    class count and turns a model that cannot take the data into one line."""
    s = model_spec(spec)
    model = resolve_model(s, **kwargs)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            main, _ = main_and_aux(model(torch.zeros(2, in_channels, side, side)))
    except ModelError:
        raise
    except Exception as exc:
        raise ModelError(
            f"{s.text!r} cannot take a ({in_channels}, {side}, {side}) input: {one_line(exc)}; give "
            "the factory the data's input channels (e.g. in_channels=...) or use data it accepts"
        ) from exc
    model.train(was_training)
    if main.dim() != 4:
        raise ModelError(
            f"{s.text!r} returns logits of shape {tuple(main.shape)}; atrous trains (N, classes, H, W) outputs"
        )
    return ForeignSegmenter(model, in_channels, int(main.shape[1]))


def batch_of_one_failure(model: nn.Module, in_channels: int, side: int) -> Exception | None:
    """What a training-mode forward on one sample raises (BatchNorm after global pooling, as in torchvision's
    ASPP, cannot normalise one value per channel), or None. Buffers, mode and the RNG are left as they were."""
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    was_training = model.training
    model.train()
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            model(torch.zeros(1, in_channels, side, side))
    except Exception as exc:  # the model's own failure: reported by the caller, with the fix
        return exc
    finally:
        model.load_state_dict(saved)
        model.train(was_training)
    return None
