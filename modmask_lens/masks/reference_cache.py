"""The full model's per-example reference values, computed once per example and reused at later steps.

The model is frozen while masks train, so the full model's output on an example never changes: a trainer that
draws examples again and again (with replacement) need run the full model only on examples it has not seen yet.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from jaxtyping import Int
from torch import Tensor

from modmask_lens.masks.objectives import Reference


class ReferenceCache:
    """Per-example rows of a :data:`~modmask_lens.masks.objectives.Reference`, filled on demand.

    Args:
        n_examples: how many examples the subtask has (rows are indexed by example).

    Example:
        >>> cache = ReferenceCache(4)
        >>> calls = []
        >>> def compute(indices):
        ...     calls.append(indices.tolist())
        ...     return {"loss": indices.float() * 10}
        >>> cache.get(torch.tensor([2, 0, 2]), compute)["loss"].tolist()
        [20.0, 0.0, 20.0]
        >>> cache.get(torch.tensor([0, 3]), compute)["loss"].tolist()
        [0.0, 30.0]
        >>> calls  # each example computed once
        [[0, 2], [3]]
    """

    def __init__(self, n_examples: int):
        self.filled = torch.zeros(n_examples, dtype=torch.bool)
        self.rows: dict[str, Tensor] = {}

    def get(self, indices: Int[Tensor, " batch"], compute: Callable[[Tensor], Reference]) -> Reference:
        """The rows of ``indices``; ``compute(missing)`` gives those of examples not cached yet (sorted, unique)."""
        indices = indices.cpu()
        missing = indices[~self.filled[indices]].unique()
        if len(missing):
            computed = compute(missing)
            for name, value in computed.items():
                if name not in self.rows:
                    self.rows[name] = torch.zeros(
                        (len(self.filled), *value.shape[1:]), dtype=value.dtype, device=value.device
                    )
                self.rows[name][missing.to(value.device)] = value
            self.filled[missing] = True
        return {name: rows[indices.to(rows.device)] for name, rows in self.rows.items()}

    @property
    def computed(self) -> int:
        """How many examples' references have been computed so far."""
        return int(self.filled.sum())
