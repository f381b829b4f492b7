"""The shipped tracr programs (Lindner et al. 2023): they load without jax, reproduce tracr's outputs, and their
ground truth (used heads, MLPs, neurons) is sufficient, necessary where the card says so, and shaped as
``units_for``."""

from __future__ import annotations

import sys

import pytest
import torch
from safetensors.torch import load_file

from modmask_lens.analysis.accuracy import exact_match
from modmask_lens.core.data import SubtaskData
from modmask_lens.core.encoding import IGNORE_INDEX
from modmask_lens.groundtruth.case import GroundTruthCase
from modmask_lens.groundtruth.controls import random_init_bridge, shuffled_answers
from modmask_lens.groundtruth.tracr_cases import (
    TRACR_DIR,
    TRUTH_GRANULARITIES,
    load_tracr_case,
    tracr_cases,
    tracr_program_names,
    truth_mask,
    truth_units,
)
from modmask_lens.masks.apply import masked
from modmask_lens.masks.config import MaskConfig
from modmask_lens.masks.mask_set import units_for

NAMES = tracr_program_names()


@pytest.fixture(scope="module", params=NAMES)
def case(request) -> GroundTruthCase:
    return load_tracr_case(request.param)


def program(case: GroundTruthCase) -> str:
    return case.name.removeprefix("tracr/")


def without(case: GroundTruthCase, granularity: str, removed: list[tuple[str, int | None]]):
    """A binary mask keeping every unit of ``granularity`` except ``removed`` ((unit name, index or None = all))."""
    kept = {
        unit.name: torch.ones(unit.shape, dtype=torch.bool)
        for unit in units_for(case.bridge, MaskConfig(granularity=granularity))
    }
    for unit_name, index in removed:
        kept[unit_name][slice(None) if index is None else index] = False
    return truth_mask(case.bridge, kept, granularity)


def test_ships_reverse_hist_and_sort_unique():
    assert {"reverse", "hist", "sort_unique"} <= set(NAMES)
    assert [case.name for case in tracr_cases()] == [f"tracr/{name}" for name in NAMES]


def test_loading_imports_neither_jax_nor_tracr():
    assert "jax" not in sys.modules and "tracr" not in sys.modules


def test_unknown_program_names_the_shipped_ones():
    with pytest.raises(ValueError, match="reverse"):
        load_tracr_case("no_such_program")


def test_bridge_reproduces_tracr_reference_outputs(case):
    reference = load_file(TRACR_DIR / program(case) / "reference.safetensors")
    with torch.no_grad():
        logits = case.bridge(reference["input_ids"])
    scored = reference["output_ids"] != IGNORE_INDEX
    assert torch.equal(logits.argmax(-1)[scored], reference["output_ids"][scored])
    torch.testing.assert_close(logits[scored], reference["output_logits"][scored], atol=1e-5, rtol=0)


def test_pad_keys_get_no_attention(case):
    """Outputs at BOS x_1 .. x_n are the same whether or not PADs follow (the PAD mask of every used head)."""
    data = case.test[program(case)]
    longest = data.input_ids[-1:]
    length = int((longest != 0).sum())
    with torch.no_grad():
        padded = case.bridge(longest)[:, :length]
        unpadded = case.bridge(longest[:, :length])
    torch.testing.assert_close(padded, unpadded, atol=1e-6, rtol=0)


def test_labels_are_outputs_shifted_one_position(case):
    reference = load_file(TRACR_DIR / program(case) / "reference.safetensors")
    data = case.train[program(case)]
    assert torch.equal(data.input_ids, reference["input_ids"])
    assert torch.equal(data.labels[:, 1:], reference["output_ids"][:, :-1])
    assert bool((data.labels[:, :2] == IGNORE_INDEX).all())


def test_labels_fit_the_output_vocabulary_and_no_further(case):
    """Labels index the logits: ``check_fits`` measures them against ``d_vocab_out``, which is wider than the input
    vocabulary in ``hist`` and narrower in ``reverse``."""
    data = case.train[program(case)]
    data.check_fits(case.bridge)
    outputs = case.bridge.cfg.d_vocab_out
    beyond = SubtaskData(data.name, data.input_ids, torch.where(data.labels == IGNORE_INDEX, IGNORE_INDEX, outputs))
    with pytest.raises(ValueError, match=rf"outside the model's output vocabulary \[0, {outputs}\)"):
        beyond.check_fits(case.bridge)


def test_full_model_scores_every_example(case):
    assert exact_match(case.bridge, case.train[program(case)]) == 1.0
    assert exact_match(case.bridge, case.test[program(case)]) == 1.0


@pytest.mark.parametrize("granularity", TRUTH_GRANULARITIES)
def test_truth_alone_scores_every_example(case, granularity):
    truth = case.truth[program(case)][granularity]
    assert exact_match(case.bridge, case.test[program(case)], truth_mask(case.bridge, truth, granularity)) == 1.0


