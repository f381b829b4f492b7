"""Mask structure and training settings, with defaults from Csordás et al. 2021 (code: RobertCsordas/modules)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Literal

Granularity = Literal["weight", "neuron", "head", "matrix"]
Sampler = Literal["gumbel-sigmoid", "hard-concrete"]
SAMPLERS: tuple[str, ...] = ("gumbel-sigmoid", "hard-concrete")
GRANULARITIES: tuple[str, ...] = ("weight", "neuron", "head", "matrix")
HeadMask = Literal["qkvo", "output"]
HEAD_MASKS: tuple[str, ...] = ("qkvo", "output")
HEAD_MASK_OF_OLD_FILES: HeadMask = "qkvo"
"""What a head logit masked before :attr:`MaskConfig.head_mask` existed (mask files without the field)."""
PARAMETER_KINDS: tuple[str, ...] = ("linear", "norm", "embedding", "bias")


@dataclass(frozen=True)
class MaskConfig:
    """Which tensors are masked, and how many elements share one logit.

    Attributes:
        granularity: ``weight``: one logit per element (default, as Csordás). ``neuron``: one logit per MLP hidden
            unit, shared by its ``W_in``/``W_gate`` column and ``W_out`` row; only MLP tensors are masked. ``head``:
            one logit per query head, on the slices :attr:`head_mask` names: with ``qkvo`` its ``W_Q``/``W_O``
            slices and, without grouped-query attention, its ``W_K``/``W_V`` slices (with grouped-query attention a
            key/value group is kept while any query head that reads it is kept: mask = max over the group's heads);
            only attention tensors are masked. ``matrix``: one
            logit per tensor.
        kinds: parameter kinds to mask: ``linear`` (W_Q, W_K, W_V, W_O, W_in, W_gate, W_out, W_U), ``norm`` (norm
            gains), ``embedding`` (W_E, W_pos), ``bias``. Default: linear weights and norm gains, as Csordás
            (``mask_filter`` skips ``embedding*``; ``bias_no_mask=1`` for SCAN and DM-math).
        roles: if given, only these roles (e.g. ``("W_Q", "W_K")``) among the selected kinds.
        layers: if given, only tensors of these blocks (embeddings, final norm and unembedding have no layer and are
            then left out).
        init_logit: initial logit of every mask element; 2.0 (sigmoid 0.88, mostly kept) as Csordás ``-mask_init``.
        head_mask: at head granularity without ``roles``, which of a head's slices its logit masks: ``qkvo``
            (its ``W_Q``, ``W_K``, ``W_V`` and ``W_O`` slices share it) or ``output`` (its ``W_O`` slice only: a gate
            on the head's output, identical to scaling its ``hook_z``; the default). ``roles``, when given, decides
            instead.
            Measured in docs/concepts.md#head-masks: under training's sampling the ``output`` logit's gradient at
            initialisation ranks heads by what removing them costs (Spearman 0.60 on all-MiniLM-L6-v2, 0.45 on the
            zoo scan model), the shared one's hardly (0.22, -0.13).
        sampler: how training samples masks from logits: ``gumbel-sigmoid`` (straight-through, Csordás; the
            sample is 0 or 1 and ``TrainConfig.temperature`` is its tau) or ``hard-concrete`` (Louizos et al.'s L0
            relaxation with beta 2/3, as Edge Pruning; samples in [0, 1]). The readout is ``logit > 0`` for both.
    """

    granularity: Granularity = "weight"
    kinds: tuple[str, ...] = ("linear", "norm")
    roles: tuple[str, ...] | None = None
    layers: tuple[int, ...] | None = None
    init_logit: float = 2.0
    sampler: Sampler = "gumbel-sigmoid"
    head_mask: HeadMask = "output"  # measured: docs/concepts.md#head-masks (Csordás share one logit per head)

    def __post_init__(self) -> None:
        if self.head_mask not in HEAD_MASKS:
            raise ValueError(f"head_mask {self.head_mask!r} is not one of {HEAD_MASKS}")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler {self.sampler!r} is not one of {SAMPLERS}")
        if self.granularity not in GRANULARITIES:
            raise ValueError(f"granularity {self.granularity!r} is not one of {GRANULARITIES}")
        unknown = set(self.kinds) - set(PARAMETER_KINDS)
        if unknown:
            raise ValueError(f"unknown parameter kinds {sorted(unknown)}; choose from {PARAMETER_KINDS}")
        if not math.isfinite(self.init_logit):
            raise ValueError(f"init_logit {self.init_logit} must be a finite number (Csordás use 2.0)")

    def to_dict(self) -> dict:
        return asdict(self)

    def deciding_fields(self) -> dict:
        """The settings that decide the result: all but :data:`RESUMABLE_FIELDS`."""
        return {key: value for key, value in self.to_dict().items() if key not in RESUMABLE_FIELDS}


RESUMABLE_FIELDS = ("steps", "checkpoint_every")
""":class:`TrainConfig` fields a checkpoint may be resumed under with other values: the logits after step n do
not depend on them."""


@dataclass(frozen=True)
class TrainConfig:
    """How mask logits are trained (defaults: Csordás et al. 2021, ``main.py`` and ``Task.train_step``).

    Attributes:
        steps: optimiser steps per task.
        batch_size: examples per step, split into ``n_samples`` contiguous chunks.
        n_samples: mask samples per step; chunk k of the batch uses sample k (Csordás: 4).
        temperature: Gumbel-sigmoid temperature tau (Csordás: 1).
        beta: weight of the logit-sum regulariser, applied as ``(beta / batch_size) * sum(logits)`` (Csordás
            ``mask_loss_weight`` 1e-4).
        lr: Adam learning rate of the logits (Csordás ``mask_lr`` 1e-2); a fresh Adam per task, no weight decay.
        grad_clip: max global norm of one task's mask-logit gradients (Csordás clips at 1.0; we clip the mask
            gradients only, per task).
        target_density: if set, replace the logit-sum regulariser by Edge Pruning's Lagrangian
            ``lambda1 * (d - d*) + lambda2 * (d - d*)**2`` on the expected kept fraction d (the mean keep
            probability sigmoid(l) of a mask sample), with d* ramped linearly from the initial density
            sigmoid(init_logit) to ``target_density`` over ``density_warmup_steps`` (Bhaskar et al. 2024 ramp from
            their initial density too). The binary readout (logit > 0) can keep fewer weights than d while logits
            sit near 0.
        density_warmup_steps: length of the d* ramp.
        max_loss_increase: if set, the faithfulness constraint replaces both regularisers: minimise the expected
            density subject to the task loss staying within this many nats per answer token of the full model's on
            the same batch, with a Lagrange multiplier (Edge Pruning constrains density; this constrains
            faithfulness, so the mask cannot trade the subtask for sparsity). Measured on the ground-truth suite with
            ``MaskConfig(sampler="hard-concrete", init_logit=3.0)``, ``lr=0.05``, ``max_loss_increase=0.02``,
            ``lagrangian_lr=0.05`` (docs/finder-study.md).
        lagrangian_lr: learning rate of the multipliers: lambda1, lambda2 of the target density (Adam ascent), or
            the loss constraint's lambda (projected gradient ascent).
        seed: seeds data order and mask noise; each task draws from a stream keyed by (seed, task name, step), so a
            task's result does not depend on which other tasks share the run.
        checkpoint_every: steps between checkpoints when a checkpoint directory is given.

    Every setting except ``steps`` and ``checkpoint_every`` decides the result: a checkpoint resumes only under
    the same values of those (:data:`RESUMABLE_FIELDS`), so a finished run can be extended by raising ``steps``.
    """

    steps: int = 2000
    batch_size: int = 128
    n_samples: int = 4
    temperature: float = 1.0
    beta: float = 1e-4
    lr: float = 1e-2
    grad_clip: float = 1.0
    target_density: float | None = None
    density_warmup_steps: int = 500
    lagrangian_lr: float = 1e-2
    max_loss_increase: float | None = None
    seed: int = 0
    checkpoint_every: int = 200

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.n_samples < 1:
            raise ValueError("steps, batch_size and n_samples must be positive")
        if self.batch_size < self.n_samples:
            raise ValueError(
                f"batch_size {self.batch_size} is smaller than n_samples {self.n_samples}: every mask sample needs "
                "its own slice of the batch; raise batch_size or lower n_samples"
            )
        if self.checkpoint_every < 1 or self.density_warmup_steps < 0:
            raise ValueError("checkpoint_every must be >= 1 and density_warmup_steps >= 0")
        if not 0 < self.lr <= 1:
            raise ValueError(f"lr {self.lr} is out of range (0, 1]; Csordás use 1e-2")
        if not 0 < self.lagrangian_lr <= 1:
            raise ValueError(f"lagrangian_lr {self.lagrangian_lr} is out of range (0, 1]; the default is 1e-2")
        if not (math.isfinite(self.beta) and self.beta >= 0):
            raise ValueError(f"beta {self.beta} must be a finite number >= 0 (Csordás use 1e-4)")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"temperature {self.temperature} must be a finite number > 0 (Csordás use 1)")
        if not (math.isfinite(self.grad_clip) and self.grad_clip > 0):
            raise ValueError(f"grad_clip {self.grad_clip} must be a finite number > 0 (Csordás clip at 1.0)")
        if self.max_loss_increase is not None:
            if not (math.isfinite(self.max_loss_increase) and self.max_loss_increase >= 0):
                raise ValueError(
                    f"max_loss_increase {self.max_loss_increase} must be a finite number >= 0 (nats "
                    "per answer token; 0.02 was measured to work)"
                )
            if self.target_density is not None:
                raise ValueError(
                    "set either target_density or max_loss_increase: one constrains the density, the other the loss"
                )
        if self.target_density is not None and not 0 < self.target_density < 1:
            raise ValueError(f"target_density {self.target_density} must lie in (0, 1)")

    def to_dict(self) -> dict:
        return asdict(self)

    def deciding_fields(self) -> dict:
        """The settings that decide the result: all but :data:`RESUMABLE_FIELDS`."""
        return {key: value for key, value in self.to_dict().items() if key not in RESUMABLE_FIELDS}
