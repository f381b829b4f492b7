"""Neurons of a mixture-of-experts layer live on two axes of each batched expert stack (expert and hidden unit; a
fused gate/up stack holds each hidden unit twice): :meth:`MaskUnit.expand` against masks built element by element."""

from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch

from modmask_lens.adapters import ModelShape, TensorSpec
from modmask_lens.masks.config import MaskConfig
from modmask_lens.masks.units import MaskUnit, build_units

N_EXPERTS, D_EXPERT, D_MODEL = 3, 4, 5
DIMS = ModelShape(n_layers=1, d_model=D_MODEL, n_heads=1, n_kv_heads=1, d_head=D_MODEL, d_mlp=None, d_vocab=7)


def stack(shape, unit_axis, layout="linear", unit_width=1, unit_repeats=1, expert_axis=0) -> TensorSpec:
    return TensorSpec(
        "blocks.0.mlp.experts.stack",
        "W_experts_in",
        0,
        "path",
        shape,
        "neuron",
        unit_axis,
        unit_width,
        layout,
        unit_repeats=unit_repeats,
        expert_axis=expert_axis,
    )


def by_hand(spec: TensorSpec, unit_mask: torch.Tensor, hidden_row_of) -> torch.Tensor:
    """The full mask: element (expert, row, column) takes neuron ``expert * D_EXPERT + hidden_row_of(row)``'s value,
    where ``row`` indexes the unit axis and the expert axis comes first or last as the spec says."""
    full = torch.empty(spec.shape)
    for index in itertools.product(*[range(size) for size in spec.shape]):
        expert, hidden_row = index[spec.expert_axis], index[spec.unit_axis]
        full[index] = unit_mask[expert * D_EXPERT + hidden_row_of(hidden_row)]
    return full


CASES = {
    # Mixtral's gate_up_proj: [expert, gate rows then up rows, d_model]
    "concatenated_gate_up": (stack((N_EXPERTS, 2 * D_EXPERT, D_MODEL), 1, unit_repeats=2), lambda row: row % D_EXPERT),
    # GPT-OSS's gate_up_proj: [expert, d_model, gate0 up0 gate1 up1 ...]
    "interleaved_transposed_gate_up": (
        stack((N_EXPERTS, D_MODEL, 2 * D_EXPERT), 2, "conv1d", unit_width=2),
        lambda row: row // 2,
    ),
    # Mixtral's down_proj: [expert, d_model, hidden]
    "down": (stack((N_EXPERTS, D_MODEL, D_EXPERT), 2), lambda row: row),
    # a stack with the expert axis last: [hidden, d_model, expert]
    "expert_axis_last": (stack((D_EXPERT, D_MODEL, N_EXPERTS), 0, "conv1d", expert_axis=2), lambda row: row),
}


@pytest.mark.parametrize("case", CASES)
def test_expand_places_each_expert_neuron_where_the_stack_keeps_it(case):
    spec, hidden_row_of = CASES[case]
    unit_mask = torch.randn(N_EXPERTS * D_EXPERT)
    unit = MaskUnit("blocks.0.mlp", (N_EXPERTS * D_EXPERT,), (spec,))
    expanded = unit.expand(unit_mask, spec)
    assert expanded.dim() == 3 and expanded.numel() < spec.numel  # broadcast, not materialised
    torch.testing.assert_close(expanded.expand(spec.shape), by_hand(spec, unit_mask, hidden_row_of), rtol=0, atol=0)


@pytest.mark.parametrize("case", CASES)
def test_an_expert_stack_counts_n_experts_times_d_expert_neurons(case):
    assert CASES[case][0].unit_count == N_EXPERTS * D_EXPERT


def test_expected_kept_counts_every_weight_of_a_kept_neuron_once():
    spec = CASES["concatenated_gate_up"][0]
    unit = MaskUnit("blocks.0.mlp", (N_EXPERTS * D_EXPERT,), (spec,))
    kept = torch.zeros(N_EXPERTS * D_EXPERT)
    kept[[0, 7]] = 1.0
    assert unit.expected_kept(kept).item() == 2 * (2 * D_MODEL)  # two neurons, a gate row and an up row each


