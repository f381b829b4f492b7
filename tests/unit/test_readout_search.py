"""The faithful readout's search over mask sizes, against a metric given as a function of the kept count: it starts
from the units above logit 0, never assumes that keeping more units keeps accuracy across that point, and below
:data:`~modmask_lens.masks.readout.SCANNED_COUNTS` units settles on the fewest count that passes."""

from __future__ import annotations

import pytest
import torch

from modmask_lens import MaskConfig, MaskSet, TrainConfig
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


def with_set_metric(monkeypatch, passes_set, loss_of_set=lambda units: float(len(units))):
    """Make the readout see a metric of the set of kept neurons (flat indices in model order): 1.0 where
    ``passes_set(units)``, else 0; and ``loss_of_set(units)`` as its loss. Returns the sets judged."""
    judged = []

    def units_of(kept) -> frozenset[int]:
        by_neuron = kept.kept_fraction(by="neuron").sort_values(["layer", "neuron"])  # the logits' order
        return frozenset(int(index) for index in by_neuron.kept.to_numpy().nonzero()[0])

    def reaches(bridge, data, objective, kept, target):
        judged.append(units_of(kept))
        return (1.0 if passes_set(judged[-1]) else 0.0) >= target

    monkeypatch.setattr(readout, "objective_metric", lambda *arguments: 1.0)
    monkeypatch.setattr(readout, "reaches_metric", reaches)
    monkeypatch.setattr(readout, "objective_loss", lambda bridge, data, objective, kept: loss_of_set(units_of(kept)))
    return judged


def kept_units(flags: dict[str, torch.Tensor]) -> frozenset[int]:
    return frozenset(torch.cat([kept.flatten() for kept in flags.values()]).nonzero().flatten().tolist())


def test_removing_units_together_leaves_a_local_optimum_of_single_removals(monkeypatch, neurons):
    bridge, masks, data = neurons
    trained = kept_units(masks.kept_above(0.0))  # the 10 units above logit 0
    planted = frozenset(sorted(trained)[:7])  # the other 3 are borrowed
    # The entangled-head plant's shape (docs/finder-study.md): the trained set passes, removing any one of its units
    # fails, removing the 3 borrowed ones together passes; nothing without every planted unit passes.
    judged = with_set_metric(monkeypatch, lambda units: units in (trained, planted) or len(units) == N_UNITS)
    assert readout.faithful_threshold(bridge, masks, data) == 0.0  # the count readout keeps all 10
    assert kept_units(readout.faithful_units(bridge, masks, data)) == planted
    assert len(judged) <= readout.REMOVAL_EVALUATIONS + 40  # the search's budget, and the threshold's bisection


def test_a_failing_trained_set_is_searched_too_and_the_budget_bounds_the_search(monkeypatch, neurons):
    bridge, masks, data = neurons
    trained = kept_units(masks.kept_above(0.0))
    smaller = frozenset(sorted(trained)[2:])
    # The trained set fails (the threshold readout pads it to every unit); two of its units removed together pass.
    with_set_metric(monkeypatch, lambda units: units == smaller or len(units) == N_UNITS)
    assert kept_units(readout.faithful_units(bridge, masks, data)) == smaller
    assert len(kept_units(readout.faithful_units(bridge, masks, data, evaluations=10))) == N_UNITS
    assert len(kept_units(readout.faithful_units(bridge, masks, data, evaluations=0))) == N_UNITS


def test_the_search_shows_its_judgements_in_a_progress_bar_only_when_asked(monkeypatch, neurons, capsys):
    bridge, masks, data = neurons
    trained = kept_units(masks.kept_above(0.0))
    judged = with_set_metric(monkeypatch, lambda units: units == trained or len(units) == N_UNITS)
    readout.faithful_units(bridge, masks, data, evaluations=0)  # the threshold's bisection alone
    bisection = len(judged)
    readout.faithful_units(bridge, masks, data)
    searched = len(judged) - 2 * bisection
    assert searched > 0 and "readout search" not in capsys.readouterr().err
    readout.faithful_units(bridge, masks, data, progress=True)
    last_line = capsys.readouterr().err.split("\r")[-1]  # the bar as it closed
    assert f"readout search, {data.name}" in last_line and f"{searched}/{readout.REMOVAL_EVALUATIONS}" in last_line


