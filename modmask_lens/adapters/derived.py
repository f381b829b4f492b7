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
from the block mapping having no ``ln2``. Everything a hand-written adapter said for Llama, Mistral, Qwen2, GPT-2,
OPT and TransformerLens-native models is read from there.
"""

from __future__ import annotations

import re
from typing import ClassVar, Literal

from torch import nn
from transformers.pytorch_utils import Conv1D

from modmask_lens.adapters.base import Adapter, MatrixLayout, ReaderKind
from modmask_lens.core.bridge import Bridge

_GROUP = re.compile(r"\((?P<outer>\w+)\s+(?P<inner>\w+)\)")
_LAYER_INDEX = re.compile(r"\.\d+\.")
_MATRIX_ROLES_WITH_HEADS_ON_INPUT = ("W_O",)


class DerivedAdapter(Adapter):
    """The adapter of any family TransformerLens maps, built from ``bridge.adapter`` by :meth:`for_bridge`.

    Attributes:
        head_axes: canonical key pattern (``blocks.{i}.attn.q.weight``) -> the stored axis that holds heads, as
            TransformerLens's rearrange pattern for that key declares it.
        parallel_blocks: attention and MLP read the same norm (no ``ln2`` in the block mapping).
    """

    name: ClassVar[str] = "transformer_lens"
    former_names: ClassVar[tuple[str, ...]] = ("gpt2", "llama", "native", "generic", "gpt_neox")
    """The hand-written adapters this one replaced (they said nothing TransformerLens's map does not)."""

    def __init__(self, head_axes: dict[str, int] | None = None, parallel_blocks: bool = False) -> None:
        self.head_axes = head_axes or {}
        self.parallel_blocks = parallel_blocks

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
        return cls(head_axes, parallel_blocks=bool(block_parts) and "ln2" not in block_parts)

    def reader_norm(self, reader: ReaderKind, layer: int | None) -> tuple[str, int | None] | None:
        """As :meth:`Adapter.reader_norm`; in a parallel block (GPT-J, Phi) the MLP reads ``ln1`` like the heads."""
        if reader == "mlp" and self.parallel_blocks:
            return "ln1.w", layer
        return super().reader_norm(reader, layer)

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
