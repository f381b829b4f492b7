"""Adapters read from TransformerLens's own architecture map: any family the bridge boots, without a hand-written
adapter.

Every ``TransformerBridge`` carries the TransformerLens ``ArchitectureAdapter`` that booted it (``bridge.adapter``).
Its ``component_mapping`` gives each tensor its canonical key (``blocks.0.attn.q.weight``, ``blocks.0.mlp.gate.weight``,
``ln_final.weight``), from which :func:`~modmask_lens.adapters.base.role_of` reads the role. Its
``weight_processing_conversions`` say how TransformerLens turns each stored attention matrix into its
``W_Q[head, d_model, d_head]`` / ``W_O[head, d_head, d_model]`` views: an einops pattern such as
``"(n h) m -> n m h"`` (heads outermost on the stored axis 0: ``nn.Linear``'s ``[out, in]``) or ``"(n h) m -> n h m"``
for ``W_O`` (heads on axis 0, its input side: GPT-2's ``Conv1D`` ``[in, out]``). Where TransformerLens declares no
such pattern (MLP matrices, GPT-2's q/k/v split off ``c_attn``), the wrapped module's type says how it stores its
matrix. Grouped-query attention comes from ``cfg.n_key_value_heads``, parallel attention/MLP blocks (GPT-J, Phi)
from the block mapping having no ``ln2``. Whether blocks are pre- or post-norm the map does not say (BERT's and
RoBERTa's post-attention norms sit in the ``ln1`` slot that pre-norm families use for the norm in front of attention),
so it is read from the order in which the bridge's own forward pass enters block 0's ``ln1`` and ``attn``. A
mixture-of-experts block that stores its experts as batched 3-D parameters (``experts.gate_up_proj``,
``experts.down_proj``) is missing from ``bridge.state_dict()``; its expert matrices are added as targets under
``blocks.{i}.mlp.experts.*`` (roles ``W_experts_in`` / ``W_experts_out``), and their neurons (hidden unit i of expert
e, numbered ``e * d_expert + i``) are located on the expert and hidden-unit axes of each stack; the block's router,
whatever TransformerLens names it, is ``W_router``. Everything
a hand-written adapter said for Llama, Mistral, Qwen2, GPT-2, OPT, GPT-NeoX and TransformerLens-native models is read
from there.
"""

from __future__ import annotations

import re
import weakref
from dataclasses import replace
from typing import ClassVar, Literal

import torch
from torch import nn
from transformer_lens.model_bridge.generalized_components import moe
from transformers.pytorch_utils import Conv1D

from modmask_lens.adapters.base import (
    Adapter,
    LocatedParameter,
    MatrixLayout,
    TensorSpec,
    stack_names,
)
from modmask_lens.adapters.norms import NormLayout, NormPlacement
from modmask_lens.adapters.stacks import stacked_parameters
from modmask_lens.core.bridge import Bridge

_GROUP = re.compile(r"\((?P<outer>\w+)\s+(?P<inner>\w+)\)")
_LAYER_INDEX = re.compile(r"\.\d+\.")
_MATRIX_ROLES_WITH_HEADS_ON_INPUT = ("W_O",)


