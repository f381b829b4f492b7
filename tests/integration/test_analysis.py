"""Analyses on hand-built masks, checked against brute-force counts and greedy decoding."""

from __future__ import annotations

import dataclasses

import pandas as pd
import pytest
import torch
from conftest import boot_native

from modmask_lens import CSORDAS_TRAINING, BinaryMask, MaskConfig, MaskSet, SubtaskData, TrainConfig
from modmask_lens.analysis import (
    beta_sweep,
    exact_match,
    inverse_mask,
    mask_accuracy,
    output_row_removal,
    pairwise_overlap,
    paper_table,
    seed_stability,
    shared_fraction,
    unit_importance,
)
from modmask_lens.masks.config import PARAMETER_KINDS
from modmask_lens.testing.copy_task import FIRST, SECOND, build_model, copy_subtask


def random_masks(bridge, names, keep=0.6, config=MaskConfig()):
    template = MaskSet.for_bridge(bridge, config).binary()
    generator = torch.Generator().manual_seed(0)
    return {
        name: BinaryMask(
            template.specs,
            {key: torch.rand(kept.shape, generator=generator) < keep for key, kept in template.kept.items()},
            template.origin,
            name,
        )
        for name in names
    }


def brute_force_sets(mask: BinaryMask, keys) -> set:
    return {(key, index) for key in keys for index in mask.kept[key].flatten().nonzero().flatten().tolist()}


@pytest.fixture(scope="module")
def native_bridge():
    return boot_native()


def test_pairwise_iou_and_iomin_equal_brute_force_set_counts(native_bridge):
    masks = random_masks(native_bridge, ["a", "b", "c"])
    table = pairwise_overlap(masks, by="layer_role")
    assert len(table) == 3 * table.groupby(["layer", "role"], dropna=False).ngroups
    for row in table.sample(8, random_state=0).itertuples():
        same_layer = (
            (lambda layer: layer is None) if pd.isna(row.layer) else (lambda layer, row=row: layer == row.layer)
        )
        keys = [spec.key for spec in masks["a"].specs if spec.role == row.role and same_layer(spec.layer)]
        set_a, set_b = brute_force_sets(masks[row.mask_a], keys), brute_force_sets(masks[row.mask_b], keys)
        assert row.intersection == len(set_a & set_b) and row.union == len(set_a | set_b)
        assert row.iou == pytest.approx(len(set_a & set_b) / len(set_a | set_b))
        assert row.iomin == pytest.approx(len(set_a & set_b) / min(len(set_a), len(set_b)))
    pooled = pairwise_overlap(masks, by="all")
    keys = [spec.key for spec in masks["a"].specs]
    set_a, set_c = brute_force_sets(masks["a"], keys), brute_force_sets(masks["c"], keys)
    row = pooled[(pooled.mask_a == "a") & (pooled.mask_b == "c")].iloc[0]
    assert row.iou == pytest.approx(len(set_a & set_c) / len(set_a | set_c))


def test_shared_fraction_equals_brute_force(native_bridge):
    masks = random_masks(native_bridge, ["a", "b", "c"], keep=0.3)
    table = shared_fraction(masks, by="all").set_index("mask")
    keys = [spec.key for spec in masks["a"].specs]
    sets = {name: brute_force_sets(mask, keys) for name, mask in masks.items()}
    for name in masks:
        others = set().union(*[sets[other] for other in masks if other != name])
        assert table.loc[name, "shared_fraction"] == pytest.approx(len(sets[name] & others) / len(sets[name]))


def test_identical_masks_have_iou_one_and_disjoint_masks_zero(native_bridge):
    mask = random_masks(native_bridge, ["a"])["a"]
    complement = mask.inverse(kinds=PARAMETER_KINDS)
    table = pairwise_overlap({"a": mask, "same": mask, "complement": complement}, by="all").set_index(
        ["mask_a", "mask_b"]
    )
    assert table.loc[("a", "same"), "iou"] == 1.0 and table.loc[("a", "complement"), "iou"] == 0.0


