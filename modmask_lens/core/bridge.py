"""The model type every method accepts: a TransformerLens 4.x ``TransformerBridge``, or anything shaped like one."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol, runtime_checkable

from torch import nn


@runtime_checkable
class Bridge(Protocol):
    """What modmask-lens reads of a model: its parameters, a forward call that returns logits, and TransformerLens's
    ``cfg`` (``n_layers``, ``n_heads``, ``d_vocab``, ``n_ctx`` ...).

    A ``TransformerBridge`` (``boot_transformers``, ``boot_native``) is one. ``cfg`` is not part of the runtime
    check: :func:`modmask_lens.adapter_for` refuses a model without an adapter (a plain Hugging Face model, say)
    with an error that says what to do, which a type error would not. Adapters (:mod:`modmask_lens.adapters`) say
    how its weights split into heads and neurons.
    """

    def __call__(self, *args: Any, **kwargs: Any) -> Any: ...

    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]: ...

    def named_parameters(self, *args: Any, **kwargs: Any) -> Iterator[tuple[str, nn.Parameter]]: ...


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    """Put every submodule in eval mode (no dropout) and restore each one's own flag afterwards: every method that
    reads a frozen model (mask training, probes) runs it as it is evaluated, whatever mode the caller left it in."""
    flags = {submodule: submodule.training for submodule in module.modules()}
    module.eval()
    try:
        yield
    finally:
        for submodule, flag in flags.items():
            submodule.training = flag