def test_each_used_head_is_necessary(case):
    truth = case.truth[program(case)]["head"]
    used = [(name, int(index)) for name, heads in truth.items() for index in heads.nonzero().flatten()]
    assert used
    for unit_name, head in used:
        accuracy = exact_match(case.bridge, case.test[program(case)], without(case, "head", [(unit_name, head)]))
        assert accuracy < 1.0, (unit_name, head)


def test_each_used_mlp_layer_is_necessary(case):
    truth = case.truth[program(case)]["neuron"]
    used = [name for name, neurons in truth.items() if bool(neurons.any())]
    assert used == [f"blocks.{layer}.mlp" for layer in case.card["truth"]["mlp_layers"]]
    for unit_name in used:
        accuracy = exact_match(case.bridge, case.test[program(case)], without(case, "neuron", [(unit_name, None)]))
        assert accuracy < 1.0, unit_name


@pytest.mark.parametrize("granularity", ["head", "neuron"])
def test_removing_every_unused_unit_changes_no_logit(case, granularity):
    truth = case.truth[program(case)][granularity]
    unused = [(name, int(index)) for name, units in truth.items() for index in (~units).nonzero().flatten()]
    input_ids = case.test[program(case)].input_ids
    with torch.no_grad():
        full = case.bridge(input_ids)
        with masked(case.bridge, without(case, granularity, unused)):
            ablated = case.bridge(input_ids)
    assert torch.equal(full, ablated)


def test_card_records_which_neurons_are_individually_necessary(case):
    """Neuron truth is structural (nonzero in and out weights); the card says whether each neuron is needed."""
    measured = case.card["ablations"]["neurons"]
    truth = case.truth[program(case)]["neuron"]
    assert len(measured) == sum(int(neurons.sum()) for neurons in truth.values())
    assert case.card["each_used_unit_necessary"]["neuron"] == all(n["exact_match_without"] < 1 for n in measured)
    assert case.unique == all(case.card["each_used_unit_necessary"].values())


@pytest.mark.parametrize("granularity", TRUTH_GRANULARITIES)
def test_truth_has_the_names_and_shapes_of_units_for(case, granularity):
    truth = case.truth[program(case)][granularity]
    units = {unit.name: unit.shape for unit in units_for(case.bridge, MaskConfig(granularity=granularity))}
    expected = {name: shape for name, shape in units.items() if name != "unembed.weight"}
    assert {name: tuple(value.shape) for name, value in truth.items()} == expected
    assert all(value.dtype == torch.bool for value in truth.values())


def test_weight_truth_is_the_nonzero_weights_of_used_heads_and_neurons(case):
    weight_truth = case.truth[program(case)]["weight"]
    head_truth = truth_units(case.bridge, case.card["truth"], "head")
    for layer in range(case.bridge.cfg.n_layers):
        query = weight_truth[f"blocks.{layer}.attn.q.weight"].view(case.bridge.cfg.n_heads, -1)
        assert torch.equal(query.any(dim=1), head_truth[f"blocks.{layer}.attn"])
    kept = sum(int(value.sum()) for value in weight_truth.values())
    nonzero = sum(
        int((case.bridge.get_parameter(spec.path) != 0).sum())
        for unit in units_for(case.bridge, MaskConfig(granularity="weight"))
        for spec in unit.members
        if spec.key != "unembed.weight"
    )
    assert kept == nonzero  # every nonzero block weight belongs to a used head or neuron


def test_programs_built_elsewhere_load_from_their_folder(tmp_path):
    import shutil

    from modmask_lens.groundtruth.tracr_cases import TRACR_DIR, tracr_cases, tracr_program_names

    shutil.copytree(TRACR_DIR / "hist", tmp_path / "mine")
    assert tracr_program_names(tmp_path) == ["mine"]
    (case,) = tracr_cases(tmp_path)
    shipped = load_tracr_case("hist")
    assert case.name == "tracr/mine" and torch.equal(case.train["mine"].labels, shipped.train["hist"].labels)
    with pytest.raises(ValueError, match="no tracr program 'hist' in .*there: \\['mine'\\]"):
        load_tracr_case("hist", tmp_path)
    with pytest.raises(ValueError, match="not a folder of tracr programs"):
        tracr_program_names(tmp_path / "absent")
    from modmask_lens.groundtruth import tracr_cases as exported  # the package's function, not the submodule

    assert [case.name for case in exported(tmp_path)] == ["tracr/mine"]