def test_grouping_head_masks_by_neuron_names_the_groupings_that_apply(native_bridge):
    masks = random_masks(native_bridge, ["a", "b"], config=MaskConfig(granularity="head"))
    with pytest.raises(ValueError, match="masks no neuron units .*roles: \\['W_O'\\]\\); group by layer_role"):
        pairwise_overlap(masks, by="neuron")
    with pytest.raises(ValueError, match="masks no neuron units"):
        shared_fraction(masks, by="neuron")
    assert len(pairwise_overlap(masks, by="head")) > 0


def test_inverse_mask_with_control_keeps_the_control_on_io_layers(native_bridge):
    masks = random_masks(native_bridge, ["task", "control"])
    inverted = inverse_mask(masks["task"], masks["control"])
    for spec in masks["task"].specs:
        task_kept = masks["task"].kept[spec.key]
        if spec.role == "W_U":
            expected = masks["control"].kept[spec.key]
        else:
            expected = ~task_kept if spec.kind == "linear" else torch.ones_like(task_kept)
        assert torch.equal(inverted.kept[spec.key], expected), spec.key


def test_inverse_mask_refuses_a_control_of_another_model_and_keeps_what_the_control_leaves_unmasked(native_bridge):
    """A control of another model with the same shapes was read without a word; a control that leaves W_U unmasked
    raised a bare KeyError('unembed.weight') (mask_accuracy: after the full model's evaluation)."""
    task = random_masks(native_bridge, ["task"])["task"]
    other_model = random_masks(boot_native(seed=1), ["control"])["control"]
    with pytest.raises(ValueError, match=r"made for different models \(weights_sha256 differ\)"):
        inverse_mask(task, other_model)
    queries_only = MaskSet.for_bridge(native_bridge, MaskConfig(roles=("W_Q",))).binary()
    inverted = inverse_mask(task, queries_only)
    for spec in task.specs:
        kept = task.kept[spec.key]
        expected = ~kept if spec.kind == "linear" and spec.role != "W_U" else torch.ones_like(kept)
        assert torch.equal(inverted.kept[spec.key], expected), spec.key


def test_the_inverse_removes_linear_weights_and_keeps_norm_gains_by_default(native_bridge):
    mask = random_masks(native_bridge, ["task"])["task"]
    kinds = {spec.kind for spec in mask.specs}
    assert {"linear", "norm"} <= kinds
    for inverse in (~mask, mask.inverse()):
        for spec in mask.specs:
            kept = mask.kept[spec.key]
            expected = ~kept if spec.kind == "linear" else torch.ones_like(kept)
            assert torch.equal(inverse.kept[spec.key], expected), spec.key
    complement = mask.inverse(kinds=PARAMETER_KINDS)
    assert all(torch.equal(complement.kept[spec.key], ~mask.kept[spec.key]) for spec in mask.specs)


def test_the_inverse_beyond_a_control_removes_only_what_the_control_does_not_keep(native_bridge):
    masks = random_masks(native_bridge, ["task", "control"])
    inverse = masks["task"].inverse(beyond=masks["control"])
    for spec in masks["task"].specs:
        task_kept, control_kept = masks["task"].kept[spec.key], masks["control"].kept[spec.key]
        removed = [
            (index, bool(t and not c))
            for index, (t, c) in enumerate(zip(task_kept.flatten().tolist(), control_kept.flatten().tolist()))
        ]
        for index, is_removed in removed:
            expected = not is_removed if spec.kind == "linear" else True
            assert bool(inverse.kept[spec.key].flatten()[index]) == expected, (spec.key, index)


def test_the_inverse_names_unknown_kinds(native_bridge):
    mask = random_masks(native_bridge, ["task"])["task"]
    with pytest.raises(ValueError, match="unknown kinds.*choose from"):
        mask.inverse(kinds=("weights",))


