"""How stable masks are: IoU of masks trained with different seeds, and a sweep of the regulariser weight beta
(Csordás et al. 2021: CIFAR mask-stability IoU; ``addmul_ff_alpha_analysis`` beta sweep from 1e-5 to 1e-3)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import pandas as pd

from modmask_lens.analysis.sharing import pairwise_overlap
from modmask_lens.core.bridge import Bridge
from modmask_lens.core.data import SubtaskData
from modmask_lens.masks.config import CSORDAS_MASKS, CSORDAS_TRAINING, MaskConfig, TrainConfig
from modmask_lens.masks.evaluation import objective_metric
from modmask_lens.masks.objectives import AnswerCrossEntropy, Objective
from modmask_lens.masks.training import train_masks


def seed_stability(
    bridge: Bridge,
    subtask: SubtaskData,
    seeds: Sequence[int] = (0, 1),
    mask_config: MaskConfig = MaskConfig(),
    train_config: TrainConfig = TrainConfig(),
    by: str = "all",
    progress: bool = False,
    objective: Objective = AnswerCrossEntropy(),
) -> pd.DataFrame:
    """Train one mask per seed on the same data (and ``objective``) and return their pairwise IoU / IoMin (grouped
    ``by``).

    Raises:
        ValueError: fewer than two seeds (nothing to compare), before any training.
    """
    if len(seeds) < 2:
        raise ValueError(f"seed_stability compares masks of two or more seeds; got seeds={tuple(seeds)}")
    masks = {
        f"run {run} (seed {seed})": train_masks(
            bridge,
            subtask,
            mask_config,
            dataclasses.replace(train_config, seed=seed),
            progress=progress,
            objective=objective,
        )[subtask.name].binary()
        for run, seed in enumerate(seeds)
    }
    return pairwise_overlap(masks, by=by)


def beta_sweep(
    bridge: Bridge,
    subtask: SubtaskData,
    betas: Sequence[float] = (1e-5, 1e-4, 1e-3),
    evaluation: SubtaskData | None = None,
    mask_config: MaskConfig = CSORDAS_MASKS,
    train_config: TrainConfig = CSORDAS_TRAINING,
    progress: bool = False,
    objective: Objective = AnswerCrossEntropy(),
) -> pd.DataFrame:
    """Train one mask per beta of Csordás's logit-sum regulariser (their method by default); report its kept
    fraction and its accuracy on ``evaluation`` (the objective's metric: exact match by default).

    Returns:
        Columns ``beta``, ``kept``, ``total``, ``kept_fraction``, ``accuracy`` (on ``evaluation``, default: the
        training data).
    """
    rows = []
    for beta in betas:
        config = dataclasses.replace(
            train_config, beta=beta, max_loss_increase=None, loss_increase_per="token", target_density=None
        )
        trained = train_masks(bridge, subtask, mask_config, config, progress=progress, objective=objective)
        mask = trained[subtask.name].binary()
        rows.append(
            {
                "beta": beta,
                "kept": mask.count,
                "total": mask.total,
                "kept_fraction": mask.count / mask.total,
                "accuracy": objective_metric(bridge, evaluation or subtask, objective, mask),
            }
        )
    return pd.DataFrame(rows)
