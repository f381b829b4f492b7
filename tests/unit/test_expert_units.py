"""Neurons of a mixture-of-experts layer live on two axes of each batched expert stack (expert and hidden unit; a
fused gate/up stack holds each hidden unit twice): :meth:`MaskUnit.expand` against masks built element by element."""

from __future__ import annotations

import itertools

import pytest
import torch

from modmask_lens.adapters import TensorSpec
from modmask_lens.masks.units import MaskUnit

N_EXPERTS, D_EXPERT, D_MODEL = 3, 4, 5


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
