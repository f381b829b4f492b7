"""Which output tokens lose their unembedding rows under a subtask's mask (Csordás et al. 2021, SCAN Fig. 4b).

For every output token r: removed_r = |control_r and not task_r| / |control_r|, the fraction of the row of ``W_U``
kept by the control mask that the subtask's mask removes. The paper's finding: a mask trained without ``jump``
removes most of the ``I_JUMP`` row and little of the others.
"""

from __future__ import annotations

import pandas as pd

from modmask_lens.masks.binary import BinaryMask


def output_row_removal(task: BinaryMask, control: BinaryMask, tokenizer=None) -> pd.DataFrame:
    """Per output token, the share of its control-kept ``W_U`` weights that ``task`` removes.

    Args:
        task: the subtask's mask.
        control: the control mask (trained on the model's full training data).
        tokenizer: optional; adds a ``token`` column with each id's string.

    Returns:
        Columns ``token_id`` (and ``token``), ``kept_by_control``, ``removed_by_task``, ``removed_fraction``, sorted
        by ``removed_fraction``, largest first.

    Raises:
        ValueError: the masks were made for different models, or one of them does not cover ``W_U``.
    """
    task.check_same_model(control)
    spec = next((spec for spec in task.specs if spec.role == "W_U"), None)
    if spec is None or spec.key not in control.kept:
        raise ValueError("both masks must cover W_U (the default MaskConfig does; embeddings-only configs do not)")
    vocab_axis = spec.output_axis  # W_U writes one row per vocabulary entry
    control_rows = control.kept[spec.key].movedim(vocab_axis, 0)
    task_rows = task.kept[spec.key].movedim(vocab_axis, 0)
    kept_by_control = control_rows.sum(dim=1)
    removed = (control_rows & ~task_rows).sum(dim=1)
    frame = pd.DataFrame(
        {
            "token_id": range(control_rows.shape[0]),
            "kept_by_control": kept_by_control.tolist(),
            "removed_by_task": removed.tolist(),
        }
    )
    if tokenizer is not None:
        frame.insert(1, "token", tokenizer.convert_ids_to_tokens(frame["token_id"].tolist()))
    frame["removed_fraction"] = frame["removed_by_task"] / frame["kept_by_control"].where(frame["kept_by_control"] > 0)
    return frame.sort_values("removed_fraction", ascending=False, kind="stable").reset_index(drop=True)