@pytest.mark.parametrize(("budget", "error"), [(-1, ValueError), (1.5, TypeError), (True, TypeError)])
def test_a_search_budget_that_is_not_a_count_is_refused(budget, error):
    with pytest.raises(error, match="readout_evaluations"):
        TrainConfig(readout_evaluations=budget)


def test_among_passing_removals_the_lowest_loss_is_taken(monkeypatch, neurons):
    bridge, masks, data = neurons
    trained = sorted(kept_units(masks.kept_above(0.0)))
    # Any 9 of the 10 pass, no 8 do: the search removes the one unit whose removal leaves the lowest loss.
    with_set_metric(
        monkeypatch,
        lambda units: len(units) >= 9 and units <= frozenset(trained),
        loss_of_set=lambda units: 0.0 if trained[3] not in units else 1.0,
    )
    assert kept_units(readout.faithful_units(bridge, masks, data)) == frozenset(trained) - {trained[3]}


def test_read_out_keeps_exactly_the_given_units_and_moves_only_the_logits_that_disagree(neurons):
    _, masks, _ = neurons
    before = {name: logit.detach().clone() for name, logit in masks.logits.items()}
    flat = torch.cat([logit.flatten() for logit in before.values()])
    order = flat.argsort(descending=True).tolist()
    kept_flat = torch.zeros(N_UNITS, dtype=torch.bool)
    kept_flat[order[:5] + [order[20]]] = True  # the 5 highest, and one far below them
    kept_flat[order[2]] = False  # without the third highest
    sizes = [logit.numel() for logit in before.values()]
    kept = {name: part.view(before[name].shape) for name, part in zip(before, kept_flat.split(sizes))}
    masks.read_out(kept)
    assert kept_units(masks.kept_above(masks.threshold)) == kept_units(kept)
    after = torch.cat([logit.detach().flatten() for logit in masks.logits.values()])
    moved = (after != flat).nonzero().flatten().tolist()
    assert sorted(moved) == sorted([order[2], order[20]])
    assert flat[order[5]] < after[order[20]] < flat[order[4]]  # just above the threshold, below every kept logit
    assert flat[order[6]] < after[order[2]] <= masks.threshold  # just below it, above every other removed logit
    masks.read_out(masks.kept_above(0.5))  # a top-count set: no logit moves
    assert torch.equal(torch.cat([logit.detach().flatten() for logit in masks.logits.values()]), after)


@pytest.mark.parametrize(
    ("logits", "kept_indices"),
    [
        # the lowest kept logit above the threshold is the float32 right after it: their midpoint rounds onto it
        ([1.0 + 2**-23, 1.0, 1.0, 0.0], [0, 3]),
        # logits past 2**24, where threshold + 1.0 rounds back onto the threshold in float32
        ([3e7, 2e7, 1e7, 0.0], [3]),
        ([], list(range(N_UNITS))),  # every unit, all tied at -1e8: the threshold 1.0 below them rounds onto them
    ],
)
def test_read_out_keeps_the_given_units_where_float32_rounds_the_moved_logits(neurons, logits, kept_indices):
    _, masks, _ = neurons
    flat = torch.full((N_UNITS,), -1e8)
    flat[: len(logits)] = torch.tensor(logits)
    kept_flat = torch.zeros(N_UNITS, dtype=torch.bool)
    kept_flat[kept_indices] = True
    sizes = [logit.numel() for logit in masks.logits.values()]
    for (name, logit), part in zip(list(masks.logits.items()), flat.split(sizes)):
        masks.logits[name] = part.view(logit.shape).clone().requires_grad_(True)
    kept = {name: part.view(logit.shape) for (name, logit), part in zip(masks.logits.items(), kept_flat.split(sizes))}
    masks.read_out(kept)
    assert kept_units(masks.kept_above(masks.threshold)) == frozenset(kept_indices)