def test_a_binary_mask_refuses_flags_not_shaped_like_its_tensors(native_bridge):
    """Flags of another shape broadcast when applied but are counted as they are: a [d_model] row of ones for a
    [d_mlp, d_model] W_in read 32 of 2048 weights kept, where the masked model keeps all 2048."""
    template = MaskSet.for_bridge(native_bridge).binary()
    key = next(spec.key for spec in template.specs if spec.role == "W_in")
    row = torch.ones(template.kept[key].shape[-1], dtype=torch.bool)
    for kept in (
        template.kept | {key: row},
        template.kept | {key: template.kept[key].float()},
        {name: flags for name, flags in template.kept.items() if name != key},
        template.kept | {"blocks.0.mlp.extra.weight": row},
    ):
        with pytest.raises(ValueError, match="kept needs one bool tensor of each spec's shape"):
            BinaryMask(template.specs, kept, template.origin)


def test_the_inverse_reads_one_kind_named_as_a_string(native_bridge):
    """kinds="norm" (or ("norm") without its comma) was read as its letters: "unknown kinds ['m', 'n', 'o', 'r']"."""
    mask = random_masks(native_bridge, ["task"])["task"]
    by_name, as_tuple = mask.inverse(kinds="norm"), mask.inverse(kinds=("norm",))
    assert all(torch.equal(by_name.kept[key], as_tuple.kept[key]) for key in mask.kept)
    assert any(spec.kind == "norm" and not by_name.kept[spec.key].all() for spec in mask.specs)


def test_output_row_removal_on_a_hand_built_unembedding_mask(native_bridge):
    masks = random_masks(native_bridge, ["task", "control"], keep=1.1)  # all kept
    key = next(spec.key for spec in masks["task"].specs if spec.role == "W_U")
    masks["task"].kept[key][3] = False  # nn.Linear W_U: row = output token
    masks["task"].kept[key][5, ::2] = False
    masks["control"].kept[key][7, :] = False  # the control drops token 7 altogether: undefined, NaN
    table = output_row_removal(masks["task"], masks["control"])
    assert table.token_id.tolist()[:2] == [3, 5]
    assert table.removed_fraction.tolist()[:2] == [1.0, 0.5]
    assert table.set_index("token_id").removed_fraction.isna()[7]
    assert (table.set_index("token_id").drop([3, 5, 7]).removed_fraction == 0).all()


def test_output_row_removal_refuses_a_control_of_another_model(native_bridge):
    """Another model's control of the same shapes was read without a word: token 3's row, dropped by the task,
    read removed_fraction 1.0 against flags of another model's W_U."""
    task = random_masks(native_bridge, ["task"], keep=1.1)["task"]
    task.kept[next(spec.key for spec in task.specs if spec.role == "W_U")][3] = False
    other_model = random_masks(boot_native(seed=1), ["control"], keep=1.1)["control"]
    with pytest.raises(ValueError, match=r"made for different models \(weights_sha256 differ\)"):
        output_row_removal(task, other_model)


def test_unit_importance_ranks_a_half_removed_head_below_full_ones(native_bridge):
    mask = random_masks(native_bridge, ["t"], keep=1.1)["t"]
    d_head = native_bridge.cfg.d_head
    mask.kept["blocks.1.attn.q.weight"][2 * d_head : 3 * d_head] = False  # head 2's W_Q slice, nn.Linear [out, in]
    heads = unit_importance(mask, "head")
    assert heads.iloc[-1][["layer", "head"]].tolist() == [1, 2] and heads.iloc[-1].kept_fraction == 0.5
    assert heads.iloc[-1]["rank"] == len(heads) == native_bridge.cfg.n_layers * native_bridge.cfg.n_heads
    neurons = unit_importance(mask, "neuron")
    assert len(neurons) == native_bridge.cfg.n_layers * native_bridge.cfg.d_mlp and (neurons.kept_fraction == 1).all()
    key_value_only = random_masks(native_bridge, ["kv"], config=MaskConfig(roles=("W_K", "W_V")))["kv"]
    with pytest.raises(ValueError, match="no W_Q, b_Q or W_O slice"):  # not an empty frame
        unit_importance(key_value_only, "head")


