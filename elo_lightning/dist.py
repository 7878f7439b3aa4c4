"""Where this process stands in a distributed run, and whether tensors are FSDP2 shards. No Lightning here."""

from __future__ import annotations

import torch
import torch.distributed as dist


def rank_and_world() -> tuple[int, int]:
    """(global rank, world size) from torch.distributed when initialised, else (0, 1)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_rank_zero() -> bool:
    return rank_and_world()[0] == 0


def barrier() -> None:
    """Wait for every rank; nothing to do outside a process group."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def is_dtensor(tensor: torch.Tensor) -> bool:
    """An FSDP2 shard (``torch.distributed.tensor.DTensor``), checked by name: importing DTensor is not needed."""
    return type(tensor).__name__ == "DTensor"


def is_sharded(model: torch.nn.Module) -> bool:
    return any(is_dtensor(p) for p in model.parameters())
