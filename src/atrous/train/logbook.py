"""What a run reports: ``metrics.jsonl`` (one line per epoch, fsynced), TensorBoard scalars when asked, the
console's epoch lines and, in a terminal, a progress bar.

Reading a GPU tensor's value waits for the device, so the loop hands the logbook device tensors and the
logbook reads them only at log points: once per epoch, and for the progress bar at most once a second.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from atrous.fileio import write_atomic

BAR_REFRESH_S = 1.0


def truncate_metrics(path: Path, step: int) -> list[dict]:
    """Keep the complete lines up to ``step``: later ones are recomputed identically after a resume."""
    if not path.exists():
        return []
    kept = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            break  # a line cut by the kill
        if rec["step"] > step:
            break
        kept.append(rec)
    write_atomic(path, "".join(json.dumps(r) + "\n" for r in kept))
    return kept


def scalars(record: dict) -> list[tuple[str, float]]:
    out = [
        ("train/loss", record["train_loss"]),
        ("train/lr", record["lr"]),
        ("train/img_per_s", record["img_per_s"]),
    ]
    if "val" in record:
        out += [(f"val/{key}", record["val"][key]) for key in ("miou", "mdice", "pixel_acc")]
    return out


def append_line(path: Path, record: dict) -> None:
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def epoch_line(record: dict, epochs: int) -> str:
    val = record.get("val")
    return (
        f"epoch {record['epoch']}/{epochs} step {record['step']} loss {record['train_loss']:.4f}"
        + (f" val mIoU {val['miou']:.4f} mDice {val['mdice']:.4f}" if val else "")
        + f" ({record['img_per_s']:.1f} img/s)"
    )


class Logbook:
    """A context manager: the progress bar stops and the TensorBoard writer closes even when training fails."""

    def __init__(
        self, run: Path, console: Console, main: bool, tensorboard: bool, total: int, done: int
    ) -> None:
        self.path = run / "metrics.jsonl"
        self.console, self.main = console, main
        self.writer = None
        if tensorboard and main:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(run / "tensorboard"))
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeRemainingColumn(),
            console=console,
            disable=not (main and console.is_terminal),
        )
        self.task = self.progress.add_task("train", total=total, completed=done, info="")
        self.last_refresh = 0.0

    def __enter__(self) -> Logbook:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.__exit__(*exc)
        if self.writer is not None:
            self.writer.close()

    def step(self, loss: torch.Tensor, epoch: int, epochs: int) -> None:
        """Advance the bar; read the loss (a device sync) only when the bar shows and a second has passed."""
        if self.progress.disable:
            return
        now = time.monotonic()
        info = None
        if now - self.last_refresh >= BAR_REFRESH_S:
            self.last_refresh = now
            info = f"epoch {epoch}/{epochs} loss {float(loss):.4f}"
        self.progress.update(self.task, advance=1, **({"info": info} if info else {}))

    def epoch(self, record: dict, epochs: int) -> None:
        if not self.main:
            return
        append_line(self.path, record)
        if self.writer is not None:
            for name, value in scalars(record):
                self.writer.add_scalar(name, value, record["step"])
        self.console.print(epoch_line(record, epochs))
