"""Published receptive-field values reproduced by the engine at input 224.

Sources:

* Araujo, Norris & Sim, "Computing Receptive Fields of Convolutional Neural Networks", Distill 2019
  (doi:10.23915/distill.00021), and its table of TF-Slim models (google-research/receptive_field,
  ``receptive_field/RECEPTIVE_FIELD_TABLE.md``): ``vgg_16/pool5`` 212 / 32 / 90; ``alexnet_v2/pool5`` 195 / 32 / 64,
  where torchvision's AlexNet pads its first conv by 2 (Slim: none), so its padding is 64 + 2 = 66.
* ResNet trunks in torchvision's layout (``torchvision.models.resnet``: stride on the first block of a stage, in
  its 3x3 conv, no avgpool/fc), by the single-path formulas of Araujo et al. along the longest path. Slim's
  ``resnet_v1`` strides in the last unit of a block instead, so that table's 483 for ``resnet_v1_50`` differs.
* Yu & Koltun, "Multi-Scale Context Aggregation by Dilated Convolutions", ICLR 2016, Table 1 (basic context
  module, per layer); the gridding of equal rates: Wang et al., "Understanding Convolution for Semantic
  Segmentation", WACV 2018.
"""

from __future__ import annotations

import pytest
from torch import nn

from atrous.models.resnet import Trunk, resnet
from atrous.rf import analyze


def vgg16_features() -> nn.Sequential:
    cfg = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
    layers, c = [], 3
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(c, v, 3, padding=1), nn.ReLU(inplace=True)]
            c = v
    return nn.Sequential(*layers)


def alexnet_features() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 64, 11, 4, 2),
        nn.ReLU(),
        nn.MaxPool2d(3, 2),
        nn.Conv2d(64, 192, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(3, 2),
        nn.Conv2d(192, 384, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(384, 256, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(256, 256, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(3, 2),
    )


@pytest.mark.parametrize(
    ("name", "factory", "rf", "stride", "padding"),
    [
        ("vgg16", vgg16_features, 212, 32, 90),
        ("alexnet", alexnet_features, 195, 32, 66),
        ("resnet18", lambda: Trunk(resnet(18)), 435, 32, 217),
        ("resnet50", lambda: Trunk(resnet(50)), 427, 32, 213),
        ("resnet101", lambda: Trunk(resnet(101)), 971, 32, 485),
    ],
)
def test_published_values(name: str, factory, rf: int, stride: int, padding: int) -> None:
    out = analyze(factory(), (3, 224, 224)).outputs[0]
    assert (out.rf, out.stride, out.padding) == ([rf, rf], [stride, stride], [padding, padding])
    assert out.aligned and not out.global_ and [a.hole_count for a in out.axes] == [0, 0]


def test_call_order_chaining_would_be_wrong() -> None:
    """What torchscan 0.1-style chaining in module order reports for ResNet-50 (1963 / 256): not what runs."""
    report = analyze(Trunk(resnet(50)), (3, 224, 224))
    assert report.rf == [427, 427]
    # Downsample branches run beside the main path: the graph has them as parallel nodes, not in sequence.
    downsample_convs = [r for r in report.layers() if r.module.endswith("downsample.0")]
    assert len(downsample_convs) == 4
    assert all(r.tensor.rf[0] < 427 for r in downsample_convs)


def context_module() -> nn.Sequential:
    layers, c = [], 8
    for r in (1, 1, 2, 4, 8, 16, 1):
        layers += [nn.Conv2d(c, c, 3, padding=r, dilation=r), nn.ReLU()]
    layers.append(nn.Conv2d(c, c, 1))
    return nn.Sequential(*layers)


def test_yu_koltun_context_module_per_layer() -> None:
    report = analyze(context_module(), (8, 96, 96))
    convs = [r.tensor.rf[0] for r in report.layers() if r.op == "convolution"]
    assert convs == [3, 5, 9, 17, 33, 65, 67, 67]
    assert report.outputs[0].axes[0].hole_count == 0


def test_gridded_stack_has_six_holes_per_axis() -> None:
    stack = nn.Sequential(*[nn.Conv2d(4, 4, 3, padding=2, dilation=2) for _ in range(3)])
    out = analyze(stack, (4, 32, 32)).outputs[0]
    assert out.rf == [13, 13]
    assert [a.holes for a in out.axes] == [[1, 3, 5, 7, 9, 11]] * 2
    assert out.axes[0].coverage == pytest.approx(7 / 13)
    assert out.area_coverage == pytest.approx(49 / 169)
