"""Distributed training through torchrun: an existing engine (DistributedDataParallel), not our own.

``torchrun --nproc_per_node=N -m atrous train ...`` sets RANK/WORLD_SIZE/LOCAL_RANK; gloo runs on CPU, NCCL on
GPUs, and multi-node works through torchrun's rendezvous (``--nnodes``, ``--rdzv-endpoint``). SyncBatchNorm is
used only with NCCL: gloo has no kernel for it, so on CPU each rank normalises with its own batch statistics.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from typing import NoReturn

import torch
import torch.distributed as dist

from atrous.device import resolve_device


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def setup(device_name: str) -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name, local)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend)
    return Dist(rank, world, local, device)


def all_reduce_sum(x: torch.Tensor, d: Dist) -> torch.Tensor:
    if d.enabled:
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x


def all_reduce_min(x: torch.Tensor, d: Dist) -> torch.Tensor:
    if d.enabled:
        dist.all_reduce(x, op=dist.ReduceOp.MIN)
    return x


def teardown(d: Dist, finished: bool) -> None:
    """Leave the process group; after a finished run every rank first waits for the others (a failed run
    skips the barrier: its peers may never arrive)."""
    if not (d.enabled and dist.is_initialized()):
        return
    if finished:
        dist.barrier()
    dist.destroy_process_group()


def exit_rank(code: int) -> NoReturn:
    """End a torchrun rank without interpreter shutdown.

    gloo's worker threads free a finished collective's tensors after the call has returned, and freeing a tensor
    that Python has already dropped needs the GIL. When that lands during interpreter shutdown the thread is
    killed while holding C++ frames and the rank aborts: SIGABRT, "terminate called without an active
    exception", torchrun reports the run failed (2 of 12 two-rank trainings on torch 2.13, CPU, after all
    output was written; the core's stack is ``~AsyncAllgatherWork`` -> ``take_gil`` -> ``pthread_exit``).
    destroy_process_group does not stop those threads while DDP still holds the group, and a barrier only
    moves the race to the barrier's own work. Everything a rank writes is flushed and fsynced before this
    point, so the CLI leaves with ``os._exit`` and there is no shutdown left to race with."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
