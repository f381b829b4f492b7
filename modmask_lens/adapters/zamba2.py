"""Zamba2 adapter (``Zamba2ForCausalLM``): the derived adapter plus the hybrid layers, whose shared transformer block,
per-layer adapters, projection and Mamba-2 layer TransformerLens's map does not reach.

Each Zamba2 layer is of one of two kinds (``config.layers_block_type``). A Mamba layer (``Zamba2MambaDecoderLayer``)
is a norm and a Mamba-2 mixer. A hybrid layer (``Zamba2HybridLayer``) runs a shared transformer block
(``Zamba2AttentionDecoderLayer``) on the residual stream concatenated with the token embeddings (``2 * d_model``
wide), projects the block's output with a ``linear`` of its own (``d_model -> d_model``) and adds it to the input of
its own Mamba-2 layer (norm and mixer), whose output alone is added to the residual stream. The shared block is an
RMSNorm (``input_layernorm``, ``2 * d_model`` wide), attention (``q_proj``/``k_proj``/``v_proj``
``[n * d_head, 2 * d_model]``, ``o_proj`` ``[d_model, n_heads * d_head]``, ``d_head = 2 * d_model / n_heads``,
heads outermost as ``view(..., -1, head_dim)`` splits them), an RMSNorm (``pre_ff_layernorm``) and a gated MLP:
``gate_up_proj`` ``[2 * d_mlp, d_model]`` holds all gate rows then all up rows (``chunk(2)``), then
``down_proj(act(gate) * up)``. Each hybrid layer adds its own low-rank adapter (``Linear(in, rank)`` then
``Linear(rank, out)``) to ``gate_up_proj``'s output, and with ``use_shared_attention_adapter`` to the q, k and v
projections' outputs too.

Why hand-written (TransformerLens's map is not enough): TransformerLens 4.3 maps only the Mamba layers. Its block
mapping's ``norm`` and ``mixer`` are optional and a hybrid layer has neither at its top level, so it runs the hybrid
layer whole (``SSMBlockBridge``: ``hook_in``/``hook_out`` only); none of a hybrid layer's parameters is in
``bridge.state_dict()`` (20% of the tiny model's parameters of docs/architectures.md were targets, under the masks'
coverage floor) and it has no ``hook_z`` or ``hook_post`` in them.

What this adapter decides:

- **One tensor, one mask, applied at every depth.** transformers builds a shared block inside each hybrid layer and
  ties its parameters to the first ``num_mem_blocks`` blocks' (cycling over the hybrid layers), so one parameter is
  held by a module of its own at each depth that reads it. It is one mask target, keyed and numbered at the first
  hybrid layer that holds it (``blocks.{first}.attn.q.weight``, layer ``first``), and its mask applies at every
  depth: :mod:`modmask_lens.masks.apply` gives each depth's module the same masked tensor
  (:func:`~modmask_lens.core.functional.depth_twins`), and the export writes it under every tied name. Tied
  embeddings are different (GPT-2's ``W_E`` and ``W_U``: one parameter in two roles, a mask each): here the same
  weights play the same role at each depth, the checkpoint holds them once, and a mask that kept a weight at one
  depth and dropped it at another would describe no subset of this model's parameters.
- **A head** is a head of a shared block: ``W_Q`` rows, ``W_K``/``W_V`` rows of its key/value group, ``W_O``
  columns ``h * d_head .. (h + 1) * d_head``, under the unit ``blocks.{first}.attn``. Turning it off removes it at
  every depth the block runs. TransformerLens has no ``hook_z`` here, so the conformance kit zeroes the head's slice
  of ``o_proj``'s input at every depth instead (the same activation).
- **A neuron** is a hidden unit i of a shared block's gated MLP: rows i and ``d_mlp + i`` of ``gate_up_proj``
  (``W_in`` with ``unit_repeats=2``: one logit for the gate and the up row, as for other fused gate/up inputs) and
  column i of ``down_proj`` (``W_out``); the kit zeroes ``down_proj``'s input i at every depth.
- **The per-layer adapters** are keyed at the depth that reads them (``blocks.{i}.attn.q_lora_A.weight``,
  ``blocks.{i}.mlp.in_lora_B.weight``; roles ``W_Q_lora_A`` ... ``W_in_lora_B``) and hold no heads or neurons: a
  unit is removed by its ``W_O``/``W_out`` columns whatever an adapter adds to its inputs, so they are masked by
  weight or matrix. A hybrid layer's ``linear`` is ``W_hybrid``; the shared block's norms are ``attn_in_norm.w`` and
  ``mlp_in_norm.w``, and neither normalises the residual stream (the shared attention reads the residual stream
  joined to the embeddings, its MLP the attention's output, so the circuit graph, whose nodes read and write one
  residual stream, refuses this model in one line: ``undrawable_reason``). A hybrid layer's
  Mamba-2 layer is keyed and named as a Mamba layer's is (``blocks.{i}.norm.weight``: ``ln1.w``;
  ``blocks.{i}.mixer.in_proj.weight``: ``W_ssm_in``, ...).

Key/value heads are read as query heads: every released Zamba2 has as many of each, and transformers' own
``Zamba2ForCausalLM`` (5.x) runs only so (a tiny config with 2 key/value heads for 4 query heads fails in its
forward, outside TransformerLens: ``The size of tensor a (32) must match the size of tensor b (64)``).
"""