class DerivedAdapter(Adapter):
    """The adapter of any family TransformerLens maps, built from ``bridge.adapter`` by :meth:`for_bridge`.

    Attributes:
        head_axes: canonical key pattern (``blocks.{i}.attn.q.weight``) -> the stored axis that holds heads, as
            TransformerLens's rearrange pattern for that key declares it.
        parallel_blocks: attention and MLP read the same norm (an ``ln1`` and no ``ln2`` in the block mapping).
        stacks: the stacks of blocks in the mapping: ``("blocks",)``, or an encoder-decoder's
            ``("encoder_blocks", "decoder_blocks")``.
        norm_placement: ``post`` when each block's attention runs before its ``ln1`` (BERT, RoBERTa, GPT-1, OPT with
            ``do_layer_norm_before=False``), else ``pre``.
        block_parts: the parts of each stack's block in TransformerLens's mapping (``ln1``, ``attn``, ``mlp``, ...;
            RWKV's ``time_mix`` and ``channel_mix``); empty when built without a bridge.
    """

    name: ClassVar[str] = "transformer_lens"
    former_names: ClassVar[tuple[str, ...]] = ("gpt2", "llama", "native", "generic", "gpt_neox")
    """The hand-written adapters this one replaced (they said nothing TransformerLens's map does not)."""

    def __init__(
        self,
        head_axes: dict[str, int] | None = None,
        parallel_blocks: bool = False,
        norm_placement: NormPlacement = "pre",
        stacks: tuple[str, ...] = ("blocks",),
    ) -> None:
        self.head_axes = head_axes or {}
        self.block_parts: tuple[str, ...] = ()
        self.parallel_blocks = parallel_blocks
        self.stacks = stacks
        self.norm_placement = norm_placement  # type: ignore[misc] (read from the model, not fixed per class)

    @classmethod
    def for_bridge(cls, bridge: Bridge) -> DerivedAdapter:
        """Read the head layout and block structure from the TransformerLens adapter that booted ``bridge``."""
        tl_adapter = getattr(bridge, "adapter", None)
        conversions = getattr(tl_adapter, "weight_processing_conversions", None) or {}
        mapping = getattr(tl_adapter, "component_mapping", None) or {}
        head_axes = {}
        for key, conversion in conversions.items():
            axis = _head_axis(key, conversion, bridge)
            if axis is not None:
                head_axes[key] = axis
        blocks = mapping.get("blocks") if hasattr(mapping, "get") else None
        block_parts = set(getattr(blocks, "submodules", None) or {})
        parallel = "ln1" in block_parts and "ln2" not in block_parts
        stacks = stack_names(mapping) or ("blocks",)
        adapter = cls(head_axes, parallel_blocks=parallel, norm_placement=_norm_placement(bridge), stacks=stacks)
        adapter.block_parts = tuple(
            part for stack in stacks for part in (getattr(mapping.get(stack), "submodules", None) or {})
        )
        return adapter

    def located_parameters(self, bridge: Bridge) -> list[LocatedParameter]:
        """As :meth:`Adapter.located_parameters`; for a model with several stacks of blocks (an encoder-decoder),
        the components of TransformerLens's mapping, layers numbered over the stacks
        (:func:`~modmask_lens.adapters.stacks.stacked_parameters`)."""
        if self.stacks == ("blocks",):
            return super().located_parameters(bridge)
        return stacked_parameters(bridge, self.stacks)

    def tensor_specs(self, bridge: Bridge) -> list[TensorSpec]:
        """As :meth:`Adapter.tensor_specs`, then what ``bridge.state_dict()`` leaves out of each mixture-of-experts
        block (TransformerLens's ``has_batched_experts``): the batched expert matrices, and a shared expert's
        matrices where TransformerLens does not wrap them (GLM-4-MoE). In such a block the router is ``W_router``,
        no neuron tensor, and the shared expert's neurons follow the routed experts' (:func:`_moe_roles`). A
        state-space mixer's own parameters (:func:`_mixer_specs`) are added too."""
        specs = super().tensor_specs(bridge)
        known = {id(bridge.get_parameter(spec.path)) for spec in specs}
        for layer in range(int(bridge.cfg.n_layers)):
            specs.extend(_expert_specs(bridge, layer, known))
            specs.extend(_mixer_specs(bridge, layer, known))
        return _fused_input_halves(_moe_roles(bridge, specs))

    def inapplicable(self, bridge: Bridge, granularity: str, specs: list[TensorSpec]) -> str | None:
        """As :meth:`Adapter.inapplicable`; besides, heads do not apply where no tensor is a head tensor and
        TransformerLens's block mapping has no attention component (no part named like ``attn``): RWKV, whose
        ``time_mix`` is a per-channel linear recurrence without heads, though transformers names its module
        ``RwkvSelfAttention``."""
        reason = super().inapplicable(bridge, granularity, specs)
        head_roles = ("W_Q", "W_K", "W_V", "W_O")
        if (
            reason is not None
            or granularity != "head"
            or not self.block_parts
            or any("attn" in part or "attention" in part for part in self.block_parts)
            or any(spec.role in head_roles for spec in specs)
        ):
            return reason
        return (
            f"head granularity does not apply: TransformerLens maps this model's blocks as {list(self.block_parts)}, "
            "with no attention component and no W_Q/W_K/W_V/W_O tensor, so it has no heads; mask it by weight, "
            "neuron or matrix"
        )

    def norm_layout(self) -> NormLayout:
        """As :meth:`Adapter.norm_layout`, with the placement read from the model and, in a parallel block (GPT-J,
        Phi), the MLP reading ``ln1`` like the heads."""
        return NormLayout(self.norm_placement, self.parallel_blocks)

    def stored_layout(self, key: str, module: nn.Module) -> MatrixLayout | Literal["unknown"]:
        """TransformerLens's rearrange pattern for ``key`` when it declares one, else the module's type; ``unknown``
        when neither says (e.g. a mixture-of-experts' stacked expert tensors): such a matrix is masked per weight or
        as a whole, and head or neuron granularity refuses it with a clear error."""
        axis = self.head_axes.get(_LAYER_INDEX.sub(".{i}.", key, count=1))
        if axis is not None:
            heads_on_output = not key.endswith(".o.weight")
            return "linear" if (axis == 0) == heads_on_output else "conv1d"
        if isinstance(module, nn.Linear):
            return "linear"
        if isinstance(module, Conv1D):
            return "conv1d"
        return "unknown"


