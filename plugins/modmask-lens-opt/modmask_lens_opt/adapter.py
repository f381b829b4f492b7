"""OPT (``OPTForCausalLM``) as TransformerLens 4.x's bridge exposes it.

Steps 1-3 of CONTRIBUTING.md#adapters:
1. Boot a tiny OPT and read ``bridge.state_dict()``: every key is canonical (``blocks.0.attn.q.weight``,
   ``blocks.0.mlp.in.weight``, ``pos_embed.weight``, ...), and each resolves to an ``nn.Linear``, ``nn.LayerNorm`` or
   embedding of the Hugging Face model; nothing is fused, so the export needs no re-fusing.
2. Matrices are ``nn.Linear`` (``[out, in]``): the base adapter's layout applies, heads are the output features of
   ``q_proj``/``k_proj``/``v_proj`` and the input features of ``out_proj``; neurons are ``fc1`` outputs and ``fc2``
   inputs. OPT has no grouped-query attention and ties ``embed_tokens`` to ``lm_head`` (the base adapter records
   the tie).
3. No family-specific roles or unread keys.
"""

from __future__ import annotations

from typing import ClassVar

from modmask_lens.adapters import Adapter


class OptAdapter(Adapter):
    """Adapter for ``OPTForCausalLM`` bridges."""

    name: ClassVar[str] = "opt"
    architectures: ClassVar[tuple[str, ...]] = ("OPTForCausalLM",)
