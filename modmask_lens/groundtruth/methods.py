"""Mask-finding methods the suite scores, and the baselines it ships.

A method is any callable ``(bridge, train: SubtaskData, mask_config: MaskConfig) -> MaskSet``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from modmask_lens.masks.config import MaskConfig, TrainConfig
from modmask_lens.masks.data import SubtaskData
from modmask_lens.masks.mask_set import MaskSet
from modmask_lens.masks.training import train_masks

Method = Callable[[nn.Module, SubtaskData, MaskConfig], MaskSet]

CSORDAS_TRANSFORMER = TrainConfig(steps=25_000, beta=6e-4)
"""Csordás et al. 2021's only Transformer mask setting (SCAN Transformer sweep: beta 6e-4, lr 1e-2, 25k steps, 4
samples, tau 1, init 2.0); everything else as :class:`TrainConfig`, whose defaults are their +/* settings."""
TARGET_DENSITY = (
    0.1  # the target-density baseline keeps 10 % of the masked weights (Edge Pruning's Lagrangian)
)


@dataclass(frozen=True)
class FinderMethod:
    """The library's mask finder (:func:`~modmask_lens.train_masks`) with fixed training settings."""

    train_config: TrainConfig

    def __call__(self, bridge: nn.Module, train: SubtaskData, mask_config: MaskConfig) -> MaskSet:
        return train_masks(bridge, train, mask_config, self.train_config, progress=False)[train.name]


def baseline_methods(steps: int | None = None) -> dict[str, FinderMethod]:
    """``library-defaults`` (``TrainConfig()``), ``csordas`` (:data:`CSORDAS_TRANSFORMER`) and ``target-density``
    (``TrainConfig(target_density=0.1)``); ``steps`` overrides every one's step count (and caps the density
    warm-up at a quarter of it)."""
    configs = {
        "library-defaults": TrainConfig(),
        "csordas": CSORDAS_TRANSFORMER,
        "target-density": TrainConfig(target_density=TARGET_DENSITY),
    }
    if steps is not None:
        configs = {
            name: dataclasses.replace(
                config, steps=steps, density_warmup_steps=min(config.density_warmup_steps, max(steps // 4, 1))
            )
            for name, config in configs.items()
        }
    return {name: FinderMethod(config) for name, config in configs.items()}
