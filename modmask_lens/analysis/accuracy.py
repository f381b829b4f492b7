"""What each mask keeps and what its removal breaks: mask-only and inverse-mask accuracy (Csordás et al. 2021,
``do_inverse_mask_test``; tables of ``paper/plot_addmul_performance.py``).

Accuracy is exact match: an example counts only if every answer token (and the EOS) is the argmax under teacher
forcing, which equals greedy decoding reproducing the answer exactly. Masks trained on another objective
(:mod:`modmask_lens.masks.objectives`) are measured by its metric instead (cosine, probe accuracy, agreement).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import pandas as pd
import torch

from modmask_lens.core.bridge import Bridge
from modmask_lens.core.data import SubtaskData
from modmask_lens.masks.binary import BinaryMask
from modmask_lens.masks.evaluation import exact_match, objective_metric  # noqa: F401 (exact_match: re-exported)
from modmask_lens.masks.mask_set import MaskSet, binaries
from modmask_lens.masks.objectives import AnswerCrossEntropy, Objective

IO_ROLES = ("W_E", "W_pos", "W_U")
"""The input and output layers of a transformer, where the paper's ``fullmask`` variant keeps the control mask."""


def inverse_mask(
    mask: BinaryMask, control: BinaryMask | None = None, io_roles: tuple[str, ...] = IO_ROLES
) -> BinaryMask:
    """``~mask`` (the mask's linear weights removed, norm gains kept: :meth:`BinaryMask.inverse`); with
    ``control`` (a mask of the same model), the control mask on ``io_roles`` instead (the paper's ``fullmask``): a
    tensor of those roles that the control does not mask is kept whole, as unmasked tensors are.

    Raises:
        ValueError: ``control`` was made for another model.
    """
    inverted = ~mask
    if control is None:
        return inverted
    mask.check_same_model(control)
    io_kept = {
        spec.key: control.kept.get(spec.key, torch.ones_like(mask.kept[spec.key]))
        for spec in mask.specs
        if spec.role in io_roles
    }
    return BinaryMask(
        mask.specs, inverted.kept | io_kept, mask.origin, f"~{mask.name} (control on {'/'.join(io_roles)})"
    )


def mask_accuracy(
    bridge: Bridge,
    masks: Mapping[str, BinaryMask | MaskSet],
    data: Mapping[str, SubtaskData],
    control: BinaryMask | MaskSet | None = None,
    batch_size: int = 256,
    objective: Objective = AnswerCrossEntropy(),
) -> pd.DataFrame:
    """Accuracy of every subtask's data under the full model, every mask, and every mask's inverse.

    Args:
        bridge: the model.
        masks: mask name -> binary mask (a :class:`MaskSet` counts as its readout, :meth:`MaskSet.binary`).
        data: subtask name -> its evaluation data.
        control: if given (a binary mask, or a :class:`MaskSet` read out as one), inverse masks keep the control
            mask on the input/output layers (the paper's ``fullmask`` variant).
        objective: whose metric ``accuracy`` holds (default: exact match of the answers).

    Returns:
        Columns ``subtask`` (the data evaluated), ``mask`` (NA for the full model), ``condition`` (``full``,
        ``mask``, ``inverse``), ``accuracy`` (the objective's metric). The paper's
        table (Full | task | not-task per task) is ``paper_table(frame)``.
    """
    masks = binaries(masks)
    if control is not None:
        control = binaries({"control": control})["control"]
    for mask in [*masks.values(), *([control] if control is not None else [])]:
        mask.check_model(bridge)
    for examples in data.values():  # every subtask before the first is evaluated
        examples.check_fits(bridge, answers_scored=objective.scores_answers)
        objective.check(examples)
    rows = []
    for subtask, examples in data.items():
        rows.append(
            {
                "subtask": subtask,
                "mask": pd.NA,
                "condition": "full",
                "accuracy": objective_metric(bridge, examples, objective, None, batch_size),
            }
        )
        for name, mask in masks.items():
            for condition, applied in (("mask", mask), ("inverse", inverse_mask(mask, control))):
                rows.append(
                    {
                        "subtask": subtask,
                        "mask": name,
                        "condition": condition,
                        "accuracy": objective_metric(bridge, examples, objective, applied, batch_size),
                    }
                )
    return pd.DataFrame(rows)


def paper_table(accuracy: pd.DataFrame) -> pd.DataFrame:
    """One row per subtask: ``full``, ``mask`` (its own mask) and ``inverse`` (its own mask removed) accuracy; NaN
    where no mask carries the subtask's name."""
    own = accuracy[accuracy["mask"].eq(accuracy["subtask"]) | (accuracy["condition"] == "full")]
    table = own.pivot(index="subtask", columns="condition", values="accuracy")
    return table.reindex(columns=pd.Index(["full", "mask", "inverse"], name=table.columns.name))


def own_accuracy(accuracy: pd.DataFrame, subtask_of: Mapping[str, str]) -> pd.DataFrame:
    """One row per mask of ``subtask_of`` (mask name, e.g. a report's label -> the subtask it was trained for),
    indexed by mask name: its ``subtask``, and the ``full``, ``mask`` and ``inverse`` accuracy on that subtask's data;
    NaN where ``accuracy`` holds none. Unlike :func:`paper_table` (one row per subtask, its mask found by the
    subtask's name), a mask under another name, and two masks of one subtask, each keep their row.

    Example:
        >>> own_accuracy(mask_accuracy(bridge, {"seed 1": jump}, data), {"seed 1": "jump"})  # doctest: +SKIP
    """
    full = accuracy[accuracy["condition"] == "full"].set_index("subtask")["accuracy"]
    rows = {}
    for name, subtask in subtask_of.items():
        own = accuracy[(accuracy["mask"] == name) & (accuracy["subtask"] == subtask)].set_index("condition")
        rows[name] = {"subtask": subtask, "full": full.get(subtask, math.nan)}
        rows[name] |= {condition: own["accuracy"].get(condition, math.nan) for condition in ("mask", "inverse")}
    return pd.DataFrame.from_dict(rows, orient="index", columns=["subtask", "full", "mask", "inverse"]).rename_axis(
        "mask"
    )
