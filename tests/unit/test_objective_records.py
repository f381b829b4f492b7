"""Objectives record what they are (a custom objective's label), compare distributions where the full model gives a
token no probability, and name a probe of the wrong width."""

from __future__ import annotations

import functools
import re

import numpy as np
import pytest
import torch

import modmask_lens as mm
from modmask_lens.core.data import Batch
from modmask_lens.groundtruth.evaluation import kl_divergence
from modmask_lens.masks.objectives import Outputs
from modmask_lens.masks.run_fingerprint import RunMismatch, check_same_run
from modmask_lens.testing.tiny_models import tiny_bridge


def _agreement(masked, full, batch):
    target = full.logits[:, -1].argmax(-1)
    losses = torch.nn.functional.cross_entropy(masked.logits[:, -1], target, reduction="none")
    return losses, (masked.logits[:, -1].argmax(-1) == target).float()


def _targeting(position: int):
    def agreement_at(masked, full, batch):
        target = full.logits[:, position].argmax(-1)
        losses = torch.nn.functional.cross_entropy(masked.logits[:, position], target, reduction="none")
        return losses, (masked.logits[:, position].argmax(-1) == target).float()

    return agreement_at


@pytest.mark.parametrize(
    "function",
    [
        lambda masked, full, batch: (masked.logits.sum((1, 2)), masked.logits.sum((1, 2))),
        _targeting(-1),
        functools.partial(_agreement),
    ],
    ids=["lambda", "closure", "partial"],
)
def test_a_custom_objective_without_a_name_of_its_own_asks_for_a_label(function):
    """Every lambda's qualified name is ``<lambda>``, and closures of one factory share theirs: two such objectives
    recorded one label, so a checkpoint resumed under the other function. A partial's default label held a memory
    address, so its run never resumed."""
    with pytest.raises(ValueError, match=r"pass label='\.\.\.'"):
        mm.CustomObjective(function)
    labelled = mm.CustomObjective(function, label="mine")
    assert labelled.to_dict()["label"] == "mine"


def test_two_lambdas_with_labels_are_two_runs():
    first = mm.CustomObjective(lambda masked, full, batch: _agreement(masked, full, batch), label="last")
    second = mm.CustomObjective(lambda masked, full, batch: _agreement(masked, full, batch), label="first")
    with pytest.raises(RunMismatch, match="objective label='last', this run has label='first'"):
        check_same_run({"objective": first.to_dict()}, {"objective": second.to_dict()}, "ckpt", "copy")


def test_a_named_function_keeps_its_qualified_name_as_the_default_label():
    """Checkpoints written before keep resuming: a named function's default label is unchanged."""
    assert mm.CustomObjective(_agreement).to_dict()["label"] == "_agreement"


def _kl_over_tokens_the_full_model_can_emit(full_logits: torch.Tensor, masked_logits: torch.Tensor) -> float:
    """KL(full || masked) summed over positions, in float64 with NumPy, over only the tokens the full model gives a
    probability (its finite logits): the definition, with 0 log 0 = 0."""
    full, masked = full_logits.double().numpy(), masked_logits.double().numpy()
    total = 0.0
    for full_row, masked_row in zip(full.reshape(-1, full.shape[-1]), masked.reshape(-1, masked.shape[-1])):
        possible = np.isfinite(full_row)
        log_p = full_row - np.logaddexp.reduce(full_row[possible])
        log_q = masked_row - np.logaddexp.reduce(masked_row[np.isfinite(masked_row)])
        total += float((np.exp(log_p[possible]) * (log_p[possible] - log_q[possible])).sum())
    return total


def test_kl_divergence_counts_nothing_for_tokens_the_full_model_gives_no_probability():
    """A full model that masks tokens with -inf logits made the KL NaN: 0 * (-inf - log q) (and -inf - -inf where the
    masked model masks them too). Such tokens contribute 0, as 0 log 0 does; the gradient stays finite."""
    generator = torch.Generator().manual_seed(0)
    full_logits = torch.randn(2, 3, 7, generator=generator)
    full_logits[..., 5:] = float("-inf")
    masked_logits = torch.randn(2, 3, 7, generator=generator)
    masked_logits[0, :, 6] = float("-inf")  # example 0's masked model masks one of them too
    masked_logits.requires_grad_(True)
    labels = torch.full((2, 3), -100)
    labels[:, 1:] = 1  # answers scored at positions 0 and 1
    batch = Batch(torch.zeros(2, 3, dtype=torch.long), labels)
    objective = mm.KLDivergence()
    reference = objective.reference(Outputs(full_logits), batch)
    score = objective.score(Outputs(masked_logits), reference, batch)
    expected = _kl_over_tokens_the_full_model_can_emit(full_logits[:, :2], masked_logits.detach()[:, :2])
    assert float(score.loss_sum) == pytest.approx(expected, rel=1e-5)
    score.loss_sum.backward()
    assert bool(masked_logits.grad.isfinite().all())
    data = mm.SubtaskData("masked_tokens", batch.input_ids, batch.labels)  # the ground-truth suite's mean per answer
    assert kl_divergence(full_logits, masked_logits.detach(), data) == pytest.approx(expected / 4, rel=1e-5)


@pytest.mark.parametrize("hook_name, width", [("blocks.1.hook_resid_post", 32), ("blocks.1.attn.hook_z", 32)])
def test_a_linear_probe_of_another_width_names_both_widths_and_the_fix(hook_name, width):
    """A probe of 64 features on a 32-wide activation failed inside the matrix product: `mat1 and mat2 shapes cannot
    be multiplied (4x32 and 64x2)`."""
    bridge = tiny_bridge()
    input_ids = torch.randint(5, 40, (4, 5), generator=torch.Generator().manual_seed(0))
    labels = torch.where(torch.arange(5) >= 3, input_ids, -100)
    data = mm.SubtaskData("copy", input_ids, labels, classes=torch.tensor([0, 1, 0, 1]))
    probe = mm.LinearProbe(hook_name, torch.ones(2, 64), torch.zeros(2))
    expected = (
        rf"the probe's weight \[2, 64\] reads 64 features, but {re.escape(hook_name)} gives {width} per example.*"
        rf"give it a weight of \[classes, {width}\]"
    )
    with pytest.raises(ValueError, match=expected):
        mm.objective_metric(bridge, data, probe)
