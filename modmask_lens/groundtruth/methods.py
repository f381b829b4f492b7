"""Mask-finding methods the suite scores, and the baselines it ships.

A method is any callable ``(bridge, train: SubtaskData, mask_config: MaskConfig) -> MaskSet``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from modmask_lens.core.data import SubtaskData
from modmask_lens.masks.config import MaskConfig, TrainConfig
from modmask_lens.masks.mask_set import MaskSet
from modmask_lens.masks.readout import faithful_threshold
from modmask_lens.masks.training import train_masks

Method = Callable[[nn.Module, SubtaskData, MaskConfig], MaskSet]

CSORDAS_TRANSFORMER = TrainConfig(steps=25_000, beta=6e-4)
"""Csordás et al. 2021's only Transformer mask setting (SCAN Transformer sweep: beta 6e-4, lr 1e-2, 25k steps, 4
samples, tau 1, init 2.0); everything else as :class:`TrainConfig`, whose defaults are their +/* settings."""
TARGET_DENSITY = 0.1  # the target-density baseline keeps 10 % of the masked weights (Edge Pruning's Lagrangian)


FAITHFUL_TRAINING = TrainConfig(lr=0.05, max_loss_increase=0.02, lagrangian_lr=0.05)
"""The loss-constrained finder of docs/finder-study.md: minimise the expected density subject to the task loss staying
within 0.02 nats per answer token of the full model's."""
FAITHFUL_MASKS = {"sampler": "hard-concrete", "init_logit": 3.0}
"""Its :class:`MaskConfig` settings: hard-concrete samples, logits starting at 3.0."""


@dataclass(frozen=True)
class FinderMethod:
    """The library's mask finder (:func:`~modmask_lens.train_masks`) with fixed training settings.

    Attributes:
        train_config: the training settings.
        mask_settings: :class:`MaskConfig` fields set on top of the suite's (which gives the granularity).
        faithful_readout: shift the trained logits by :func:`~modmask_lens.faithful_threshold` on the training
            data, so that the ``logit > 0`` readout keeps the fewest top units that keep 99% of the full model's
            exact match (the ranking, and so the AUROC, is unchanged).
    """

    train_config: TrainConfig
    mask_settings: dict = dataclasses.field(default_factory=dict)
    faithful_readout: bool = False

    def __call__(self, bridge: nn.Module, train: SubtaskData, mask_config: MaskConfig) -> MaskSet:
        config = dataclasses.replace(mask_config, **self.mask_settings)
        masks = train_masks(bridge, train, config, self.train_config, progress=False)[train.name]
        if self.faithful_readout:
            threshold = faithful_threshold(bridge, masks, train)
            masks.logits = {
                name: (logit.detach() - threshold).requires_grad_(True) for name, logit in masks.logits.items()
            }
        return masks


def baseline_methods(steps: int | None = None) -> dict[str, FinderMethod]:
    """``library-defaults`` (``TrainConfig()``), ``csordas`` (:data:`CSORDAS_TRANSFORMER`) and ``target-density``
    (``TrainConfig(target_density=0.1)``); ``steps`` overrides every one's step count (and caps the density
    warm-up at a quarter of it)."""
    configs = {
        "library-defaults": TrainConfig(),
        "csordas": CSORDAS_TRANSFORMER,
        "target-density": TrainConfig(target_density=TARGET_DENSITY),
    }
    return {name: FinderMethod(_with_steps(config, steps)) for name, config in configs.items()}


def study_methods(steps: int | None = None) -> dict[str, FinderMethod]:
    """The methods of docs/finder-study.md, each one change away from the next: ``library-defaults``,
    ``defaults+faithful-readout``, ``gumbel+constraint`` (the loss constraint with Gumbel-sigmoid samples),
    ``hard-concrete+constraint`` and ``faithful`` (hard concrete, the constraint and the faithful readout)."""
    defaults, constrained = _with_steps(TrainConfig(), steps), _with_steps(FAITHFUL_TRAINING, steps)
    gumbel = {key: value for key, value in FAITHFUL_MASKS.items() if key != "sampler"}
    return {
        "library-defaults": FinderMethod(defaults),
        "defaults+faithful-readout": FinderMethod(defaults, faithful_readout=True),
        "gumbel+constraint": FinderMethod(constrained, gumbel),
        "hard-concrete+constraint": FinderMethod(constrained, FAITHFUL_MASKS),
        "faithful": FinderMethod(constrained, FAITHFUL_MASKS, faithful_readout=True),
    }


def _with_steps(config: TrainConfig, steps: int | None) -> TrainConfig:
    """``config`` with ``steps`` (if given), its density warm-up capped at a quarter of them."""
    if steps is None:
        return config
    return dataclasses.replace(
        config, steps=steps, density_warmup_steps=min(config.density_warmup_steps, max(steps // 4, 1))
    )
