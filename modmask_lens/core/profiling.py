"""Named scopes for the torch profiler that cost nothing while it is off.

``torch.profiler.record_function`` costs several microseconds per call even with no profiler running; mask sampling
opens a few scopes per mask unit and sample, so :func:`profiled` opens one only while a profiler records
(``benchmarks/bench_scaling.py --profile`` reads them).
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch


def profiled(name: str) -> AbstractContextManager:
    """``record_function(name)`` while the torch profiler is on, else a no-op context.

    Example:
        >>> with profiled("modmask.noise"):
        ...     pass
    """
    return torch.profiler.record_function(name) if torch.autograd._profiler_enabled() else nullcontext()
