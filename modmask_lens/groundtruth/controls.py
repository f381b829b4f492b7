"""Null controls: the same mask method on a randomly initialised model of the same configuration, and on the real
model with the answers shuffled across examples. A mask can create behaviour (supermasks, Zhou et al. 2019), so a
method's figures mean something only beside these."""

from __future__ import annotations

import dataclasses
import tempfile

import torch
from torch import Generator, nn
from transformers import AutoModelForCausalLM

from modmask_lens.core.booting import boot_transformers
from modmask_lens.core.data import SubtaskData
from modmask_lens.core.encoding import IGNORE_INDEX
from modmask_lens.core.random import seeded
from modmask_lens.groundtruth.case import GroundTruthCase

CONTROLS = ("none", "random-init", "shuffled-answers")
"""``none``: the case itself; ``random-init``: a fresh model of the case's configuration; ``shuffled-answers``: the
case's model, each subtask's answers permuted across its examples."""


def random_init_bridge(bridge: nn.Module, seed: int = 0) -> nn.Module:
    """A bridge of the same Hugging Face configuration and tokenizer with freshly initialised weights, drawn from
    ``seed`` (torch's global generator is left as it was).

    Raises:
        ValueError: when the bridge does not wrap a Hugging Face model (no ``original_model.config``).
    """
    config = getattr(getattr(bridge, "original_model", None), "config", None)
    if config is None or getattr(bridge, "tokenizer", None) is None:
        raise ValueError(
            "the random-init control rebuilds the bridge's Hugging Face model from its config; this "
            "bridge wraps no Hugging Face model or has no tokenizer: skip the control for it"
        )
    with seeded(seed):  # the caller's global generator is left as it was
        fresh = AutoModelForCausalLM.from_config(config)
    with tempfile.TemporaryDirectory() as folder:
        fresh.save_pretrained(folder)
        bridge.tokenizer.save_pretrained(folder)
        return boot_transformers(folder, device="cpu")


def shuffled_answers(data: SubtaskData, seed: int = 0) -> SubtaskData:
    """``data`` with every example's answer tokens taken from another example (a seeded permutation).

    Needs the examples to share their answer positions (the plants' and tracr's fixed layouts do); the answer
    tokens move in ``input_ids`` too, so teacher forcing stays consistent, and foils move with their answers. The
    attention mask, classes and label shift stay.
    """
    scored = data.labels != IGNORE_INDEX
    if not bool((scored == scored[0]).all()):
        raise ValueError(
            f"subtask {data.name!r}: examples score different positions, so answers cannot be "
            "permuted across them; give all examples one layout"
        )
    order = torch.randperm(len(data), generator=Generator().manual_seed(seed))
    labels = torch.where(scored, data.labels[order], data.labels)
    input_ids = torch.where(scored, data.input_ids[order], data.input_ids)
    foils = None if data.foils is None else torch.where(scored, data.foils[order], data.foils)  # paired with answers
    return dataclasses.replace(data, input_ids=input_ids, labels=labels, foils=foils)


def control_case(case: GroundTruthCase, control: str, seed: int = 0) -> GroundTruthCase:
    """``case`` as seen by a control: same truth and card, another model (``random-init``) or other answers
    (``shuffled-answers``, train and test shuffled alike)."""
    if control == "none":
        return case
    if control == "random-init":
        return dataclasses.replace(case, bridge=random_init_bridge(case.bridge, seed))
    if control == "shuffled-answers":
        return dataclasses.replace(
            case,
            train={name: shuffled_answers(data, seed) for name, data in case.train.items()},
            test={name: shuffled_answers(data, seed) for name, data in case.test.items()},
        )
    raise ValueError(f"unknown control {control!r}; choose from {CONTROLS}")
