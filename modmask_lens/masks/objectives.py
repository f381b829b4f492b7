"""What a mask is trained to keep: objectives of the masked model's outputs against the full model's.

An :class:`Objective` scores a batch run through the masked model, and (for objectives that compare with the full
model) against the full model's *reference*, computed once per batch under ``no_grad``. The trainer, the
faithfulness measure, the analyses and the report all read masks through the same objective.

Built in:

- :class:`AnswerCrossEntropy` (the default; Csordás et al. 2021): answer-token cross-entropy, metric exact match.
- :class:`KLDivergence`: KL(full || masked) of the next-token distributions at chosen positions (the faithfulness
  objective of Edge Pruning, Bhaskar et al. 2024, and AutoCircuit); metric top-1 agreement with the full model.
- :class:`LogitDifference`: logit of the answer minus logit of a foil (IOI-style tasks, Wang et al. 2023); metric the
  fraction of examples whose answer beats its foil.
- :class:`HiddenState`: distance of an activation at a hook point to the full model's (cosine or MSE; optionally
  mean-pooled over the attention mask, as a sentence embedding); metric cosine.
- :class:`LinearProbe`: a frozen linear probe's cross-entropy on a hook point's activations; metric probe accuracy.
- :class:`CustomObjective`: any callable ``function(masked, full, batch) -> (losses, metrics)``.

Every objective returns *sums* over the examples of a chunk (so the chunks of one batch add up) and declares the
batch's normaliser (answer tokens, positions or examples): the step's loss is ``sum / normaliser``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from modmask_lens.core.bridge import Bridge
from modmask_lens.core.data import Batch, SubtaskData
from modmask_lens.core.encoding import IGNORE_INDEX
from modmask_lens.core.hook_layout import position_major
from modmask_lens.core.scoring import aligned, answer_losses, kl_divergences, score_answers

Reference = dict[str, Tensor]
"""Per-example tensors (first axis: the batch) an objective reads of the full model; key ``loss`` always holds the
full model's own per-example loss (0 for objectives that compare with it)."""


@dataclass(frozen=True)
class Outputs:
    """A forward pass's results: logits and the activations the objective asked for.

    Attributes:
        logits: ``[batch, pos, vocab]``.
        activations: hook name -> activation (with gradient for the masked model), its position axis moved to 1
            (:func:`~modmask_lens.core.hook_layout.position_major`): ``[batch, pos, ...]``, an attention pattern
            ``[batch, query_pos, head, key_pos]``.
    """

    logits: Float[Tensor, "batch pos vocab"]
    activations: dict[str, Tensor] = field(default_factory=dict)


@dataclass(frozen=True)
class Score:
    """An objective's value on a chunk: ``loss_sum`` (differentiable) and ``metric_sum`` (per example, summed)."""

    loss_sum: Tensor
    metric_sum: float


class Objective:
    """Base class of objectives. Subclasses set ``name`` and ``metric`` and implement :meth:`score`.

    Attributes:
        name: identifies the objective in files and checkpoints.
        metric: the accuracy-style metric (per example, in [0, 1] for the built-ins) it reports.
        hook_names: activations the objective reads (besides the logits).
        compares: whether :meth:`score` reads the full model's reference (otherwise the reference is only needed
            for the loss constraint, ``TrainConfig(max_loss_increase=...)``).
        cacheable: whether the reference's per-example rows do not depend on the batch they were computed in, so a
            trainer may compute each example's reference once and reuse it (the model is frozen).
        scores_answers: whether :meth:`score` rates the model's predictions of the data's labels (which a
            bidirectional model must not see in its input: :meth:`SubtaskData.check_fits`), rather than the full
            model's activations or outputs.
    """

    name: ClassVar[str]
    metric: ClassVar[str]
    hook_names: tuple[str, ...] = ()
    compares: ClassVar[bool] = False
    cacheable: ClassVar[bool] = True
    scores_answers: ClassVar[bool] = False

    def check(self, data: SubtaskData) -> None:
        """Raise ``ValueError`` naming the fix unless ``data`` carries what this objective needs."""

    def check_model(self, bridge: Bridge) -> None:
        """Raise ``ValueError`` naming the fix if the objective reads a hook point ``bridge`` does not have."""
        unknown = [name for name in self.hook_names if name not in bridge.hook_dict]
        if unknown:
            examples = ", ".join(sorted(name for name in bridge.hook_dict if name.endswith("hook_resid_post"))[:3])
            raise ValueError(
                f"the objective reads hook point(s) {unknown}, which this model does not have; valid names are "
                f"bridge.hook_dict's keys, e.g. {examples}"
            )

    def normaliser(self, batch: Batch) -> int:
        """What the batch's loss sum is divided by (default: the number of examples)."""
        return len(batch)

    def reference(self, full: Outputs, batch: Batch) -> Reference:
        """The full model's per-example reference (called under ``no_grad``)."""
        raise NotImplementedError

    def score(self, masked: Outputs, reference: Reference | None, batch: Batch) -> Score:
        """Loss and metric sums of the masked model's outputs on ``batch``."""
        raise NotImplementedError

    def to_dict(self) -> dict:
        """What identifies the objective in a checkpoint or mask file (part of the run's fingerprint)."""
        return {"name": self.name}