@pytest.fixture(scope="module")
def copy_model(tmp_path_factory):
    return build_model(tmp_path_factory.mktemp("copy"), steps=300)


def greedy_exact_match(bridge, data: SubtaskData) -> float:
    """Independent computation: decode every example token by token from its prompt and compare."""
    correct = 0
    for input_ids, labels in zip(data.input_ids, data.labels):
        answer_positions = (labels != -100).nonzero().flatten()
        sequence = input_ids[: answer_positions[0]].tolist()
        for position in answer_positions.tolist():
            with torch.no_grad():
                sequence.append(int(bridge(torch.tensor([sequence]))[0, -1].argmax()))
        correct += sequence[answer_positions[0] :] == labels[answer_positions].tolist()
    return correct / len(data)


def test_exact_match_equals_greedy_decoding(copy_model):
    data = copy_subtask("copy_first", FIRST, 0)
    subset = SubtaskData("subset", data.input_ids[::7], data.labels[::7])
    mask = random_masks(copy_model, ["m"], keep=0.8)["m"]
    assert exact_match(copy_model, subset) == greedy_exact_match(copy_model, subset) == 1.0
    from modmask_lens import masked

    with masked(copy_model, mask):
        expected = greedy_exact_match(copy_model, subset)
    assert exact_match(copy_model, subset, mask) == expected


def test_mask_accuracy_table_with_full_and_empty_masks(copy_model):
    data = {"copy_first": copy_subtask("copy_first", FIRST, 0), "copy_second": copy_subtask("copy_second", SECOND, 1)}
    everything = random_masks(copy_model, ["copy_first"], keep=1.1)["copy_first"]
    table = mask_accuracy(copy_model, {"copy_first": everything}, data)
    assert len(table) == 2 * 3
    summary = paper_table(table)
    assert summary.loc["copy_first"].tolist() == [1.0, 1.0, 0.0]
    assert table.set_index(["subtask", "condition"]).loc[("copy_second", "full"), "accuracy"] == 1.0
    # A control given as a mask set counts as its readout, as the masks do (a reviewer found an AttributeError).
    control = MaskSet.for_bridge(copy_model, name="control")
    as_set = mask_accuracy(copy_model, {"copy_first": everything}, data, control=control)
    as_binary = mask_accuracy(copy_model, {"copy_first": everything}, data, control=control.binary())
    pd.testing.assert_frame_equal(as_set, as_binary)


def test_seed_stability_and_beta_sweep(copy_model):
    data = copy_subtask("copy_first", FIRST, 0)
    config = TrainConfig(steps=60, batch_size=32, lr=0.05)
    same = seed_stability(copy_model, data, seeds=(3, 3), train_config=config)
    assert same.iou.tolist() == [1.0]
    different = seed_stability(copy_model, data, seeds=(0, 1), train_config=config, by="layer_role")
    assert ((different.iou >= 0) & (different.iou <= 1)).all() and (different.iou < 1).any()
    csordas = dataclasses.replace(CSORDAS_TRAINING, steps=60, batch_size=32, lr=0.05)
    sweep = beta_sweep(copy_model, data, betas=(0.0, 30.0), train_config=csordas)
    assert sweep.kept_fraction.iloc[0] > sweep.kept_fraction.iloc[1]
    assert sweep.accuracy.between(0, 1).all()


def test_concatenated_control_subtask_holds_every_example():
    first, second = copy_subtask("a", FIRST, 0), copy_subtask("b", SECOND, 1)
    short = SubtaskData("short", first.input_ids[:5, :4], first.labels[:5, :4])
    control = SubtaskData.concatenate("control", [first, second, short])
    assert len(control) == len(first) + len(second) + 5 and control.input_ids.shape[1] == first.input_ids.shape[1]
    assert torch.equal(control.labels[-5:, 4:], torch.full((5, 1), -100))
