"""Ctrl-C during training: finish the step, save, then stop with a message that says how to resume.

A ``SIGINT`` that lands inside a step would leave the logits and the optimiser half-updated; a checkpoint of that
state would not resume to the uninterrupted result. :func:`interrupt_between_steps` turns the first ``SIGINT`` into
a flag the training loop reads after each step; a second one stops at once.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on Ctrl-C after a step, its checkpoint saved; the message says how to resume."""


@dataclass
class InterruptRequest:
    """Whether a ``SIGINT`` arrived since the context was entered."""

    requested: bool = False


@contextmanager
def interrupt_between_steps() -> Iterator[InterruptRequest]:
    """Inside the block the first ``SIGINT`` sets ``requested`` instead of raising; the second raises
    ``KeyboardInterrupt`` at once. Outside the main thread (where Python cannot install signal handlers) nothing
    changes. The previous handler is restored on exit.

    Example:
        >>> import os, signal
        >>> with interrupt_between_steps() as interrupt:
        ...     os.kill(os.getpid(), signal.SIGINT)
        >>> interrupt.requested
        True
    """
    request = InterruptRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return

    def on_sigint(signum: int, frame: object) -> None:
        if request.requested:
            raise KeyboardInterrupt
        request.requested = True

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield request
    finally:
        signal.signal(signal.SIGINT, previous)
