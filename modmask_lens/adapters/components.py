"""Which blocks of a model run attention heads and which run an MLP.

A fact about the model that a mask's analyses need without the model at hand: the circuit graph draws head nodes
only in blocks that run heads and MLP nodes only in blocks that run an MLP (a state-space model has neither; a hybrid
has attention in some blocks only). Adapters supply it (:meth:`~modmask_lens.adapters.Adapter.block_components`) and
masks record it when they are made, as they record the norm layout (:mod:`modmask_lens.adapters.norms`).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BlockComponents:
    """The blocks (layer indices) whose forward pass runs attention heads, and those that run an MLP.

    Attributes:
        head_layers: blocks that run attention heads (a block shared across depths counts at every depth it runs).
        mlp_layers: blocks that run an MLP, dense or a mixture of experts.

    Example (a hybrid of three blocks: attention in block 0, an MLP in blocks 0 and 1, block 2 a Mamba block):
        >>> components = BlockComponents(frozenset({0}), frozenset({0, 1}))
        >>> [layer for layer in range(3) if layer in components.head_layers | components.mlp_layers]
        [0, 1]
    """

    head_layers: frozenset[int] = frozenset()
    mlp_layers: frozenset[int] = frozenset()