def _head_axis(key: str, conversion: object, bridge: Bridge) -> int | None:
    """The stored axis holding heads in TransformerLens's rearrange pattern for an attention weight, or ``None``.

    Only patterns of the form ``"... (heads d_head) ... -> ..."`` with heads outermost count: their left side is the
    stored tensor. A pattern with heads innermost (``(d_head heads)``) interleaves heads, which head masks cannot
    express as contiguous slices, so it gives ``None`` and the module type decides.
    """
    if not re.fullmatch(r"blocks\.\{i\}\.attn\.[qkvo]\.weight", key):
        return None
    tensor_conversion = getattr(conversion, "tensor_conversion", None)
    pattern = getattr(tensor_conversion, "pattern", None)
    lengths = getattr(tensor_conversion, "axes_lengths", None) or {}
    if not isinstance(pattern, str) or "->" not in pattern:
        return None
    stored = pattern.split("->")[0]
    head_counts = {int(bridge.cfg.n_heads), int(getattr(bridge.cfg, "n_key_value_heads", None) or bridge.cfg.n_heads)}
    for axis, token in enumerate(re.findall(r"\([^)]*\)|\w+", stored)):
        group = _GROUP.fullmatch(token)
        if group is not None:
            outer_length = lengths.get(group["outer"])
            return axis if outer_length in head_counts else None
    return None


class _Entered(Exception):
    """Raised by a forward pre-hook to stop the probe of :func:`_norm_placement` before any module runs."""


_NORM_PLACEMENTS: weakref.WeakKeyDictionary[nn.Module, NormPlacement] = weakref.WeakKeyDictionary()
"""Each bridge's probed norm placement, so that the probe's forward pass runs once per model."""


def _norm_placement(bridge: Bridge) -> NormPlacement:
    """``post`` when the bridge's forward pass enters block 0's ``attn`` before its ``ln1``, else ``pre`` (probed once
    per bridge, then remembered while it lives).

    A two-token forward pass (for an audio or vision encoder, the waveform, spectrogram or image it reads:
    :func:`~modmask_lens.adapters.inputs.feature_shape`) is stopped by a pre-hook at whichever of the two is entered
    first, before that module computes anything; the hooks are removed afterwards. Pre-norm blocks (GPT-2, Llama)
    and parallel blocks (GPT-J) enter ``ln1`` first. Post-norm blocks enter ``attn`` first: ``ln1`` normalises the
    residual stream after the attention output is added (BERT and RoBERTa, where it even sits inside the attention
    module; GPT-1). A bridge without both components in block 0, or whose forward pass fails before reaching them,
    reads as ``pre``, what adapters assumed before. Hooks a user has added to the embedding see this one probe.
    """
    if bridge in _NORM_PLACEMENTS:
        return _NORM_PLACEMENTS[bridge]
    placement = _NORM_PLACEMENTS[bridge] = _probe_norm_placement(bridge)
    return placement


def _probe_norm_placement(bridge: Bridge) -> NormPlacement:
    try:
        block = bridge.get_submodule("blocks.0")
        watched = {name: block.get_submodule(name) for name in ("ln1", "attn")}
    except AttributeError:
        return "pre"

    def stop(name: str):
        def hook(module, args, kwargs=None):
            raise _Entered(name)

        return hook

    from modmask_lens.adapters.inputs import feature_shape  # inputs imports the registry, which imports this module

    features = feature_shape(bridge, 2)
    probe = (
        torch.zeros((1, 2), dtype=torch.long)
        if features is None
        else torch.zeros((1, *features), dtype=next(bridge.parameters()).dtype)
    )
    handles = [module.register_forward_pre_hook(stop(name)) for name, module in watched.items()]
    try:
        with torch.no_grad():
            bridge(probe.to(bridge.cfg.device))
    except _Entered as entered:
        return "post" if str(entered) == "attn" else "pre"
    except Exception:  # noqa: BLE001 (a model that fails unmasked is reported by the kit, not here)
        return "pre"
    finally:
        for handle in handles:
            handle.remove()
    return "pre"


