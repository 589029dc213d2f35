import os

# Tests run on two cores next to each other (pytest -n 2): one thread each avoids oversubscription.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch

torch.set_num_threads(1)

import pytest  # noqa: E402

from atrous.device import available_devices  # noqa: E402

# Device-generic tests take a ``device`` argument and run once per device present: the CPU always, the GPU
# where there is one (``make gpu-check``). Tests that only make sense on a GPU are marked ``cuda``.
DEVICES = available_devices()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "device" in metafunc.fixturenames:
        metafunc.parametrize("device", DEVICES)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if "cuda" in DEVICES:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run make gpu-check on a GPU machine)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def cpu_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """``--device auto`` means the CPU, in this process and in the ones it starts. For tests of exact equality
    between runs (resumption, torchrun, the lab's reproducibility): on a GPU, cuDNN and atomic adds in backward
    kernels make floats differ between runs. ``tests/train/test_devices.py`` covers the GPU."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
