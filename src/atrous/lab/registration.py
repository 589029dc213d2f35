"""Predictions registered before training: ``predictions.json`` holds the design (tasks, models, RFs, strides,
costs), every prediction and the rules and margins that will decide it. It is written, and its SHA-256
printed, before the first run directory exists; after training the lab reads it back, refuses to report if it
changed, and the report quotes the hash. Nobody, the lab included, can adjust a prediction after a result."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from atrous.errors import AtrousError
from atrous.fileio import write_atomic

FILE = "predictions.json"


def register(run_dir: Path, content: dict[str, Any]) -> str:
    """Write ``predictions.json`` in ``run_dir``; return its SHA-256 (hex)."""
    text = json.dumps(content, indent=2, sort_keys=True, allow_nan=False) + "\n"
    write_atomic(run_dir / FILE, text)
    return hashlib.sha256(text.encode()).hexdigest()


def read_back(run_dir: Path, digest: str) -> dict[str, Any]:
    """The registered predictions, provided the file still has the hash printed before training."""
    data = (run_dir / FILE).read_bytes()
    now = hashlib.sha256(data).hexdigest()
    if now != digest:
        raise AtrousError(
            f"{run_dir / FILE} changed during training (sha256 {now[:12]}..., registered {digest[:12]}...): "
            "the report would not test the registered predictions; rerun the lab"
        )
    return json.loads(data)