def _fused_input_halves(specs: list[TensorSpec]) -> list[TensorSpec]:
    """An MLP whose ``in`` matrix has twice the hidden units that its ``out`` matrix reads holds two concatenated
    halves per neuron (ModernBERT's ``Wi``, split by ``chunk(2)`` into the input and the gate, which TransformerLens
    maps as a plain ``in``): neuron i is rows i and ``d_mlp + i`` (``unit_repeats=2``), one logit for both."""
    widths = {spec.layer: spec.unit_count for spec in specs if spec.role == "W_out" and spec.unit == "neuron"}
    fused = []
    for spec in specs:
        if (
            spec.role in ("W_in", "b_in")
            and spec.unit == "neuron"
            and spec.expert_axis is None
            and spec.unit_count == 2 * widths.get(spec.layer, -1)
        ):
            spec = replace(spec, unit_repeats=2)
        fused.append(spec)
    return fused


_STATE_SPACE_OWN_ROLES = {"A_log": "ssm_A_log", "D": "ssm_D", "dt_bias": "b_ssm_dt"}
_MIXER_OWN_ROLES = {
    "mixer": _STATE_SPACE_OWN_ROLES,
    "mamba": _STATE_SPACE_OWN_ROLES,
    "linear_attn": _STATE_SPACE_OWN_ROLES,
    "time_mix": {
        "time_decay": "time_decay",
        "time_first": "time_first",
        "time_mix_key": "time_mix_K",
        "time_mix_value": "time_mix_V",
        "time_mix_receptance": "time_mix_R",
    },
    "channel_mix": {"time_mix_key": "channel_mix_K", "time_mix_receptance": "channel_mix_R"},
}
"""The parameters a recurrent mixer holds itself rather than in a submodule, by block component, which TransformerLens
wraps only for their projections (so ``bridge.state_dict()`` lacks them). A state-space ``mixer`` (transformers'
Mamba and Mamba-2; Falcon-H1's ``mamba``; a gated delta-rule ``linear_attn``): the log of the state matrix A
(``[d_inner, d_state]`` in Mamba, one per head in Mamba-2), the skip gain D and Mamba-2's time-step bias. RWKV's
``time_mix``: the per-channel decay ``w`` and bonus ``u`` of its WKV recurrence, and the token-shift interpolation
gains (``[1, 1, d_model]``) in front of its key, value and receptance; its ``channel_mix``: the token-shift gains in
front of its key (``in``) and receptance."""


def _mixer_specs(bridge: Bridge, layer: int, known: set[int]) -> list[TensorSpec]:
    """Specs of the parameters held directly by the wrapped module of ``blocks.{layer}.mixer`` (and of RWKV's
    ``time_mix`` and ``channel_mix``) that no state_dict key covers, keyed ``blocks.{layer}.mixer.A_log`` etc.:
    vectors, or ``unknown`` tensors (masked per weight or as a whole)."""
    specs = []
    for component, roles in _MIXER_OWN_ROLES.items():
        try:
            module = bridge.get_submodule(f"blocks.{layer}.{component}")
        except AttributeError:
            continue
        path = f"blocks.{layer}.{component}"
        while "_original_component" in module._modules:
            module = module._modules["_original_component"]
            path += "._original_component"
        for name, parameter in module._parameters.items():
            if parameter is None or id(parameter) in known:
                continue
            known.add(id(parameter))
            layout = "vector" if parameter.dim() == 1 else "unknown"
            key = f"blocks.{layer}.{component}.{name}"
            specs.append(
                TensorSpec(
                    key, roles.get(name, "other"), layer, f"{path}.{name}", tuple(parameter.shape), layout=layout
                )
            )
    return specs


_EXPERT_OUTPUTS = getattr(moe, "_BATCHED_OUTPUT_PROJECTIONS", frozenset({"down_proj"}))
_EXPERT_INPUTS = getattr(moe, "_BATCHED_INPUT_PROJECTIONS", frozenset({"gate_up_proj", "gate_proj", "up_proj"}))
"""transformers' names of batched expert matrices, as TransformerLens's MoE bridge lists them: inputs (gate and up
projections, fused or not) and the output (down) projection."""


