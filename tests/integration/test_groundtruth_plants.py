"""The shipped plants: their answer keys line up with the masks, their cards' measurements hold when re-measured,
and a disconnected plant's cross weights are exactly zero."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
import torch
from conftest import boot_gemma4_with_double_wide_mlp, boot_gemma4_with_fewer_global_key_value_heads

from experiments.groundtruth import plant_training
from modmask_lens.adapters import adapter_for
from modmask_lens.adapters.base import model_shape
from modmask_lens.core.encoding import IGNORE_INDEX
from modmask_lens.groundtruth import PLANTS, available_plants, load_plant
from modmask_lens.groundtruth.ablations import keep_only, remove, remove_random_part, unit_removals
from modmask_lens.groundtruth.digits import digit_tokenizer
from modmask_lens.groundtruth.evaluation import exact_match, masked_logits
from modmask_lens.groundtruth.measure import is_unique
from modmask_lens.groundtruth.plan import element_use
from modmask_lens.groundtruth.plants import (
    PLANT_ARCHITECTURE,
    PLANTS_DIR,
    PlantSpec,
    architecture_changes,
    plant_plan,
    plant_spec,
)
from modmask_lens.groundtruth.truth import plant_truth
from modmask_lens.masks.config import MaskConfig
from modmask_lens.masks.mask_set import MaskSet

SHIPPED = available_plants()


def test_every_plant_is_shipped_small_and_without_pickles():
    assert SHIPPED == sorted(PLANTS)
    files = [path for path in PLANTS_DIR.rglob("*") if path.is_file()]
    assert sum(path.stat().st_size for path in files) < 5 * 2**20
    assert not [path for path in files if path.suffix in (".bin", ".pt", ".pkl", ".ckpt")]


@pytest.fixture(scope="module", params=SHIPPED)
def plant(request):
    return load_plant(request.param)


def test_truth_has_the_shapes_of_the_mask_logits(plant):
    for granularity in plant.card["plan"]["granularities"]:
        logits = MaskSet.for_bridge(plant.bridge, MaskConfig(granularity=granularity)).logits
        for subtask in plant.train:
            truth = plant.truth[subtask][granularity]
            assert truth and all(truth[name].shape == logits[name].shape for name in truth)
            assert all(truth[name].dtype == torch.bool for name in truth)


def test_card_measurements_hold_when_measured_again(plant):
    """Sufficiency, necessity and one random-half ablation, re-measured on the shipped weights through the bridge."""
    spec = PLANTS[plant.card["name"]]
    plan = plant_plan(spec, plant.bridge)
    for subtask, data in plant.test.items():
        card = plant.card["measurements"][subtask]
        assert exact_match(masked_logits(plant.bridge, data), data) == card["full_accuracy"] == 1.0
        kept_only = exact_match(masked_logits(plant.bridge, data, keep_only(plant.bridge, plan, subtask)), data)
        removed = exact_match(masked_logits(plant.bridge, data, remove(plant.bridge, plan, subtask)), data)
        half = exact_match(
            masked_logits(plant.bridge, data, remove_random_part(plant.bridge, plan, subtask, 0.5, 0)), data
        )
        assert (kept_only, removed, half) == (
            card["kept_only_accuracy"],
            card["removed_accuracy"],
            card["half_removed_accuracy"][0],
        )
        assert kept_only == 1.0 and removed <= 0.2
        if plan.ablation_unit != "weight":  # the first and the last unit removed alone
            removals = unit_removals(plant.bridge, plan, subtask)
            assert len(removals) == len(card["unit_removed_accuracy"])
            for index in (0, -1):
                alone = exact_match(masked_logits(plant.bridge, data, removals[index]), data)
                assert alone == card["unit_removed_accuracy"][index]


def test_each_unit_removal_zeroes_exactly_one_planted_neurons_column_and_row():
    """On a neuron plant, removal ``k`` zeroes the ``k``-th planted neuron (``[layer, neuron]`` order): its W_in and
    W_gate columns and its W_out row, and nothing else."""
    plant = load_plant("entangled-neuron-add-mul")
    plan = plant_plan(PLANTS["entangled-neuron-add-mul"], plant.bridge)
    planted = plan.uses["mul"].neurons.nonzero().tolist()
    removals = unit_removals(plant.bridge, plan, "mul")
    assert len(removals) == len(planted) == 64
    d_model = plant.bridge.cfg.d_model
    specs = {spec.path: spec for spec in adapter_for(plant.bridge).tensor_specs(plant.bridge)}
    for (layer, neuron), removal in zip(planted[::7], removals[::7], strict=True):
        zeroed = {path: (mask == 0).nonzero().tolist() for path, mask in removal.items() if (mask == 0).any()}
        assert sorted(specs[path].role for path in zeroed) == ["W_gate", "W_in", "W_out"]
        for path, elements in zeroed.items():
            spec = specs[path]
            assert spec.layer == layer and len(elements) == d_model
            assert {element[spec.unit_axis] for element in elements} == {neuron}


def test_a_plant_with_a_unit_it_can_lose_is_not_unique():
    """Every other rule met, one unit whose removal leaves 99% right makes a smaller faithful answer possible; a plan
    whose units were not removed one by one (single weights) is not shown unique."""
    subtask = {
        "kept_only_accuracy": 1.0,
        "removed_accuracy": 0.05,
        "half_removed_accuracy": [0.3, 0.5],
        "unit_removed_accuracy": [0.9, 0.8],
    }
    assert is_unique({"add": subtask})
    assert not is_unique({"add": subtask | {"unit_removed_accuracy": [0.9, 0.99]}})
    not_removed_one_by_one = {key: value for key, value in subtask.items() if key != "unit_removed_accuracy"}
    assert not is_unique({"add": not_removed_one_by_one})  # a per-weight plan: not shown unique


@pytest.mark.parametrize("name", [name for name in SHIPPED if PLANTS[name].family == "disconnected"])
def test_disconnected_cross_weights_are_exactly_zero_and_sets_are_disjoint(name):
    plant = load_plant(name)
    plan = plant_plan(PLANTS[plant.card["name"]], plant.bridge)
    dims = model_shape(plant.bridge)
    first, second = plan.uses.values()
    for spec in adapter_for(plant.bridge).tensor_specs(plant.bridge):
        module_path, _, attribute = spec.path.rpartition(".")
        weight = getattr(plant.bridge.get_submodule(module_path), attribute).detach()
        owned_first, owned_second = element_use(spec, first, dims), element_use(spec, second, dims)
        assert not (owned_first & owned_second).any()
        assert not weight[~(owned_first | owned_second)].any(), spec.key


def test_a_plant_of_another_pair_and_seed_loads_under_its_own_name(tmp_path):
    folder = tmp_path / "entangled-head-add-sub-seed2"
    shutil.copytree(PLANTS_DIR / "entangled-head-add-mul", folder)
    card = json.loads((folder / "card.json").read_text())
    card.update(pair="add-sub", subtasks=["add", "sub"], seed=2)
    (folder / "card.json").write_text(json.dumps(card))
    case = load_plant(folder.name, folder)
    assert case.name == "entangled-head/add-sub@seed2"
    assert sorted(case.train) == ["add", "sub"]
    examples, tokenizer = case.train["sub"], digit_tokenizer()
    task, left, right = tokenizer.convert_ids_to_tokens(examples.input_ids[37, :3].tolist())
    answer = examples.labels[37][examples.labels[37] != IGNORE_INDEX].item()
    assert task == "sub" and tokenizer.convert_ids_to_tokens(answer) == str((int(left) - int(right)) % 10)


@pytest.mark.parametrize("pair", ["add-add", "add-div", "add"])
def test_a_card_whose_pair_is_not_two_functions_is_refused_with_the_choices(tmp_path, pair):
    folder = tmp_path / "plant"
    shutil.copytree(PLANTS_DIR / "entangled-head-add-mul", folder)
    card = json.loads((folder / "card.json").read_text())
    (folder / "card.json").write_text(json.dumps(card | {"pair": pair}))
    with pytest.raises(ValueError, match=r"card.json: pair .* is not two different functions of \['add', 'max'"):
        load_plant("plant", folder)


def test_plant_names_parse_any_family_and_pair():
    assert plant_spec("partly-shared-mul-max", seed=3) == PlantSpec("partly-shared", "mul-max", 3)
    assert plant_spec("entangled-head-add-mul") == PLANTS["entangled-head-add-mul"]
    with pytest.raises(ValueError, match="names no family"):
        plant_spec("tangled-add-mul")
    with pytest.raises(SystemExit, match="give --out DIR"):
        plant_training.main(["entangled-head-add-sub"])  # refused before any training


def test_a_plants_size_is_told_by_what_builds_another_model_and_its_card_command_retrains_it():
    shipped = PLANT_ARCHITECTURE
    assert architecture_changes(shipped | {"n_key_value_heads": 8}) == {}  # None means one per head: the same model
    assert architecture_changes(shipped | {"d_model": 16, "d_mlp": None}) == {"d_model": 16}  # 4 x 16 = 64
    assert architecture_changes(shipped | {"d_model": 64, "d_mlp": 128}) == {"d_model": 64, "d_mlp": 128}
    base = plant_training.ARCHITECTURE
    command = "python -m experiments.groundtruth.plant_training "
    assert plant_training._command(PLANTS["entangled-head-add-mul"], base) == command + "entangled-head-add-mul"
    resized = dataclasses.replace(base, d_model=48)
    assert plant_training._command(plant_spec("disconnected-add-sub", 2), resized) == (
        command + "disconnected-add-sub --seed 2 --d-model 48 --out DIR"
    )
    deeper = dataclasses.replace(base, n_layers=3)
    assert plant_training._command(PLANTS["per-weight-sub-max"], deeper) == (
        command + "per-weight-sub-max --out DIR (with the architecture's ['n_layers'] set in code)"
    )


def test_a_card_that_records_another_size_than_its_weights_is_refused(tmp_path):
    folder = tmp_path / "plant"
    shutil.copytree(PLANTS_DIR / "entangled-head-add-mul", folder)
    card = json.loads((folder / "card.json").read_text())
    card["architecture"]["d_model"] = 64  # the weights are d_model 32
    (folder / "card.json").write_text(json.dumps(card))
    with pytest.raises(ValueError, match=r"another architecture than the weights beside it .*'d_model': \(64, 32\)"):
        load_plant("plant", folder)


def test_a_card_that_records_other_key_value_heads_than_its_weights_is_refused(tmp_path):
    """The check compared layers, widths and heads but not key/value heads: a card of 2 key/value heads beside
    weights of 8 loaded as ``entangled-head/add-mul@n_key_value_heads=2``."""
    folder = tmp_path / "plant"
    shutil.copytree(PLANTS_DIR / "entangled-head-add-mul", folder)
    weights_kv_heads = json.loads((folder / "config.json").read_text())["num_key_value_heads"]
    card = json.loads((folder / "card.json").read_text())
    card["architecture"]["n_key_value_heads"] = 2
    (folder / "card.json").write_text(json.dumps(card))
    with pytest.raises(ValueError, match=rf"'n_key_value_heads': \(2, {weights_kv_heads}\)"):
        load_plant("plant", folder)
    card["architecture"]["n_key_value_heads"] = None  # the builder's default: as many as the query heads
    (folder / "card.json").write_text(json.dumps(card))
    assert load_plant("plant", folder).name == "entangled-head/add-mul"


def test_a_random_half_of_gqa_heads_keeps_the_key_value_groups_its_kept_heads_read(tmp_path):
    """With 8 query heads over 4 key/value groups (2 heads each), a group is zeroed exactly when both its heads are
    among the removed ones: a kept head keeps its keys and values, as the library's head mask keeps them."""
    tokenizer = digit_tokenizer()
    torch.manual_seed(0)
    model = plant_training.build_model(dataclasses.replace(plant_training.ARCHITECTURE, n_key_value_heads=4), tokenizer)
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    bridge = plant_training.TransformerBridge.boot_transformers(str(tmp_path), device="cpu")
    plan = plant_plan(PlantSpec("entangled-head", "add-mul"), bridge)
    paths = {(spec.layer, spec.role): spec.path for spec in adapter_for(bridge).tensor_specs(bridge)}
    whole_groups_removed = shared_groups_kept = 0
    for draw in range(8):
        ablation = remove_random_part(bridge, plan, "add", 0.5, draw)
        removed_heads = torch.stack(
            [(ablation[paths[layer, "W_Q"]].view(8, 4, 32) == 0).all(dim=-1).all(dim=-1) for layer in (0, 1)]
        )
        assert int(removed_heads.sum()) == 4 and not (removed_heads & ~plan.uses["add"].heads).any()  # 4 of its 8
        for layer in (0, 1):
            pairs = removed_heads[layer].view(4, 2)
            expected = pairs.all(dim=-1)  # both heads of the group removed
            for role in ("W_K", "W_V"):
                mask = ablation[paths[layer, role]].view(4, 4, 32)  # [group, d_head, d_model]
                assert (mask == 0).all(dim=-1).all(dim=-1).tolist() == expected.tolist(), (draw, layer, role)
                assert (mask[~expected] == 1).all()
            whole_groups_removed += int(expected.sum())
            shared_groups_kept += int((pairs.any(dim=-1) & ~expected).sum())
    assert whole_groups_removed > 0 and shared_groups_kept > 0  # both cases are exercised


