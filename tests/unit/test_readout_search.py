"""The faithful readout's search over mask sizes, against a metric given as a function of the kept count: it starts
from the units above logit 0, never assumes that keeping more units keeps accuracy across that point, and below
:data:`~modmask_lens.masks.readout.SCANNED_COUNTS` units settles on the fewest count that passes."""

from __future__ import annotations

import pytest
import torch

from modmask_lens import MaskConfig, MaskSet
from modmask_lens.core.data import SubtaskData
from modmask_lens.masks import readout
from modmask_lens.testing.tiny_models import tiny_bridge

N_UNITS = 128  # the tiny bridge's neurons: 2 layers x d_mlp 64


@pytest.fixture
def neurons():
    bridge = tiny_bridge()
    masks = MaskSet.for_bridge(bridge, MaskConfig(granularity="neuron"), name="task")
    ranks = torch.randperm(N_UNITS, generator=torch.Generator().manual_seed(0)).float()
    for unit, values in zip(masks.units, ranks.split(N_UNITS // 2)):
        masks.logits[unit.name] = values - (N_UNITS - 10.5)  # distinct logits; 10 of them above 0
    data = SubtaskData("task", torch.zeros(2, 4, dtype=torch.long), torch.zeros(2, 4, dtype=torch.long))
    return bridge, masks, data


def with_metric(monkeypatch, metric_of_count):
    """Make the readout see ``metric_of_count(number of kept units)`` (the full model: 1.0); returns the counts it
    evaluated."""
    evaluated = []

    def reaches_by_count(bridge, data, objective, kept, target):
        by_neuron = kept.kept_fraction(by="neuron")
        count = int(by_neuron[by_neuron.role == "W_out"].kept.gt(0).sum())
        evaluated.append(count)
        return metric_of_count(count) >= target

    monkeypatch.setattr(readout, "objective_metric", lambda *arguments: 1.0)
    monkeypatch.setattr(readout, "reaches_metric", reaches_by_count)
    return evaluated


def kept_count(masks, threshold: float) -> int:
    return sum(int((logit > threshold).sum()) for logit in masks.logits.values())


def test_a_passing_readout_at_zero_is_shrunk_and_never_traded_for_a_larger_mask(monkeypatch, neurons):
    bridge, masks, data = neurons
    # Faithful with 6 to 10 units, broken by adding more (as training leaves a mask), and with every unit.
    evaluated = with_metric(monkeypatch, lambda count: 1.0 if 6 <= count <= 10 or count == N_UNITS else 0.5)
    assert kept_count(masks, readout.faithful_threshold(bridge, masks, data)) == 6
    assert max(evaluated) == 10


def test_a_failing_readout_at_zero_grows_until_a_count_passes(monkeypatch, neurons):
    bridge, masks, data = neurons
    with_metric(monkeypatch, lambda count: 1.0 if count >= 23 else 0.0)
    assert kept_count(masks, readout.faithful_threshold(bridge, masks, data)) == 23


def test_when_nothing_but_every_unit_passes_every_unit_is_kept(monkeypatch, neurons):
    bridge, masks, data = neurons
    with_metric(monkeypatch, lambda count: 1.0 if count == N_UNITS else 0.0)
    assert kept_count(masks, readout.faithful_threshold(bridge, masks, data)) == N_UNITS


def test_the_fewest_passing_count_is_found_where_accuracy_is_not_monotone_below_the_search(monkeypatch, neurons):
    bridge, masks, data = neurons
    # The shape measured on an entangled-head plant: 4 units pass, 5 to 9 fail (the fifth interferes), 10 pass;
    # bisecting between 0 and the 10 units above logit 0 tries 5, then 8, 9, and settles on 10.
    evaluated = with_metric(monkeypatch, lambda count: 1.0 if count == 4 or count >= 10 else 0.0)
    assert kept_count(masks, readout.faithful_threshold(bridge, masks, data)) == 4
    assert len(evaluated) == len(set(evaluated))  # each count is judged once


def test_past_the_scanned_counts_the_search_keeps_its_bisected_count(monkeypatch, neurons):
    bridge, masks, data = neurons
    monkeypatch.setattr(readout, "SCANNED_COUNTS", 8)
    with_metric(monkeypatch, lambda count: 1.0 if count == 4 or count >= 10 else 0.0)
    assert kept_count(masks, readout.faithful_threshold(bridge, masks, data)) == 10


def test_where_no_count_passes_every_unit_is_kept(monkeypatch, neurons):
    bridge, masks, data = neurons
    # e.g. tolerance 0 with the full mask one example short of the full model (non-deterministic kernels)
    with_metric(monkeypatch, lambda count: 0.99)
    assert kept_count(masks, readout.faithful_threshold(bridge, masks, data, tolerance=0.0)) == N_UNITS