def _expert_specs(bridge: Bridge, layer: int, known: set[int]) -> list[TensorSpec]:
    """Specs of the batched expert tensors inside ``blocks.{layer}.mlp`` that no state_dict key covers: the 3-D
    matrices, with their neurons located (:func:`expert_layout`) where the stack's layout can be told, and the 2-D
    ``[n_experts, ...]`` biases of families that have them (GPT-OSS's ``gate_up_proj_bias``, whose entries are
    neurons like the matching rows, and ``down_proj_bias``, one ``d_model`` bias per expert)."""
    component_path = f"blocks.{layer}.mlp._original_component"
    try:
        block = bridge.get_submodule(component_path)
    except AttributeError:
        return []
    if not moe.has_batched_experts(block):
        return []
    specs = _unwrapped_shared_expert_specs(block, component_path, layer, known)
    d_model = int(bridge.cfg.d_model)
    for name, parameter in block.named_parameters(remove_duplicate=False):
        owner_name, _, leaf = name.rpartition(".")
        projection = leaf.removesuffix("_bias")
        is_bias = projection != leaf
        if (
            projection not in _EXPERT_INPUTS | _EXPERT_OUTPUTS
            or parameter.ndim != (2 if is_bias else 3)
            or id(parameter) in known
        ):
            continue
        known.add(id(parameter))
        role = ("b_" if is_bias else "W_") + ("experts_out" if projection in _EXPERT_OUTPUTS else "experts_in")
        key = f"blocks.{layer}.mlp.{name.replace('._original_component', '')}"
        experts = block.get_submodule(owner_name)
        if is_bias:
            weight = getattr(experts, projection, None)
            layout = _expert_bias_layout(experts, projection, weight, d_model)
        else:
            layout = expert_layout(experts, leaf, tuple(parameter.shape), d_model)
        specs.append(TensorSpec(key, role, layer, f"{component_path}.{name}", tuple(parameter.shape), **layout))
    return specs


def _expert_bias_layout(experts: nn.Module, projection: str, weight: torch.Tensor | None, d_model: int) -> dict:
    """An expert bias ``[n_experts, out]`` has its matrix's neurons (one per hidden unit, twice for fused gate/up)
    when it belongs to an input projection whose neurons are located; otherwise it is a plain vector per expert."""
    if projection in _EXPERT_OUTPUTS or weight is None or weight.ndim != 3:
        return {"layout": "vector"}
    matrix = expert_layout(experts, projection, tuple(weight.shape), d_model)
    if matrix.get("unit") is None:
        return {"layout": "vector"}
    return {**matrix, "layout": "vector", "unit_axis": 1}


def expert_layout(experts: nn.Module, leaf: str, shape: tuple[int, int, int], d_model: int) -> dict:
    """Where the neurons of one batched expert stack live, as :class:`TensorSpec` fields.

    transformers stores every stack expert-major (``[n_experts, ...]``) and declares the rest on the experts module
    (``transformers.integrations.moe.use_experts_implementation``): ``is_transposed`` (``[n_experts, in, out]``
    instead of ``nn.Linear``'s ``[n_experts, out, in]``) and ``is_concatenated`` (a fused ``gate_up_proj`` holds all
    gate rows, then all up rows; otherwise each hidden unit's gate and up rows alternate, as in GPT-OSS). An experts
    class that predates the flags (Llama 4's) is read from which axis has ``d_model`` (TransformerLens's MoE bridge
    does the same) and is taken as concatenated, the decorator's default. A stack whose layout neither says is
    returned as ``unknown``: masked per weight or as a whole, never by neurons.
    """
    reads_model = leaf not in _EXPERT_OUTPUTS
    transposed = getattr(experts, "is_transposed", None)
    model_axes = [axis for axis in (1, 2) if shape[axis] == d_model]
    if transposed is None and len(model_axes) == 1:
        transposed = model_axes[0] == (1 if reads_model else 2)  # [n_experts, in, out] reads on axis 1
    hidden_axis = 2 if transposed == reads_model else 1
    if transposed is None or shape[3 - hidden_axis] != d_model:
        return {"layout": "unknown"}
    fused = leaf == "gate_up_proj"
    concatenated = getattr(experts, "is_concatenated", True)
    return {
        "layout": "conv1d" if transposed else "linear",
        "unit": "neuron",
        "unit_axis": hidden_axis,
        "unit_width": 2 if fused and not concatenated else 1,
        "unit_repeats": 2 if fused and concatenated else 1,
        "expert_axis": 0,
    }


