"""The order of samples and how batches reach the device.

The order is a pure function of (seed, epoch): each epoch's global batches come from ``randperm`` with a
generator seeded by both, so a resumed run can skip the batches its checkpoint had done. Under torchrun each
global batch is split into equal contiguous slices, one per rank, so N processes with per-rank batch B/N see
exactly the samples one process with batch B sees.

``BatchStream`` keeps one DataLoader for the whole run (persistent workers, pinned memory on a GPU) and feeds it
each epoch's batches; items carry their epoch, so augmentation stays a pure function of (seed, epoch, index)
in worker processes that live across epochs. Synthetic tasks on a GPU are composed on the device (see
``SyntheticTask.compose``): the workers make only the uint8 masks.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler

from atrous.data.synthetic import MaskItems, SyntheticTask


def epoch_batches(
    n: int, batch: int, seed: int, epoch: int, shuffle: bool = True, drop_last: bool = False
) -> list[list[int]]:
    """The global batches of one epoch, a pure function of (n, batch, seed, epoch)."""
    if shuffle:
        gen = torch.Generator().manual_seed((seed * 1_000_003 + epoch) % (2**63))
        order = torch.randperm(n, generator=gen).tolist()
    else:
        order = list(range(n))
    batches = [order[i : i + batch] for i in range(0, n, batch)]
    if drop_last and batches and len(batches[-1]) < batch:
        batches.pop()
    return batches


def rank_slice(batch: list[int], rank: int, world: int) -> list[int]:
    per = len(batch) // world
    return batch[rank * per : (rank + 1) * per]


def pad_collate(
    samples: list[tuple[torch.Tensor, torch.Tensor]], ignore_index: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack samples; different sizes (real data without crop) are padded: image 0, mask ``ignore_index``."""
    h = max(x.shape[1] for x, _ in samples)
    w = max(x.shape[2] for x, _ in samples)
    images, masks = [], []
    for x, y in samples:
        images.append(F.pad(x, [0, w - x.shape[2], 0, h - x.shape[1]]))
        masks.append(F.pad(y, [0, w - y.shape[1], 0, h - y.shape[0]], value=ignore_index))
    return torch.stack(images), torch.stack(masks)


class _EpochItems(Dataset):
    """Items addressed as (epoch, index), so that workers kept across epochs augment for the right epoch."""

    def __init__(self, dataset) -> None:
        self.dataset = dataset
        self.epoch = None

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        epoch, index = key
        if epoch != self.epoch and hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)
            self.epoch = epoch
        return self.dataset[index]


class _PlannedBatches(Sampler):
    """A batch sampler whose batches the training loop sets before each pass."""

    def __init__(self) -> None:
        self.batches: list[list[tuple[int, int]]] = []

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class _Collate:
    """Picklable for worker processes (a lambda is not, under the spawn start method)."""

    def __init__(self, ignore_index: int, pad: bool) -> None:
        self.ignore_index, self.pad = ignore_index, pad

    def __call__(self, samples):
        if self.pad:
            return pad_collate(samples, self.ignore_index)
        return torch.stack([a for a, _ in samples]), torch.stack([b for _, b in samples])


class BatchStream:
    """Batches of ``dataset`` on ``device``, in the order the loop plans, with ``workers`` processes."""

    def __init__(
        self, dataset, device: torch.device, workers: int = 0, compose_on_device: bool | None = None
    ) -> None:
        self.dataset = dataset
        self.device = device
        synthetic = isinstance(dataset, SyntheticTask)
        if compose_on_device is None:
            compose_on_device = synthetic and device.type == "cuda"
        self.compose = compose_on_device and synthetic
        source = MaskItems(dataset) if self.compose else dataset
        self.items = _EpochItems(source)
        self.collate = _Collate(getattr(dataset, "ignore_index", 255), pad=not synthetic)
        self.plan = _PlannedBatches()
        self.loader = None
        if workers > 0:
            self.loader = DataLoader(
                self.items,
                batch_sampler=self.plan,
                num_workers=workers,
                collate_fn=self.collate,
                pin_memory=device.type == "cuda",
                persistent_workers=True,
                prefetch_factor=4,
            )

    def __call__(
        self, batches: list[list[int]], epoch: int = 0
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches (lists of sample indices) of one pass, as (images, masks) on the device."""
        keyed = [[(epoch, i) for i in b] for b in batches]
        if self.loader is None:
            host = (self.collate([self.items[k] for k in b]) for b in keyed)
        else:
            self.plan.batches = keyed
            host = iter(self.loader)
        for a, b in host:
            a = a.to(self.device, non_blocking=True)
            b = b.to(self.device, non_blocking=True)
            yield self.dataset.compose(a, b) if self.compose else (a, b)
