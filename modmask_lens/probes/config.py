"""Settings of gated-module probes, with defaults from Krishnamurthy & Watkins (NeurIPS 2021 XAI workshop; code
yamsgithub/modular_deep_learning, branch ``xai_neurips_2021``)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Literal

GateKind = Literal["expectation", "pre_softmax", "top1", "stochastic"]
Regulariser = Literal["importance", "ideal_gate", "none"]


@dataclass(frozen=True)
class ProbeConfig:
    """A gate and ``n_experts`` expert readouts on activations of a frozen model.

    Attributes:
        n_experts: experts (the paper's MNIST experiments use 5).
        expert_hidden: 0 for linear experts, else the width of a one-hidden-layer ReLU MLP.
        gate_hidden: 0 for a linear gate, else the width of a one-hidden-layer ReLU MLP gate.
        gate: ``expectation`` (mixture of expert probabilities, the paper's default), ``pre_softmax`` (mixture of
            expert logits), ``top1`` (the argmax-gate expert; trained by hard EM: each sample is assigned to the
            expert maximising g_e * p_e(y)) or ``stochastic`` (loss -log sum_e g_e exp(-loss_e / 2); evaluated at the
            argmax-gate expert so that results are deterministic).
        temperature: gate softmax temperature T.
        temperature_decay: T_step = T / (1 + decay * epoch), the paper's schedule (0 keeps T).
        two_temperatures: experts learn against the gate at temperature T while the gate learns (and the probe is
            evaluated) at T = 1, as in the reference code.
        regulariser: ``importance`` (CV^2 of the batch's summed gate, Shazeer et al.), ``ideal_gate`` (MSE of the gate
            to the one-hot of each sample's lowest-loss expert) or ``none``.
        regulariser_weight: weight of the regulariser (the paper uses 1.0 for importance).
        lr: RMSprop learning rate (paper: 1e-3, momentum 0.9).
        steps: optimiser steps; batch_size: examples per step; seed: initialisation and batch order.
        checkpoint_every: steps between checkpoints when a checkpoint directory is given.
    """

    n_experts: int = 5
    expert_hidden: int = 0
    gate_hidden: int = 0
    gate: GateKind = "expectation"
    temperature: float = 1.0
    temperature_decay: float = 0.0
    two_temperatures: bool = False
    regulariser: Regulariser = "importance"
    regulariser_weight: float = 1.0
    lr: float = 1e-3
    steps: int = 1000
    batch_size: int = 32
    seed: int = 0
    checkpoint_every: int = 200

    def __post_init__(self) -> None:
        for name in ("n_experts", "expert_hidden", "gate_hidden", "steps", "batch_size", "seed", "checkpoint_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an int, got {value!r}")
        if self.n_experts < 1:
            raise ValueError("n_experts must be at least 1")
        if self.gate not in ("expectation", "pre_softmax", "top1", "stochastic"):
            raise ValueError(f"gate {self.gate!r}: choose expectation, pre_softmax, top1 or stochastic")
        if self.regulariser not in ("importance", "ideal_gate", "none"):
            raise ValueError(f"regulariser {self.regulariser!r}: choose importance, ideal_gate or none")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"temperature must be > 0 and finite, got {self.temperature}")
        for name in ("steps", "batch_size", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("expert_hidden", "gate_hidden", "temperature_decay", "regulariser_weight"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) >= 0):
                raise ValueError(f"{name} must be >= 0 and finite, got {getattr(self, name)}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be > 0 and finite, got {self.lr}")

    def to_dict(self) -> dict:
        return asdict(self)
