"""The RF page: its data reproduce the engine's in-image support bit for bit, and a real browser draws it."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch.nn as nn

from atrous.models.unet import UNet
from atrous.rf import analyze
from atrous.rf.page import page_data, write_page

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def gridded() -> nn.Module:
    return nn.Sequential(*[nn.Conv2d(3 if i == 0 else 4, 4, 3, padding=2, dilation=2) for i in range(3)])


CASES = {
    "gridded stack": (gridded, (3, 32, 32)),
    "U-Net, transposed": (lambda: UNet(width=4, depth=2), (3, 48, 48)),
    # Bilinear upsampling at odd sizes: rounding makes border supports differ from the clipped window.
    "U-Net, bilinear, odd size": (lambda: UNet(width=4, depth=2, up="bilinear"), (3, 33, 37)),
}


def decode(entry: dict, shape: tuple[int, int], oy: int = 0, ox: int = 0) -> np.ndarray:
    """What the page's ``place`` does, in Python."""
    grid = np.zeros(shape, dtype=bool)
    by, bx, bh, bw = entry["box"]
    if not entry["bits"]:
        return grid
    bits = np.unpackbits(np.frombuffer(base64.b64decode(entry["bits"]), np.uint8))[: bh * bw].reshape(bh, bw)
    for i, j in zip(*np.nonzero(bits)):
        y, x = oy + by + i, ox + bx + j
        if 0 <= y < shape[0] and 0 <= x < shape[1]:
            grid[y, x] = True
    return grid


def page_support(data: dict, u: int, v: int) -> np.ndarray:
    shape = tuple(data["input"])
    if f"{u},{v}" in data["exact"]:
        return decode(data["exact"][f"{u},{v}"], shape)
    wins = data["windows"]
    (py, px), (sy, sx) = wins["period"], wins["stride"]
    ph = wins["phases"][f"{u % py},{v % px}"]
    oy, ox = ph["origin"][0] + round((u - u % py) * sy), ph["origin"][1] + round((v - v % px) * sx)
    return decode(ph, shape, oy, ox)


@pytest.mark.parametrize("case", CASES)
def test_every_pixel_of_the_page_is_the_engines_support(case: str) -> None:
    build, shape = CASES[case]
    report = analyze(build(), shape)
    data = page_data(report)
    h, w = data["output"]["shape"]
    for u in range(h):
        for v in range(w):
            assert np.array_equal(page_support(data, u, v), report.support((u, v))), (u, v)
    if case.startswith("U-Net, bilinear"):  # rounding differs from pixel to pixel: every support is stored
        assert "windows" not in data and len(data["exact"]) == h * w
    else:  # windows repeat: only the supports that differ from the clipped window are stored
        assert data["checked"]["border"] > 0 and len(data["exact"]) == data["checked"]["differing"]


def test_resnet50_page_is_small() -> None:
    from atrous.models.resnet import Trunk, resnet

    data = json.dumps(page_data(analyze(Trunk(resnet(50)).eval(), (3, 224, 224))))
    assert len(data) < 5_000_000


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium: apt-get install chromium (see README) to run it")
@pytest.mark.parametrize(
    ("case", "pixel"),
    [
        ("gridded stack", (0, 0)),
        ("gridded stack", (16, 16)),
        ("U-Net, transposed", (0, 47)),
        ("U-Net, bilinear, odd size", (32, 0)),
    ],
)
def test_a_browser_draws_the_exact_support_under_the_mouse(tmp_path: Path, case: str, pixel: tuple) -> None:
    build, shape = CASES[case]
    report = analyze(build(), shape)
    page = write_page(report, tmp_path / "rf.html")
    url = f"{page.resolve().as_uri()}#hover={pixel[0]},{pixel[1]}"
    dom = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", url],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    text = re.search(r'<pre id="readback"[^>]*>(.*?)</pre>', dom, re.S).group(1).strip().splitlines()
    assert text[0] == f"hover ({pixel[0]}, {pixel[1]})"
    drawn = np.array([[c == "1" for c in row] for row in text[1:]])
    assert np.array_equal(drawn, report.support(pixel))
