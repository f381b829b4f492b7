"""Mask structure and training settings.

The defaults are the method that recovered the known answers of the ground-truth suite (docs/finder-study.md):
hard-concrete masks (Bernoulli head gates), the smallest expected density subject to the task loss staying within 0.02
nats of the full model's (per answer token for weight masks, per example for head and neuron masks), and a faithful
readout. Csordás et al. 2021's algorithm (code: RobertCsordas/modules) stays
available as :data:`CSORDAS_MASKS` and :data:`CSORDAS_TRAINING`, which the reproductions use.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass
from typing import Literal

from modmask_lens.masks.sampling import check_temperature

Granularity = Literal["weight", "neuron", "head", "matrix"]
Sampler = Literal["gumbel-sigmoid", "hard-concrete", "bernoulli"]
SAMPLERS: tuple[str, ...] = ("gumbel-sigmoid", "hard-concrete", "bernoulli")
AUTO_SAMPLER = "auto"
"""The default :attr:`MaskConfig.sampler`: a mask built on a model resolves it to ``bernoulli`` at head granularity
where every masked head's output has a ``hook_z``, and to ``hard-concrete`` everywhere else
(:func:`~modmask_lens.masks.head_outputs.resolved_config`; measured in docs/concepts.md#head-masks)."""
Readout = Literal["faithful", "zero"]
READOUTS: tuple[str, ...] = ("faithful", "zero")
LossUnit = Literal["auto", "token", "example"]
LOSS_UNITS: tuple[str, ...] = ("auto", "token", "example")
UNIT_MASK_GRANULARITIES = ("neuron", "head")
"""Granularities whose masks ``loss_increase_per="auto"`` constrains per example (measured on compiled programs:
docs/finder-study.md, "The constraint's unit for head and neuron masks")."""
GRANULARITIES: tuple[str, ...] = ("weight", "neuron", "head", "matrix")
PATHWISE_INIT_LOGIT = 3.0
"""``MaskConfig(init_logit=None)`` under the hard-concrete and Gumbel-sigmoid samplers: nearly every unit kept at the
start, as the paper starts (its 2.0), so the first gradients are the loss's slope at the full model."""
BERNOULLI_INIT_LOGIT = 0.01
"""``MaskConfig(init_logit=None)`` under the Bernoulli sampler: each head kept with probability about 1/2 (0.5025) at
the start, just above 0 so that a fresh mask's readout (logit > 0) keeps every head, as every fresh mask does.
From 3.0 (95% kept) the first estimates measure each head's removal from the nearly full model, where a plant's
heads back each other up; training then dropped one needed head early on 6 of 9 seeds of an entangled plant and could
not bring it back once others compensated (docs/concepts.md#head-masks)."""
HeadMask = Literal["qkvo", "output"]
HEAD_MASKS: tuple[str, ...] = ("qkvo", "output")
HEAD_MASK_OF_OLD_FILES: HeadMask = "qkvo"
"""What a head logit masked before :attr:`MaskConfig.head_mask` existed (mask files without the field)."""
NeuronMask = Literal["in-out", "output"]
NEURON_MASKS: tuple[str, ...] = ("in-out", "output")
NEURON_MASK_OF_OLD_FILES: NeuronMask = "in-out"
"""What a neuron logit masked before :attr:`MaskConfig.neuron_mask` existed (mask files without the field)."""
NEURON_WRITERS: tuple[str, ...] = ("W_out", "W_experts_out")
"""The roles that write a neuron out: what a neuron logit masks under ``neuron_mask="output"``."""
PARAMETER_KINDS: tuple[str, ...] = ("linear", "norm", "embedding", "bias")


def store_as_floats(config: object, names: tuple[str, ...]) -> None:
    """Store each real-valued setting ``names`` of a frozen ``config`` as the Python float it holds (``None`` stays):
    ``lr=1`` and ``lr=1.0`` are then one run to a resuming checkpoint, and a numpy float is written as JSON."""
    for name in names:
        value = getattr(config, name)
        if value is not None:
            object.__setattr__(config, name, float(value))


@dataclass(frozen=True)
class MaskConfig:
    """Which tensors are masked, and how many elements share one logit.

    Attributes:
        granularity: ``weight``: one logit per element (default, as Csordás). ``neuron``: one logit per MLP hidden
            unit, on the slices :attr:`neuron_mask` names; only MLP tensors are masked. ``head``:
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
        init_logit: initial logit of every mask element. ``None`` (default): by sampler, resolved with it when the
            mask is built (:func:`~modmask_lens.masks.head_outputs.resolved_config`): 0.01 for ``bernoulli`` (every
            head kept with probability about 1/2, so each head's removal cost is first measured among random halves of
            the others: :data:`BERNOULLI_INIT_LOGIT`), 3.0 for the pathwise samplers (hard-concrete keep probability
            0.99, Gumbel-sigmoid 0.95: :data:`PATHWISE_INIT_LOGIT`). Csordás ``-mask_init`` 2.0 (sigmoid 0.88).
        sampler: how training samples masks from logits. ``auto`` (default): ``bernoulli`` at head granularity
            where every masked head's output has a ``hook_z`` (and ``W_O`` is among the masked roles), else
            ``hard-concrete``; a mask built on a model (:meth:`MaskSet.for_bridge`) holds the resolved value, which
            its file and run fingerprint record. ``hard-concrete``: Louizos et al.'s L0 relaxation with beta 2/3,
            as Edge Pruning; samples in [0, 1]. ``gumbel-sigmoid``: straight-through, Csordás; the sample is 0 or 1
            and ``TrainConfig.temperature`` is its tau. On compiled tracr programs, with the same loss constraint,
            Gumbel-sigmoid masks collapsed (kept 0-14% of the needed heads) while hard-concrete masks kept exactly
            the used heads (docs/finder-study.md). ``bernoulli``: 0/1 samples (those of the Gumbel-sigmoid) with
            the exact gradient of the expected loss, per logit ``p (1 - p) E[L(unit off) - L(unit on)]`` (the
            local-expectation estimator, :mod:`modmask_lens.masks.local_expectation`); one extra copy of the
            examples per head and mask sample, so only at ``head`` granularity (a head is removed by zeroing its
            ``hook_z``). Its gradient at logit 3.0 ranks heads by what removing them costs (Spearman 0.97 on
            all-MiniLM-L6-v2, 0.91 on the zoo scan model, against 0.61 and 0.43 for hard concrete; 0.74 and 0.73
            from logit 0.0, beside its default start at 0.01), and on the ground-truth head plants it matched or
            beat hard concrete (docs/concepts.md#head-masks), which made it the head default.
        head_mask: at head granularity without ``roles``, which of a head's slices its logit masks: ``qkvo``
            (its ``W_Q``, ``W_K``, ``W_V`` and ``W_O`` slices share it) or ``output`` (its ``W_O`` slice only: a gate
            on the head's output, identical to scaling its ``hook_z``; the default). ``roles``, when given, decides
            instead. Both remove the same heads once read out (a head without ``W_O`` writes nothing); they differ
            in training's gradient. Measured in docs/concepts.md#head-masks (hard concrete at init logit 3): the
            ``output`` logit's gradient at initialisation ranks heads by what removing them costs with Spearman 0.61
            on all-MiniLM-L6-v2 and 0.43 on the zoo scan model, the shared one's with 0.61 and 0.76; under the
            Gumbel-sigmoid at 2.0, 0.60 and 0.45 against 0.22 and -0.13, which chose ``output``. With
            ``sampler="bernoulli"`` the two give the same gradient (0.97 and 0.91 at logit 3.0): it only compares
            heads on and off.
        neuron_mask: at neuron granularity without ``roles``, which of a neuron's slices its logit masks: ``in-out``
            (its ``W_in``/``W_gate`` column and ``W_out`` row share it, as before this field existed) or ``output``
            (its ``W_out`` row only, a gate on the neuron's activation; the default). ``roles``, when given, decides
            instead. Both remove the same neurons once read out (a neuron without its ``W_out`` row writes nothing);
            they differ in training: a soft hard-concrete sample ``m`` scales the neuron's output by ``m`` under
            ``output`` and by ``m`` twice (``m * act(m * pre)``) under ``in-out``. Under ``output`` training gates
            the activations of the whole batch in one pass (:mod:`modmask_lens.masks.output_gates`) instead of one
            weight product and one backward per mask sample: 0.75-0.97x the time of a fine-tuning step at 4M-107M
            parameters where ``in-out`` takes 1.00-1.21x (0.64-0.74x once the references are cached;
            benchmarks/README.md). Measured on the ground-truth suite in docs/finder-study.md.
    """

    granularity: Granularity = "weight"
    kinds: tuple[str, ...] | list[str] = ("linear", "norm")
    roles: tuple[str, ...] | list[str] | None = None
    layers: tuple[numbers.Integral, ...] | list[numbers.Integral] | None = None
    init_logit: float | None = None  # measured: docs/concepts.md#head-masks
    sampler: Sampler | Literal["auto"] = AUTO_SAMPLER  # measured: docs/concepts.md#head-masks
    head_mask: HeadMask = "output"  # measured: docs/concepts.md#head-masks
    neuron_mask: NeuronMask = "output"  # measured: docs/finder-study.md

    def __post_init__(self) -> None:
        if self.head_mask not in HEAD_MASKS:
            raise ValueError(f"head_mask {self.head_mask!r} is not one of {HEAD_MASKS}")
        if self.neuron_mask not in NEURON_MASKS:
            raise ValueError(f"neuron_mask {self.neuron_mask!r} is not one of {NEURON_MASKS}")
        if self.sampler not in (AUTO_SAMPLER, *SAMPLERS):
            raise ValueError(f"sampler {self.sampler!r} is not one of {(AUTO_SAMPLER, *SAMPLERS)}")
        if self.granularity not in GRANULARITIES:
            raise ValueError(f"granularity {self.granularity!r} is not one of {GRANULARITIES}")
        if self.sampler == "bernoulli" and (
            self.granularity != "head" or (self.roles is not None and "W_O" not in self.roles)
        ):
            raise ValueError(
                f"sampler 'bernoulli' removes heads by zeroing their output, one copy of the examples per head: it "
                f"trains head masks on W_O (granularity='head', roles None or with 'W_O'), not {self.granularity!r} "
                f"granularity with roles {self.roles}; use sampler='hard-concrete' there"
            )
        for name, example in (("kinds", '"linear"'), ("roles", '"W_Q", "W_K"'), ("layers", "0, 1")):
            value = getattr(self, name)
            if isinstance(value, list):  # a list reads as the tuple it holds; the config stays hashable
                object.__setattr__(self, name, tuple(value))
            elif value is not None and not isinstance(value, tuple):
                raise TypeError(f"MaskConfig {name} takes a tuple, e.g. {name}=({example},), not {value!r}")
        if self.layers is not None:
            if any(isinstance(layer, bool) or not isinstance(layer, numbers.Integral) for layer in self.layers):
                raise TypeError(f"MaskConfig layers takes whole numbers, e.g. layers=(0, 1), not {self.layers!r}")
            object.__setattr__(self, "layers", tuple(int(layer) for layer in self.layers))  # numpy ints as ints (JSON)
        unknown = set(self.kinds) - set(PARAMETER_KINDS)
        if unknown:
            raise ValueError(f"unknown parameter kinds {sorted(unknown)}; choose from {PARAMETER_KINDS}")
        store_as_floats(self, ("init_logit",))
        if self.init_logit is not None and not math.isfinite(self.init_logit):
            raise ValueError(
                f"init_logit {self.init_logit} must be a finite number or None (the sampler's default; Csordás use 2.0)"
            )

    def to_dict(self) -> dict:
        return asdict(self)

    def deciding_fields(self) -> dict:
        """The settings that decide the result: all but :data:`RESUMABLE_FIELDS`."""
        return {key: value for key, value in self.to_dict().items() if key not in RESUMABLE_FIELDS}


REMOVAL_EVALUATIONS = 4096
"""The faithful readout's removal search budget by default (:attr:`TrainConfig.readout_evaluations`,
:func:`~modmask_lens.faithful_units`): at most this many candidate sets judged, one pass over the data each (a pass
stops at the first batch that shows the set cannot pass), plus one loss pass per passing candidate. Room for both of
the search's removal orders from one start: measured on the partly shared sub-max plant (docs/finder-study.md,
"Both removal orders"), single removals first spent about 950 judgements and the largest removals first about
1,990, the latter reaching the smaller mask (2,048 until session 27, one order per start)."""

RESUMABLE_FIELDS = ("steps", "checkpoint_every", "readout", "readout_tolerance", "readout_evaluations")
""":class:`TrainConfig` fields a checkpoint may be resumed under with other values: the logits after step n do
not depend on them (the readout is chosen after the last step)."""


@dataclass(frozen=True)
class TrainConfig:
    """How mask logits are trained and read out.

    The defaults are the ``faithful`` method of docs/finder-study.md: the smallest expected density subject to the
    task loss staying within ``max_loss_increase`` of the full model's, then the faithful readout. Exactly one
    sparsity term is set: ``max_loss_increase`` (default), ``beta`` (Csordás's logit-sum regulariser; see
    :data:`CSORDAS_TRAINING`) or ``target_density``.

    Attributes:
        steps: optimiser steps per task.
        batch_size: examples per step, split into ``n_samples`` contiguous chunks.
        n_samples: mask samples per step; chunk k of the batch uses sample k (Csordás: 4).
        temperature: Gumbel-sigmoid temperature tau (Csordás: 1); unused by hard-concrete samples.
        beta: if set, the sparsity term is Csordás's logit-sum regulariser ``(beta / batch_size) * sum(logits)``
            (their ``mask_loss_weight`` 1e-4) added to the task loss.
        lr: Adam learning rate of the logits (default 0.05, measured on the ground-truth suite; Csordás
            ``mask_lr`` 1e-2); a fresh Adam per task, no weight decay.
        grad_clip: max global norm of one task's mask-logit gradients (Csordás clips at 1.0; we clip the mask
            gradients only, per task).
        target_density: if set, the sparsity term is Edge Pruning's Lagrangian
            ``lambda1 * (d - d*) + lambda2 * (d - d*)**2`` on the expected kept fraction d (the mean keep
            probability of a mask sample), with d* ramped linearly from the initial density to ``target_density``
            over ``density_warmup_steps`` (Bhaskar et al. 2024 ramp from their initial density too).
        density_warmup_steps: length of the d* ramp.
        max_loss_increase: if set (default 0.02), the faithfulness constraint: minimise the expected density
            subject to the task loss staying within this many nats (per ``loss_increase_per``) of the full model's
            on the same batch, with a Lagrange multiplier (Edge Pruning constrains density; this constrains
            faithfulness, so the mask cannot trade the subtask for sparsity).
        loss_increase_per: the constraint's unit: ``token`` bounds the objective's own mean (per answer token for
            answer cross-entropy); ``example`` bounds the mean over examples of each example's summed loss (for
            answer cross-entropy, minus the log-probability of the whole answer); ``auto`` (default) is ``example``
            for head and neuron masks and ``token`` for weight and matrix masks (:meth:`loss_unit`). The two are the
            same on one-token answers. Per example, masks on long answers are faithful as trained: on compiled
            programs per token lost every head of one program of nine, which the readout could only pad back to
            all 12, and per example found each program's heads exactly. Weight masks stay per token: on SCAN's full
            problem per example was twice as dense at 800 steps (80.6% against 40.0% read out), where per token
            the faithful readout pads the mask (the training warning ``PaddedReadout``; docs/finder-study.md).
            Per example sums whatever the objective scores in an example: every position for
            ``KLDivergence(positions="all")`` or ``HiddenState(pool="none")``, so the same bound is tighter there.
        complement_loss_fraction: if set (with ``max_loss_increase``), the necessity constraint
            (:mod:`modmask_lens.masks.necessity`): the model under the complement of each mask sample (its linear
            weights times ``1 - m``) must lose at least this fraction of what the subtask loses with every masked
            unit removed, each example's loss counted only up to that; a second Lagrange multiplier enforces it. Off by
            default: on the entangled plants it did not single out the planted sets and on heads it made masks take
            the other subtask's units (docs/finder-study.md). Answer cross-entropy only.
        lagrangian_lr: learning rate of the multipliers: lambda1, lambda2 of the target density (Adam ascent), or
            the loss constraint's lambda (projected gradient ascent); default 0.05.
        readout: how the trained logits become a binary mask (:attr:`MaskSet.threshold`): ``faithful`` (default)
            keeps the fewest highest-logit units whose exact match on the subtask's training examples is at least
            ``1 - readout_tolerance`` of the full model's (:func:`~modmask_lens.faithful_threshold`), then removes
            units several at a time while it stays so (:func:`~modmask_lens.faithful_units`); ``zero`` keeps
            ``logit > 0`` (Csordás).
        readout_tolerance: fraction of the full model's exact match the faithful readout may lose (0.01).
        readout_evaluations: the faithful readout's removal search budget, in candidate sets judged (one pass over
            up to 256 of the subtask's examples each; :func:`~modmask_lens.faithful_units`); 0 keeps the top-logit
            count alone. The default (:data:`REMOVAL_EVALUATIONS`) is what the ground-truth suite was measured
            with; on a large model each judgement is a forward pass of it, so lower it where the search would
            outlast training (it shows a progress bar).
        seed: seeds data order and mask noise; each task draws from a stream keyed by (seed, task name, step), so a
            task's result does not depend on which other tasks share the run.
        checkpoint_every: steps between checkpoints when a checkpoint directory is given.
        heads_estimated_per_step: Bernoulli head masks (``sampler="bernoulli"``, the head default) only: how many
            heads get a local-expectation gradient per step, drawn at random each step and scaled up so that the
            gradient stays unbiased (:func:`~modmask_lens.masks.local_expectation.heads_to_estimate`); ``None``:
            every head every step. A step costs about ``1 + heads_estimated_per_step / n_samples`` forwards of its
            batch, against about three (a forward and a backward) for fine-tuning, whatever the model's number of
            heads; the default 8 was measured on the ground-truth suite and the scaling benchmark
            (docs/concepts.md#head-masks).

    Every setting except :data:`RESUMABLE_FIELDS` decides the result: a checkpoint resumes only under the same
    values of those, so a finished run can be extended by raising ``steps``.
    """

    steps: int = 2000
    batch_size: int = 128
    n_samples: int = 4
    temperature: float = 1.0
    beta: float | None = None
    lr: float = 0.05
    grad_clip: float = 1.0
    target_density: float | None = None
    density_warmup_steps: int = 500
    lagrangian_lr: float = 0.05
    max_loss_increase: float | None = 0.02
    loss_increase_per: LossUnit = "auto"
    complement_loss_fraction: float | None = None
    readout: Readout = "faithful"
    readout_tolerance: float = 0.01
    readout_evaluations: int = REMOVAL_EVALUATIONS
    seed: int = 0
    checkpoint_every: int = 200
    heads_estimated_per_step: int | None = 8

    def __post_init__(self) -> None:
        counts = (
            "steps",
            "batch_size",
            "n_samples",
            "density_warmup_steps",
            "seed",
            "checkpoint_every",
            "readout_evaluations",
        )
        for name in (*counts, *(("heads_estimated_per_step",) if self.heads_estimated_per_step is not None else ())):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise TypeError(f"TrainConfig {name} must be a whole number, not {value!r}")
            object.__setattr__(self, name, int(value))  # a numpy integer is stored as the int it holds (JSON)
        store_as_floats(
            self,
            (
                "temperature",
                "beta",
                "lr",
                "grad_clip",
                "target_density",
                "lagrangian_lr",
                "max_loss_increase",
                "complement_loss_fraction",
                "readout_tolerance",
            ),
        )
        for name in ("steps", "batch_size", "n_samples", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} {getattr(self, name)} must be >= 1")
        if self.batch_size < self.n_samples:
            raise ValueError(
                f"batch_size {self.batch_size} is smaller than n_samples {self.n_samples}: every mask sample needs "
                "its own slice of the batch; raise batch_size or lower n_samples"
            )
        if self.heads_estimated_per_step is not None and self.heads_estimated_per_step < 1:
            raise ValueError(
                f"heads_estimated_per_step {self.heads_estimated_per_step} must be >= 1, or None (--heads-per-step 0) "
                "to estimate every head every step"
            )
        if self.density_warmup_steps < 0:
            raise ValueError(f"density_warmup_steps {self.density_warmup_steps} must be >= 0")
        if not 0 < self.lr <= 1:
            raise ValueError(f"lr {self.lr} is out of range (0, 1]; the default is 0.05, Csordás use 1e-2")
        if not 0 < self.lagrangian_lr <= 1:
            raise ValueError(f"lagrangian_lr {self.lagrangian_lr} is out of range (0, 1]; the default is 0.05")
        check_temperature(self.temperature)
        if not (math.isfinite(self.grad_clip) and self.grad_clip > 0):
            raise ValueError(f"grad_clip {self.grad_clip} must be a finite number > 0 (Csordás clip at 1.0)")
        if self.loss_increase_per not in LOSS_UNITS:
            raise ValueError(f"loss_increase_per {self.loss_increase_per!r} is not one of {LOSS_UNITS}")
        if self.loss_increase_per not in ("auto", "token") and self.max_loss_increase is None:
            raise ValueError(
                f"loss_increase_per={self.loss_increase_per!r} is the unit of the loss constraint and applies only "
                "with max_loss_increase set; leave it at 'auto' for beta or target_density"
            )
        if self.complement_loss_fraction is not None:
            if self.max_loss_increase is None:
                raise ValueError(
                    "complement_loss_fraction is a second constraint beside the loss constraint and applies only with "
                    "max_loss_increase set (the default 0.02); leave it at None for beta or target_density"
                )
            if not (math.isfinite(self.complement_loss_fraction) and 0 < self.complement_loss_fraction <= 1):
                raise ValueError(
                    f"complement_loss_fraction {self.complement_loss_fraction} must lie in (0, 1]: the share of what "
                    "removing every masked unit loses that removing the mask's units must lose"
                )
        if self.readout not in READOUTS:
            raise ValueError(f"readout {self.readout!r} is not one of {READOUTS}")
        if not 0 <= self.readout_tolerance < 1:
            raise ValueError(f"readout_tolerance {self.readout_tolerance} must lie in [0, 1) (default 0.01)")
        if self.readout_evaluations < 0:
            raise ValueError(
                f"readout_evaluations {self.readout_evaluations} must be >= 0 (default 4096; 0: no removal search)"
            )
        self._check_sparsity_term()

    def _check_sparsity_term(self) -> None:
        terms = {
            "max_loss_increase": self.max_loss_increase,
            "beta": self.beta,
            "target_density": self.target_density,
        }
        chosen = [name for name, value in terms.items() if value is not None]
        if len(chosen) != 1:
            raise ValueError(
                f"set exactly one sparsity term of {list(terms)}, got {chosen or 'none'}: the default is "
                "max_loss_increase=0.02; for Csordás's regulariser pass beta=... with max_loss_increase=None "
                "(or start from CSORDAS_TRAINING), for a target density pass target_density=... with "
                "max_loss_increase=None"
            )
        if self.beta is not None and not (math.isfinite(self.beta) and self.beta >= 0):
            raise ValueError(f"beta {self.beta} must be a finite number >= 0 (Csordás use 1e-4)")
        if self.max_loss_increase is not None and not (
            math.isfinite(self.max_loss_increase) and self.max_loss_increase >= 0
        ):
            raise ValueError(
                f"max_loss_increase {self.max_loss_increase} must be a finite number >= 0 (nats per answer token "
                "or example, as loss_increase_per says; the default 0.02 was measured to work)"
            )
        if self.target_density is not None and not 0 < self.target_density < 1:
            raise ValueError(f"target_density {self.target_density} must lie in (0, 1)")

    def to_dict(self) -> dict:
        return asdict(self)

    def loss_unit(self, granularity: str) -> str:
        """The loss constraint's unit for masks of ``granularity``: ``loss_increase_per``, with ``auto`` read as
        ``example`` for head and neuron masks and ``token`` for weight and matrix masks.

        >>> TrainConfig().loss_unit("head"), TrainConfig().loss_unit("weight")
        ('example', 'token')
        """
        if self.loss_increase_per != "auto":
            return self.loss_increase_per
        return "example" if granularity in UNIT_MASK_GRANULARITIES else "token"

    def deciding_fields(self) -> dict:
        """The settings that decide the result: all but :data:`RESUMABLE_FIELDS`."""
        return {key: value for key, value in self.to_dict().items() if key not in RESUMABLE_FIELDS}


CSORDAS_MASKS = MaskConfig(sampler="gumbel-sigmoid", init_logit=2.0, head_mask="qkvo", neuron_mask="in-out")
"""Csordás et al. 2021's masks: straight-through Gumbel-sigmoid samples, logits starting at 2.0 (weight granularity;
``dataclasses.replace(CSORDAS_MASKS, granularity="head")`` for others, a head's logit shared by its four slices and a
neuron's by its ``W_in`` column and ``W_out`` row, as this library did before ``head_mask`` and ``neuron_mask``)."""

CSORDAS_TRAINING = TrainConfig(beta=1e-4, lr=1e-2, lagrangian_lr=1e-2, max_loss_increase=None, readout="zero")
"""Csordás et al. 2021's training (``main.py`` and ``Task.train_step`` of RobertCsordas/modules, their +/* settings):
task cross-entropy plus ``(1e-4 / B) * sum(logits)``, Adam 1e-2, 4 samples, tau 1, read out as ``logit > 0``.
On the ground-truth suite it over-prunes heads and neurons until masks fail their subtask (docs/finder-study.md);
it stays for reproducing the paper."""
