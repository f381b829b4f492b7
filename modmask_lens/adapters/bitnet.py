"""BitNet b1.58 adapter (``BitNetForCausalLM``): the derived adapter plus the two sub-layer norms TransformerLens
leaves out of its map.

BitNet normalises inside each sub-layer, in front of its output projection: attention applies ``attn_sub_norm``
(RMSNorm over all heads' outputs, ``n_heads * d_head`` wide) to the concatenated head outputs before ``o_proj``; the
MLP applies ``ffn_sub_norm`` (RMSNorm over its ``d_mlp`` hidden units) to ``act(gate) * up`` before ``down_proj``.
TransformerLens's ``hook_z`` (``o.hook_in``) and ``hook_post`` (``out.hook_in``) sit after these norms.

Why hand-written (TransformerLens's map is not enough): its map has neither norm (they are not in
``bridge.state_dict()``, so a mask never reached their gains), and it says nothing of where the MLP's norm sits. A
neuron is the hidden unit TransformerLens hooks at ``hook_post``: the normalised one. Turning it off must equal
zeroing ``hook_post[..., i]``, which zeroing its ``W_in``/``W_gate`` rows does not: the norm divides every unit by the
root mean square over all of them, so zeroing one unit before the norm rescales the others (by about 1e-3 in the
logits of the tiny model). A BitNet neuron therefore holds what reads or scales the normalised unit alone: its
``ffn_sub_norm`` gain and its ``W_out`` column. ``W_in`` and ``W_gate`` are masked at weight and matrix granularity
only (their rows feed the norm's statistic that all units share). The attention norm's gain is split by heads
(``d_head`` entries per head), so ``head_mask="qkvo"`` masks it with the head's other slices; its ``W_Q``/``W_K``/
``W_V`` slices keep their head layout (TransformerLens's ``W_Q[head]`` views), and under ``qkvo`` zeroing them rescales
the other heads through the norm, as OLMo 2's query/key norms do (docs/architectures.md). The default head mask
(``output``: ``W_O`` only) is exactly ``hook_z`` zeroed.
"""

from __future__ import annotations

from dataclasses import replace
from typing import ClassVar

from modmask_lens.adapters.base import TensorSpec, model_shape
from modmask_lens.adapters.derived import DerivedAdapter
from modmask_lens.core.bridge import Bridge

_SUB_NORMS = {"attn": ("attn_sub_norm", "attn_sub_norm.w", "head"), "mlp": ("ffn_sub_norm", "mlp_sub_norm.w", "neuron")}
"""Block component -> (the Hugging Face norm inside it, its role, the units its gain is split into)."""
_RENORMALISED_INPUTS = ("W_in", "W_gate", "b_in", "b_gate")
"""Roles whose rows feed the MLP's sub-layer norm, not one neuron alone."""


class BitNetAdapter(DerivedAdapter):
    """The derived adapter with BitNet's sub-layer norms as mask targets and neurons taken after ``ffn_sub_norm``."""

    name: ClassVar[str] = "bitnet"
    architectures: ClassVar[tuple[str, ...]] = ("BitNetForCausalLM",)

    def tensor_specs(self, bridge: Bridge) -> list[TensorSpec]:
        """The derived adapter's specs without neuron layouts on ``W_in``/``W_gate``, then each block's
        ``attn_sub_norm`` and ``ffn_sub_norm`` gains (keyed ``blocks.{i}.attn.attn_sub_norm.weight``,
        ``blocks.{i}.mlp.ffn_sub_norm.weight``)."""
        specs = [
            replace(spec, unit=None, unit_axis=None) if spec.role in _RENORMALISED_INPUTS else spec
            for spec in super().tensor_specs(bridge)
        ]
        d_head = model_shape(bridge).d_head
        for layer in range(int(bridge.cfg.n_layers)):
            for component, (norm_name, role, unit) in _SUB_NORMS.items():
                path = f"blocks.{layer}.{component}._original_component.{norm_name}.weight"
                gain = bridge.get_parameter(path)
                specs.append(
                    TensorSpec(
                        f"blocks.{layer}.{component}.{norm_name}.weight",
                        role,
                        layer,
                        path,
                        tuple(gain.shape),
                        unit,
                        0,
                        d_head if unit == "head" else 1,
                    )
                )
        return specs