@dataclass(frozen=True)
class AnswerCrossEntropy(Objective):
    """Answer-token cross-entropy, summed over answer tokens and divided by the batch's answer-token count (Csordás
    et al. 2021); the metric is exact match (every answer token the argmax). The default objective.

    Example:
        >>> AnswerCrossEntropy().to_dict()
        {'name': 'answer_cross_entropy'}
    """

    name: ClassVar[str] = "answer_cross_entropy"
    metric: ClassVar[str] = "accuracy"
    scores_answers: ClassVar[bool] = True

    def check(self, data: SubtaskData) -> None:
        _require_answers(data, self.name)

    def normaliser(self, batch: Batch) -> int:
        return int((aligned_labels(batch) != IGNORE_INDEX).sum())

    def reference(self, full: Outputs, batch: Batch) -> Reference:
        return {"loss": answer_losses(full.logits, batch.labels, batch.label_shift)}

    def score(self, masked: Outputs, reference: Reference | None, batch: Batch) -> Score:
        answer_score = score_answers(masked.logits, batch.labels.to(masked.logits.device), batch.label_shift)
        return Score(answer_score.loss_sum, float(answer_score.n_correct))


@dataclass(frozen=True)
class KLDivergence(Objective):
    """KL(full || masked) of the output distributions, summed over chosen positions and divided by their count.

    Args:
        positions: ``"answers"``: the positions whose logits score an answer token; ``"all"``: every real token
            (the attention mask's ones, or up to each example's last answer for causal data).

    The metric is top-1 agreement with the full model, averaged over each example's chosen positions.
    """

    positions: Literal["answers", "all"] = "answers"
    name: ClassVar[str] = "kl_divergence"
    metric: ClassVar[str] = "agreement"
    compares: ClassVar[bool] = True
    cacheable: ClassVar[bool] = False  # the reference is a distribution per position of the batch's width

    def __post_init__(self) -> None:
        if self.positions not in ("answers", "all"):
            raise ValueError(f"positions {self.positions!r} must be 'answers' or 'all'")

    def check(self, data: SubtaskData) -> None:
        if self.positions == "answers":
            _require_answers(data, f"{self.name} over positions='answers'")

    def chosen(self, batch: Batch) -> Tensor:
        """``[batch, pos]`` bool: the positions whose distributions are compared."""
        return chosen_positions(batch, self.positions)

    def normaliser(self, batch: Batch) -> int:
        return int(self.chosen(batch).sum())

    def reference(self, full: Outputs, batch: Batch) -> Reference:
        log_probs = full.logits.float().log_softmax(dim=-1)
        return {"log_probs": log_probs, "loss": torch.zeros(len(batch), device=log_probs.device)}

    def score(self, masked: Outputs, reference: Reference | None, batch: Batch) -> Score:
        chosen = self.chosen(batch).to(masked.logits.device)
        full_log_probs = reference["log_probs"]
        masked_log_probs = masked.logits.float().log_softmax(dim=-1)
        kl = kl_divergences(full_log_probs, masked_log_probs)
        agree = (full_log_probs.argmax(dim=-1) == masked_log_probs.argmax(dim=-1)) & chosen
        per_example = agree.sum(dim=1) / chosen.sum(dim=1).clamp(min=1)
        return Score((kl * chosen).sum(), float(per_example.sum()))

    def to_dict(self) -> dict:
        return {"name": self.name, "positions": self.positions}


