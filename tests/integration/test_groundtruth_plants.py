"""The shipped plants: their answer keys line up with the masks, their cards' measurements hold when re-measured,
and a disconnected plant's cross weights are exactly zero."""

from __future__ import annotations

import pytest
import torch

from modmask_lens.adapters import adapter_for
from modmask_lens.adapters.base import model_shape
from modmask_lens.groundtruth import PLANTS, available_plants, load_plant
from modmask_lens.groundtruth.ablations import keep_only, remove, remove_random_part
from modmask_lens.groundtruth.evaluation import exact_match, masked_logits
from modmask_lens.groundtruth.plan import element_use
from modmask_lens.groundtruth.plants import PLANTS_DIR, plant_plan
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
