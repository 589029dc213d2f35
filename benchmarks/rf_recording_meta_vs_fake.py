"""Why the RF recorder runs models on meta tensors rather than under FakeTensorMode.

Both record the same ops without computing pixels; this times one ResNet-101 forward (224x224) under each,
in the same run, and prints the ratio. Run: ``.venv/bin/python benchmarks/rf_recording_meta_vs_fake.py``.
"""

from __future__ import annotations

import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from atrous.bench import median_time
from atrous.models.resnet import Trunk, resnet
from atrous.rf.graph import record


def fake_forward(model: torch.nn.Module) -> None:
    with FakeTensorMode(allow_non_fake_inputs=True), torch.no_grad():
        model(torch.empty(1, 3, 224, 224))


def main() -> None:
    model = Trunk(resnet(101)).eval()
    t_meta = median_time(lambda: record(model, (1, 3, 224, 224)), repeats=5)
    t_fake = median_time(lambda: fake_forward(model), repeats=5)
    print(f"ResNet-101 @224, recorder on meta tensors: {t_meta:.3f} s (median of 5)")
    print(f"ResNet-101 @224, plain forward under FakeTensorMode (no recording): {t_fake:.3f} s")
    print(f"FakeTensorMode / meta recorder: {t_fake / t_meta:.2f}x")


if __name__ == "__main__":
    main()