from __future__ import annotations

import re
from typing import ClassVar

from torch import nn

from modmask_lens.adapters.base import TensorSpec, model_shape, role_of
from modmask_lens.adapters.derived import _MIXER_OWN_ROLES, DerivedAdapter
from modmask_lens.core.bridge import Bridge

_NAMED_PARTS = {
    "shared_transformer.self_attn.q_proj": "attn.q",
    "shared_transformer.self_attn.k_proj": "attn.k",
    "shared_transformer.self_attn.v_proj": "attn.v",
    "shared_transformer.self_attn.o_proj": "attn.o",
    "shared_transformer.feed_forward.gate_up_proj": "mlp.in",
    "shared_transformer.feed_forward.down_proj": "mlp.out",
    "mamba_decoder.input_layernorm": "norm",
    "mamba_decoder.mamba.in_proj": "mixer.in_proj",
    "mamba_decoder.mamba.conv1d": "mixer.conv1d",
    "mamba_decoder.mamba.norm": "mixer.inner_norm",
    "mamba_decoder.mamba.out_proj": "mixer.out_proj",
}
"""A hybrid layer's module (transformers' name) -> the key's component, whose role TransformerLens's names give
(:func:`~modmask_lens.adapters.base.role_of`)."""
_OWN_ROLES = {
    "linear.weight": ("hybrid_proj.weight", "W_hybrid"),
    "shared_transformer.input_layernorm.weight": ("attn_norm.weight", "attn_in_norm.w"),
    "shared_transformer.pre_ff_layernorm.weight": ("mlp_norm.weight", "mlp_in_norm.w"),
    **{f"mamba_decoder.mamba.{name}": (f"mixer.{name}", role) for name, role in _MIXER_OWN_ROLES["mixer"].items()},
}
"""A hybrid layer's parameter (transformers' name) -> (the key without ``blocks.{i}.``, role), for those without a
TransformerLens name."""
_LORA = re.compile(
    r"^shared_transformer\.(?:self_attn\.linear_(?P<projection>[qkv])_adapter_list|feed_forward\.gate_up_proj_adapter_list)"
    r"\.(?P<slot>\d+)\.(?P<factor>[01])\.weight$"
)
"""A low-rank adapter's parameter: the projection it adds to (none: ``gate_up_proj``), the hybrid layer whose slot it
is (its position among the hybrid layers), and its first (``A``: down to the rank) or second (``B``) matrix."""


