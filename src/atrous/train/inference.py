"""Using a trained run: ``atrous.load``, evaluation, prediction (sliding window), ONNX export."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from atrous.data.files import IMAGE_SUFFIXES, load_image, voc_palette
from atrous.data.preview import overlay, to_rgb
from atrous.data.transforms import normalize
from atrous.errors import AtrousError
from atrous.models.foreign import build_foreign
from atrous.models.registry import create_model, in_zoo
from atrous.train import checkpoint as ckpt


def checkpoint_dir(path: str | Path) -> Path:
    """A checkpoint directory from a run directory (its ``best``), ``RUN/best``, ``RUN/last`` or a step dir."""
    p = Path(path)
    if (p / ckpt.MANIFEST).is_file() or (p / ckpt.MODEL_FILE).exists():
        return p
    for link in ("best", "last"):
        if (p / link).exists():
            return p / link
    raise ckpt.CheckpointError(f"{p} is neither a checkpoint nor a run directory with best/ or last/")


def load(path: str | Path, device: str | torch.device = "cpu") -> torch.nn.Module:
    """The model of a checkpoint (or of a run's best checkpoint), weights verified and loaded, in eval mode.
    ``model.atrous_meta`` holds the class names, palette and input normalisation it was trained with."""
    cdir = checkpoint_dir(path)
    meta = ckpt.verify(cdir)
    kwargs = meta.get("model_kwargs", {})
    if in_zoo(meta["model"]):
        model = create_model(meta["model"], **kwargs)
    else:  # an import path: the factory must be importable here, as it was where the run trained
        model = build_foreign(meta["model"], kwargs, meta.get("in_channels", 3))
    ckpt.load_into(model, cdir)
    model.atrous_meta = meta
    return model.to(device).eval()


def prepare_image(path: Path, meta: dict[str, Any]) -> torch.Tensor:
    """(C, H, W) float input the way the model saw its training data: ImageNet-normalised RGB for real data;
    a ``.npy`` array is passed as it is (synthetic tasks are arrays, not pictures)."""
    if path.suffix == ".npy":
        return torch.from_numpy(np.load(path, allow_pickle=False)).float()
    image = torch.from_numpy(load_image(path)).permute(2, 0, 1).float() / 255
    return normalize(image) if meta.get("normalization") == "imagenet" else image


@torch.no_grad()
def sliding_window(
    model: torch.nn.Module, image: torch.Tensor, tile: int | None, overlap: int
) -> torch.Tensor:
    """Logits (K, H, W) of one image; above ``tile`` pixels per side, overlapping tiles are averaged."""
    x = image[None].to(next(model.parameters()).device)  # tiles are cut and summed on the model's device
    h, w = x.shape[2:]
    if tile is None or (h <= tile and w <= tile):
        return model(x)[0]
    if overlap >= tile:
        raise AtrousError(f"overlap {overlap} must be smaller than the tile size {tile}")
    step = tile - overlap
    ys = sorted({min(y, max(h - tile, 0)) for y in range(0, max(h - tile, 0) + step, step)})
    xs = sorted({min(x_, max(w - tile, 0)) for x_ in range(0, max(w - tile, 0) + step, step)})
    out = weight = None
    for y in ys:
        for x0 in xs:
            logits = model(x[:, :, y : y + tile, x0 : x0 + tile])[0]
            if out is None:
                out = logits.new_zeros(logits.shape[0], h, w)
                weight = logits.new_zeros(1, h, w)
            out[:, y : y + tile, x0 : x0 + tile] += logits
            weight[:, y : y + tile, x0 : x0 + tile] += 1
    return out / weight


def predict_files(
    checkpoint: str | Path,
    inputs: list[str],
    out: str | Path,
    tile: int | None = None,
    overlap: int = 32,
    device: str | torch.device = "cpu",
) -> list[Path]:
    """Palette PNG masks (and overlays) for image files and folders of images; returns the mask paths."""
    model = load(checkpoint, device)
    meta = model.atrous_meta
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            files += sorted(p for p in item.iterdir() if p.suffix.lower() in (*IMAGE_SUFFIXES, ".npy"))
        elif item.is_file():
            files.append(item)
        else:
            raise AtrousError(f"input {item} does not exist")
    if not files:
        raise AtrousError(f"no images (.png .jpg .tif .npy) found in {', '.join(inputs)}")
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    palette = [tuple(c) for c in meta.get("palette") or voc_palette()]
    flat_palette = [v for rgb in palette[:256] for v in rgb]
    written = []
    for path in files:
        image = prepare_image(path, meta)
        if image.shape[0] != model.in_channels:
            raise AtrousError(f"{path} has {image.shape[0]} channels; the model takes {model.in_channels}")
        logits = sliding_window(model, image, tile, overlap)
        pred = ((logits[0] > 0).long() if logits.shape[0] == 1 else logits.argmax(0)).cpu()
        mask = Image.fromarray(pred.numpy().astype(np.uint8), mode="P")
        mask.putpalette(flat_palette)
        target = out_dir / f"{path.stem}.png"
        mask.save(target)
        Image.fromarray(overlay(to_rgb(image), pred.numpy(), palette, 255)).save(
            out_dir / f"{path.stem}_overlay.png"
        )
        written.append(target)
    return written


def export_onnx(
    checkpoint: str | Path,
    out: str | Path,
    opset: int = 17,
    size: int = 64,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """ONNX with dynamic batch, height and width; checked against PyTorch with onnxruntime at two sizes. The
    graph is traced on the CPU; the parity check runs PyTorch on ``device`` and onnxruntime on the GPU too when
    its CUDA provider is installed (``onnxruntime-gpu``), else on the CPU."""
    if opset < 17:
        raise AtrousError(f"opset {opset}: use 17 or newer")
    try:
        import onnxruntime as ort
    except ImportError:
        raise AtrousError("export needs the onnx extra: pip install 'atrous[onnx]'") from None
    model = load(checkpoint)
    size = max(size, model.min_size)
    x = torch.randn(1, model.in_channels, size, size + 3)
    axes = {0: "batch", 2: "height", 3: "width"}
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    import warnings

    with warnings.catch_warnings():  # the tracer warns about shape checks, which are only assertions
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (x,),
            str(path),
            input_names=["image"],
            output_names=["logits"],
            opset_version=opset,
            dynamic_axes={"image": axes, "logits": axes},
            dynamo=False,
        )
    device = torch.device(device)
    providers = ["CPUExecutionProvider"]
    if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    session = ort.InferenceSession(str(path), providers=providers)
    model.to(device)
    diffs = {}
    for shape in ((1, model.in_channels, size, size + 3), (2, model.in_channels, size + 9, size + 22)):
        inp = torch.randn(shape, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            ref = model(inp.to(device)).cpu().numpy()
        got = session.run(None, {"image": inp.numpy()})[0]
        if got.shape != ref.shape:
            raise AtrousError(
                f"ONNX output shape {got.shape} differs from PyTorch's {ref.shape} at input {shape}"
            )
        diffs["x".join(map(str, shape))] = float(np.abs(got - ref).max())
    return {
        "path": str(path),
        "opset": opset,
        "max_abs_diff": diffs,
        "torch_device": str(device),
        "onnxruntime_provider": session.get_providers()[0],
    }


def write_json(data: Any, path: str | Path) -> None:
    Path(path).write_text(json.dumps(data, indent=2) + "\n")
