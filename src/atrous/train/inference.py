"""Using a trained run: ``atrous.load``, evaluation, prediction (sliding window), ONNX export."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from atrous.data.files import IMAGE_SUFFIXES, load_image
from atrous.data.transforms import normalize
from atrous.errors import AtrousError
from atrous.models.foreign import build_foreign
from atrous.models.registry import create_model, model_spec
from atrous.train import checkpoint as ckpt
from atrous.train.predict import PNG_LIMIT, TIFF_SUFFIXES, predict
from atrous.train.tiling import plan_tiles, tiled_logits


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
    spec = model_spec(meta["model"])
    if spec.zoo:
        model = create_model(spec, **kwargs)
    else:  # an import path: the factory must be importable here, as it was where the run trained
        model = build_foreign(spec, kwargs, meta.get("in_channels", 3))
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


def sliding_window(
    model: torch.nn.Module,
    image: torch.Tensor,
    tile: int | str | None,
    overlap: int | None = None,
    approximate: int | None = None,
    batch: int = 4,
) -> torch.Tensor:
    """Logits (K, H, W) of one (C, H, W) image, tiled exactly (see :mod:`atrous.train.tiling`): equal to
    whole-image inference unless ``overlap`` is below the receptive field's reach or ``approximate`` is set."""
    plan = plan_tiles(model, tuple(image.shape[1:]), image.shape[0], tile, overlap, approximate)
    return tiled_logits(model, image, plan, batch)


def _mask_name(path: Path) -> str:
    """``stem.tif`` for TIFF inputs and images above :data:`PNG_LIMIT` pixels, else ``stem.png``."""
    if path.suffix.lower() in TIFF_SUFFIXES:
        return f"{path.stem}.tif"
    try:
        if path.suffix == ".npy":
            h, w = np.load(path, mmap_mode="r", allow_pickle=False).shape[1:3]
        else:
            with Image.open(path) as im:
                w, h = im.size
    except Exception as exc:
        raise AtrousError(f"cannot read {path}: {exc}") from None
    return f"{path.stem}.{'tif' if h * w > PNG_LIMIT else 'png'}"


def predict_files(
    checkpoint: str | Path,
    inputs: list[str],
    out: str | Path,
    tile: int | str | None = "auto",
    overlap: int | None = None,
    device: str | torch.device = "cpu",
    approximate: int | None = None,
    batch: int = 4,
    probabilities: bool = False,
    overwrite: bool = False,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
) -> list[Path]:
    """Palette masks (PNG, or tiled TIFF for TIFF inputs and large images) and downscaled overlays for image
    files and folders of images, tiled exactly by default; returns the mask paths."""
    model = load(checkpoint, device)
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
    written = []
    for path in files:
        result = predict(
            model,
            path,
            out_dir / _mask_name(path),
            tile=tile,
            overlap=overlap,
            approximate=approximate,
            batch=batch,
            probabilities=probabilities,
            overwrite=overwrite,
            progress=progress,
            log=log,
        )
        written.append(result.mask)
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
