"""The ground-truth metrics against hand-built masks whose answers are known, and independent computations."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest
import torch

from modmask_lens.core.data import SubtaskData
from modmask_lens.groundtruth.case import GroundTruthCase
from modmask_lens.groundtruth.evaluation import exact_match
from modmask_lens.groundtruth.metrics import (
    auroc,
    curve_areas,
    gain_ranked_scores,
    inverse_beyond,
    measured_sharing,
    readout_scores,
    top_fraction,
    unit_scores,
)


def _case(truth: dict) -> GroundTruthCase:
    return GroundTruthCase(
        "hand-built", "test", bridge=torch.nn.Identity(), train={}, test={}, truth=truth, unique=True
    )


def _truth(seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        "blocks.0.mlp": torch.rand(16, generator=generator) < 0.4,
        "blocks.1.mlp": torch.rand(16, generator=generator) < 0.6,
    }


def _brute_force_auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """P(score of a positive > score of a negative), ties counted half: every pair, one at a time."""
    positives, negatives = scores[labels], scores[~labels]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(positives, negatives))
    return wins / (len(positives) * len(negatives))


def test_logits_of_plus_minus_truth_score_one():
    truth = _truth(0)
    logits = {name: torch.where(kept, 3.0, -3.0) for name, kept in truth.items()}
    scores = unit_scores(_case({"add": {"neuron": truth}}), {"add": logits}, "neuron").iloc[0]
    assert (scores.precision, scores.recall, scores.auroc) == (1.0, 1.0, 1.0)
    assert scores.kept_fraction == pytest.approx(scores.true_fraction)


def test_inverted_logits_score_zero_and_keeping_everything_has_recall_one():
    truth = _truth(1)
    inverted = {name: torch.where(kept, -1.0, 1.0) for name, kept in truth.items()}
    everything = {name: torch.full((16,), 2.0) for name in truth}
    case = _case({"add": {"neuron": truth}})
    assert unit_scores(case, {"add": inverted}, "neuron").iloc[0][["precision", "recall", "auroc"]].tolist() == [
        0,
        0,
        0,
    ]
    kept_all = unit_scores(case, {"add": everything}, "neuron").iloc[0]
    assert kept_all.recall == 1.0 and kept_all.auroc == 0.5  # all tied: half of every pair
    positives = sum(int(kept.sum()) for kept in truth.values())
    assert kept_all.precision == pytest.approx(positives / 32)


@pytest.mark.parametrize("seed", range(5))
def test_auroc_of_random_scores_matches_a_brute_force_pair_count(seed):
    generator = np.random.default_rng(seed)
    labels = generator.random(60) < 0.3
    scores = np.round(generator.normal(size=60), 1)  # rounded so that ties occur
    assert auroc(scores, labels) == pytest.approx(_brute_force_auroc(scores, labels), abs=1e-12)


def test_auroc_of_a_random_permutation_is_near_one_half():
    generator = np.random.default_rng(0)
    labels = np.arange(4000) < 2000
    assert abs(auroc(generator.permutation(4000).astype(float), labels) - 0.5) < 0.03


def test_auroc_is_nan_without_negatives():
    assert math.isnan(auroc(np.array([1.0, 2.0]), np.array([True, True])))


def test_curve_areas_match_a_hand_computed_trapezoid():
    k = [0.001, 0.01, 0.05, 0.1, 0.2, 0.5, 1.0]
    faithfulness = [0.0, 0.1, 0.5, 0.9, 1.0, 1.0, 1.0]
    curves = pd.DataFrame(
        {
            "case": "c",
            "subtask": "add",
            "curve": "keep",
            "sweep": "top-k",
            "k": k,
            "threshold": math.nan,
            "density": k,
            "accuracy_full": 1.0,
            "accuracy": faithfulness,
            "faithfulness": faithfulness,
            "kl": 0.0,
        }
    )
    # Trapezoids by hand: widths .009 .04 .05 .1 .3 .5, mean heights .05 .3 .7 .95 1 1.
    expected_cpr = 0.009 * 0.05 + 0.04 * 0.3 + 0.05 * 0.7 + 0.1 * 0.95 + 0.3 * 1 + 0.5 * 1
    expected_cmd = 0.009 * 0.95 + 0.04 * 0.7 + 0.05 * 0.3 + 0.1 * 0.05
    areas = curve_areas(curves).iloc[0]
    assert areas.cpr == pytest.approx(expected_cpr) and areas.cmd == pytest.approx(expected_cmd)


def test_top_fraction_keeps_the_largest_signed_logits_and_breaks_ties_in_model_order():
    mask = {"a": torch.tensor([0.5, -3.0, 2.0]), "b": torch.tensor([2.0, -0.1])}
    kept = top_fraction(mask, 0.4)  # round(0.4 * 5) = 2 units: both logits 2.0
    assert kept["a"].tolist() == [False, False, True] and kept["b"].tolist() == [True, False]
    three = top_fraction(mask, 0.6)
    assert three["a"].tolist() == [True, False, True]


def test_inverse_removes_only_what_the_control_does_not_keep():
    kept = {"u": torch.tensor([True, True, False, False])}
    control = {"u": torch.tensor([True, False, True, False])}
    assert inverse_beyond(kept, control)["u"].tolist() == [True, False, True, True]
    assert inverse_beyond(kept, None)["u"].tolist() == [False, False, True, True]


def test_measured_sharing_of_a_quarter_shared_plan():
    first = torch.zeros(16, dtype=torch.bool)
    second = torch.zeros(16, dtype=torch.bool)
    first[:8], second[4:12] = True, True  # 4 of each subtask's 8 units are shared
    truth = {"add": {"neuron": {"blocks.0.mlp": first}}, "mul": {"neuron": {"blocks.0.mlp": second}}}
    masks = {
        name: {"blocks.0.mlp": torch.where(units["neuron"]["blocks.0.mlp"], 1.0, -1.0)} for name, units in truth.items()
    }
    sharing = measured_sharing(_case(truth), masks, "neuron")
    assert sharing["known_shared"].tolist() == [0.5, 0.5] and sharing["measured_shared"].tolist() == [
        0.5,
        0.5,
    ]


def test_gain_ranked_scores_keep_the_kept_units_first_and_order_the_rest_by_distinct_gain():
    from modmask_lens import MaskConfig, MaskSet
    from modmask_lens.testing.tiny_models import tiny_bridge

    masks = MaskSet.for_bridge(tiny_bridge(), MaskConfig(granularity="head"), name="task")
    first, second = (unit.name for unit in masks.units)
    n_heads = masks.logits[first].numel()
    masks.logits[first] = torch.tensor([1.0, 2.0] + [-1.0] * (n_heads - 2))
    masks.logits[second] = torch.full((n_heads,), -1.0)
    gains = {first: torch.full((n_heads,), 1e-8), second: torch.zeros(n_heads)}
    gains[first][:2] = math.nan  # kept
    gains[first][2], gains[second][:3] = math.inf, torch.tensor([3e-8, 1e-7, math.nan])
    scores = gain_ranked_scores(masks, gains)
    assert scores[first][:2].tolist() == [1.0, 2.0]  # logit minus threshold, above every left-out unit
    # left out, by gain: inf, 1e-7, 3e-8, 1e-8 (the rest of `first`), 0 (the rest of `second`), NaN last
    assert scores[first][2] == -1 and scores[second][1] == -2 and scores[second][0] == -3
    assert (scores[first][3:] == -4).all() and (scores[second][3:] == -5).all() and scores[second][2] < -5


def test_inside_others_is_nan_where_the_other_subtask_is_keyed_on_other_units():
    # "mul" uses units 2 and 3 of "u" (which "add" keeps) and is keyed on "u" only: which of the "v" units it uses
    # is unknown, so the share of add's kept units that only mul uses is unknown too (sharing says NaN as well).
    truth = {
        "add": {"neuron": {"u": torch.tensor([1, 1, 0, 0]).bool(), "v": torch.tensor([0, 0, 1, 1]).bool()}},
        "mul": {"neuron": {"u": torch.tensor([0, 0, 1, 1]).bool()}},
    }
    keep_all = {"u": torch.ones(4), "v": torch.ones(4)}
    scores = unit_scores(_case(truth), {"add": keep_all, "mul": keep_all}, "neuron").set_index("subtask")
    assert math.isnan(scores.loc["add", "inside_others"]) and math.isnan(scores.loc["mul", "inside_others"])
    assert measured_sharing(_case(truth), {"add": keep_all, "mul": keep_all}, "neuron")["measured_shared"].isna().all()


def test_inside_others_of_one_subtask_is_zero_and_of_same_keys_counts_by_hand():
    alone = {"add": {"neuron": {"u": torch.tensor([1, 1, 0, 0]).bool()}}}
    assert unit_scores(_case(alone), {"add": {"u": torch.ones(4)}}, "neuron").iloc[0].inside_others == 0.0
    truth = {
        "add": {"neuron": {"u": torch.tensor([1, 1, 0, 0, 0]).bool()}},
        "mul": {"neuron": {"u": torch.tensor([0, 1, 1, 1, 0]).bool()}},
    }
    kept = {"u": torch.tensor([1.0, -1.0, 1.0, 1.0, 1.0])}  # keeps 0 (own), 2 and 3 (mul's only), 4 (nobody's)
    row = unit_scores(_case(truth), {"add": kept, "mul": kept}, "neuron").set_index("subtask").loc["add"]
    assert row.inside_others == pytest.approx(2 / 4) and row.precision == pytest.approx(1 / 4)


def _answers(labels: list[list[int]], label_shift: int = 1) -> SubtaskData:
    labels_tensor = torch.tensor(labels)
    return SubtaskData("task", labels_tensor.clamp(min=0), labels_tensor, label_shift=label_shift)


def test_exact_match_counts_a_tie_for_the_largest_logit_wrong():
    # Equal logits everywhere (a mask that removes the output): argmax picks id 0, which is example 0's answer.
    data = _answers([[-100, 0, 0], [-100, 2, 1]])
    assert exact_match(torch.zeros(2, 3, 4), data) == 0.0
    logits = torch.zeros(2, 3, 4)
    logits[0, 0, 0] = logits[0, 1, 0] = 1.0  # example 0: id 0 strictly largest at both answer positions
    logits[1, 0, 2] = logits[1, 1, 1] = logits[1, 1, 3] = 1.0  # example 1: its second answer ties with id 3
    assert exact_match(logits, data) == 0.5


@pytest.mark.parametrize("label_shift", [0, 1])
def test_exact_match_without_ties_is_the_argmax_count(label_shift):
    generator = torch.Generator().manual_seed(label_shift)
    labels = torch.randint(0, 5, (40, 4), generator=generator)
    labels[:, :2] = -100
    logits = torch.randn(40, 4, 5, generator=generator)
    data = _answers(labels.tolist(), label_shift)
    predicted = logits[:, :-1] if label_shift else logits
    targets = labels[:, 1:] if label_shift else labels
    by_hand = sum(
        all(
            int(predicted[row, pos].argmax()) == int(targets[row, pos])
            for pos in range(targets.shape[1])
            if targets[row, pos] >= 0
        )
        for row in range(40)
    )
    assert exact_match(logits, data) == by_hand / 40


def test_readout_scores_keep_the_order_of_the_logits_and_the_readout_of_kept_above():
    from modmask_lens import MaskConfig, MaskSet
    from modmask_lens.testing.tiny_models import tiny_bridge

    masks = MaskSet.for_bridge(tiny_bridge(), MaskConfig(granularity="head"), name="task")
    first, second = (unit.name for unit in masks.units)
    n_heads = masks.logits[first].numel()
    # Two logits one float32 step apart, 1.5 above a threshold of -1.5: in float32 both differences round to 2.5.
    masks.logits[first] = torch.tensor([1.0, 1.0 + 2**-23] + [-3.0] * (n_heads - 2))
    masks.logits[second] = torch.full((n_heads,), -3.0)
    masks.threshold = -1.5
    truth = {first: torch.tensor([False, True] + [False] * (n_heads - 2)), second: torch.zeros(n_heads).bool()}
    scores = unit_scores(_case({"task": {"head": truth}}), {"task": readout_scores(masks)}, "head").iloc[0]
    assert scores.auroc == 1.0  # the logits' AUROC: the used head has the larger logit
    # A logit equal to the threshold as float32 rounds it (0.1 -> 0.10000000149) is not kept, by either readout.
    masks.logits[second] = torch.full((n_heads,), 0.1)
    masks.threshold = 0.1
    kept = masks.kept_above(masks.threshold)
    assert all(torch.equal(kept[name], score > 0) for name, score in readout_scores(masks).items())
    assert not kept[second].any()