def test_matrix_axes_of_an_expert_stack_skip_its_expert_axis():
    linear, conv1d = CASES["concatenated_gate_up"][0], CASES["interleaved_transposed_gate_up"][0]
    assert (linear.input_axis, linear.output_axis) == (2, 1)
    assert (conv1d.input_axis, conv1d.output_axis) == (1, 2)


def test_a_shared_expert_reads_its_slice_of_the_layer_s_neurons():
    """Routed experts own neurons 0..11, the shared expert's 6 hidden units (``unit_offset=12``) neurons 12..17."""
    routed = CASES["down"][0]
    shared = TensorSpec(
        "blocks.0.mlp.shared_expert.out.weight", "W_out", 0, "p", (D_MODEL, 6), "neuron", 1, 1, "linear"
    )
    shared = dataclasses.replace(shared, unit_offset=N_EXPERTS * D_EXPERT)
    [unit] = build_units(
        [routed, shared], MaskConfig(granularity="neuron", kinds=("linear",), neuron_mask="in-out"), DIMS
    )
    assert unit.shape == (N_EXPERTS * D_EXPERT + 6,)
    unit_mask = torch.arange(float(unit.numel))
    torch.testing.assert_close(unit.expand(unit_mask, shared), torch.arange(12.0, 18.0).view(1, 6))
    torch.testing.assert_close(unit.expand(unit_mask, routed).expand(routed.shape)[2, 0], torch.arange(8.0, 12.0))


def test_neuron_tensors_whose_ranges_overlap_are_refused():
    routed = CASES["down"][0]
    clash = TensorSpec("blocks.0.mlp.out.weight", "W_out", 0, "p", (D_MODEL, 6), "neuron", 1, 1, "linear")
    with pytest.raises(ValueError, match="disagree on the neuron count"):
        build_units([routed, clash], MaskConfig(granularity="neuron", kinds=("linear",), neuron_mask="in-out"), DIMS)


def test_a_shared_expert_selected_without_the_routed_experts_is_refused():
    """Neurons 0..11 (the routed experts) would have logits that mask no tensor."""
    shared = TensorSpec(
        "blocks.0.mlp.shared_expert.out.weight", "W_out", 0, "p", (D_MODEL, 6), "neuron", 1, 1, "linear"
    )
    shared = dataclasses.replace(shared, unit_offset=N_EXPERTS * D_EXPERT)
    with pytest.raises(ValueError, match="leave some of their layer's neurons .* without any tensor"):
        build_units([shared], MaskConfig(granularity="neuron", kinds=("linear",), neuron_mask="in-out"), DIMS)


def test_a_grouped_projection_gives_each_head_its_groups_rows_and_its_columns():
    """DeepSeek V4's ``o_a_proj``: 3 groups of 4 rows, each reading 2 heads of width 5 (columns 0-4 and 5-9); head
    ``group * 2 + j`` owns rows ``group * 4 ..`` and columns ``j * 5 ..``."""
    rows, heads_per_group, d_head, n_groups = 4, 2, 5, 3
    spec = TensorSpec(
        "blocks.0.attn.o_a_proj.weight",
        "W_O",
        0,
        "path",
        (n_groups * rows, heads_per_group * d_head),
        "head",
        1,
        d_head,
        "linear",
        expert_axis=0,
        expert_width=rows,
    )
    assert spec.unit_count == n_groups * heads_per_group and spec.input_axis == 1 and spec.output_axis == 0
    head_values = torch.arange(6.0) + 10
    expected = torch.tensor(
        [[10 + (row // rows) * heads_per_group + column // d_head for column in range(10)] for row in range(12)]
    )
    unit = MaskUnit("blocks.0.attn", (6,), (spec,))
    torch.testing.assert_close(unit.expand(head_values, spec).expand(spec.shape), expected.float())
