"""Llama family adapter (Llama, Mistral, Qwen2): RMSNorm gains, rotary positions, gated MLP, grouped-query attention.

Every matrix is an ``nn.Linear`` (``q_proj``/``k_proj``/``v_proj``/``o_proj``, ``gate_proj``/``up_proj``/
``down_proj``), so the base resolution applies unchanged. With grouped-query attention ``k_proj``/``v_proj`` hold
``n_key_value_heads`` groups and query head h reads group ``h // (n_heads / n_key_value_heads)``; their tensors are
``kv_head`` units. Qwen2's q/k/v biases are ``b_Q``/``b_K``/``b_V``.
"""

from __future__ import annotations

from typing import ClassVar

from modmask_lens.adapters.base import Adapter


class LlamaAdapter(Adapter):
    """Adapter for ``LlamaForCausalLM``, ``MistralForCausalLM`` and ``Qwen2ForCausalLM`` bridges."""

    name: ClassVar[str] = "llama"
    architectures: ClassVar[tuple[str, ...]] = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM")
