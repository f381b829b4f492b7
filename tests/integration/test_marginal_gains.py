"""``marginal_gains``: each unit a mask's readout leaves out, added back alone, against the answer loss computed
independently with TransformerLens hooks that zero the removed heads' inputs to ``W_O`` (a compiled tracr program,
whose used and unused heads are known)."""

from __future__ import annotations

import copy

import pytest
import torch

from modmask_lens import MaskConfig, MaskSet, marginal_gains
from modmask_lens.core.encoding import IGNORE_INDEX
from modmask_lens.groundtruth import gain_ranked_scores, load_tracr_case

KEPT = {(0, 0), (3, 0)}  # two of reverse_hist's three used heads; (0, 1), the third, is left out with the unused


@pytest.fixture(scope="module")
def program():
    case = load_tracr_case("reverse_hist")
    masks = MaskSet.for_bridge(case.bridge, MaskConfig(granularity="head"), name="reverse_hist")
    for unit in masks.units:
        layer = int(unit.name.split(".")[1])
        masks.logits[unit.name] = torch.tensor([1.0 if (layer, head) in KEPT else -1.0 for head in range(2)])
    return case.bridge, masks, case.train["reverse_hist"]


def hooked_loss(bridge, data, kept_heads) -> float:
    """Mean cross-entropy per answer token with every head outside ``kept_heads`` zeroed before ``W_O``."""

    def zero_removed(layer):
        def hook(z, hook):  # [batch, pos, head, d_head]
            for head in range(bridge.cfg.n_heads):
                if (layer, head) not in kept_heads:
                    z[:, :, head] = 0
            return z

        return hook

    hooks = [(f"blocks.{layer}.attn.o.hook_in", zero_removed(layer)) for layer in range(bridge.cfg.n_layers)]
    with torch.no_grad():
        logits = bridge.run_with_hooks(data.input_ids, fwd_hooks=hooks)
    log_probs, labels = logits[:, :-1].log_softmax(dim=-1), data.labels[:, 1:]
    scored = labels != IGNORE_INDEX
    return float(-log_probs.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)[scored].mean())


def test_each_left_out_head_gains_what_adding_it_alone_lowers_the_loss(program):
    bridge, masks, data = program
    gains = marginal_gains(bridge, masks, data)
    base = hooked_loss(bridge, data, KEPT)
    for unit in masks.units:
        layer = int(unit.name.split(".")[1])
        for head in range(2):
            if (layer, head) in KEPT:
                assert torch.isnan(gains[unit.name][head])
            else:
                expected = base - hooked_loss(bridge, data, KEPT | {(layer, head)})
                assert float(gains[unit.name][head]) == pytest.approx(expected, rel=1e-4, abs=1e-6)
    assert float(gains["blocks.0.attn"][1]) > 0.1  # the used head the mask left out helps
    unused = [float(gains[f"blocks.{layer}.attn"][head]) for layer, head in [(1, 0), (1, 1), (2, 0), (2, 1), (3, 1)]]
    assert unused == pytest.approx([0.0] * 5, abs=1e-6)  # tracr's unused heads write nothing


def test_gain_ranked_scores_put_the_kept_heads_first_then_the_left_out_ones_by_gain(program):
    bridge, masks, data = program
    gains = marginal_gains(bridge, masks, data)
    scores = gain_ranked_scores(masks, gains)
    for name, score in scores.items():
        kept = masks.logits[name] > masks.threshold
        assert torch.equal(score[kept], masks.logits[name][kept] - masks.threshold) and bool((score[~kept] < 0).all())
    gain = torch.cat([gains[name].flatten() for name in scores])
    score = torch.cat([score.flatten() for score in scores.values()])
    left_out = ~torch.isnan(gain)
    gain, score = gain[left_out], score[left_out]
    # every pair of left-out heads in the gains' order, ties included
    assert torch.equal(torch.sign(score[:, None] - score[None, :]), torch.sign(gain[:, None] - gain[None, :]))


def test_a_mask_that_leaves_out_too_many_units_is_refused(program):
    bridge, masks, data = program
    with pytest.raises(ValueError, match="leaves out 6 units, more than max_units=5"):
        marginal_gains(bridge, masks, data, max_units=5)


def test_an_objective_with_no_counted_position_has_no_loss_and_says_so(program):
    import dataclasses

    from modmask_lens.masks.evaluation import objective_loss
    from modmask_lens.masks.objectives import LogitDifference

    bridge, _, data = program
    no_foils = dataclasses.replace(data, foils=torch.full_like(data.labels, IGNORE_INDEX))
    with pytest.raises(ValueError, match="subtask 'reverse_hist': examples .* have no foil.*with_foils"):
        objective_loss(bridge, no_foils, LogitDifference())


def test_gains_refuse_another_model_and_warn_about_another_objective(program):
    from modmask_lens import ModelMismatch
    from modmask_lens.masks.objectives import KLDivergence

    bridge, masks, data = program
    other = load_tracr_case("reverse").bridge  # another program: other shapes
    with pytest.raises(ModelMismatch):
        marginal_gains(other, masks, data)
    same_shapes = copy.deepcopy(bridge)
    with torch.no_grad():
        same_shapes.blocks[0].attn.o.weight.add_(1.0)  # same architecture and shapes, other weights
    with pytest.raises(ModelMismatch):
        marginal_gains(same_shapes, masks, data)
    with pytest.warns(UserWarning, match="was trained with the objective .* pass objective= the mask's own"):
        marginal_gains(bridge, masks, data, objective=KLDivergence())
    with pytest.raises(TypeError):
        marginal_gains(bridge, {"reverse_hist": masks}, data)
