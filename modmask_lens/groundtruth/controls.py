"""Null controls: the same mask method on a randomly initialised model of the same configuration, and on the real
model with the answers shuffled across examples. A mask can create behaviour (supermasks, Zhou et al. 2019), so a
method's figures mean something only beside these."""

from __future__ import annotations

import copy
import dataclasses
import tempfile
import warnings

import torch
from torch import Generator, nn
from transformer_lens.model_bridge import TransformerBridge

from modmask_lens.core.booting import boot_transformers
from modmask_lens.core.data import SubtaskData
from modmask_lens.core.encoding import IGNORE_INDEX
from modmask_lens.core.random import seeded
from modmask_lens.groundtruth.case import GroundTruthCase

NATIVE_ARCHITECTURE = "TransformerLensNative"
"""``cfg.architecture`` of a bridge booted by ``TransformerBridge.boot_native``."""

CONTROLS = ("none", "random-init", "shuffled-answers")
"""``none``: the case itself; ``random-init``: a fresh model of the case's configuration; ``shuffled-answers``: the
case's model, each subtask's answers permuted across its examples."""


def random_init_bridge(bridge: nn.Module, seed: int = 0) -> nn.Module:
    """A bridge of the same configuration and tokenizer with freshly initialised weights, drawn from ``seed``
    (torch's global generator is left as it was).

    A bridge around a Hugging Face model is rebuilt as the same class (a masked LM as its masked LM, not the causal
    LM the config would map to: RoBERTa's, which TransformerLens does not boot) from its config, with the class's own
    initialisation; a TransformerLens-native bridge (``TransformerBridge.boot_native``, e.g. the compiled tracr
    programs) is booted again from its config with ``seed`` and TransformerLens's initialisation (``cfg.init_mode``).

    Raises:
        ValueError: when the bridge wraps neither a Hugging Face model (``original_model.config`` and a tokenizer)
            nor a native one.
    """
    original_model = getattr(bridge, "original_model", None)
    config = getattr(original_model, "config", None)
    bridge_config = getattr(bridge, "cfg", None)
    if config is None and getattr(bridge_config, "architecture", None) == NATIVE_ARCHITECTURE:
        fresh_config = copy.deepcopy(bridge_config)
        fresh_config.seed, fresh_config.init_weights = seed, True
        with seeded(seed):  # boot_native seeds its own generator; this also fixes anything drawn beside it
            return TransformerBridge.boot_native(fresh_config, tokenizer=getattr(bridge, "tokenizer", None)).eval()
    if config is None or getattr(bridge, "tokenizer", None) is None:
        raise ValueError(
            "the random-init control rebuilds the bridge's model from its config; this bridge wraps no Hugging "
            "Face model with a tokenizer and is not TransformerLens-native: skip the control for it"
        )
    with seeded(seed):  # the caller's global generator is left as it was
        fresh = type(original_model)._from_config(config)  # what AutoModel*.from_config calls on its class
    with tempfile.TemporaryDirectory() as folder:
        fresh.save_pretrained(folder)
        bridge.tokenizer.save_pretrained(folder)
        return boot_transformers(folder, device="cpu")


UNCHANGED_SHARE = 0.25
"""Above this share of examples left with their own answer, shuffled answers warn that the control is weak (the
plants, whose answers are one of 10 digits, leave about a tenth by chance)."""


def shuffled_answers(data: SubtaskData, seed: int = 0) -> SubtaskData:
    """``data`` with every example's answer tokens taken from another example that scores the same positions (a
    seeded permutation within each such group, e.g. the inputs of one length of a tracr program; the plants'
    examples all form one group).

    Where the inputs hold the answers (teacher forcing: every scored position's input token is its label, as in
    the plants), the answer tokens move in ``input_ids`` too, so that the inputs stay consistent with the answers;
    otherwise (tracr's programs, whose inputs are the program's and whose labels its outputs one position on, or
    a masked language model's ``[MASK]`` tokens) the inputs stay as they are. Foils move with their answers. The
    attention mask, classes and label shift stay.

    Warns where some example shares its answer positions with no other (its answers stay), and where more than
    :data:`UNCHANGED_SHARE` of the examples end up with their own answer (examples that share an answer, as many
    inputs of a sorting program do).

    Raises:
        ValueError: when no two examples score the same positions, so that no answer can move.
    """
    scored = data.labels != IGNORE_INDEX
    layouts, group = torch.unique(scored, dim=0, return_inverse=True)
    if len(layouts) == len(data):
        raise ValueError(
            f"subtask {data.name!r}: no two examples score the same positions, so no answer can be permuted "
            "across examples; give examples a shared layout (the same answer positions)"
        )
    group_sizes = torch.bincount(group)
    alone = int((group_sizes[group] == 1).sum())
    if alone:
        warnings.warn(
            f"subtask {data.name!r}: {alone} of {len(data)} examples share their answer positions with no other "
            "example and keep their own answers under shuffled-answers; the control is that much weaker",
            stacklevel=2,
        )
    generator = Generator().manual_seed(seed)
    order = torch.arange(len(data))
    for layout in range(len(layouts)):
        members = torch.nonzero(group == layout).flatten()
        order[members] = members[torch.randperm(len(members), generator=generator)]
    labels = torch.where(scored, data.labels[order], data.labels)
    unchanged = int((labels == data.labels).all(dim=1).sum())
    if unchanged > UNCHANGED_SHARE * len(data):
        warnings.warn(
            f"subtask {data.name!r}: {unchanged} of {len(data)} examples ({unchanged / len(data):.0%}) still have "
            "their own answer under shuffled-answers (many examples share an answer, or keep their own); the control "
            "is that much weaker and can look like the real result",
            stacklevel=2,
        )
    teacher_forced = bool((data.input_ids[scored] == data.labels[scored]).all())
    input_ids = torch.where(scored, data.input_ids[order], data.input_ids) if teacher_forced else data.input_ids
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
