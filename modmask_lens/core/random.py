"""Random streams: every draw of a training run comes from a local generator seeded by (seed, stream, step), so
a resumed run draws what an uninterrupted one would, and no library call touches torch's global generator."""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from contextlib import contextmanager

import torch

_SEED_MODULUS = 2**63 - 1  # torch.Generator.manual_seed takes seeds below 2**63


def stream_seed(seed: int, step: int, stream: str = "") -> int:
    """Seed of ``step`` of the random stream named ``stream`` of a run seeded with ``seed``: streams with other names
    (e.g. the tasks of one mask-training run) are independent of each other.

    >>> stream_seed(0, 5), stream_seed(1, 5)
    (5, 1000008)
    """
    return (seed * 1_000_003 + zlib.crc32(stream.encode()) * 7_919 + step) % _SEED_MODULUS


def step_generator(seed: int, step: int, stream: str = "") -> torch.Generator:
    """A CPU generator for ``step`` of a stream (:func:`stream_seed`)."""
    return torch.Generator().manual_seed(stream_seed(seed, step, stream))


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run the block with torch's CPU generator seeded by ``seed``, then restore its state: for ``nn.Module``
    initialisers, which draw from the global generator, without changing what the caller draws afterwards.

    >>> with seeded(0):
    ...     first = torch.rand(1)
    >>> with seeded(0):
    ...     again = torch.rand(1)
    >>> bool(first == again)
    True
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
