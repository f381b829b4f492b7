"""Objectives record what they are (a custom objective's label), compare distributions where the full model gives a
token no probability, and name a probe of the wrong width."""

from __future__ import annotations

import functools

import pytest
import torch

import modmask_lens as mm
from modmask_lens.masks.run_fingerprint import RunMismatch, check_same_run


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
