"""Checkpoints that survive SIGKILL at any moment and are never half-loaded.

``RUN_DIR/checkpoints/step-000123/`` holds ``model.safetensors`` (weights), ``state.pt`` (optimizer, scheduler,
RNG and loop position; read with ``weights_only=True``) and ``checkpoint.json`` (SHA-256 of both, written last).
A checkpoint is written into a ``.tmp`` directory, synced and renamed; then the ``last`` (and ``best``) symlinks
are swapped atomically with ``os.replace``. A reader sees the previous complete checkpoint or the new one,
never a mixture, and verifies the hashes before loading anything.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from atrous.errors import AtrousError

MODEL_FILE, STATE_FILE, MANIFEST = "model.safetensors", "state.pt", "checkpoint.json"


class CheckpointError(AtrousError):
    """A checkpoint that is missing, corrupt, truncated, or of another architecture."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with path.open("rb") as f:
        os.fsync(f.fileno())


def atomic_symlink(link: Path, target: str) -> None:
    tmp = link.with_name(f".{link.name}.tmp")
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    tmp.symlink_to(target)
    os.replace(tmp, link)


def save_checkpoint(
    run_dir: Path,
    step: int,
    model_state: dict[str, torch.Tensor],
    state: dict[str, Any],
    meta: dict[str, Any],
    links: tuple[str, ...] = ("last",),
) -> Path:
    """Write checkpoint ``step`` and point ``links`` (``last``, ``best``) at it; returns its directory."""
    root = run_dir / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    name = f"step-{step:08d}"
    final = root / name
    if not final.exists():
        tmp = root / f"{name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        # safetensors refuses shared or non-contiguous storage: store plain contiguous copies, on the host so
        # that a checkpoint written on a GPU loads anywhere.
        save_file(
            {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model_state.items()},
            str(tmp / MODEL_FILE),
        )
        torch.save(state, tmp / STATE_FILE)
        manifest = {**meta, "step": step, "files": {f: _sha256(tmp / f) for f in (MODEL_FILE, STATE_FILE)}}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
        for f in (MODEL_FILE, STATE_FILE, MANIFEST):
            _fsync_file(tmp / f)
        _fsync_dir(tmp)
        os.replace(tmp, final)
        _fsync_dir(root)
    for link in links:
        atomic_symlink(run_dir / link, f"checkpoints/{name}")
    _fsync_dir(run_dir)
    _collect_garbage(run_dir)
    return final


def _collect_garbage(run_dir: Path) -> None:
    """Delete checkpoints that neither ``last`` nor ``best`` points at, and leftover temporary directories."""
    keep = {(run_dir / link).resolve() for link in ("last", "best") if (run_dir / link).is_symlink()}
    for d in (run_dir / "checkpoints").iterdir():
        if d.resolve() not in keep:
            shutil.rmtree(d, ignore_errors=True)


def verify(ckpt: Path) -> dict[str, Any]:
    """The manifest of a complete checkpoint whose files match their hashes, else CheckpointError."""
    if not ckpt.exists():
        raise CheckpointError(f"no checkpoint at {ckpt}")
    manifest_path = ckpt / MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(
            f"checkpoint {ckpt} is incomplete or corrupt: cannot read {MANIFEST} ({exc})"
        ) from None
    for name, digest in manifest.get("files", {}).items():
        path = ckpt / name
        if not path.is_file():
            raise CheckpointError(f"checkpoint {ckpt} is incomplete: {name} is missing")
        if _sha256(path) != digest:
            raise CheckpointError(
                f"checkpoint {ckpt} is corrupt: {name} does not match its recorded SHA-256 "
                "(truncated or modified); use an earlier checkpoint or retrain"
            )
    return manifest


def load_weights(ckpt: Path) -> dict[str, torch.Tensor]:
    verify(ckpt)
    return load_file(str(ckpt / MODEL_FILE))


def load_state(ckpt: Path) -> dict[str, Any]:
    verify(ckpt)
    return torch.load(ckpt / STATE_FILE, map_location="cpu", weights_only=True)


def load_into(model: torch.nn.Module, ckpt: Path) -> None:
    """Load verified weights strictly; an architecture mismatch is a CheckpointError naming the difference."""
    weights = load_weights(ckpt)
    try:
        result = model.load_state_dict(weights, strict=False)
    except RuntimeError as exc:
        raise CheckpointError(
            f"checkpoint {ckpt} does not fit this model: {str(exc).splitlines()[-1].strip()}"
        ) from None
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(
            f"checkpoint {ckpt} is of another architecture: {len(result.missing_keys)} missing keys (e.g. "
            f"{result.missing_keys[:2]}), {len(result.unexpected_keys)} unexpected (e.g. {result.unexpected_keys[:2]})"
        )
