"""Mask units: which tensor elements share one logit, for each granularity.

A :class:`MaskUnit` owns one logit tensor and maps it onto the tensors it masks (its members). For ``weight``
granularity a unit is one tensor and its logits have the tensor's shape; for ``neuron`` a unit is one layer's MLP
(logits ``[d_mlp]``; for a mixture-of-experts layer ``[n_experts * d_expert]``, expert-major, then its shared
expert's hidden units if it has one), for ``head`` one layer's attention (logits ``[n_heads]``), for ``matrix`` one
tensor (a scalar logit). Expanding a unit's mask to a member gives a tensor that broadcasts against the member's
weight.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from itertools import pairwise

import torch
from jaxtyping import Float, Shaped
from torch import Tensor

from modmask_lens.adapters.base import ROLE_KINDS, ModelShape, TensorSpec
from modmask_lens.masks.config import NEURON_WRITERS, MaskConfig


@dataclass(frozen=True)
class MaskUnit:
    """One logit tensor and the tensors it masks.

    Attributes:
        name: ``blocks.0.attn.q.weight`` (weight / matrix granularity), ``blocks.0.attn`` (head),
            ``blocks.0.mlp`` (neuron).
        shape: shape of the logit tensor.
        members: the tensors this unit masks.
        heads_per_kv_head: query heads per key/value group (head granularity with grouped-query attention).
    """

    name: str
    shape: tuple[int, ...]
    members: tuple[TensorSpec, ...]
    heads_per_kv_head: int = 1

    @property
    def numel(self) -> int:
        return int(torch.Size(self.shape).numel())

    @property
    def per_element(self) -> bool:
        """One logit per element of its one member (weight granularity: the unit is named after its tensor). A head
        or neuron unit whose logit count happens to equal a member's size is not: a key/value bias of
        ``n_kv_heads * d_head == n_heads`` entries still takes its group's value."""
        return len(self.members) == 1 and self.name == self.members[0].key and self.shape == self.members[0].shape

    def expand(self, unit_mask: Shaped[Tensor, "*unit_shape"], member: TensorSpec) -> Tensor:
        """The mask of ``member`` as a tensor that broadcasts against the member's weight.

        Args:
            unit_mask: values for this unit's logits, shape :attr:`shape`.
            member: one of :attr:`members`.

        Returns:
            ``member.shape`` for weight granularity; a tensor of ones except along the unit axis (and the expert axis
            of an expert stack) for head and neuron granularity; a scalar for matrix granularity.

        >>> from modmask_lens.adapters import TensorSpec
        >>> gate_up = TensorSpec("experts.gate_up_proj", "W_experts_in", 0, "p", (2, 6, 4), "neuron", 1, 1, "linear",
        ...                      unit_repeats=2, expert_axis=0)  # 2 experts x 3 hidden units, gate rows then up rows
        >>> unit = MaskUnit("blocks.0.mlp", (6,), (gate_up,))
        >>> unit.expand(torch.arange(6.0), gate_up)[..., 0]
        tensor([[0., 1., 2., 0., 1., 2.],
                [3., 4., 5., 3., 4., 5.]])
        """
        return self._expand(unit_mask, member, lambda group: group.amax(dim=-1))

    def _expand(
        self,
        unit_values: Shaped[Tensor, "*unit_shape"],
        member: TensorSpec,
        any_head_of: Callable[[Float[Tensor, "kv_head group"]], Float[Tensor, " kv_head"]],
    ) -> Tensor:
        """:meth:`expand`, where ``any_head_of`` turns the values of a key/value group's query heads into the group's
        value: a key/value group is kept while any query head reading it is kept."""
        if self.per_element or self.shape == ():
            return unit_values
        # A layer's units may span several tensors: routed and shared experts' neurons, a decoder block's
        # self-attention and cross-attention heads.
        unit_mask = unit_values.narrow(-1, member.unit_offset, _query_units(member, self.heads_per_kv_head))
        if member.unit == "kv_head" and self.heads_per_kv_head > 1:
            unit_mask = any_head_of(unit_mask.view(-1, self.heads_per_kv_head))
        broadcast_shape = [1] * len(member.shape)
        if member.expert_axis is not None:
            broadcast_shape[member.expert_axis] = member.shape[member.expert_axis]
            unit_mask = unit_mask.reshape(member.shape[member.expert_axis] // member.expert_width, -1)
            if member.expert_width > 1:  # a grouped projection: each group's rows share its units' values
                unit_mask = unit_mask.repeat_interleave(member.expert_width, dim=0)
        per_element = unit_mask.repeat_interleave(member.unit_width, dim=-1) if member.unit_width > 1 else unit_mask
        if member.unit_repeats > 1:
            per_element = per_element.repeat(*[1] * (per_element.dim() - 1), member.unit_repeats)
        if member.expert_axis is not None and member.expert_axis > member.unit_axis:
            per_element = per_element.T
        broadcast_shape[member.unit_axis] = member.shape[member.unit_axis]
        return per_element.reshape(broadcast_shape)

    def expected_kept(self, kept_probability: Float[Tensor, "*unit_shape"]) -> Tensor:
        """Expected number of kept weights over all members, given each logit's keep probability (a scalar). The
        logits are sampled independently, so a key/value group is kept with probability ``1 - prod(1 - p)`` over
        its query heads."""
        total = kept_probability.new_zeros(())
        for member in self.members:
            expanded = self._expand(kept_probability, member, lambda group: 1 - (1 - group).prod(dim=-1))
            total = total + expanded.sum() * (member.numel // max(expanded.numel(), 1))
        return total


def build_units(specs: list[TensorSpec], config: MaskConfig, dims: ModelShape) -> list[MaskUnit]:
    """Group the selected tensors into mask units for ``config.granularity``.

    Raises:
        ValueError: when the configuration selects no tensor at all, names a layer the model lacks, or names a role
            that no selected kind holds (which would never be masked).
    """
    _check_selection(specs, config)
    selected = [spec for spec in specs if _is_selected(spec, config)]
    if config.granularity in ("weight", "matrix"):
        units = [MaskUnit(spec.key, spec.shape if config.granularity == "weight" else (), (spec,)) for spec in selected]
    else:
        unit_kind = "head" if config.granularity == "head" else "neuron"
        member_units = ("head", "kv_head") if unit_kind == "head" else ("neuron",)
        component = "attn" if config.granularity == "head" else "mlp"
        by_layer: dict[int, list[TensorSpec]] = {}
        for spec in selected:
            if spec.unit in member_units and spec.layer is not None:
                by_layer.setdefault(spec.layer, []).append(spec)
        units = [
            MaskUnit(
                f"blocks.{layer}.{component}",
                (_unit_count(members, unit_kind, dims.at_layer(layer)),),
                tuple(members),
                dims.at_layer(layer).heads_per_kv_head,
            )
            for layer, members in sorted(by_layer.items())
        ]
    if not units:
        layers = sorted({spec.layer for spec in specs if spec.layer is not None})
        has = f"layers {layers[0]}..{layers[-1]} and " if layers else ""
        raise ValueError(
            f"the mask configuration selects no tensor of this model ({config}); widen kinds/roles/layers: the model "
            f"has {has}roles {sorted({spec.role for spec in specs})}"
        )
    return units


def _unit_count(members: list[TensorSpec], unit_kind: str, dims: ModelShape) -> int:
    """Heads or neurons of a layer, read off its tensors (the config can be wrong: TransformerLens 4.3 reports
    ``d_mlp = 4 * d_model`` for OPT whatever its ``ffn_dim``); query heads from key/value tensors when only those
    are masked (``roles=("W_K",)``).

    A layer's units may span several tensors, each covering the range ``unit_offset`` on (``unit_count`` long, in
    query heads): a mixture-of-experts layer's routed experts, then its shared expert; a decoder block's
    self-attention heads, then its cross-attention heads. Ranges that differ must not overlap, and together they
    must cover the layer from unit 0.
    """
    ranges = sorted(
        {(member.unit_offset, member.unit_offset + _query_units(member, dims.heads_per_kv_head)) for member in members}
    )
    for (_, end), (start, _) in pairwise(ranges):
        if start < end:
            raise ValueError(f"the {unit_kind} tensors of {[m.key for m in members]} disagree on the {unit_kind} count")
    covered = [0] + [end for _, end in ranges]
    if any(start != end for (start, _), end in zip(ranges, covered, strict=False)):
        raise ValueError(
            f"the selected {unit_kind} tensors {[m.key for m in members]} leave some of their layer's {unit_kind}s "
            "(routed experts then a shared expert; self-attention then cross-attention) without any tensor, so "
            "those logits would mask nothing; select every tensor of the role (e.g. roles=('W_in', "
            "'W_experts_in')) or mask by weight"
        )
    return ranges[-1][1]


def _query_units(member: TensorSpec, heads_per_kv_head: int) -> int:
    """The units of a layer that ``member`` covers: its own, or for a key/value tensor the query heads reading it."""
    return member.unit_count * (heads_per_kv_head if member.unit == "kv_head" else 1)


def _check_selection(specs: list[TensorSpec], config: MaskConfig) -> None:
    """Refuse ``config.layers`` that the model lacks and ``config.roles`` outside ``config.kinds``' roles: either
    would silently mask less than asked. A role of a selected kind that this model lacks is allowed (families
    differ: a role list names what to mask where it exists)."""
    layers = sorted({spec.layer for spec in specs if spec.layer is not None})
    absent_layers = sorted(set(config.layers or ()) - set(layers))
    if absent_layers:
        has = f"layers {layers[0]}..{layers[-1]}" if layers else "no layers"
        raise ValueError(f"MaskConfig layers {absent_layers} are not in this model: it has {has}")
    if config.roles is None:
        return
    selectable = {role for kind in config.kinds for role in ROLE_KINDS[kind]}
    unselectable = [role for role in config.roles if role not in selectable]
    if unselectable:
        owners = {role: kind for kind, roles in ROLE_KINDS.items() for role in roles}
        reasons = [
            f"{role!r} is a {owners[role]!r} role: add {owners[role]!r} to kinds"
            if role in owners
            else f"{role!r} is no role (modmask_lens.adapters.base.ROLE_KINDS lists them)"
            for role in unselectable
        ]
        raise ValueError(f"MaskConfig roles would never be masked with kinds={config.kinds}: {'; '.join(reasons)}")


def _is_selected(spec: TensorSpec, config: MaskConfig) -> bool:
    if spec.kind not in config.kinds:
        return False
    if config.roles is not None and spec.role not in config.roles:
        return False
    if config.roles is None and config.granularity == "head" and config.head_mask == "output" and spec.role != "W_O":
        return False
    if (
        config.roles is None
        and config.granularity == "neuron"
        and config.neuron_mask == "output"
        and spec.role not in NEURON_WRITERS
    ):
        return False
    return config.layers is None or spec.layer in config.layers
