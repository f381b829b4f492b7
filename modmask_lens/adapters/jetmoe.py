"""JetMoE adapter (``JetMoeForCausalLM``): a mixture of attention heads and a mixture-of-experts MLP, whose expert
weights TransformerLens's map does not reach.

Each JetMoE block routes every token to ``top_k`` of ``n_experts`` attention experts and ``top_k`` of ``n_experts``
MLP experts. An attention expert (transformers' ``JetMoeMoA``) owns a query projection (``input_linear``, stacked
``[n_experts, n_kv_heads * d_head, d_model]``) and an output projection (``output_linear``, ``[n_experts, d_model,
n_kv_heads * d_head]``); the key/value projection ``kv_proj`` is one ``nn.Linear`` shared by every expert, and each
expert's query head j attends with key/value head j. An MLP expert (``JetMoeMoE``) stacks a fused input projection
``[n_experts, 2 * d_expert, d_model]`` (all gate rows, then all up rows: ``chunk(2)``) and an output projection
``[n_experts, d_model, d_expert]``.

Why hand-written (TransformerLens's map is not enough): TransformerLens wraps the routers and ``kv_proj`` but
delegates both mixtures to transformers, so the four expert stacks are in no ``bridge.state_dict()`` key (its
batched-experts helper does not know ``JetMoeParallelExperts``) and the rest have keys its roles do not name. Here:

- a **head** is one attention expert's query head: head ``e * n_kv_heads + j`` is expert e's query rows and output
  columns ``j * d_head .. (j + 1) * d_head`` (roles ``W_Q`` and ``W_O`` with an expert axis, as an MoE's neurons
  are numbered). Turning it off removes that head wherever the router sends a token to expert e. The shared
  ``kv_proj`` (``W_KV``) serves every expert's head j, so it belongs to no one head: masked by weight or matrix.
- a **neuron** is one MLP expert's hidden unit: neuron ``e * d_expert + i`` is rows i and ``d_expert + i`` of expert
  e's input stack and column i of its output stack (``W_experts_in`` / ``W_experts_out``).
- the attention output bias is ``b_O``, the MLP's ``b_out``; the routers ``W_attn_router`` and ``W_router``.
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import ClassVar

from modmask_lens.adapters.base import TensorSpec
from modmask_lens.adapters.derived import DerivedAdapter
from modmask_lens.core.bridge import Bridge

_ROLES = {
    "attn.kv.weight": "W_KV",
    "attn.experts.bias": "b_O",
    "attn.experts.router.layer.weight": "W_attn_router",
    "mlp.bias": "b_out",
    "mlp.gate.layer.weight": "W_router",
}
"""What each keyed tensor of a block is (state_dict key without ``blocks.{i}.``)."""
_BLOCK_KEY = re.compile(r"^blocks\.(?P<layer>\d+)\.(?P<rest>.+)$")


class JetMoeAdapter(DerivedAdapter):
    """The derived adapter with JetMoE's expert stacks as head and neuron tensors and its block tensors named."""

    name: ClassVar[str] = "jetmoe"
    architectures: ClassVar[tuple[str, ...]] = ("JetMoeForCausalLM",)

    def tensor_specs(self, bridge: Bridge) -> list[TensorSpec]:
        """The derived adapter's specs with roles from :data:`_ROLES`, then each block's four expert stacks, keyed
        ``blocks.{i}.attn.experts.input_linear.weight`` etc. (layouts in the module docstring)."""
        specs = []
        for spec in super().tensor_specs(bridge):
            match = _BLOCK_KEY.match(spec.key)
            role = _ROLES.get(match["rest"]) if match else None
            specs.append(spec if role is None else replace(spec, role=role, layer=int(match["layer"])))
        for layer in range(int(bridge.cfg.n_layers)):
            d_head = int(bridge.get_submodule(f"blocks.{layer}.attn._original_component").head_dim)  # kv_channels
            stacks = {
                "attn.experts": ("W_Q", "W_O", "head", d_head, 1),
                "mlp": ("W_experts_in", "W_experts_out", "neuron", 1, 2),
            }
            for part, (in_role, out_role, unit, width, repeats) in stacks.items():
                component, _, inner = part.partition(".")
                module_path = f"blocks.{layer}.{component}._original_component" + (f".{inner}" if inner else "")
                for projection, role, unit_axis in (("input_linear", in_role, 1), ("output_linear", out_role, 2)):
                    path = f"{module_path}.{projection}.weight"
                    specs.append(
                        TensorSpec(
                            f"blocks.{layer}.{part}.{projection}.weight",
                            role,
                            layer,
                            path,
                            tuple(bridge.get_parameter(path).shape),
                            unit,
                            unit_axis,
                            width,
                            "linear",
                            unit_repeats=repeats if projection == "input_linear" else 1,
                            expert_axis=0,
                        )
                    )
        return specs