def _heads_per_key_value_head(bridge, layer: int) -> int:
    """Query heads that read one key/value head of block ``layer``, as the Hugging Face attention module groups them."""
    return bridge.get_submodule(f"blocks.{layer}.attn._original_component").num_key_value_groups


def test_a_layer_with_its_own_key_value_heads_groups_its_query_heads_by_its_own_count(tmp_path):
    """Gemma 4's full-attention block 1 has one key head of 16 rows that all 4 query heads read; its sliding block 0
    has two of 8 rows, read by 2 heads each. The plan grouped every block's query heads by the model-wide 2, so
    element_use found two groups for block 1's single key head and failed."""
    bridge = boot_gemma4_with_fewer_global_key_value_heads(tmp_path)
    plan = plant_plan(PlantSpec("entangled-head", "add-mul"), bridge)
    dims = model_shape(bridge)
    key_value_specs = [spec for spec in adapter_for(bridge).tensor_specs(bridge) if spec.unit == "kv_head"]
    assert {spec.layer for spec in key_value_specs} == {0, 1}
    for spec in key_value_specs:
        for subtask, use in plan.uses.items():
            read = use.heads[spec.layer].view(-1, _heads_per_key_value_head(bridge, spec.layer)).any(dim=-1)
            rows = read.repeat_interleave(spec.shape[spec.unit_axis] // len(read))
            expected = rows.view(-1, 1).expand(spec.shape)  # W_K / W_V: [rows, d_model]
            assert torch.equal(element_use(spec, use, dims), expected), (spec.key, subtask)


@pytest.mark.parametrize("fraction", [0.5, 1.0])
def test_a_random_part_of_heads_removes_a_key_value_head_only_with_every_head_of_its_own_layer_reading_it(
    tmp_path, fraction
):
    """A key/value head is zeroed when every query head that reads it is removed, counted in its own block: Gemma 4's
    block 1 shares its one key head among all 4 query heads, so removing one subtask's heads never zeroes it (the
    other subtask's heads read it). The ablation grouped block 1's heads by the model-wide 2 and failed."""
    bridge = boot_gemma4_with_fewer_global_key_value_heads(tmp_path)
    plan = plant_plan(PlantSpec("entangled-head", "add-mul"), bridge)
    specs = adapter_for(bridge).tensor_specs(bridge)
    query_paths = {spec.layer: spec.path for spec in specs if spec.role == "W_Q"}
    for draw in range(4):
        ablation = remove_random_part(bridge, plan, "add", fraction, draw)
        for spec in specs:
            if spec.unit != "kv_head":
                continue
            removed_heads = (ablation[query_paths[spec.layer]].view(bridge.cfg.n_heads, -1) == 0).all(dim=-1)
            expected = removed_heads.view(-1, _heads_per_key_value_head(bridge, spec.layer)).all(dim=-1)
            groups = ablation[spec.path].view(len(expected), -1)
            assert (groups == 0).all(dim=-1).tolist() == expected.tolist(), (draw, spec.key)
            assert (groups[~expected] == 1).all(), (draw, spec.key)
            if spec.layer == 1:
                assert not expected.any()


@pytest.mark.parametrize("family", ["entangled-neuron", "disconnected"])
def test_a_block_with_a_wider_mlp_splits_its_own_neurons(tmp_path, family):
    """Gemma 4's key/value-sharing block 2 runs 128 neurons (use_double_wide_mlp) where cfg.d_mlp says 64. Plans drew
    64 neuron flags per block, so the answer key failed on block 2's W_out ("shape '[128, 1]' is invalid for input of
    size 64"), as did every ablation: half of each block's own neurons are each subtask's, and removing all of a
    subtask's neurons zeroes exactly those columns of W_out."""
    bridge = boot_gemma4_with_double_wide_mlp(tmp_path)
    widths = [layer.mlp.intermediate_size for layer in bridge.original_model.model.layers]
    assert widths == [64, 64, 128]
    plan = plant_plan(PlantSpec(family, "add-mul"), bridge)
    truth = plant_truth(bridge, plan)
    out_paths = {spec.layer: spec.path for spec in adapter_for(bridge).tensor_specs(bridge) if spec.role == "W_out"}
    ablation = remove_random_part(bridge, plan, "add", 1.0, 0)
    for layer, width in enumerate(widths):
        neurons = {name: truth[name]["neuron"][f"blocks.{layer}.mlp"] for name in plan.uses}
        assert [len(flags) for flags in neurons.values()] == [width, width]
        assert [int(flags.sum()) for flags in neurons.values()] == [width // 2, width // 2]
        assert not (neurons["add"] & neurons["mul"]).any()
        assert torch.equal((ablation[out_paths[layer]] == 0).any(dim=0), neurons["add"])
