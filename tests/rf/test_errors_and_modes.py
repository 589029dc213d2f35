"""Bad input gets one clear error; train-mode and statistics views behave as documented."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from atrous.errors import InputShapeError, ModelError, UnsupportedOpError
from atrous.models.registry import resolve_model
from atrous.rf import analyze


class Warp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3, padding=1)
        self.register_buffer("grid", torch.zeros(1, 8, 8, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.grid_sample(self.conv(x), self.grid, align_corners=False)


def test_op_without_rule_names_op_and_module() -> None:
    with pytest.raises(UnsupportedOpError, match=r"aten\.grid_sampler_2d.*module '<model>'"):
        analyze(Warp(), (1, 8, 8))


def test_wrong_channel_count_names_the_layer() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Sequential(nn.ReLU(), nn.Conv2d(4, 4, 3)))
    with pytest.raises(InputShapeError, match=r"layer '0' expects 3 input channels but gets 1"):
        analyze(model, (1, 16, 16))


def test_input_smaller_than_the_model_allows() -> None:
    model = nn.Sequential(nn.Conv2d(3, 3, 3), nn.Conv2d(3, 3, 7))
    with pytest.raises(InputShapeError, match=r"at module '1'.*smaller"):
        analyze(model, (3, 6, 6))


@pytest.mark.parametrize("shape", [(3,), (3, 0, 4), (1, 2, 3, 4, 5)])
def test_malformed_input_shapes(shape: tuple) -> None:
    with pytest.raises(InputShapeError, match="input shape"):
        analyze(nn.Identity(), shape)


def test_factory_path_that_does_not_import() -> None:
    with pytest.raises(ModelError, match=r"cannot import 'no_such_pkg\.models'"):
        resolve_model("no_such_pkg.models:build")


def test_unknown_zoo_name_suggests_close_names() -> None:
    with pytest.raises(ModelError, match="did you mean 'convstack'"):
        resolve_model("convstak")


def bn_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(2, 2, 3, padding=1), nn.BatchNorm2d(2), nn.ReLU(), nn.Conv2d(2, 2, 3, padding=1)
    )


def test_batchnorm_is_per_pixel_in_eval_whatever_the_module_mode() -> None:
    model = bn_net().train()
    out = analyze(model, (2, 16, 16)).outputs[0]
    assert out.rf == [5, 5] and not out.global_
    assert model.training  # the module's mode is restored


def test_train_view_makes_batchnorm_global() -> None:
    out = analyze(bn_net(), (2, 16, 16), train_view=True).outputs[0]
    assert out.global_ and out.rf == [None, None]
    assert any("BatchNorm" in n for n in out.notes)
    assert out.to_json()["global"] is True


def test_group_norm_is_global_unless_statistics_are_ignored() -> None:
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.GroupNorm(2, 4), nn.Conv2d(4, 2, 3, padding=1))
    assert analyze(model, (2, 16, 16)).outputs[0].global_
    assert analyze(model, (2, 16, 16), ignore_statistics=True).outputs[0].rf == [5, 5]


def test_flatten_linear_head_is_global_and_says_why() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 6 * 6, 4))
    out = analyze(model, (1, 8, 8)).outputs[0]
    assert out.global_
    assert out.notes, "a global RF must say what made it global"


def test_transposed_conv_is_not_aligned_and_lists_phases() -> None:
    model = nn.Sequential(nn.Conv2d(1, 1, 3, 2, 1), nn.ConvTranspose2d(1, 1, 3, 2, 1, output_padding=1))
    out = analyze(model, (1, 16, 16)).outputs[0]
    assert not out.aligned
    phases = out.axes[0].phases
    assert [p.phase for p in phases] == [0, 1]
    assert out.rf[0] == max(p.rf for p in phases) and phases[0].rf != phases[1].rf
    assert out.to_json()["phases"][0][1]["window"] == [phases[1].lo, phases[1].hi]


def test_misaligned_centres_are_reported() -> None:
    class TwoPaths(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(1, 1, 2), nn.Conv2d(1, 1, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.a(x)[:, :, :-1, :-1] + self.b(x)

    out = analyze(TwoPaths(), (1, 10, 10)).outputs[0]
    assert out.axes[0].stride == 1 and not out.aligned
    assert "centre" in out.axes[0].note


def test_in_place_write_through_a_view_is_refused() -> None:
    class Aliased(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = x * 2
            view = y[:, :, 1:]
            y.relu_()
            return view + 1

    with pytest.raises(UnsupportedOpError, match="modified in place"):
        analyze(Aliased(), (1, 6, 6))
