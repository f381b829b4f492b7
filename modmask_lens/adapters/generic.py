"""Fallback for families without an adapter: works from TransformerLens's canonical state_dict keys alone.

Roles follow the canonical key names and matrices are recognised by module type where possible, but nothing is
known about where heads and neurons live in this family's tensors, so only ``weight`` and ``matrix`` granularity
are offered; head and neuron granularity raise :class:`UnsupportedArchitecture` naming the missing adapter.
"""

from __future__ import annotations

from typing import ClassVar

from torch import nn

from modmask_lens.adapters.base import Adapter, MatrixLayout


class GenericAdapter(Adapter):
    """Whole-matrix and per-weight masks for any bridge; no head or neuron units."""

    name: ClassVar[str] = "generic"
    supports_units: ClassVar[bool] = False

    def matrix_layout(self, module: nn.Module) -> MatrixLayout:
        # Unknown modules are treated as [out, in]; only head/neuron placement depends on it, which is disabled.
        return "linear"