@dataclass(frozen=True)
class LogitDifference(Objective):
    """Maximise the logit of each answer token minus the logit of its foil (``SubtaskData.foils``): the loss is the
    negative difference, summed over foil positions and divided by their count. The metric: the fraction of
    examples whose answer beats its foil at every foil position. Build the data with
    :meth:`SubtaskData.with_foils`.
    """

    name: ClassVar[str] = "logit_difference"
    metric: ClassVar[str] = "accuracy"
    scores_answers: ClassVar[bool] = True

    def check(self, data: SubtaskData) -> None:
        if data.foils is None:
            raise ValueError(
                f"subtask {data.name!r} has no foils; the logit difference compares each answer with one: "
                "use data.with_foils(foils, tokenizer), or give every row of the JSONL file a 'foil' field"
            )
        # An example without a foil would count as won. (A foil where no answer is scored, which would be compared
        # with the logit of token 0, SubtaskData refuses when it is built.)
        unfoiled = (~(data.foils != IGNORE_INDEX).any(dim=1)).nonzero().flatten().tolist()
        if unfoiled:
            raise ValueError(
                f"subtask {data.name!r}: examples {unfoiled[:10]} ({len(unfoiled)} in all) have no foil; each example "
                "needs a foil at the position of the answer token it is compared with: use "
                "data.with_foils(foils, tokenizer)"
            )

    def normaliser(self, batch: Batch) -> int:
        return int((aligned_foils(batch) != IGNORE_INDEX).sum())

    def differences(self, logits: Tensor, batch: Batch) -> tuple[Tensor, Tensor]:
        """``[batch, pos]`` answer-minus-foil logits, and where they count."""
        predicted_logits, answers = aligned(logits, batch.labels.to(logits.device), batch.label_shift)
        foils = aligned_foils(batch).to(logits.device)
        counted = foils != IGNORE_INDEX
        answer_logits = predicted_logits.gather(-1, answers.clamp(min=0)[..., None])[..., 0]
        foil_logits = predicted_logits.gather(-1, foils.clamp(min=0)[..., None])[..., 0]
        return (answer_logits - foil_logits) * counted, counted

    def reference(self, full: Outputs, batch: Batch) -> Reference:
        difference, _ = self.differences(full.logits, batch)
        return {"loss": -difference.sum(dim=1)}

    def score(self, masked: Outputs, reference: Reference | None, batch: Batch) -> Score:
        difference, counted = self.differences(masked.logits, batch)
        wins = ((difference > 0) | ~counted).all(dim=1)
        return Score(-difference.sum(), float(wins.sum()))


