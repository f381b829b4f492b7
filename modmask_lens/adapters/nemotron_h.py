"""NemotronH adapter (``NemotronHForCausalLM``): the derived adapter plus the attention, MLP and mixture-of-experts
layers that TransformerLens's map passes through unread.

Every NemotronH block is a norm and one ``mixer`` whose kind ``config.layers_block_type`` sets per layer: a Mamba-2
mixer, grouped-query attention (``q_proj``, ``k_proj``, ``v_proj``, ``o_proj``), an MLP (``up_proj``, squared ReLU,
``down_proj``) or a mixture of experts (a top-k router ``gate``, batched non-gated experts ``experts.up_proj`` /
``experts.down_proj`` and one ``shared_experts`` MLP).

Why hand-written (TransformerLens's map is not enough): TransformerLens maps every mixer as a Mamba-2 mixer whose
submodules are optional and runs the other kinds as they are, so their weights are in no ``bridge.state_dict()`` key
(on the tiny model of docs/architectures.md, 18% of the parameters were targets) and it has no ``hook_z`` or
``hook_post`` in them. Here the attention's heads are laid out as in any grouped-query attention (``W_Q``/``W_O`` by
query head, ``W_K``/``W_V`` by key/value head, ``head_dim`` wide), the MLP's neurons are its hidden units (``W_in`` =
``up_proj`` rows, ``W_out`` = ``down_proj`` columns), and a mixture-of-experts layer's neurons are its experts'
hidden units, then its shared expert's, as in other MoE layers; the router is ``W_router``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import ClassVar

from modmask_lens.adapters.base import TensorSpec, UnitKind
from modmask_lens.adapters.derived import DerivedAdapter, expert_layout
from modmask_lens.core.bridge import Bridge

_PROJECTIONS: dict[str, tuple[str, UnitKind | None, int]] = {
    "q_proj": ("Q", "head", 0),
    "k_proj": ("K", "kv_head", 0),
    "v_proj": ("V", "kv_head", 0),
    "o_proj": ("O", "head", 1),
    "up_proj": ("in", "neuron", 0),
    "down_proj": ("out", "neuron", 1),
    "gate": ("router", None, 0),
}
"""Mixer submodule (last name) -> role suffix (``W_``/``b_``), unit, and the axis of its weight's units
(``nn.Linear``: ``[out, in]``; the router's bare ``[n_experts, d_model]`` too)."""


class NemotronHAdapter(DerivedAdapter):
    """The derived adapter with NemotronH's attention, MLP and mixture-of-experts mixers read."""

    name: ClassVar[str] = "nemotron_h"
    architectures: ClassVar[tuple[str, ...]] = ("NemotronHForCausalLM",)

    def tensor_specs(self, bridge: Bridge) -> list[TensorSpec]:
        """The derived adapter's specs (Mamba-2 mixers, norms, embedding, unembedding), then every parameter of
        the other mixers, keyed ``blocks.{i}.mixer.<its name in the mixer>`` (``blocks.3.mixer.up_proj.weight``,
        ``blocks.1.mixer.experts.down_proj``)."""
        specs = super().tensor_specs(bridge)
        known = {id(bridge.get_parameter(spec.path)) for spec in specs}
        for layer in range(int(bridge.cfg.n_layers)):
            specs.extend(_mixer_specs(bridge, layer, known))
        return specs


def _mixer_specs(bridge: Bridge, layer: int, known: set[int]) -> list[TensorSpec]:
    """The specs of ``blocks.{layer}.mixer``'s parameters that no other spec covers (none for a Mamba-2 mixer)."""
    mixer_path = f"blocks.{layer}.mixer._original_component"
    mixer = bridge.get_submodule(mixer_path)
    specs = []
    for name, parameter in mixer.named_parameters():
        if id(parameter) in known:
            continue
        owner, _, leaf = name.rpartition(".")
        key, path, shape = f"blocks.{layer}.mixer.{name}", f"{mixer_path}.{name}", tuple(parameter.shape)
        if owner == "experts":
            role = "W_experts_in" if leaf == "up_proj" else "W_experts_out"
            layout = expert_layout(mixer.experts, leaf, shape, int(bridge.cfg.d_model))
            specs.append(TensorSpec(key, role, layer, path, shape, **layout))
            continue
        suffix, unit, axis = _PROJECTIONS.get(owner.rpartition(".")[2], ("", None, 0))
        is_weight = leaf == "weight" and parameter.dim() == 2
        if not suffix or (not is_weight and axis == 1):  # an output bias belongs to no unit
            unit = None
        role = ("W_" if is_weight else "b_") + suffix if suffix else "other"
        width = int(mixer.head_dim) if unit in ("head", "kv_head") else 1
        layout = "linear" if is_weight else "vector" if parameter.dim() == 1 else "unknown"
        specs.append(
            TensorSpec(key, role, layer, path, shape, unit, (axis if is_weight else 0) if unit else None, width, layout)
        )
    routed = sum(spec.unit_count for spec in specs if spec.role == "W_experts_out" and spec.unit is not None)
    if routed:  # the shared expert's neurons follow the routed experts'
        specs = [
            replace(spec, unit_offset=routed) if spec.unit and ".mixer.shared_experts." in spec.key else spec
            for spec in specs
        ]
    return specs
