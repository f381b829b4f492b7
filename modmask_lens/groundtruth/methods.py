"""Mask-finding methods the suite scores, and the baselines it ships.

A method is any callable ``(bridge, train: SubtaskData, mask_config: MaskConfig, seed: int) -> MaskSet``; its
binary readout is ``MaskSet.binary()`` (logit > ``MaskSet.threshold``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from modmask_lens.core.data import SubtaskData
from modmask_lens.masks.config import CSORDAS_MASKS, CSORDAS_TRAINING, MaskConfig, TrainConfig
from modmask_lens.masks.mask_set import MaskSet
from modmask_lens.masks.objectives import AnswerCrossEntropy, KLDivergence, Objective
from modmask_lens.masks.training import train_masks

Method = Callable[[nn.Module, SubtaskData, MaskConfig, int], MaskSet]

CSORDAS_GUMBEL = {"sampler": CSORDAS_MASKS.sampler, "init_logit": CSORDAS_MASKS.init_logit}
"""The :class:`MaskConfig` settings of Csordás's masks (Gumbel-sigmoid samples, init 2.0), set on top of the suite's
granularity. Heads and neurons keep the library's ``head_mask`` and ``neuron_mask`` (``output`` for both since
session 12; the suite's neuron rows of these methods measured before then masked each neuron's ``W_in`` column too,
``--neuron-mask in-out`` reruns them so), so that each study method is one change away from the next."""
CSORDAS_TRANSFORMER = dataclasses.replace(CSORDAS_TRAINING, steps=25_000, beta=6e-4)
"""Csordás et al. 2021's only Transformer mask setting (SCAN Transformer sweep: beta 6e-4, lr 1e-2, 25k steps, 4
samples, tau 1, init 2.0); everything else as :data:`~modmask_lens.CSORDAS_TRAINING`."""
TARGET_DENSITY = 0.1  # the target-density baseline keeps 10 % of the masked weights (Edge Pruning's Lagrangian)
NECESSITY = 0.9  # faithful+necessity: the complement loses >= 90 % of what removing every masked unit loses


@dataclass(frozen=True)
class FinderMethod:
    """The library's mask finder (:func:`~modmask_lens.train_masks`) with fixed training settings.

    Attributes:
        train_config: the training settings (its ``readout`` reads the mask out).
        mask_settings: :class:`MaskConfig` fields set on top of the suite's (which gives the granularity).
        objective: what the mask keeps (default: the answers' cross-entropy).
    """

    train_config: TrainConfig
    mask_settings: dict = dataclasses.field(default_factory=dict)
    objective: Objective = AnswerCrossEntropy()

    def __call__(self, bridge: nn.Module, train: SubtaskData, mask_config: MaskConfig, seed: int = 0) -> MaskSet:
        config = dataclasses.replace(mask_config, **self.mask_settings)
        training = dataclasses.replace(self.train_config, seed=seed)
        return train_masks(bridge, train, config, training, progress=False, objective=self.objective)[train.name]


def baseline_methods(steps: int | None = None) -> dict[str, FinderMethod]:
    """``faithful`` (the library's defaults, ``TrainConfig()``), ``csordas`` (:data:`~modmask_lens.CSORDAS_MASKS`
    and :data:`~modmask_lens.CSORDAS_TRAINING`), ``csordas-transformer`` (:data:`CSORDAS_TRANSFORMER`) and
    ``target-density`` (Csordás's masks with Edge Pruning's density Lagrangian at 0.1); ``steps`` overrides every
    one's step count (and caps the density warm-up at a quarter of it)."""
    density = dataclasses.replace(CSORDAS_TRAINING, beta=None, target_density=TARGET_DENSITY)
    return {
        "faithful": FinderMethod(_with_steps(TrainConfig(), steps)),
        "csordas": FinderMethod(_with_steps(CSORDAS_TRAINING, steps), CSORDAS_GUMBEL),
        "csordas-transformer": FinderMethod(_with_steps(CSORDAS_TRANSFORMER, steps), CSORDAS_GUMBEL),
        "target-density": FinderMethod(_with_steps(density, steps), CSORDAS_GUMBEL),
    }


def study_methods(steps: int | None = None) -> dict[str, FinderMethod]:
    """The methods of docs/finder-study.md, each one change away from the next: ``csordas``,
    ``csordas+faithful-readout``, ``gumbel+constraint`` (the loss constraint with Gumbel-sigmoid samples, init 3.0),
    ``hard-concrete+constraint`` (read out at 0), ``faithful`` (hard concrete, the constraint and the faithful
    readout: the library's defaults), ``faithful+kl`` (the same, keeping the full model's output distributions at
    the answer positions, KL within 0.02 nats, instead of the answers) and ``faithful+necessity`` (the same, with the
    necessity constraint ``complement_loss_fraction`` at :data:`NECESSITY`; measured, not the default)."""
    csordas = _with_steps(CSORDAS_TRAINING, steps)
    faithful = _with_steps(TrainConfig(), steps)
    at_zero = dataclasses.replace(faithful, readout="zero")
    return {
        "csordas": FinderMethod(csordas, CSORDAS_GUMBEL),
        "csordas+faithful-readout": FinderMethod(dataclasses.replace(csordas, readout="faithful"), CSORDAS_GUMBEL),
        "gumbel+constraint": FinderMethod(at_zero, {"sampler": "gumbel-sigmoid"}),
        "hard-concrete+constraint": FinderMethod(at_zero, {"sampler": "hard-concrete"}),
        "faithful": FinderMethod(faithful),
        "faithful+kl": FinderMethod(faithful, objective=KLDivergence()),
        "faithful+necessity": FinderMethod(dataclasses.replace(faithful, complement_loss_fraction=NECESSITY)),
        "faithful+one-sample": FinderMethod(dataclasses.replace(faithful, n_samples=1)),
    }


def _with_steps(config: TrainConfig, steps: int | None) -> TrainConfig:
    """``config`` with ``steps`` (if given), its density warm-up capped at a quarter of them."""
    if steps is None:
        return config
    return dataclasses.replace(
        config, steps=steps, density_warmup_steps=min(config.density_warmup_steps, max(steps // 4, 1))
    )
