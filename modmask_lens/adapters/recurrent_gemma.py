"""RecurrentGemma (Griffin) adapter: blocks that hold either an RG-LRU recurrent block or local attention, then an MLP.

Each of transformers' ``RecurrentGemmaDecoderLayer`` holds ``temporal_pre_norm`` (the norm in front of its temporal
block: ``ln1``), a ``temporal_block``, ``channel_pre_norm`` (the norm in front of its MLP: ``ln2``) and ``mlp_block``.
The temporal block of layer ``i`` is ``config.layers_block_type[i]``'s: local attention (``q_proj``/``k_proj``/
``v_proj``/``o_proj``, grouped-query, heads outermost on each projection's output rows as ``view(..., -1, head_dim)``
splits them) or the recurrent block (``linear_y``, the gate branch; ``linear_x``, then the depthwise ``conv_1d``, then
the RG-LRU ``rg_lru`` with its block-diagonal input and recurrence gates and its ``recurrent_param``; ``linear_out``).
The MLP is gated: ``down_proj(gelu(gate_proj(x)) * up_proj(x))``, so its neuron i is row i of ``gate_proj`` and
``up_proj`` (and their biases) and column i of ``down_proj``, ``intermediate_size // 2`` of them per layer.

Keys: ``blocks.{i}.ln1.weight``, ``blocks.{i}.attn.{q,k,v,o}.weight``, ``blocks.{i}.mlp.{gate,in,out}.weight``,
``blocks.{i}.recurrent.<transformers name>`` (roles ``W_rec_*`` / ``b_rec_*`` / ``rec_a_param``); the embedding,
final norm and unembedding keep TransformerLens's keys. A recurrent layer has no heads (its gates' blocks are no
attention heads); every layer has neurons.

Why hand-written (TransformerLens's map is not enough): TransformerLens 4.3 wraps each decoder layer whole
(``RecurrentGemmaBlockBridge``, residual hooks only) and maps no attention, MLP or recurrent component, so its
state_dict names only the two norms of each block, under their transformers names, and a derived adapter finds 13% of
the tiny model's parameters.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from torch import nn

from modmask_lens.adapters.base import Adapter, LocatedParameter, MatrixLayout
from modmask_lens.core.bridge import Bridge

_PARTS = {
    "temporal_pre_norm": ("ln1", {"weight": "ln1.w"}),
    "channel_pre_norm": ("ln2", {"weight": "ln2.w"}),
    "temporal_block.q_proj": ("attn.q", {"weight": "W_Q", "bias": "b_Q"}),
    "temporal_block.k_proj": ("attn.k", {"weight": "W_K", "bias": "b_K"}),
    "temporal_block.v_proj": ("attn.v", {"weight": "W_V", "bias": "b_V"}),
    "temporal_block.o_proj": ("attn.o", {"weight": "W_O", "bias": "b_O"}),
    "mlp_block.gate_proj": ("mlp.gate", {"weight": "W_gate", "bias": "b_gate"}),
    "mlp_block.up_proj": ("mlp.in", {"weight": "W_in", "bias": "b_in"}),
    "mlp_block.down_proj": ("mlp.out", {"weight": "W_out", "bias": "b_out"}),
    "temporal_block.linear_x": ("recurrent.linear_x", {"weight": "W_rec_x", "bias": "b_rec_x"}),
    "temporal_block.linear_y": ("recurrent.linear_y", {"weight": "W_rec_y", "bias": "b_rec_y"}),
    "temporal_block.conv_1d": ("recurrent.conv_1d", {"weight": "W_rec_conv", "bias": "b_rec_conv"}),
    "temporal_block.linear_out": ("recurrent.linear_out", {"weight": "W_rec_out", "bias": "b_rec_out"}),
    "temporal_block.rg_lru": (
        "recurrent.rg_lru",
        {
            "input_gate_weight": "W_rec_input_gate",
            "input_gate_bias": "b_rec_input_gate",
            "recurrent_gate_weight": "W_rec_a_gate",
            "recurrent_gate_bias": "b_rec_a_gate",
            "recurrent_param": "rec_a_param",
        },
    ),
}
"""transformers' module inside a decoder layer -> (the key's component, parameter attribute -> role)."""


class RecurrentGemmaAdapter(Adapter):
    """Adapter for ``RecurrentGemmaForCausalLM`` bridges (layout in the module docstring)."""

    name: ClassVar[str] = "recurrent_gemma"
    architectures: ClassVar[tuple[str, ...]] = ("RecurrentGemmaForCausalLM",)

    def located_parameters(self, bridge: Bridge) -> list[LocatedParameter]:
        """The embedding, final norm and unembedding under TransformerLens's keys, then every parameter of each
        decoder layer's norms, temporal block and MLP (:data:`_PARTS`), keyed ``blocks.{i}.<component>.<name>``.

        Raises:
            LookupError: when a decoder layer holds a parameter this adapter does not know (a newer transformers
                layout), so that no tensor the forward pass reads goes unmasked silently.
        """
        located = [entry for entry in super().located_parameters(bridge) if entry.role != "other"]
        for layer in range(len(bridge.blocks)):
            layer_path = f"blocks.{layer}._original_component"
            decoder_layer = bridge.get_submodule(layer_path)
            for name, parameter in decoder_layer.named_parameters():
                module_name, _, attribute = name.rpartition(".")
                component, roles = _PARTS.get(module_name, (None, {}))
                if component is None or attribute not in roles:
                    raise LookupError(
                        f"{self.name} adapter: {layer_path}.{name} is not a parameter it knows; update "
                        "modmask_lens/adapters/recurrent_gemma.py for this transformers version"
                    )
                located.append(
                    LocatedParameter(
                        f"blocks.{layer}.{component}.{attribute}",
                        roles[attribute],
                        layer,
                        f"{layer_path}.{name}",
                        decoder_layer.get_submodule(module_name),
                        parameter,
                    )
                )
        return located

    def stored_layout(self, key: str, module: nn.Module) -> MatrixLayout | Literal["unknown"]:
        """``linear`` for the projections; ``unknown`` for the depthwise convolution's ``[lru_width, 1, width]``
        kernel and the RG-LRU's block-diagonal gates ``[blocks, in, out]`` and their ``[blocks, width]`` biases
        (masked per weight or as a whole)."""
        return "linear" if isinstance(module, nn.Linear) else "unknown"