@dataclass(frozen=True)
class HiddenState(Objective):
    """Keep an activation at a hook point close to the full model's.

    Args:
        hook_name: e.g. ``"blocks.5.hook_resid_post"`` (a BERT block's output, after its final norm).
        distance: ``"cosine"`` (loss 1 - cosine) or ``"mse"`` (mean squared error over the features).
        pool: ``"mean"``: mean over the example's real tokens (its attention mask), as sentence-transformers pool a
            sentence embedding; ``"none"``: every real token separately.

    The metric is the cosine to the full model's activation (per example; averaged over tokens without pooling).

    Example:
        >>> HiddenState("blocks.5.hook_resid_post").to_dict()
        {'name': 'hidden_state', 'hook_name': 'blocks.5.hook_resid_post', 'distance': 'cosine', 'pool': 'mean'}
    """

    hook_name: str
    distance: Literal["cosine", "mse"] = "cosine"
    pool: Literal["mean", "none"] = "mean"
    name: ClassVar[str] = "hidden_state"
    metric: ClassVar[str] = "cosine"
    compares: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if self.distance not in ("cosine", "mse"):
            raise ValueError(f"distance {self.distance!r} must be 'cosine' or 'mse'")
        if self.pool not in ("mean", "none"):
            raise ValueError(f"pool {self.pool!r} must be 'mean' or 'none'")

    @property
    def hook_names(self) -> tuple[str, ...]:
        return (self.hook_name,)

    @property
    def cacheable(self) -> bool:
        return self.pool == "mean"

    def normaliser(self, batch: Batch) -> int:
        return len(batch) if self.pool == "mean" else int(real_tokens(batch).sum())

    def features(self, outputs: Outputs, batch: Batch) -> Tensor:
        """``[batch, d]`` pooled or ``[batch, pos, d]`` activations (float32)."""
        activation = position_features(outputs, self.hook_name)
        return mean_pool(activation, real_tokens(batch)) if self.pool == "mean" else activation

    def reference(self, full: Outputs, batch: Batch) -> Reference:
        features = self.features(full, batch)
        return {"features": features, "loss": torch.zeros(len(batch), device=features.device)}

    def score(self, masked: Outputs, reference: Reference | None, batch: Batch) -> Score:
        features, target = self.features(masked, batch), reference["features"]
        cosine = F.cosine_similarity(features, target, dim=-1)
        terms = 1 - cosine if self.distance == "cosine" else (features - target).pow(2).mean(dim=-1)
        if self.pool == "mean":
            return Score(terms.sum(), float(cosine.detach().sum()))
        real = real_tokens(batch).to(terms.device)
        per_example = (cosine.detach() * real).sum(dim=1) / real.sum(dim=1).clamp(min=1)
        return Score((terms * real).sum(), float(per_example.sum()))

    def to_dict(self) -> dict:
        return {"name": self.name, "hook_name": self.hook_name, "distance": self.distance, "pool": self.pool}


@dataclass(frozen=True, eq=False)
class LinearProbe(Objective):
    """A frozen linear probe's cross-entropy on a hook point's activations, against ``SubtaskData.classes``.

    Args:
        hook_name: the activation the probe reads, e.g. ``"blocks.3.hook_resid_post"``.
        weight: ``[classes, d]`` the probe's weight (frozen: detached and never trained).
        bias: ``[classes]`` its bias.
        pool: ``"mean"`` over the attention mask, or ``"first"`` (the ``[CLS]`` token) or ``"last"`` real token.

    The metric is the probe's accuracy; the reference (for the loss constraint) is the probe's loss on the full
    model.
    """

    hook_name: str
    weight: Float[Tensor, "classes d"]
    bias: Float[Tensor, " classes"]
    pool: Literal["mean", "first", "last"] = "mean"
    name: ClassVar[str] = "linear_probe"
    metric: ClassVar[str] = "probe_accuracy"

    def __post_init__(self) -> None:
        if self.pool not in ("mean", "first", "last"):
            raise ValueError(f"pool {self.pool!r} must be 'mean', 'first' or 'last'")
        if self.weight.ndim != 2 or self.bias.shape != self.weight.shape[:1]:
            raise ValueError(
                f"the probe's weight {tuple(self.weight.shape)} must be [classes, d] and its bias "
                f"{tuple(self.bias.shape)} [classes]"
            )
        object.__setattr__(self, "weight", self.weight.detach())
        object.__setattr__(self, "bias", self.bias.detach())

    @property
    def hook_names(self) -> tuple[str, ...]:
        return (self.hook_name,)

    def check(self, data: SubtaskData) -> None:
        if data.classes is None:
            raise ValueError(
                f"subtask {data.name!r} has no classes for the probe; build it with "
                "SubtaskData.from_texts(name, texts, tokenizer, classes=...)"
            )
        if int(data.classes.max()) >= self.weight.shape[0] or int(data.classes.min()) < 0:
            raise ValueError(f"subtask {data.name!r} has classes outside the probe's [0, {self.weight.shape[0]})")

    def probe_logits(self, outputs: Outputs, batch: Batch) -> Float[Tensor, "batch classes"]:
        activation = position_features(outputs, self.hook_name)
        real = real_tokens(batch).to(activation.device)
        if self.pool == "mean":
            features = mean_pool(activation, real)
        else:
            position = torch.zeros_like(real[:, 0], dtype=torch.long) if self.pool == "first" else real.sum(dim=1) - 1
            features = activation[torch.arange(len(batch), device=activation.device), position]
        classes, width = self.weight.shape
        if features.shape[-1] != width:
            per_head = " (its heads concatenated)" if outputs.activations[self.hook_name].dim() > 3 else ""
            raise ValueError(
                f"the probe's weight [{classes}, {width}] reads {width} features, but {self.hook_name} gives "
                f"{features.shape[-1]} per example{per_head}: "
                f"give it a weight of [classes, {features.shape[-1]}] trained on {self.hook_name} of this model, or "
                "pass the hook point it was trained on"
            )
        weight, bias = self.weight.to(features.device), self.bias.to(features.device)
        return features @ weight.T + bias

    def reference(self, full: Outputs, batch: Batch) -> Reference:
        logits = self.probe_logits(full, batch)
        return {"loss": F.cross_entropy(logits, batch.classes.to(logits.device), reduction="none")}

    def score(self, masked: Outputs, reference: Reference | None, batch: Batch) -> Score:
        logits = self.probe_logits(masked, batch)
        classes = batch.classes.to(logits.device)
        correct = logits.argmax(dim=-1) == classes
        return Score(F.cross_entropy(logits, classes, reduction="sum"), float(correct.sum()))

    def to_dict(self) -> dict:
        digest = hashlib.sha256()
        for tensor in (self.weight, self.bias):
            digest.update(tensor.to("cpu", torch.float32).contiguous().numpy().tobytes())
        return {"name": self.name, "hook_name": self.hook_name, "pool": self.pool, "probe_sha256": digest.hexdigest()}


