"""GPT-NeoX family adapter (Pythia): the fused ``query_key_value`` is split into q/k/v copies by the bridge.

The forward pass reads the split copies, never the fused tensor, so masks act on q/k/v. Exporting a baked mask must
re-fuse them: ``query_key_value.weight`` is ``[n_heads * 3 * d_head, d_model]`` interleaved per head, i.e.
``view(n_heads, 3, d_head, d_model)[h, i]`` is head h's query (i=0), key (1) or value (2) rows.

Why hand-written (TransformerLens's map is not enough): the map declares how to split ``query_key_value`` into q/k/v,
not how to write masked copies back into it; everything else is what the derived adapter would give.
"""

from __future__ import annotations

import re
from typing import ClassVar

import torch
from torch import Tensor

from modmask_lens.adapters.base import Adapter, model_shape
from modmask_lens.core.bridge import Bridge

_SPLIT_KEY = re.compile(r"^blocks\.(?P<layer>\d+)\.attn\.(?P<part>[qkv])\.(?P<attribute>weight|bias)$")


class GptNeoXAdapter(Adapter):
    """Adapter for ``GPTNeoXForCausalLM`` bridges."""

    name: ClassVar[str] = "gpt_neox"
    architectures: ClassVar[tuple[str, ...]] = ("GPTNeoXForCausalLM",)

    def fuse_for_export(self, bridge: Bridge, hf_state: dict[str, Tensor], masked: dict[str, Tensor]) -> set[str]:
        dims = model_shape(bridge)
        written = set()
        for key, value in masked.items():
            match = _SPLIT_KEY.match(key)
            if match is None:
                continue
            fused_name = f"gpt_neox.layers.{match['layer']}.attention.query_key_value.{match['attribute']}"
            part = "qkv".index(match["part"])
            fused = hf_state[fused_name].view(dims.n_heads, 3, dims.d_head, *value.shape[1:])
            with torch.no_grad():
                fused[:, part].copy_(value.view(dims.n_heads, dims.d_head, *value.shape[1:]))
            written.add(key)
        return written
