"""Head and neuron importance: the kept fraction of each unit's weights under a mask, ranked."""

from __future__ import annotations

import pandas as pd

from modmask_lens.masks.binary import BinaryMask

# Tensors indexed by query head (W_K / W_V are indexed by key/value group, which several heads share under GQA).
_HEAD_ROLES = ("W_Q", "b_Q", "W_O")


def unit_importance(mask: BinaryMask, unit: str = "head") -> pd.DataFrame:
    """Kept fraction of every head (pooled over its masked ``W_Q`` and ``W_O`` slices, and ``b_Q`` where biases are
    masked; ``W_K``/``W_V`` belong to key/value groups several heads share under GQA and are left out) or neuron (its
    masked slices: ``W_out``, and ``W_in``/``W_gate`` (and ``b_in``) too under ``neuron_mask="in-out"``; in a
    mixture-of-experts layer its slices of the expert stacks, numbered as
    :meth:`~modmask_lens.masks.binary.BinaryMask.kept_fraction` numbers them), ranked, most kept first.

    Returns:
        Columns ``mask``, ``layer``, ``head`` or ``neuron``, ``kept``, ``total``, ``kept_fraction``, ``rank``
        (1 = most kept).
    """
    if unit not in ("head", "neuron"):
        raise ValueError(f"unit={unit!r}: choose 'head' or 'neuron'")
    frame = mask.kept_fraction(by=unit)
    if frame.empty:
        raise ValueError(f"the mask covers no tensor with {unit}s; train it with kinds that include them")
    if unit == "head":
        frame = frame[frame["role"].isin(_HEAD_ROLES)]
        if frame.empty:
            raise ValueError(
                "the mask covers no W_Q, b_Q or W_O slice, which are indexed by query head: rank key/value groups "
                "with mask.kept_fraction(by='head') instead"
            )
    pooled = frame.groupby(["mask", "layer", unit], sort=False)[["kept", "total"]].sum().reset_index()
    pooled["kept_fraction"] = pooled["kept"] / pooled["total"]
    pooled = pooled.sort_values(["kept_fraction", "layer", unit], ascending=[False, True, True], kind="stable")
    pooled["rank"] = range(1, len(pooled) + 1)
    return pooled.reset_index(drop=True)