@pytest.mark.parametrize(
    "split",
    [
        lambda flat, names: dict(zip(names, flat.split([63, 65]))),  # the right total, split another way
        lambda flat, names: dict(zip(names, flat.view(2, 8, 8))),  # each unit's 64 flags as 8 x 8
        lambda flat, names: {names[0]: flat[:64]},  # a unit missing
        lambda flat, names: dict(zip(names, flat.split(64))) | {"blocks.9.mlp": flat[:64]},  # a unit unknown
    ],
)
def test_read_out_refuses_flags_that_do_not_have_each_units_logit_shape(neurons, split):
    """Flags of the right total size but the wrong shape per unit were flattened, concatenated and assigned across
    the unit boundaries without a word."""
    _, masks, _ = neurons
    before = {name: logit.detach().clone() for name, logit in masks.logits.items()}
    kept_flat = torch.zeros(N_UNITS, dtype=torch.bool)
    kept_flat[:3] = True
    with pytest.raises(
        ValueError, match=r"read_out: kept flags of the wrong units or shapes.*shaped like masks.logits"
    ):
        masks.read_out(split(kept_flat, list(before)))
    assert all(torch.equal(masks.logits[name].detach(), logit) for name, logit in before.items())


def test_rounds_remove_pairs_up_to_44_units_as_the_docs_say():
    # README and docs/concepts.md state the size up to which a round removes pairs
    pairs = [n for n in range(2, 1025) if readout._removals_per_round(n, readout.ROUND_EVALUATIONS) >= 2]
    assert pairs == list(range(2, 45))


def rank_logits(masks, above_zero: int, seed: int) -> torch.Tensor:
    """Give the neurons distinct logits in a random order, ``above_zero`` of them above 0; returns the unit indices
    by rank, highest logit first."""
    ranked = torch.randperm(N_UNITS, generator=torch.Generator().manual_seed(seed))
    flat = torch.empty(N_UNITS)
    flat[ranked] = above_zero - 0.5 - torch.arange(N_UNITS).float()
    for unit, values in zip(masks.units, flat.split(N_UNITS // 2)):
        masks.logits[unit.name] = values
    return ranked


def test_a_start_of_more_than_44_units_is_shrunk_by_single_removals(neurons, monkeypatch):
    """The entangled-neuron sub-max plant's shape (docs/finder-study.md): training keeps 47 neurons, of which 16
    suffice, scattered among the kept logits, so the threshold readout keeps all 47. The search ran only on starts
    of at most 44 units, and kept them."""
    bridge, masks, data = neurons
    ranked = rank_logits(masks, above_zero=47, seed=1)
    needed = frozenset(ranked[0:45:3].tolist() + [int(ranked[46])])  # 16 of the 47, the lowest-logit one among them
    judged = with_set_metric(monkeypatch, lambda units: needed <= units)
    assert kept_count(masks, readout.faithful_threshold(bridge, masks, data)) == 47
    judged.clear()
    assert kept_units(readout.faithful_units(bridge, masks, data)) == needed
    assert len(judged) <= readout.REMOVAL_EVALUATIONS + 40  # the search's budget, and the threshold's bisection
    monkeypatch.setattr(readout, "SEARCHED_UNITS", 46)
    assert len(kept_units(readout.faithful_units(bridge, masks, data))) == 47


def test_a_start_where_largest_removals_first_stops_early_also_takes_single_removals_first(neurons, monkeypatch):
    """Measured on the entangled-neuron sub-max plant at 2,000 steps (docs/finder-study.md): from 43 kept neurons,
    rounds of pairs stopped at 30 where single removals first reach 14. Here removing ``a`` and ``b``
    together is the cheapest pair, and without them the set must keep 26 units; with both, core and ``a``, ``b``
    suffice, and neither goes alone."""
    bridge, masks, data = neurons
    ranked = rank_logits(masks, above_zero=30, seed=2)
    (a, b), core = ranked[:2].tolist(), frozenset(ranked[20:30].tolist())  # the core's logits lowest: top-k drops it

    def passes(units):
        with_both, without_either = a in units and b in units, a not in units and b not in units
        return core <= units and (with_both or (without_either and len(units) >= 26))

    with_set_metric(monkeypatch, passes, lambda units: len(units) - 3.0 * (a not in units and b not in units))
    assert kept_count(masks, readout.faithful_threshold(bridge, masks, data)) == 30
    assert kept_units(readout.faithful_units(bridge, masks, data)) == core | {a, b}
