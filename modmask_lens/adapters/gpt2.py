"""GPT-2 family adapter: ``Conv1D`` matrices stored ``[in, out]``, fused ``c_attn`` split into read q/k/v views.

TransformerLens 4.x splits ``c_attn`` into three ``nn.Linear`` modules whose weights are transposed views of the fused
tensor; only the split q/k/v are read by the forward pass (the fused tensor is absent from ``bridge.state_dict()``).
``attn.c_proj``, ``mlp.c_fc`` and ``mlp.c_proj`` stay ``Conv1D``. ``wte`` is tied to ``lm_head``: ``W_E`` and ``W_U``
are the same parameter reached through two module attributes, so each gets its own mask.
"""

from __future__ import annotations

from typing import ClassVar

from torch import nn
from transformers.pytorch_utils import Conv1D

from modmask_lens.adapters.base import Adapter, MatrixLayout


class Gpt2Adapter(Adapter):
    """Adapter for ``GPT2LMHeadModel`` bridges."""

    name: ClassVar[str] = "gpt2"
    architectures: ClassVar[tuple[str, ...]] = ("GPT2LMHeadModel",)

    def matrix_layout(self, module: nn.Module) -> MatrixLayout:
        return "conv1d" if isinstance(module, Conv1D) else super().matrix_layout(module)
