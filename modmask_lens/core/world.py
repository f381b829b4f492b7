"""The distributed world: which process this is and how many there are (``torchrun`` and ``torch.distributed``)."""

from __future__ import annotations

import os

import torch.distributed as dist


def world() -> tuple[int, int]:
    """(rank, world size) of the default process group; (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def launched_by_torchrun() -> bool:
    """Was this process started as one of several by ``torchrun`` (its group not necessarily initialised yet)?"""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1
