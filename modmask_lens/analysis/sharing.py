"""How much subtasks' masks share (Csordás et al. 2021, ``paper/plot_mask_iou.py`` and ``Task.plot_mask_sharing``).

* IoU = |a and b| / |a or b|, IoMin = |a and b| / min(|a|, |b|), for every pair of masks.
* shared_i = |m_i and (any other mask)| / |m_i|; with ``by="all"`` it pools over layers, the paper's "total shared".

Every function returns a tidy DataFrame grouped like :meth:`BinaryMask.kept_fraction` (``all``, ``tensor``,
``layer``, ``role``, ``layer_role``, ``head``, ``neuron``).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import reduce
from itertools import combinations

import pandas as pd

from modmask_lens.masks.binary import GROUP_COLUMNS, BinaryMask
from modmask_lens.masks.mask_set import MaskSet, binaries


def _counts(mask: BinaryMask, by: str, column: str) -> pd.DataFrame:
    frame = mask.kept_fraction(by=by)
    if frame.empty:
        roles = sorted({spec.role for spec in mask.specs})
        raise ValueError(
            f"mask {mask.name!r} masks no {by} units (its tensors' roles: {roles}); "
            "group by layer_role, layer, role or tensor instead"
        )
    return frame[GROUP_COLUMNS[by] + ["kept"]].rename(columns={"kept": column})


def _merge(frames: list[pd.DataFrame], by: str) -> pd.DataFrame:
    if not GROUP_COLUMNS[by]:
        return pd.concat(frames, axis=1)
    return reduce(lambda left, right: left.merge(right, on=GROUP_COLUMNS[by], how="outer"), frames)


def _ratio(numerator: pd.Series, denominator: pd.Series) -> pd.Series:
    """numerator / denominator, NaN where the denominator is 0 (nothing kept: the ratio is undefined)."""
    return numerator / denominator.where(denominator > 0)


def pairwise_overlap(masks: Mapping[str, BinaryMask | MaskSet], by: str = "layer_role") -> pd.DataFrame:
    """IoU and IoMin of every pair of masks.

    Args:
        masks: subtask name -> binary mask (all of the same model and configuration; a :class:`MaskSet` counts as
            its readout, :meth:`MaskSet.binary`).
        by: grouping, as in :meth:`BinaryMask.kept_fraction`.

    Returns:
        Columns ``mask_a``, ``mask_b``, the grouping columns, ``intersection``, ``union``, ``kept_a``, ``kept_b``,
        ``iou``, ``iomin``.

    Example:
        >>> pairwise_overlap({"add": add.binary(), "mul": mul.binary()}, by="layer")       # doctest: +SKIP
    """
    rows = []
    for (name_a, mask_a), (name_b, mask_b) in combinations(binaries(masks).items(), 2):
        frame = _merge(
            [
                _counts(mask_a & mask_b, by, "intersection"),
                _counts(mask_a | mask_b, by, "union"),
                _counts(mask_a, by, "kept_a"),
                _counts(mask_b, by, "kept_b"),
            ],
            by,
        )
        frame.insert(0, "mask_b", name_b)
        frame.insert(0, "mask_a", name_a)
        rows.append(frame)
    if not rows:
        raise ValueError("pairwise_overlap needs at least two masks")
    table = pd.concat(rows, ignore_index=True)
    table["iou"] = _ratio(table["intersection"], table["union"])
    table["iomin"] = _ratio(table["intersection"], table[["kept_a", "kept_b"]].min(axis=1))
    return table


def shared_fraction(masks: Mapping[str, BinaryMask | MaskSet], by: str = "layer_role") -> pd.DataFrame:
    """shared_i = |m_i and (m_j for any j != i)| / |m_i| for every mask i (a :class:`MaskSet` counts as its
    readout, :meth:`MaskSet.binary`).

    Returns:
        Columns ``mask``, the grouping columns, ``kept``, ``shared``, ``shared_fraction``.
    """
    if len(masks) < 2:
        raise ValueError("shared_fraction needs at least two masks")
    masks = binaries(masks)
    rows = []
    for name, mask in masks.items():
        others = reduce(lambda left, right: left | right, [other for key, other in masks.items() if key != name])
        frame = _merge([_counts(mask, by, "kept"), _counts(mask & others, by, "shared")], by)
        frame.insert(0, "mask", name)
        rows.append(frame)
    table = pd.concat(rows, ignore_index=True)
    table["shared_fraction"] = _ratio(table["shared"], table["kept"])
    return table