_SHARED_EXPERT_ROLES = {"gate_proj": "W_gate", "up_proj": "W_in", "down_proj": "W_out"}
"""transformers' names of a gated MLP's projections: a shared expert that TransformerLens leaves unwrapped."""


def _unwrapped_shared_expert_specs(
    block: nn.Module, component_path: str, layer: int, known: set[int]
) -> list[TensorSpec]:
    """Specs of the ``nn.Linear`` projections of a shared expert inside an MoE block that no state_dict key covers
    (GLM-4-MoE's ``shared_experts``), keyed ``blocks.{layer}.mlp.shared_experts.gate_proj.weight`` etc."""
    specs = []
    for name, module in block.named_modules():
        role = _SHARED_EXPERT_ROLES.get(name.rpartition(".")[2])
        if role is None or not isinstance(module, nn.Linear) or ".shared_expert" not in f".{name}":
            continue
        if id(module.weight) in known:
            continue
        known.add(id(module.weight))
        key = f"blocks.{layer}.mlp.{name.replace('._original_component', '')}.weight"
        shape = tuple(module.weight.shape)
        unit_axis = 1 if role == "W_out" else 0  # nn.Linear: [out, in]; the down projection reads the neurons
        specs.append(
            TensorSpec(key, role, layer, f"{component_path}.{name}.weight", shape, "neuron", unit_axis, 1, "linear")
        )
    return specs


def _moe_roles(bridge: Bridge, specs: list[TensorSpec]) -> list[TensorSpec]:
    """Finish the tensors of each layer that has batched experts: the routing tensors become ``W_router`` /
    ``b_router`` (:func:`routing_spec`), and where the routed experts' neurons are located, the shared expert's
    neurons are numbered after them (``unit_offset = n_experts * d_expert``)."""
    expert_layers = {spec.layer for spec in specs if spec.role in ("W_experts_in", "W_experts_out")}
    routed = {spec.layer: spec.unit_count for spec in specs if spec.expert_axis is not None and spec.unit == "neuron"}
    d_model = int(bridge.cfg.d_model)
    finished = []
    for spec in specs:
        if spec.layer in expert_layers and _is_routing(spec):
            spec = routing_spec(spec, d_model)
        elif spec.layer in routed and spec.unit == "neuron" and ".mlp.shared_expert" in spec.key:
            spec = replace(spec, unit_offset=routed[spec.layer])
        finished.append(spec)
    return finished


_ROUTING_KEY = re.compile(r"^blocks\.\d+\.mlp\.(?P<module>\w+)\.(?:weight|bias)$")
_NOT_ROUTING = re.compile(r"experts|shared_experts?|dense_\w+")


def _is_routing(spec: TensorSpec) -> bool:
    """A tensor of a module directly inside a mixture-of-experts block that is neither the experts, a shared expert
    nor a dense projection: the router, whatever TransformerLens maps it as (``gate`` with the role ``W_gate`` in
    Mixtral, Qwen, OLMoE and most others; ``router`` in GPT-OSS and Llama 4; ``router_gate`` in AFMoE) and whatever
    bridge class wraps it, or Qwen2-MoE's ``shared_expert_gate``, which weighs the shared expert per token."""
    match = _ROUTING_KEY.match(spec.key)
    return match is not None and _NOT_ROUTING.fullmatch(match["module"]) is None


def routing_spec(spec: TensorSpec, d_model: int) -> TensorSpec:
    """A routing tensor as a mask target of weight and matrix granularity: role ``W_router`` (its rows weigh experts,
    so it is no neuron tensor, unlike an MLP's ``W_gate``) or ``b_router``. A router whose module is no
    ``nn.Linear`` holds a bare ``[n_experts, d_model]`` parameter that it reads through ``F.linear``, which
    TransformerLens's MoE bridge reads from the axis of ``d_model`` too; a square or other one is ``unknown``."""
    if spec.key.endswith(".bias"):
        return replace(spec, role="b_router", unit=None, unit_axis=None, layout="vector")
    layout = spec.layout
    if layout == "unknown" and len(spec.shape) == 2 and spec.shape[1] == d_model != spec.shape[0]:
        layout = "linear"
    return replace(spec, role="W_router", unit=None, unit_axis=None, layout=layout)