ObjectiveFunction = Callable[[Outputs, Outputs, Batch], tuple[Tensor, Tensor]]
"""``function(masked, full, batch) -> (losses, metrics)``, both ``[batch]``: each example's loss (differentiable
in the masked outputs) and accuracy-style metric. ``full`` is the full model's outputs on the same batch (no
gradient)."""


@dataclass(frozen=True, eq=False)
class CustomObjective(Objective):
    """Any callable as an objective (see :data:`ObjectiveFunction`); the loss is the mean over examples.

    Args:
        function: ``function(masked, full, batch) -> (losses, metrics)``.
        hook_names: the activations it reads (``masked.activations[name]``, position-major:
            :attr:`Outputs.activations`).
        label: names it in files and checkpoints, where a run resumes only under the same label (default: the
            function's qualified name). A function without a name of its own needs one: a lambda (every lambda is
            ``<lambda>``), a closure (a factory's functions share one name whatever they captured), a
            ``functools.partial`` or a callable object. A named function's label does not change when its body does:
            give an edited function another label before resuming.
        metric_name: what its metric is called in the history and the report.

    Example (keep the full model's prediction at the last position):
        >>> def last_token(masked, full, batch):
        ...     target = full.logits[:, -1].argmax(-1)
        ...     losses = torch.nn.functional.cross_entropy(masked.logits[:, -1], target, reduction="none")
        ...     return losses, (masked.logits[:, -1].argmax(-1) == target).float()
        >>> CustomObjective(last_token).to_dict()
        {'name': 'custom', 'label': 'last_token', 'hook_names': [], 'metric': 'metric'}
    """

    function: ObjectiveFunction
    hook_names: tuple[str, ...] = ()
    label: str | None = None
    metric_name: str = "metric"
    name: ClassVar[str] = "custom"
    compares: ClassVar[bool] = True
    cacheable: ClassVar[bool] = False

    def __post_init__(self) -> None:
        if self.label is not None:
            return
        qualname = getattr(self.function, "__qualname__", None)
        if not isinstance(qualname, str) or "<lambda>" in qualname or getattr(self.function, "__closure__", None):
            described = qualname or type(self.function).__name__
            raise ValueError(
                f"CustomObjective({described}) needs a label: the label names the objective in checkpoints and mask "
                "files, where a run resumes only under the same one, and a lambda, a closure, a functools.partial or "
                "a callable object has no name that tells it apart from another function of its kind; pass "
                "label='...' naming what it computes, e.g. CustomObjective(function, label='last_token_agreement')"
            )

    @property
    def metric(self) -> str:  # type: ignore[override]
        return self.metric_name

    def reference(self, full: Outputs, batch: Batch) -> Reference:
        # The full model's own loss under the function (what the loss constraint compares the masked model's with).
        full_losses, _ = self._per_example(full, full, batch)
        return {"logits": full.logits, "loss": full_losses.detach()} | {
            f"activation/{name}": value for name, value in full.activations.items()
        }

    def score(self, masked: Outputs, reference: Reference | None, batch: Batch) -> Score:
        full = Outputs(
            reference["logits"],
            {name.split("/", 1)[1]: value for name, value in reference.items() if name.startswith("activation/")},
        )
        losses, metrics = self._per_example(masked, full, batch)
        return Score(losses.sum(), float(metrics.detach().sum()))

    def _per_example(self, masked: Outputs, full: Outputs, batch: Batch) -> tuple[Tensor, Tensor]:
        """The function's losses and metrics, checked to be one of each per example."""
        losses, metrics = self.function(masked, full, batch)
        if losses.shape != (len(batch),) or metrics.shape != (len(batch),):
            raise ValueError(
                f"the objective {self.to_dict()['label']!r} returned losses {tuple(losses.shape)} and metrics "
                f"{tuple(metrics.shape)}; return one of each per example ([{len(batch)}])"
            )
        return losses, metrics

    def to_dict(self) -> dict:
        label = self.label or self.function.__qualname__
        return {"name": self.name, "label": label, "hook_names": list(self.hook_names), "metric": self.metric_name}


