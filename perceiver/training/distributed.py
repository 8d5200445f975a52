"""DDP helpers: one process per device under ``torchrun``, a plain single process otherwise."""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistributedContext:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def uses_cuda(device: str | None) -> bool:
    """Whether a run given ``device`` (None: the default, a GPU when there is one) runs on CUDA."""
    return torch.cuda.is_available() if device is None else torch.device(device).type == "cuda"


def setup_distributed(*, device: str | None = None) -> DistributedContext:
    """Join the process group that ``torchrun`` describes in the environment (RANK, WORLD_SIZE, LOCAL_RANK).

    Uses NCCL with one GPU per process when CUDA is available, gloo on CPU. Without those variables (a plain
    ``python`` run) nothing is initialised and the context is rank 0 of 1. ``device`` overrides the choice of device.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if device is not None:
        chosen = torch.device(device)
    else:
        chosen = torch.device("cuda", local_rank) if uses_cuda(None) else torch.device("cpu")
    if chosen.type == "cuda":
        torch.cuda.set_device(chosen)
    if world_size > 1 and not dist.is_initialized():
        # Imported before the group exists, on purpose: its functions take ``group=group.WORLD`` as a default
        # argument, evaluated once at import, and DDP imports it. Imported after ``init_process_group`` those
        # defaults keep the default group alive past ``destroy_process_group``, with its gloo threads, until the
        # interpreter shuts down: measured here (a weak reference to the group stayed alive after DDP, cleanup and
        # gc), and the likely source of a rare abort at exit ("terminate called without an active exception").
        importlib.import_module("torch.distributed.nn.functional")
        dist.init_process_group(backend="nccl" if chosen.type == "cuda" else "gloo")
    return DistributedContext(rank=rank, local_rank=local_rank, world_size=world_size, device=chosen)


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum of ``tensor`` over all ranks (the tensor itself on one process); the input is left unchanged."""
    tensor = tensor.clone()
    if world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_gather_objects(value) -> list:
    """Every rank's ``value`` (picklable), in rank order."""
    if world_size() == 1:
        return [value]
    gathered = [None] * world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def cleanup_distributed(*, wait_for_peers: bool = True) -> None:
    """Leave the process group.

    By default every rank first waits for the others: a rank that destroys its group while a peer is still
    communicating with it can abort that peer (gloo: "terminate called without an active exception"). After an
    error, when the peers may never arrive, pass ``wait_for_peers=False``.
    """
    if dist.is_available() and dist.is_initialized():
        if wait_for_peers:
            dist.barrier()
        dist.destroy_process_group()
