"""Granite 4.0 hybrid adapter (``GraniteMoeHybridForCausalLM``): the derived adapter plus the MLP, expert and
Mamba-2 tensors that TransformerLens's map names in a way the derived adapter does not read, or not at all.

Every block holds a norm, then a Mamba-2 mixer or grouped-query attention (``config.layer_types``), a norm, then a
mixture of experts (a top-k router, batched experts ``experts.gate_up_proj`` / ``experts.down_proj``) beside a
shared gated MLP (``shared_mlp.input_linear``, gate rows then up rows, and ``output_linear``); the two MLP outputs
are summed. A model without experts (``num_local_experts=0``) has the shared MLP alone.

Why hand-written (TransformerLens's map is not enough): TransformerLens maps the shared MLP as ``shared_mlp`` (its
``gate``/``in`` split views of ``input_linear``, and ``out``) and the mixture of experts as ``moe``, block parts
that no role reads (they were ``other``, which no mask selects), leaves the batched expert matrices out of
``bridge.state_dict()``, and wraps the Mamba-2 mixer without its ``out_proj``. Here the shared MLP's hidden units
are neurons (``W_gate``/``W_in`` rows, ``W_out`` columns), numbered after the routed experts' (neuron
``e * d_expert + i`` is hidden unit i of expert e, as in other MoE layers), the router is ``W_router`` and the
mixer's output projection is ``W_ssm_out``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import ClassVar

from modmask_lens.adapters.base import TensorSpec
from modmask_lens.adapters.derived import DerivedAdapter, expert_layout, routing_spec
from modmask_lens.core.bridge import Bridge

_SHARED_MLP_ROLES = {"gate": ("W_gate", 0), "in": ("W_in", 0), "out": ("W_out", 1)}
"""``blocks.{i}.shared_mlp.<part>.weight`` -> role and the axis of its neurons (``nn.Linear``: ``[out, in]``)."""
_EXPERT_ROLES = {"gate_up_proj": "W_experts_in", "down_proj": "W_experts_out"}


class GraniteMoeHybridAdapter(DerivedAdapter):
    """The derived adapter with Granite 4.0 hybrid's shared MLP, experts, router and Mamba-2 output read."""

    name: ClassVar[str] = "granite_moe_hybrid"
    architectures: ClassVar[tuple[str, ...]] = ("GraniteMoeHybridForCausalLM",)

    def tensor_specs(self, bridge: Bridge) -> list[TensorSpec]:
        """The derived adapter's specs (attention, Mamba-2 mixer, norms, embedding, unembedding), with the shared
        MLP's and the router's roles set, then each layer's expert stacks (``blocks.{i}.moe.experts.gate_up_proj``)
        and Mamba-2 output projection (``blocks.{i}.mixer.out_proj.weight``)."""
        specs = super().tensor_specs(bridge)
        known = {id(bridge.get_parameter(spec.path)) for spec in specs}
        added = [spec for layer in range(int(bridge.cfg.n_layers)) for spec in _unmapped_specs(bridge, layer, known)]
        routed = {
            spec.layer: spec.unit_count for spec in added if spec.role == "W_experts_out" and spec.unit is not None
        }
        return [_with_role(spec, routed, int(bridge.cfg.d_model)) for spec in specs] + added


def _with_role(spec: TensorSpec, routed: dict[int, int], d_model: int) -> TensorSpec:
    """A shared-MLP matrix as a neuron tensor (its neurons after the ``routed[layer]`` expert neurons) and the
    router as ``W_router``; every other spec as it is."""
    parts = spec.key.split(".")
    if len(parts) != 5 or parts[0] != "blocks" or parts[4] != "weight":
        return spec
    layer = int(parts[1])
    if parts[2] == "moe" and parts[3] == "gate":
        return routing_spec(replace(spec, layer=layer), d_model)
    if parts[2] == "shared_mlp" and parts[3] in _SHARED_MLP_ROLES:
        role, axis = _SHARED_MLP_ROLES[parts[3]]
        return replace(
            spec, role=role, layer=layer, unit="neuron", unit_axis=axis, unit_width=1, unit_offset=routed.get(layer, 0)
        )
    return spec


def _unmapped_specs(bridge: Bridge, layer: int, known: set[int]) -> list[TensorSpec]:
    """Specs of layer ``layer``'s batched expert matrices and Mamba-2 ``out_proj``, which no state_dict key
    covers."""
    specs = []
    d_model = int(bridge.cfg.d_model)
    try:
        moe_path = f"blocks.{layer}.moe._original_component"
        experts = bridge.get_submodule(f"{moe_path}.experts")
    except AttributeError:  # no experts in this model
        experts = None
    for leaf, role in _EXPERT_ROLES.items():
        parameter = getattr(experts, leaf, None)
        if parameter is None or id(parameter) in known:
            continue
        shape = tuple(parameter.shape)
        layout = expert_layout(experts, leaf, shape, d_model)
        key, path = f"blocks.{layer}.moe.experts.{leaf}", f"{moe_path}.experts.{leaf}"
        specs.append(TensorSpec(key, role, layer, path, shape, **layout))
    try:
        out_path = f"blocks.{layer}.mixer._original_component.out_proj"
        out_proj = bridge.get_submodule(out_path)
    except AttributeError:  # an attention layer
        return specs
    if id(out_proj.weight) not in known:
        shape = tuple(out_proj.weight.shape)
        specs.append(
            TensorSpec(
                f"blocks.{layer}.mixer.out_proj.weight",
                "W_ssm_out",
                layer,
                f"{out_path}.weight",
                shape,
                layout="linear",
            )
        )
    return specs