def model_outputs(bridge: Bridge, batch: Batch, hook_names: Sequence[str] = ()) -> Outputs:
    """Run the bridge's class forward on ``batch`` (with its attention mask) and keep the activations at
    ``hook_names`` (with their gradient), position-major (:attr:`Outputs.activations`); through
    :func:`~modmask_lens.masked_call` it runs masked.

    Raises:
        ValueError: a hook point did not run, or its activation is not laid out per example and position (a
            router's ``[batch * pos, experts]``), naming the hooks that can be read.
    """
    forward = type(bridge).forward.__get__(bridge)
    if not hook_names:
        return Outputs(forward(batch.input_ids, **batch.forward_kwargs()))
    captured: dict[str, Tensor] = {}

    def capture(name: str) -> Callable[[Tensor, object], None]:
        def keep(activation: Tensor, hook: object) -> None:
            captured[name] = activation  # under the name asked for (an alias such as hook_resid_post included)

        return keep

    with bridge.hooks(fwd_hooks=[(name, capture(name)) for name in hook_names]):
        logits = forward(batch.input_ids, **batch.forward_kwargs())
    missing = [name for name in hook_names if name not in captured]
    if missing:
        raise ValueError(f"hook point(s) {missing} did not run; list valid names with bridge.hook_dict.keys()")
    shape = batch.input_ids.shape
    return Outputs(logits, {name: position_major(bridge, name, value, *shape) for name, value in captured.items()})


def reference_loss_sum(reference: Reference) -> Tensor:
    """The full model's loss sum on the batch whose reference this is (what the loss constraint compares with)."""
    return reference["loss"].sum()


def aligned_labels(batch: Batch) -> Tensor:
    """``[batch, pos']`` the labels scored by ``logits[:, :pos']`` (shifted by ``batch.label_shift``)."""
    return batch.labels[:, batch.label_shift :]


def aligned_foils(batch: Batch) -> Tensor:
    """``[batch, pos']`` the foils aligned as :func:`aligned_labels`."""
    return batch.foils[:, batch.label_shift :]


def real_tokens(batch: Batch) -> Tensor:
    """``[batch, pos]`` bool: the attention mask, or (causal data without one) the positions up to each example's
    last answer token."""
    if batch.attention_mask is not None:
        return batch.attention_mask.bool()
    scored = batch.labels != IGNORE_INDEX
    positions = torch.arange(scored.shape[1], device=scored.device)
    last = (scored * (positions + 1)).max(dim=1).values
    return positions[None, :] < last[:, None]