class Zamba2Adapter(DerivedAdapter):
    """The derived adapter with Zamba2's hybrid layers read (layout and decisions in the module docstring)."""

    name: ClassVar[str] = "zamba2"
    architectures: ClassVar[tuple[str, ...]] = ("Zamba2ForCausalLM",)

    def tensor_specs(self, bridge: Bridge) -> list[TensorSpec]:
        """The derived adapter's specs (embedding, Mamba layers, final norm, unembedding), then each hybrid layer's
        parameters that no earlier spec holds: a shared block's at the first layer holding it, an adapter at the
        layer reading it.

        Raises:
            LookupError: when a hybrid layer holds a parameter this adapter does not know (a newer transformers
                layout), so that no tensor the forward pass reads goes unmasked silently.
        """
        specs = super().tensor_specs(bridge)
        known = {id(bridge.get_parameter(spec.path)) for spec in specs}
        for layer in range(int(bridge.cfg.n_layers)):
            layer_path = f"blocks.{layer}._original_component"
            hybrid = bridge.get_submodule(layer_path)
            if not hasattr(hybrid, "shared_transformer"):
                continue
            slot = hybrid.shared_transformer.feed_forward.layer_dic[layer]
            d_head = int(hybrid.shared_transformer.self_attn.head_dim)
            for name, parameter in hybrid.named_parameters():
                if id(parameter) in known:
                    continue
                located = self._located(layer, name, slot)
                if located is None:  # another hybrid layer's adapter slot: keyed at the layer that reads it
                    continue
                known.add(id(parameter))
                specs.append(self._spec(bridge, *located, layer, f"{layer_path}.{name}", parameter, d_head))
        return specs

    def _located(self, layer: int, name: str, slot: int) -> tuple[str, str] | None:
        """(key, role) of parameter ``name`` of hybrid layer ``layer`` (whose adapter slot is ``slot``), or ``None``
        for an adapter of another slot."""
        module_name, _, attribute = name.rpartition(".")
        if module_name in _NAMED_PARTS:
            key = f"blocks.{layer}.{_NAMED_PARTS[module_name]}.{attribute}"
            return key, role_of(key)[0]
        if name in _OWN_ROLES:
            rest, role = _OWN_ROLES[name]
            return f"blocks.{layer}.{rest}", role
        lora = _LORA.match(name)
        if lora is None:
            raise LookupError(
                f"{self.name} adapter: blocks.{layer}.{name} is not a parameter it knows; update "
                "modmask_lens/adapters/zamba2.py for this transformers version"
            )
        if int(lora["slot"]) != slot:
            return None
        factor = "AB"[int(lora["factor"])]
        if lora["projection"] is None:
            return f"blocks.{layer}.mlp.in_lora_{factor}.weight", f"W_in_lora_{factor}"
        projection = lora["projection"]
        return f"blocks.{layer}.attn.{projection}_lora_{factor}.weight", f"W_{projection.upper()}_lora_{factor}"

    def _spec(
        self, bridge: Bridge, key: str, role: str, layer: int, path: str, parameter: nn.Parameter, d_head: int
    ) -> TensorSpec:
        """The spec of one hybrid-layer parameter: ``linear`` matrices, ``vector`` gains and biases, the depthwise
        convolution's ``[channels, 1, width]`` kernel ``unknown`` (as in the Mamba layers); heads ``d_head`` wide
        where the role has them, neurons fused gate-then-up on ``W_in``/``b_in``."""
        shape = tuple(parameter.shape)
        layout = {1: "vector", 2: "linear"}.get(parameter.dim(), "unknown")
        unit, unit_axis, unit_width = self._unit_layout(role, layout, model_shape(bridge), shape)
        if unit in ("head", "kv_head"):
            unit_width = d_head
        repeats = 2 if role in ("W_in", "b_in") else 1
        return TensorSpec(key, role, layer, path, shape, unit, unit_axis, unit_width, layout, unit_repeats=repeats)