def test_a_program_whose_used_head_no_answer_needs_loads_with_a_warning(tmp_path):
    import json
    import shutil

    from modmask_lens.groundtruth.tracr_cases import TRACR_DIR

    shutil.copytree(TRACR_DIR / "hist", tmp_path / "ignored")
    card_path = tmp_path / "ignored" / "card.json"
    card = json.loads(card_path.read_text())
    card["each_used_unit_necessary"]["head"] = False  # as the build records for an output that ignores a head
    card_path.write_text(json.dumps(card))
    with pytest.warns(UserWarning, match="'ignored': some used heads are not necessary"):
        load_tracr_case("ignored", tmp_path)


def test_a_program_whose_output_ties_where_the_argmax_agrees_is_refused(tmp_path):
    import shutil

    from safetensors.torch import save_file

    from modmask_lens.groundtruth.tracr_cases import TRACR_DIR

    # As lib.detect_pattern(tokens, "ab") is at position 1 of every input: all output values ~0, so tracr's answer
    # there (and the bridge's, which matches it) is the argmax of rounding. One such position here.
    shutil.copytree(TRACR_DIR / "hist", tmp_path / "tied")
    path = tmp_path / "tied" / "reference.safetensors"
    reference = load_file(path)
    example, position = (reference["output_ids"] != IGNORE_INDEX).nonzero()[0].tolist()
    answer = int(reference["output_ids"][example, position])
    reference["output_logits"][example, position] = 0.0
    reference["output_logits"][example, position, answer] = 6e-9  # the recorded answer stays the argmax
    assert int(reference["output_logits"][example, position].argmax()) == answer
    save_file(reference, path)
    with pytest.raises(ValueError, match=f"'tied': its output ties at 1 of .* at position {position}"):
        load_tracr_case("tied", tmp_path)


def test_shuffled_answers_move_only_between_inputs_of_one_length():
    data = load_tracr_case("sort_unique").train["sort_unique"]
    shuffled = shuffled_answers(data, seed=0)
    scored = data.labels != IGNORE_INDEX
    assert torch.equal(shuffled.labels != IGNORE_INDEX, scored)  # every example keeps its answer positions
    assert torch.equal(shuffled.input_ids, data.input_ids)  # the program's inputs are not its answers: they stay
    for length in scored.sum(dim=1).unique():
        group = scored.sum(dim=1) == length
        before = sorted(map(tuple, data.labels[group].tolist()))
        assert sorted(map(tuple, shuffled.labels[group].tolist())) == before  # the group's answers, permuted
    assert (shuffled.labels != data.labels).any(dim=1).float().mean() > 0.3


def test_shuffled_answers_refuse_data_where_no_two_examples_share_answer_positions():
    data = load_tracr_case("sort_unique").train["sort_unique"]
    lengths = (data.labels != IGNORE_INDEX).sum(dim=1)
    one_per_length = torch.stack([torch.nonzero(lengths == length)[0, 0] for length in lengths.unique()])
    single = SubtaskData(data.name, data.input_ids[one_per_length], data.labels[one_per_length])
    with pytest.raises(ValueError, match="no two examples score the same positions"):
        shuffled_answers(single)
    odd_one = data.labels[-1:].clone()
    odd_one[0, int(torch.nonzero(odd_one[0] != IGNORE_INDEX)[0, 0])] = IGNORE_INDEX  # a layout no other has
    extended = SubtaskData(data.name, data.input_ids[[*range(len(data)), -1]], torch.cat([data.labels, odd_one]))
    with pytest.warns(UserWarning, match="1 of 326 examples share their answer positions with no other"):
        shuffled = shuffled_answers(extended)
    assert torch.equal(shuffled.labels[-1], odd_one[0])


def test_shuffled_answers_warn_where_many_examples_keep_their_own_answer():
    """Many inputs of sort_unique sort to the same output, so a permutation leaves their answers as they were."""
    data = load_tracr_case("sort_unique").train["sort_unique"]
    with pytest.warns(UserWarning, match=r"examples \(\d+%\) still have their own answer") as caught:
        shuffled = shuffled_answers(data)
    share = int((shuffled.labels == data.labels).all(dim=1).sum()) / len(data)
    assert share > 0.25 and f"({share:.0%})" in str(caught[0].message)


def test_random_init_control_reboots_a_native_bridge_from_its_config_and_seed():
    case = load_tracr_case("reverse")
    with torch.random.fork_rng(devices=[]):
        state = torch.get_rng_state()
        fresh = random_init_bridge(case.bridge, seed=3).state_dict()
        assert torch.equal(torch.get_rng_state(), state), "building the control moved torch's global generator"
        again = random_init_bridge(case.bridge, seed=3).state_dict()
        other = random_init_bridge(case.bridge, seed=4).state_dict()
    compiled = case.bridge.state_dict()
    assert {key: value.shape for key, value in fresh.items()} == {key: value.shape for key, value in compiled.items()}
    weight = "blocks.0.attn.q.weight"
    assert not torch.equal(fresh[weight], compiled[weight]) and not torch.equal(fresh[weight], other[weight])
    assert all(torch.equal(fresh[key], again[key]) for key in fresh)