def chosen_positions(batch: Batch, positions: str) -> Tensor:
    """``[batch, pos]`` bool: positions whose logits score an answer (``"answers"``) or every real token."""
    if positions == "all":
        return real_tokens(batch)
    scored = torch.zeros_like(batch.labels, dtype=torch.bool)
    labels = aligned_labels(batch) != IGNORE_INDEX
    scored[:, : labels.shape[1]] = labels
    return scored


def position_features(outputs: Outputs, hook_name: str) -> Float[Tensor, "batch pos features"]:
    """The activation at ``hook_name`` as one float32 vector per position: a per-head activation such as
    ``hook_z`` (``[batch, pos, head, d_head]``) with its heads concatenated, as ``W_O`` reads them; an attention
    pattern every head's row of attention from the (query) position."""
    return outputs.activations[hook_name].float().flatten(2)


def mean_pool(activation: Float[Tensor, "batch pos d"], real: Tensor) -> Float[Tensor, "batch d"]:
    """Mean of the activation over each example's real tokens."""
    weights = real.to(activation.device, activation.dtype)[..., None]
    return (activation * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1)


def _require_answers(data: SubtaskData, what: str) -> None:
    if not bool((data.labels[:, data.label_shift :] != IGNORE_INDEX).any()):
        raise ValueError(
            f"subtask {data.name!r} has no answer tokens to score, which {what} needs; give answers, or train with "
            "an objective that reads no answers (HiddenState, LinearProbe, KLDivergence(positions='all'))"
        )


OBJECTIVE_SPECS = {
    "answer-ce": "answer cross-entropy, metric exact match (the default)",
    "kl": "KL(full || masked) at the answer positions; kl:all at every real token",
    "logit-diff": "answer minus foil logit (each JSONL row needs a 'foil')",
    "hidden-state": "hidden-state:HOOK[:cosine|mse], the activation at HOOK mean-pooled, e.g. "
    "hidden-state:blocks.1.hook_resid_post",
}
"""The objectives a command line names (:func:`objective_from_spec`), with what each keeps."""


def objective_from_spec(spec: str) -> Objective:
    """The objective a command-line ``spec`` names: ``answer-ce``, ``kl``, ``kl:all``, ``logit-diff``,
    ``hidden-state:HOOK`` or ``hidden-state:HOOK:mse`` (:data:`OBJECTIVE_SPECS`). Probes and custom objectives
    take Python objects and are built in Python.

    Example:
        >>> objective_from_spec("hidden-state:blocks.1.hook_resid_post:mse").to_dict()
        {'name': 'hidden_state', 'hook_name': 'blocks.1.hook_resid_post', 'distance': 'mse', 'pool': 'mean'}
        >>> objective_from_spec("kl:all").to_dict()
        {'name': 'kl_divergence', 'positions': 'all'}
    """
    kind, *arguments = spec.split(":")
    if kind == "answer-ce" and not arguments:
        return AnswerCrossEntropy()
    if kind == "logit-diff" and not arguments:
        return LogitDifference()
    if kind == "kl" and arguments in ([], ["answers"], ["all"]):
        return KLDivergence(*arguments)
    if (
        kind == "hidden-state"
        and len(arguments) in (1, 2)
        and arguments[0]
        and arguments[1:] in ([], ["cosine"], ["mse"])
    ):
        return HiddenState(*arguments)
    choices = "; ".join(f"{name}: {meaning}" for name, meaning in OBJECTIVE_SPECS.items())
    raise ValueError(f"unknown objective {spec!r}; choose one of {choices}")


def describe_objective(description: dict | None) -> str:
    """A readable name of a recorded objective (``MaskSet.objective``), e.g. for the report's header."""
    description = description or {"name": AnswerCrossEntropy.name}
    details = ", ".join(f"{key}={value}" for key, value in description.items() if key not in ("name", "probe_sha256"))
    return description["name"] + (f" ({details})" if details else "")
