"""DeepSeek V4 adapter (``DeepseekV4ForCausalLM``): the derived adapter plus where its attention keeps heads.

DeepSeek V4's attention projects queries through a low-rank pair (``q_a_proj``, ``q_a_norm``, ``q_b_proj``: head h
is rows ``h * d_head .. (h + 1) * d_head`` of ``q_b_proj``, then an unweighted RMSNorm per head), reads one shared
key/value head (``kv_proj``), and writes through a grouped low-rank output: the heads' outputs, concatenated
head-major, are cut into ``o_groups`` equal groups, ``o_a_proj`` (``DeepseekV4GroupedLinear``, stored
``[o_groups * o_lora_rank, n_heads * d_head / o_groups]``) projects group g with its rows
``g * o_lora_rank .. (g + 1) * o_lora_rank``, and ``o_b_proj`` mixes all groups into the residual stream.

Why hand-written (TransformerLens's map is not enough): TransformerLens maps the attention as a plain component
with these projections, declares no head layout (no weight conversions) and no ``hook_z``. Here ``W_Q`` is
``q_b_proj`` (heads on its rows) and ``W_O`` is ``o_a_proj``, the only matrix that reads one head alone: with
``n_heads / o_groups`` heads per group, head h is group ``h // heads_per_group``'s rows and columns
``(h % heads_per_group) * d_head ..`` (V4-Flash: 64 heads, 8 groups); with ``o_groups / n_heads`` groups per head,
head h is the rows of its groups, every column. Turning head h off (``head_mask="output"``) equals zeroing its slice
of ``o_a_proj``'s input, TransformerLens's ``attn.o_a_proj.hook_in``. ``kv_proj`` serves every head and ``o_b_proj``
reads every group: neither belongs to one head.
"""

from __future__ import annotations

from dataclasses import replace
from typing import ClassVar

from modmask_lens.adapters.base import TensorSpec
from modmask_lens.adapters.derived import DerivedAdapter
from modmask_lens.core.bridge import Bridge


class DeepseekV4Adapter(DerivedAdapter):
    """The derived adapter with DeepSeek V4's query and grouped output projections as head tensors."""

    name: ClassVar[str] = "deepseek_v4"
    architectures: ClassVar[tuple[str, ...]] = ("DeepseekV4ForCausalLM",)

    def tensor_specs(self, bridge: Bridge) -> list[TensorSpec]:
        """The derived adapter's specs with ``blocks.{i}.attn.q_b_proj.weight`` as ``W_Q`` and
        ``blocks.{i}.attn.o_a_proj.weight`` as ``W_O`` (head layouts in the module docstring); an ``o_a_proj``
        whose groups neither hold whole heads nor whole groups make a head stays a plain matrix (masked per weight
        or as a whole)."""
        specs = []
        for spec in super().tensor_specs(bridge):
            if spec.layer is not None and spec.key.endswith(".attn.q_b_proj.weight"):
                attention = bridge.get_submodule(f"blocks.{spec.layer}.attn._original_component")
                spec = replace(spec, role="W_Q", unit="head", unit_axis=0, unit_width=int(attention.head_dim))
            elif spec.layer is not None and spec.key.endswith(".attn.o_a_proj.weight"):
                spec = replace(spec, role="W_O", **_grouped_output_layout(bridge, spec))
            specs.append(spec)
        return specs


def _grouped_output_layout(bridge: Bridge, spec: TensorSpec) -> dict:
    """Where the heads of ``o_a_proj`` (``[o_groups * o_lora_rank, n_heads * d_head / o_groups]``) live, as
    :class:`TensorSpec` fields; ``{}`` when groups split heads unevenly."""
    attention = bridge.get_submodule(f"blocks.{spec.layer}.attn._original_component")
    n_heads, d_head, n_groups = int(attention.num_heads), int(attention.head_dim), int(attention.o_a_proj.n_groups)
    rows_per_group = spec.shape[0] // n_groups
    if n_heads % n_groups == 0:
        return {"unit": "head", "unit_axis": 1, "unit_width": d_head, "expert_axis": 0, "expert_width": rows_per_group}
    if n_groups % n_heads == 0:
        return {"unit": "head", "unit_axis": 0, "unit_width": rows_per_group * (n_groups // n_heads)}
    return {}
