"""What an architecture adapter knows: which tensors a bridge's forward pass reads, and where heads and neurons live.

Everything outside ``modmask_lens.adapters`` speaks only TransformerLens vocabulary: roles (``W_Q``, ``W_in``,
``ln1.w``), layers, heads and neurons. An adapter turns a ``TransformerBridge`` into a list of :class:`TensorSpec`,
one per parameter attribute that the forward pass reads.

The generic part lives here: TransformerLens 4.x already names every read tensor canonically in
``bridge.state_dict()`` (``blocks.0.attn.q.weight``; fused originals such as GPT-2's ``c_attn`` are dropped), so an
adapter only has to say how a wrapped module stores its matrix (``[out, in]`` like ``nn.Linear`` or ``[in, out]`` like
GPT-2's ``Conv1D``) and how many key/value heads there are.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import ClassVar, Literal

import torch
from torch import nn

from modmask_lens.adapters.components import BlockComponents
from modmask_lens.adapters.norms import NormLayout, NormPlacement, QueryKeyNorm, ReaderKind, gain_is_offset
from modmask_lens.core.bridge import Bridge
from modmask_lens.core.functional import depth_twins, slot_of, tensor_slots

MatrixLayout = Literal["linear", "conv1d"]
"""``linear``: weight is ``[out_features, in_features]``; ``conv1d``: weight is ``[in_features, out_features]``."""

UnitKind = Literal["head", "kv_head", "neuron"]
TensorLayout = Literal["linear", "conv1d", "embedding", "vector", "unknown"]

# TransformerLens canonical component names -> role prefixes (HookedTransformer's parameter names).
_ATTENTION_ROLES = {"q": "Q", "k": "K", "v": "V", "o": "O"}
# Dense layers of an interleaved mixture-of-experts stack name their MLP dense_in/dense_gate/dense_out.
_MLP_ROLES = {"in": "in", "gate": "gate", "out": "out", "dense_in": "in", "dense_gate": "gate", "dense_out": "out"}
# The components of a state-space block (TransformerLens's SSMMixerBridge / SSM2MixerBridge) -> role suffixes.
_MIXER_ROLES = {
    "in_proj": "ssm_in",
    "conv1d": "ssm_conv",
    "x_proj": "ssm_x",
    "dt_proj": "ssm_dt",
    "out_proj": "ssm_out",
}
# Where a block keeps its state-space mixer: Mamba's and Jamba's ``mixer``; Falcon-H1 runs its Mamba-2 mixer as
# ``mamba``, beside attention.
_MIXER_COMPONENTS = ("mixer", "mamba")
# The norms inside a state-space mixer: Mamba-2's gated norm of its output (TransformerLens's inner_norm), and Jamba's
# norms of the time step, B and C (dt_layernorm, b_layernorm, c_layernorm) -> role prefixes.
_MIXER_NORMS = {
    "inner_norm": "ssm_norm",
    "dt_layernorm": "ssm_dt_norm",
    "b_layernorm": "ssm_B_norm",
    "c_layernorm": "ssm_C_norm",
}
# A gated delta-rule linear attention (TransformerLens's ``linear_attn``: its input projections, fused or not by
# family; a short convolution over q, k and v; a gated norm per head; an output projection), a recurrent mixer of the
# state-space kind (TransformerLens's SSM protocol) -> role suffixes; its norm is ssm_norm.
_LINEAR_ATTENTION_ROLES = {
    **dict.fromkeys(("in_proj_qkvz", "in_proj_ba"), "ssm_in"),  # Qwen3-Next
    **dict.fromkeys(("in_proj_qkv", "in_proj_z", "in_proj_a", "in_proj_b"), "ssm_in"),  # Qwen3.5
    **dict.fromkeys(("q_proj", "k_proj", "v_proj", "a_proj", "b_proj", "g_proj"), "ssm_in"),  # OLMo-Hybrid
    "conv1d": "ssm_conv",
    "out_proj": "ssm_out",
    "o_proj": "ssm_out",
}
_LINEAR_ATTENTION_NORMS = ("norm", "o_norm")
# RWKV's blocks as TransformerLens maps them: a time mix (per-channel linear recurrence, no heads) with key, value,
# receptance and output projections, and a channel mix (an MLP: squared-ReLU hidden units between ``in`` and ``out``,
# gated per residual channel by ``sigmoid(receptance)``) -> role suffixes.
_TIME_MIX_ROLES = {"key": "time_K", "value": "time_V", "receptance": "time_R", "output": "time_O"}
# A gated short-convolution block (LFM2's ``conv``: an input projection to the two gates and the value, a depthwise
# causal convolution over a few positions, an output projection) -> role suffixes.
_SHORT_CONV_ROLES = {"in": "conv_in", "conv": "conv", "out": "conv_out"}
_CHANNEL_MIX_ROLES = {"in": "in", "out": "out", "receptance": "channel_R"}
# Low-rank (latent) attention's projections and norms beside TransformerLens's q/k/v/o (DeepSeek V2/V3 and the
# families built on them; DeepSeek V4's own names second): the query down-projection, its norm and up-projection, the
# joint key/value down-projection (with the rotary key) and its norm and up-projection, V4's one shared key/value
# projection and its norm, and V4's second output projection, which mixes the output groups into the residual stream.
# Without a role they were no mask target of any kind. None holds whole heads of its own alone, except the up
# projections, whose head layouts the adapters that know them set (DeepSeek V4's ``q_b_proj``).
_LATENT_ATTENTION_ROLES = {
    "q_a_proj": "Q_a",
    "q_b_proj": "Q_b",
    "kv_a_proj_with_mqa": "KV_a",
    "kv_b_proj": "KV_b",
    "kv_proj": "KV",
    "o_b_proj": "O_b",
}
_LATENT_ATTENTION_NORMS = {
    "q_a_layernorm": "q_a_norm",
    "q_a_norm": "q_a_norm",
    "kv_a_layernorm": "kv_norm",
    "kv_norm": "kv_norm",
}
# Query/key norms inside attention (Qwen3, Gemma 3, OLMo 2: TransformerLens's attn.q_norm / attn.k_norm) and the norms
# of a sub-layer's output before it is added to the residual stream (Gemma 2 and 3, OLMo 2: ln1_post / ln2_post).
_QUERY_KEY_NORMS = ("q_norm", "k_norm")
_POST_NORMS = ("ln1_post", "ln2_post")
# Per-layer inputs (Gemma 4's E2B/E4B, TransformerLens's names in each block): after attention and the MLP, a third
# sub-layer reads the residual stream through ``per_layer_input_gate`` ([d_per_layer, d_model]), multiplies the
# activated gate by the block's own slice of the per-layer inputs, and writes back through ``per_layer_projection``
# ([d_model, d_per_layer]) and the norm ``post_per_layer_input_norm`` (over d_model) -> roles.
_PER_LAYER_INPUT_ROLES = {
    "per_layer_input_gate": "W_per_layer_gate",
    "per_layer_projection": "W_per_layer_out",
    "post_per_layer_input_norm": "per_layer_post_norm.w",
}
# Where those per-layer inputs come from, outside the blocks (transformers' names, which TransformerLens leaves
# unmapped): a token embedding ``embed_tokens_per_layer`` ([vocab_per_layer, n_layers * d_per_layer]) and a
# projection of the scaled token embeddings ``per_layer_model_projection`` ([n_layers * d_per_layer, d_model]), whose
# d_per_layer slices are normalised by ``per_layer_projection_norm`` (one [d_per_layer] gain every block shares) ->
# roles.
_PER_LAYER_SOURCE_ROLES = {
    "embed_tokens_per_layer": "W_E_per_layer",
    "per_layer_model_projection": "W_per_layer_in",
    "per_layer_projection_norm": "per_layer_in_norm.w",
}
_PER_LAYER_SOURCE = re.compile(rf"^(?:\w+\.)*(?P<module>{'|'.join(_PER_LAYER_SOURCE_ROLES)})\.weight$")
_KEY_PATTERN = re.compile(
    r"^blocks\.(?P<layer>\d+)\.(?P<component>attn|mlp|ln1_post|ln2_post|ln1|ln2|norm|mixer|mamba|linear_attn|time_mix|channel_mix|pre_ln|conv"
    rf"|{'|'.join(_PER_LAYER_INPUT_ROLES)})\."
    r"(?:(?P<shared>shared_experts?)\.)?"
    r"(?:(?P<sub>\w+)\.)?(?P<attr>weight|bias)$"
)

ROLE_KINDS = {
    "linear": (
        "W_Q",
        "W_K",
        "W_V",
        "W_O",
        "W_in",
        "W_gate",
        "W_out",
        "W_U",
        "W_mlm_head",
        "W_experts_in",
        "W_experts_out",
        "W_router",
        "W_attn_gate",
        "W_ssm_in",
        "W_ssm_conv",
        "W_ssm_x",
        "W_ssm_dt",
        "W_ssm_out",
        "ssm_A_log",
        *("W_conv_in", "W_conv", "W_conv_out"),
        *("W_rec_x", "W_rec_y", "W_rec_conv", "W_rec_out", "W_rec_input_gate", "W_rec_a_gate", "rec_a_param"),
        "W_time_K",
        "W_time_V",
        "W_time_R",
        "W_time_O",
        "W_channel_R",
        "time_decay",
        "time_first",
        "W_KV",
        "W_attn_router",
        *("W_Q_a", "W_Q_b", "W_KV_a", "W_KV_b", "W_O_b"),
        *("W_Q_lora_A", "W_Q_lora_B", "W_K_lora_A", "W_K_lora_B", "W_V_lora_A", "W_V_lora_B"),
        *("W_in_lora_A", "W_in_lora_B", "W_hybrid"),
        *("W_per_layer_gate", "W_per_layer_out", "W_per_layer_in"),
    ),
    "norm": (
        "ln1.w",
        "ln2.w",
        "ln3.w",
        *("ln1_post.w", "ln2_post.w", "ln3_post.w", "q_norm.w", "k_norm.w"),
        "ln_final.w",
        "ln_embed.w",
        "ln_mlm_head.w",
        "ssm_norm.w",
        *("ssm_dt_norm.w", "ssm_B_norm.w", "ssm_C_norm.w"),
        "attn_sub_norm.w",
        "mlp_sub_norm.w",
        "time_mix_K",
        "time_mix_V",
        "time_mix_R",
        "channel_mix_K",
        "channel_mix_R",
        "q_a_norm.w",
        "kv_norm.w",
        "attn_in_norm.w",
        "mlp_in_norm.w",
        *("per_layer_post_norm.w", "per_layer_in_norm.w"),
    ),
    "embedding": ("W_E", "W_pos", "W_token_type", "W_E_per_layer"),
    "bias": (
        "b_Q",
        "b_K",
        "b_V",
        "b_O",
        "b_in",
        "b_gate",
        "b_out",
        "b_U",
        "b_mlm_head",
        "b_experts_in",
        "b_experts_out",
        "b_router",
        "b_attn_gate",
        "b_ssm_conv",
        "b_ssm_dt",
        *("b_conv_in", "b_conv", "b_conv_out"),
        "ssm_D",
        *("b_rec_x", "b_rec_y", "b_rec_conv", "b_rec_out", "b_rec_input_gate", "b_rec_a_gate"),
        *("b_Q_a", "b_Q_b", "b_KV_a", "b_KV_b", "b_KV", "b_O_b", "q_a_norm.b", "kv_norm.b"),
        "ln1.b",
        "ln2.b",
        "ln3.b",
        *("ln1_post.b", "ln2_post.b", "ln3_post.b", "q_norm.b", "k_norm.b"),
        "ln_final.b",
        "ln_embed.b",
        "ln_mlm_head.b",
    ),
}
"""Roles grouped by parameter kind; :class:`~modmask_lens.masks.config.MaskConfig` selects kinds by these names."""


RESIDUAL_WRITERS = (
    "W_E",
    "W_pos",
    "W_token_type",
    "W_O",
    "W_out",
    "W_experts_out",
    "W_time_O",
    "W_O_b",
    "W_per_layer_out",
)
"""Matrices that write the residual stream; every other matrix reads it (or, as ``W_E_per_layer``, neither)."""
_INPUT_AXIS = {"linear": 1, "conv1d": 0, "embedding": 0}


@dataclass(frozen=True)
class TensorSpec:
    """One tensor the forward pass reads, described in TransformerLens terms.

    Attributes:
        key: the ``bridge.state_dict()`` key, e.g. ``blocks.0.attn.q.weight``; masks are keyed by it.
        role: HookedTransformer name of the tensor, e.g. ``W_Q``, ``b_in``, ``ln1.w``, ``W_U``.
        layer: block index, or ``None`` for embeddings, the final norm and the unembedding.
        path: attribute path from the bridge root, e.g. ``blocks.0.attn.q._original_component.weight``; exactly one
            path per (module, attribute), which is what ``functional_call(..., tie_weights=False)`` needs.
        shape: shape of the stored tensor.
        unit: what ``unit_axis`` indexes: ``head`` (query heads), ``kv_head`` (key/value groups), ``neuron`` (MLP
            hidden units), or ``None``.
        unit_axis: the axis of the stored tensor along which units are laid out.
        unit_width: consecutive elements per unit along ``unit_axis`` (``d_head`` for heads, 1 for neurons, 2 for a
            mixture-of-experts input stack that interleaves each hidden unit's gate and up rows, as GPT-OSS does).
        unit_repeats: how many times the whole sequence of units repeats along ``unit_axis``: 2 for a fused gate/up
            projection that concatenates all gate rows, then all up rows (Mixtral's ``gate_up_proj``), else 1.
        expert_axis: for a mixture-of-experts stack of expert matrices (``[n_experts, ...]``), the axis indexing the
            expert; its neurons are then (expert, hidden unit) pairs, numbered expert-major
            (``expert * d_expert + unit``). ``None`` for every other tensor.
        unit_offset: the number of this tensor's first unit among its layer's: a mixture-of-experts layer numbers its
            routed experts' neurons first (``n_experts * d_expert``), then its shared expert's; else 0.
        expert_width: consecutive positions along :attr:`expert_axis` per expert (1 for a stack of experts); a
            grouped projection that stores group g's rows ``g * rows .. (g + 1) * rows`` of one matrix and its units
            along the other axis (DeepSeek V4's ``o_a_proj``: heads by group, then by columns) has ``rows``.
        layout: ``linear`` ([out, in]), ``conv1d`` ([in, out]), ``embedding`` ([vocab or pos, d_model]),
            ``vector`` (norm gains and biases) or ``unknown`` (a matrix whose storage its adapter cannot tell: it is
            masked per weight or as a whole, never by heads or neurons).
        tied_to: key of another tensor that is the same parameter read through another module (GPT-2's W_E and
            W_U), or ``None``; each key still gets its own mask.
        gain_offset: a norm gain ``w`` that the forward pass reads as ``1 + w`` (Gemma's RMSNorm;
            :func:`~modmask_lens.adapters.norms.gain_is_offset`): a mask that drops an entry leaves that dimension at
            scale 1, so it cuts nothing. ``False`` for every other tensor.
        query_key_norm: for a query (key) norm's gain or bias, how its entries map onto the rows of the block's
            ``W_Q`` (``W_K``): one ``d_head`` vector shared by every head, or one entry per row
            (:class:`~modmask_lens.adapters.norms.QueryKeyNorm`). ``None`` for every other tensor.
    """

    key: str
    role: str
    layer: int | None
    path: str
    shape: tuple[int, ...]
    unit: UnitKind | None = None
    unit_axis: int | None = None
    unit_width: int = 1
    layout: TensorLayout = "vector"
    tied_to: str | None = None
    unit_repeats: int = 1
    expert_axis: int | None = None
    unit_offset: int = 0
    expert_width: int = 1
    gain_offset: bool = False
    query_key_norm: QueryKeyNorm | None = None

    @property
    def input_axis(self) -> int | None:
        """The axis of the stored matrix that indexes its inputs: 1 for ``linear`` ([out, in]), 0 for ``conv1d``
        ([in, out]) and ``embedding`` ([index, d_model]), counted among the axes other than :attr:`expert_axis`
        (an expert stack ``[n_experts, out, in]`` has inputs on axis 2); ``None`` for vectors."""
        axis = _INPUT_AXIS.get(self.layout)
        return None if axis is None else self._matrix_axes[axis]

    @property
    def output_axis(self) -> int | None:
        """The axis of the stored matrix that indexes its outputs (``d_model`` for embeddings, the vocabulary for
        ``W_U``); ``None`` for vectors."""
        axis = _INPUT_AXIS.get(self.layout)
        return None if axis is None else self._matrix_axes[1 - axis]

    @property
    def _matrix_axes(self) -> tuple[int, ...]:
        """The axes of the matrix: all but the expert axis of a stack; a grouped projection's group axis is one of
        its matrix's own (its rows)."""
        return tuple(axis for axis in range(len(self.shape)) if axis != self.expert_axis or self.expert_width > 1)

    @property
    def unit_count(self) -> int:
        """How many units (heads, key/value groups or neurons) this tensor holds: those along :attr:`unit_axis`
        (less :attr:`unit_width` and :attr:`unit_repeats`), times the experts of an expert stack.

        Raises:
            ValueError: for a tensor without units.
        """
        if self.unit_axis is None:
            raise ValueError(f"{self.key}: holds no heads or neurons")
        per_expert = self.shape[self.unit_axis] // (self.unit_width * self.unit_repeats)
        return per_expert * (1 if self.expert_axis is None else self.shape[self.expert_axis] // self.expert_width)

    @property
    def writes_residual(self) -> bool:
        """Does this matrix write the residual stream (embeddings, ``W_O``, ``W_out``) rather than read it?"""
        return self.role in RESIDUAL_WRITERS

    @property
    def residual_axis(self) -> int:
        """The axis indexing residual-stream dimensions: the output side of writers, the input side of readers.

        Raises:
            ValueError: for vectors (norm gains and biases have no reader/writer side).
        """
        axis = self.output_axis if self.writes_residual else self.input_axis
        if axis is None:
            raise ValueError(f"{self.key}: a {self.layout} tensor has no residual axis; only matrices have one")
        return axis

    def unit_read_by(self, head: int, n_heads: int) -> int:
        """The unit along :attr:`unit_axis` that query head ``head`` reads: the head itself, or under grouped-query
        attention its key/value group (``head // (n_heads / n_kv_heads)``, as :class:`ModelShape` says)."""
        return head // (n_heads // self.unit_count)

    @property
    def kind(self) -> str:
        """The parameter kind of :data:`ROLE_KINDS` this tensor belongs to (``other`` if none)."""
        return next((kind for kind, roles in ROLE_KINDS.items() if self.role in roles), "other")

    @property
    def numel(self) -> int:
        return int(torch.Size(self.shape).numel())


@dataclass(frozen=True)
class LocatedParameter:
    """A parameter the forward pass reads, where it lives and what it is, before its layout is read.

    Attributes:
        key: the mask key (see :attr:`TensorSpec.key`).
        role: the HookedTransformer role.
        layer: the block index, or ``None``.
        path: attribute path from the bridge root.
        module: the module that holds the parameter.
        parameter: the parameter.
        unit_offset: the number of this tensor's first head or neuron among its layer's (a decoder block's
            cross-attention heads follow its self-attention heads); 0 for most tensors.
    """

    key: str
    role: str
    layer: int | None
    path: str
    module: nn.Module
    parameter: nn.Parameter
    unit_offset: int = 0


@dataclass(frozen=True)
class ModelShape:
    """The dimensions masks need to know about, read from ``bridge.cfg``."""

    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int
    d_head: int
    d_mlp: int | None
    d_vocab: int
    layer_n_kv_heads: tuple[int | None, ...] = ()
    """Each block's own key/value heads where blocks differ (TransformerLens's ``cfg.per_layer_num_key_value_heads``:
    Gemma 4's full-attention layers have fewer than its sliding ones, whose count :attr:`n_kv_heads` holds); empty
    where every block has :attr:`n_kv_heads`, and ``None`` for a block that takes it."""
    layer_d_head: tuple[int | None, ...] = ()
    """Each block's own ``d_head`` where blocks differ (``cfg.per_layer_head_dim``), as :attr:`layer_n_kv_heads`."""
    layer_d_mlp: tuple[int | None, ...] = ()
    """Each block's own MLP width where blocks differ from :attr:`d_mlp` (Gemma 4's key/value-sharing blocks run MLPs
    twice as wide, ``use_double_wide_mlp``, which TransformerLens's config does not say), as
    :attr:`layer_n_kv_heads`."""

    @property
    def heads_per_kv_head(self) -> int:
        """Query heads that read one key/value group: query head h reads group ``h // heads_per_kv_head``."""
        return self.n_heads // self.n_kv_heads

    def at_layer(self, layer: int | None) -> ModelShape:
        """These dimensions with block ``layer``'s own key/value heads, ``d_head`` and MLP width
        (:attr:`layer_n_kv_heads`, :attr:`layer_d_head`, :attr:`layer_d_mlp`); unchanged for a block without its
        own, or ``layer=None``.

        >>> shape = ModelShape(2, 32, 4, 2, 8, 64, 40, (2, 1), layer_d_head=(8, 16), layer_d_mlp=(None, 128))
        >>> [(block.n_kv_heads, block.d_head, block.d_mlp) for block in map(shape.at_layer, (0, 1, None))]
        [(2, 8, 64), (1, 16, 128), (2, 8, 64)]
        """

        def own(per_layer: tuple[int | None, ...], default: int | None) -> int | None:
            value = per_layer[layer] if layer is not None and layer < len(per_layer) else None
            return default if value is None else int(value)

        return replace(
            self,
            n_kv_heads=own(self.layer_n_kv_heads, self.n_kv_heads),
            d_head=own(self.layer_d_head, self.d_head),
            d_mlp=own(self.layer_d_mlp, self.d_mlp),
        )


STACK_SUFFIX = "blocks"
"""TransformerLens names every stack of blocks ``blocks`` or ``<side>_blocks`` (``encoder_blocks``)."""


_QUERY_KEY_PROJECTIONS = {"q_norm.w": "W_Q", "q_norm.b": "W_Q", "k_norm.w": "W_K", "k_norm.b": "W_K"}
"""The projection whose features each query/key norm's gain (bias) scales (shifts)."""


def _with_query_key_norms(specs: list[TensorSpec]) -> list[TensorSpec]:
    """``specs`` with each query (key) norm gain's and bias's :class:`~modmask_lens.adapters.norms.QueryKeyNorm`,
    read from its size against the ``W_Q`` (``W_K``) of its block: at most a head's rows, one ``d_head`` vector that
    every head shares (Qwen3, Gemma 3 and 4, Gemma 4 with each block's own ``d_head``); as many entries as the
    projection has rows, one per row (OLMo 2; Cohere's ``[n_heads, d_head]``). In front of a projection of one head
    (key/value group) the two map alike, read as shared. One without such a projection in its block, or of another
    size, states nothing."""
    projections = {(spec.role, spec.layer): spec for spec in specs if spec.unit in ("head", "kv_head")}
    stated = []
    for spec in specs:
        projection = projections.get((_QUERY_KEY_PROJECTIONS.get(spec.role), spec.layer))
        if projection is not None and projection.expert_axis is None:
            shared = spec.numel <= projection.unit_width
            if shared or spec.numel == projection.shape[projection.unit_axis]:
                spec = replace(spec, query_key_norm=QueryKeyNorm(shared, projection.unit_width))
        stated.append(spec)
    return stated


def head_width(length: int, n_units: int, d_head: int) -> int:
    """Elements per head along a head axis of ``length`` holding ``n_units`` heads: ``d_head`` where the axis is
    exactly ``n_units * d_head`` long, else the axis's own share per head. Latent attention's output projection reads
    ``v_head_dim`` per head while ``cfg.d_head`` is its rotary width (DeepSeek V2/V3), and a gated query projection
    holds each head's query rows then its gate rows, ``2 * d_head`` (Qwen3-Next, Qwen3.5).

    >>> head_width(32, 4, 8), head_width(32, 4, 4), head_width(64, 4, 8)
    (8, 8, 16)
    """
    if length == n_units * d_head or length % n_units:
        return d_head
    return length // n_units


def query_rows_per_head(bridge: Bridge, spec: TensorSpec) -> int:
    """How many of each head's :attr:`TensorSpec.unit_width` rows of a ``W_Q`` tensor are its query, which
    TransformerLens's ``W_Q[h]`` shows: ``d_head`` where TransformerLens declares a gated query projection
    (``cfg.gated_q_proj``: each head's query rows, then its output-gate rows; Qwen3-Next, Qwen3.5), else all."""
    if spec.role == "W_Q" and getattr(bridge.cfg, "gated_q_proj", False):
        return int(bridge.cfg.d_head)
    return spec.unit_width


def stack_names(mapping: object) -> tuple[str, ...]:
    """The stacks of blocks in TransformerLens's component mapping, in its order (``("blocks",)`` for a decoder-only
    model, ``("encoder_blocks", "decoder_blocks")`` for an encoder-decoder)."""
    names = list(mapping) if hasattr(mapping, "keys") else []
    return tuple(name for name in names if name == STACK_SUFFIX or name.endswith(f"_{STACK_SUFFIX}"))


def model_shape(bridge: Bridge) -> ModelShape:
    """Read the dimensions of a bridge's config; the layers of an encoder-decoder are its blocks over both stacks
    (``cfg.n_layers`` counts one stack)."""
    cfg = bridge.cfg
    stacks = stack_names(getattr(getattr(bridge, "adapter", None), "component_mapping", None) or {})
    n_layers = int(cfg.n_layers)
    if stacks and stacks != (STACK_SUFFIX,):
        n_layers = sum(len(bridge.get_submodule(stack)) for stack in stacks)
    d_mlp = int(cfg.d_mlp) if cfg.d_mlp else None
    return ModelShape(
        n_layers=n_layers,
        d_model=int(cfg.d_model),
        n_heads=int(cfg.n_heads),
        n_kv_heads=int(getattr(cfg, "n_key_value_heads", None) or cfg.n_heads),
        d_head=int(cfg.d_head),
        d_mlp=d_mlp,
        d_vocab=int(cfg.d_vocab),
        layer_n_kv_heads=_per_block(cfg, "per_layer_num_key_value_heads", n_layers),
        layer_d_head=_per_block(cfg, "per_layer_head_dim", n_layers),
        layer_d_mlp=_block_mlp_widths(bridge, stacks or (STACK_SUFFIX,), d_mlp),
    )


def _block_mlp_widths(bridge: Bridge, stacks: tuple[str, ...], d_mlp: int | None) -> tuple[int | None, ...]:
    """Each block's MLP width where some block's differs from ``d_mlp``, read off the input side of its MLP's output
    matrix (TransformerLens's ``mlp.out``, an ``nn.Linear``); empty where every block has ``d_mlp``, and ``None`` for
    a block that has it or has no such matrix (a mixture of experts, a state-space block)."""
    widths = []
    for stack in stacks:
        for block in bridge.get_submodule(stack):
            output = _resolve_parameter(block, "mlp.out.weight")
            width = output[2].shape[1] if output is not None and isinstance(output[1], nn.Linear) else None
            widths.append(None if width == d_mlp else width)
    return tuple(widths) if any(width is not None for width in widths) else ()


def _per_block(cfg: object, field: str, n_layers: int) -> tuple[int | None, ...]:
    """TransformerLens's per-layer list ``cfg.<field>`` as a tuple, where it has one entry per block of the model
    (it counts the blocks of one stack, so an encoder-decoder's is not used); else empty."""
    values = getattr(cfg, field, None) or ()
    return tuple(values) if len(values) == n_layers else ()


TOP_LEVEL_ROLES = {
    "embed.weight": "W_E",
    "pos_embed.weight": "W_pos",
    "token_type_embed.weight": "W_token_type",
    "embed_ln.weight": "ln_embed.w",
    "embed_ln.bias": "ln_embed.b",
    "mlm_head.weight": "W_mlm_head",
    "mlm_head.bias": "b_mlm_head",
    "prediction_head.dense.weight": "W_mlm_head",
    "prediction_head.dense.bias": "b_mlm_head",
    "prediction_head.norm.weight": "ln_mlm_head.w",
    "prediction_head.norm.bias": "ln_mlm_head.b",
    "ln_final.weight": "ln_final.w",
    "ln_final.bias": "ln_final.b",
    "unembed.weight": "W_U",
    "unembed.bias": "b_U",
}
"""Roles of the tensors outside the blocks, by TransformerLens's key: the embeddings (token-type ones in BERT and
RoBERTa), the norm of the embeddings (``embed_ln``: BERT, RoBERTa, BLOOM, ModernBERT-decoder), a masked-LM head's
transform in front of the unembedding (``mlm_head``; ModernBERT-decoder's ``prediction_head``, a dense layer and its
own norm after the final norm), the final norm and the unembedding."""


def role_of(key: str) -> tuple[str, int | None]:
    """The HookedTransformer role and layer of a TransformerLens 4.x state_dict key (``other`` if unknown)."""
    if key in TOP_LEVEL_ROLES:
        return TOP_LEVEL_ROLES[key], None
    source = _PER_LAYER_SOURCE.match(key)
    if source is not None:
        return _PER_LAYER_SOURCE_ROLES[source["module"]], None
    match = _KEY_PATTERN.match(key)
    if match is None:
        return "other", None
    layer = int(match["layer"])
    component, sub, attr = match["component"], match["sub"], match["attr"]
    prefix = "W_" if attr == "weight" else "b_"
    if match["shared"] and component != "mlp":
        return "other", layer
    if component == "pre_ln" and sub is None:  # RWKV's norm of the embeddings, inside block 0
        return f"ln_embed.{'w' if attr == 'weight' else 'b'}", None
    if component == "time_mix" and sub in _TIME_MIX_ROLES:
        return prefix + _TIME_MIX_ROLES[sub], layer
    if component == "channel_mix" and sub in _CHANNEL_MIX_ROLES:
        return prefix + _CHANNEL_MIX_ROLES[sub], layer
    if component == "conv" and sub in _SHORT_CONV_ROLES:
        return prefix + _SHORT_CONV_ROLES[sub], layer
    if component in _PER_LAYER_INPUT_ROLES and sub is None and attr == "weight":
        return _PER_LAYER_INPUT_ROLES[component], layer
    if component in ("ln1", "ln2", *_POST_NORMS) and sub is None:
        return f"{component}.{'w' if attr == 'weight' else 'b'}", layer
    if component == "norm" and sub is None:  # a state-space block's one norm, in front of its mixer
        return f"ln1.{'w' if attr == 'weight' else 'b'}", layer
    if component in _MIXER_COMPONENTS and sub in _MIXER_ROLES:
        return prefix + _MIXER_ROLES[sub], layer
    if component == "linear_attn" and sub in _LINEAR_ATTENTION_ROLES:
        return prefix + _LINEAR_ATTENTION_ROLES[sub], layer
    if component == "linear_attn" and sub in _LINEAR_ATTENTION_NORMS:
        return f"ssm_norm.{'w' if attr == 'weight' else 'b'}", layer
    if component in _MIXER_COMPONENTS and sub in _MIXER_NORMS:
        return f"{_MIXER_NORMS[sub]}.{'w' if attr == 'weight' else 'b'}", layer
    if component == "attn" and sub in _ATTENTION_ROLES:
        return prefix + _ATTENTION_ROLES[sub], layer
    if component == "attn" and sub == "gate":  # an output gate: sigmoid(gate(x)) scales the heads' outputs
        return prefix + "attn_gate", layer
    if component == "attn" and sub in _LATENT_ATTENTION_ROLES:
        return prefix + _LATENT_ATTENTION_ROLES[sub], layer
    if component == "attn" and sub in _LATENT_ATTENTION_NORMS:
        return f"{_LATENT_ATTENTION_NORMS[sub]}.{'w' if attr == 'weight' else 'b'}", layer
    if component == "attn" and sub in _QUERY_KEY_NORMS:
        return f"{sub}.{'w' if attr == 'weight' else 'b'}", layer
    if component == "mlp" and sub in _MLP_ROLES:
        return prefix + _MLP_ROLES[sub], layer
    return "other", layer


class Adapter:
    """Base adapter: resolves a bridge's canonical state_dict keys to the tensors its forward pass reads.

    Subclasses set :attr:`name` and :attr:`architectures` (values of ``bridge.cfg.architecture``) and override what
    differs in their family: :meth:`matrix_layout` for matrices not stored like ``nn.Linear``, :attr:`family_roles`
    for tensors outside TransformerLens's canonical names, :attr:`unread_keys` for state_dict keys the forward pass
    does not read, and :meth:`fuse_for_export` where the Hugging Face checkpoint stores a fused tensor as copies.
    """

    name: ClassVar[str] = "base"
    architectures: ClassVar[tuple[str, ...]] = ()
    family_roles: ClassVar[dict[str, str]] = {}
    """state_dict key -> role for family-specific tensors (e.g. BERT's ``token_type_embed.weight``)."""
    unread_keys: ClassVar[tuple[str, ...]] = ()
    """state_dict keys whose tensor the forward pass reads through another key (e.g. BERT's decoder bias alias)."""
    former_names: ClassVar[tuple[str, ...]] = ()
    """Names this adapter had in earlier releases: masks saved under them still load (their weights hash decides)."""
    norm_placement: ClassVar[NormPlacement] = "pre"
    """``pre``: each block normalises what its attention and MLP read (GPT-2, Llama, NeoX); ``post``: each
    sub-layer's output is added to the residual stream and then normalised (BERT)."""

    def __init_subclass__(cls, **kwargs) -> None:
        """A subclass's :attr:`former_names` are only those it declares: an adapter built on another (BitNet's on
        the derived one) reads other units than the adapters its parent replaced, so their masks must not load
        onto it as if they meant the same."""
        super().__init_subclass__(**kwargs)
        if "former_names" not in cls.__dict__:
            cls.former_names = ()

    @classmethod
    def for_bridge(cls, bridge: Bridge) -> Adapter:
        """The adapter for ``bridge``: a plain instance; adapters that read the model override this
        (:meth:`DerivedAdapter.for_bridge <modmask_lens.adapters.DerivedAdapter.for_bridge>`)."""
        return cls()

    def inapplicable(self, bridge: Bridge, granularity: str, specs: list[TensorSpec]) -> str | None:
        """Why ``granularity`` has no meaning for ``bridge`` (whose tensors are ``specs``), or ``None`` where it has
        one. Heads need attention, neurons an MLP: a granularity does not apply when no tensor has a role of that
        component (``W_Q``/``W_K``/``W_V``/``W_O``; ``W_in``/``W_gate``/``W_out`` or an expert stack) and no module
        of the Hugging Face model is one either (:data:`_COMPONENT_CLASS_MARKERS` in its class name). The second test
        keeps models whose attention or MLP TransformerLens maps in a way no adapter reads failing rather than "not
        applicable" (NemotronH's attention and MoE layers, before its adapter). A state-space model such
        as Mamba, whose blocks hold a norm and a mixer, has neither heads nor neurons; a tiny Jamba or RecurrentGemma
        whose two layers are both recurrent has no attention module, so no heads."""
        needed = _GRANULARITY_ROLES.get(granularity)
        if needed is None or any(spec.role in needed for spec in specs):
            return None
        markers = _COMPONENT_CLASS_MARKERS[granularity]
        original = getattr(bridge, "original_model", bridge)
        if any(marker in type(module).__name__.lower() for module in original.modules() for marker in markers):
            return None
        component = "attention" if granularity == "head" else "MLP"
        present = sorted({spec.role for spec in specs if spec.layer is not None})
        return (
            f"{granularity} granularity does not apply: no block of this model has {component} (no "
            f"{'/'.join(needed[:4])} tensor, no module named like {'/'.join(markers)}; its blocks hold {present}), "
            f"so it has no {granularity}s; mask it by weight or matrix"
        )

    def head_layers(self, bridge: Bridge) -> set[int]:
        """The blocks whose forward pass runs attention heads: each block holding a tensor with heads
        (:meth:`tensor_specs`), and each block that reads such a tensor again through a module of its own (a block
        shared across depths, whose heads are keyed at its first depth only: Zamba2's shared transformer block;
        :func:`~modmask_lens.core.functional.depth_twins`). Recurrent, state-space and convolution blocks hold none."""
        return set(self.block_components(bridge).head_layers)

    def mlp_layers(self, bridge: Bridge) -> set[int]:
        """The blocks whose forward pass runs an MLP: each block holding a tensor of an MLP or mixture-of-experts role
        (``W_in``, ``W_gate``, ``W_out``, ``W_experts_in``, ``W_experts_out``), and, as for :meth:`head_layers`,
        each further depth of a shared block. A state-space block (Mamba's mixer) and an attention-only block
        (NemotronH's) hold none."""
        return set(self.block_components(bridge).mlp_layers)

    def block_components(self, bridge: Bridge) -> BlockComponents:
        """:meth:`head_layers` and :meth:`mlp_layers` as one record, which masks keep with them
        (:class:`~modmask_lens.masks.identity.MaskOrigin`)."""
        specs = self.tensor_specs(bridge)
        slots = tensor_slots(bridge)
        twins = depth_twins(slots)

        def blocks_reading(holds: Callable[[TensorSpec], bool]) -> frozenset[int]:
            layers = set()
            for spec in specs:
                if spec.layer is None or not holds(spec):
                    continue
                layers.add(spec.layer)
                for twin in twins.get(slot_of(bridge, spec.path), ()):
                    block = _BLOCK_INDEX.match(slots[twin][0])
                    if block is not None:
                        layers.add(int(block["layer"]))
            return frozenset(layers)

        return BlockComponents(
            blocks_reading(lambda spec: spec.unit in ("head", "kv_head")),
            blocks_reading(lambda spec: spec.role in _GRANULARITY_ROLES["neuron"]),
        )

    def norm_layout(self) -> NormLayout:
        """Where this adapter's model keeps the norms in front of its readers: :attr:`norm_placement`, sequential
        blocks. Masks record it when they are made (:class:`~modmask_lens.masks.identity.MaskOrigin`)."""
        return NormLayout(self.norm_placement)

    def reader_norm(self, reader: ReaderKind, layer: int | None) -> tuple[str, int | None]:
        """(role, layer) of the norm gain in front of a reader of block ``layer``
        (:meth:`NormLayout.reader_norm <modmask_lens.adapters.norms.NormLayout.reader_norm>` of
        :meth:`norm_layout`)."""
        return self.norm_layout().reader_norm(reader, layer)

    def stored_layout(self, key: str, module: nn.Module) -> MatrixLayout | Literal["unknown"]:
        """How the matrix under state_dict ``key`` is stored; by default, as its module's type says
        (:meth:`matrix_layout`)."""
        return self.matrix_layout(module)

    def matrix_layout(self, module: nn.Module) -> MatrixLayout:
        """How ``module`` stores its weight matrix."""
        if isinstance(module, nn.Linear):
            return "linear"
        raise TypeError(
            f"{self.name} adapter: cannot tell the weight layout of {type(module).__name__}; "
            "override Adapter.matrix_layout for this module type (see CONTRIBUTING.md#adapters)"
        )

    def tensor_specs(self, bridge: Bridge) -> list[TensorSpec]:
        """Every parameter attribute the bridge's forward pass reads (:meth:`located_parameters`), with its role,
        layout and head or neuron layout; less those its checkpoint does not store (:func:`unstored_parameters`)."""
        dims = model_shape(bridge)
        specs = []
        first_key_of: dict[int, str] = {}
        unstored = unstored_parameters(bridge)
        for located in self.located_parameters(bridge):
            if id(located.parameter) in unstored:
                continue
            layout = self._layout(located.key, located.module, located.parameter)
            unit, unit_axis, unit_width = self._unit_layout(
                located.role, layout, dims.at_layer(located.layer), located.parameter.shape
            )
            tied_to = first_key_of.setdefault(id(located.parameter), located.key)
            specs.append(
                TensorSpec(
                    located.key,
                    located.role,
                    located.layer,
                    located.path,
                    tuple(located.parameter.shape),
                    unit,
                    unit_axis,
                    unit_width,
                    layout,
                    None if tied_to == located.key else tied_to,
                    unit_offset=located.unit_offset if unit is not None else 0,
                    gain_offset=located.role.endswith(".w") and gain_is_offset(bridge, located.path),
                )
            )
        return _with_query_key_norms(specs)

    def located_parameters(self, bridge: Bridge) -> list[LocatedParameter]:
        """The parameters the forward pass reads, in ``bridge.state_dict()`` order, with their roles.

        Keys whose tensor is not a real parameter of a wrapped module (TransformerLens adds a synthetic zero
        ``unembed.bias`` when the model has none) and :attr:`unread_keys` are skipped.
        """
        located = []
        for key in bridge.state_dict():
            resolved = _resolve_parameter(bridge, key)
            if resolved is None or key in self.unread_keys:
                continue
            path, module, parameter = resolved
            role, layer = self._family_role(key) if key in self.family_roles else role_of(key)
            located.append(LocatedParameter(key, role, layer, path, module, parameter))
        return located

    def _family_role(self, key: str) -> tuple[str, int | None]:
        """The role :attr:`family_roles` gives ``key``, with the layer of its ``blocks.{i}.`` prefix (None outside
        the blocks), so that ``MaskConfig(layers=...)`` and the conformance kit's per-layer checks see it.

        Raises:
            ValueError: the role is in no parameter kind of :data:`ROLE_KINDS`, so no mask would ever select it.
        """
        role = self.family_roles[key]
        if not any(role in roles for roles in ROLE_KINDS.values()):
            raise ValueError(
                f"adapter {self.name!r}: family_roles gives {key} the role {role!r}, which no parameter kind holds, "
                "so no mask would select it; use a role of modmask_lens.adapters.base.ROLE_KINDS (e.g. 'ln1.w' for "
                "a norm gain, 'W_in' for an MLP input matrix), or add the role there"
            )
        block = re.match(r"^blocks\.(\d+)\.", key)
        return role, int(block.group(1)) if block else None

    def _layout(self, key: str, module: nn.Module, parameter: torch.Tensor) -> TensorLayout:
        if parameter.dim() == 1:
            return "vector"
        if isinstance(module, nn.Embedding):
            return "embedding"
        return self.stored_layout(key, module)

    def _unit_layout(
        self, role: str, layout: TensorLayout, dims: ModelShape, shape: tuple[int, ...]
    ) -> tuple[UnitKind | None, int | None, int]:
        """Where heads or neurons live in a tensor of ``role`` and ``shape`` (TransformerLens's head/neuron
        conventions), and how wide a head is (:func:`head_width`)."""
        unit = _UNIT_OF_ROLE.get(role)
        if unit is None or layout == "unknown":
            return None, None, 1
        if layout == "vector":
            axis = 0
        else:
            out_axis = 0 if layout == "linear" else 1  # Linear stores [out, in]; Conv1D stores [in, out]
            reads_units = role in ("W_O", "W_out", "W_experts_out")  # these read heads / neurons on their input side
            axis = 1 - out_axis if reads_units else out_axis
        if unit == "neuron":
            return unit, axis, 1
        return unit, axis, head_width(shape[axis], dims.n_heads if unit == "head" else dims.n_kv_heads, dims.d_head)

    def fuse_for_export(
        self, bridge: Bridge, hf_state: dict[str, torch.Tensor], masked: dict[str, torch.Tensor]
    ) -> set[str]:
        """Write masked tensors that the Hugging Face checkpoint stores only inside a fused copy.

        The base export already handles tensors that are the checkpoint's own parameters, views of a fused
        parameter (GPT-2's q/k/v inside ``c_attn``) and copies made by TransformerLens's declared
        ``split_qkv_matrix`` (GPT-NeoX's ``query_key_value``). Families whose bridge splits a fused tensor into
        copies in a way TransformerLens does not declare override this.

        Args:
            bridge: the model.
            hf_state: Hugging Face state_dict being exported (modified in place).
            masked: state_dict key -> masked tensor, for the keys the generic export could not place.

        Returns:
            The keys of ``masked`` that were written.
        """
        return set()


_BLOCK_INDEX = re.compile(rf"^{STACK_SUFFIX}\.(?P<layer>\d+)\.")
"""The block of a bridge path (``blocks.2._original_component.shared_transformer.self_attn.q_proj.weight``: 2)."""
_GRANULARITY_ROLES = {
    "head": ("W_Q", "W_K", "W_V", "W_O"),
    "neuron": ("W_in", "W_gate", "W_out", "W_experts_in", "W_experts_out"),
}
"""The roles whose presence gives a model heads or neurons at all."""
_COMPONENT_CLASS_MARKERS = {
    "head": ("attention", "deltanet"),
    "neuron": ("mlp", "feedforward", "ffn", "expert", "moe"),
}
"""Parts of transformers' class names (in lower case) that mark an attention or MLP module (``LlamaAttention``,
``NemotronHMLP``, ``RecurrentGemmaMlp``)."""

_UNIT_OF_ROLE: dict[str, UnitKind] = {
    **{role: "head" for role in ("W_Q", "b_Q", "W_O")},
    **{role: "kv_head" for role in ("W_K", "W_V", "b_K", "b_V")},
    **{role: "neuron" for role in ("W_in", "W_gate", "b_in", "b_gate", "W_out")},
    # One expert's projections held as its own module (Switch Transformers' experts.expert_{e}.wi / .wo), which
    # reads and writes its hidden units like an MLP; a batched stack of experts gets its layout from its adapter.
    **{role: "neuron" for role in ("W_experts_in", "b_experts_in", "W_experts_out")},
}


def unstored_parameters(bridge: Bridge) -> set[int]:
    """The ids of the parameters that the model's Hugging Face checkpoint does not store (transformers'
    ``_keys_to_ignore_on_save``) and that ``from_pretrained`` rebuilds at every load: Marian's sinusoidal position
    tables, a fixed function of the position (frozen, ``_freeze=True``), not a learned weight. No mask targets them:
    a mask asks which learned weights a subtask uses, and a masked copy of such a tensor could be neither exported
    nor reloaded (the loaded model would read the rebuilt table)."""
    original = getattr(bridge, "original_model", None)
    unstored = set()
    for name in getattr(original, "_keys_to_ignore_on_save", None) or ():
        try:
            unstored.add(id(original.get_parameter(name)))
        except AttributeError:  # a buffer, or a name this configuration does not build
            continue
    return unstored


def _resolve_parameter(bridge: Bridge, key: str) -> tuple[str, nn.Module, nn.Parameter] | None:
    """Follow a TransformerLens key to the wrapped module that really holds the parameter.

    ``blocks.0.attn.q.weight`` names the bridge component ``blocks.0.attn.q``; the tensor lives on its
    ``_original_component`` (the Hugging Face or native module the component wraps).
    """
    component_path, _, attribute = key.rpartition(".")
    try:
        module = bridge.get_submodule(component_path)
    except AttributeError:
        return None
    path = component_path
    while "_original_component" in module._modules:
        module = module._modules["_original_component"]
        path += "._original_component"
    parameter = module._parameters.get(attribute)
    if not isinstance(parameter, nn.Parameter):
        return None
    return f"{path}.{attribute}", module, parameter
