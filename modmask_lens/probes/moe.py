"""A gated mixture of expert readouts and its losses (Krishnamurthy & Watkins 2021; Shazeer et al. 2017 for CV^2)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor, nn

from modmask_lens.probes.config import ProbeConfig

LOG_EPSILON = 1e-7  # the reference code's log(p + 1e-7)


def _readout(d_in: int, d_out: int, hidden: int) -> nn.Module:
    if hidden == 0:
        return nn.Linear(d_in, d_out)
    return nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, d_out))


@dataclass
class ProbeOutput:
    """One forward pass of a :class:`GatedProbe`.

    Attributes:
        gate_logits: ``[batch, expert]`` before the temperature.
        gate: ``[batch, expert]`` softmax(gate_logits / T).
        expert_logits: ``[batch, expert, class]``.
        log_probs: ``[batch, class]`` log-probabilities of the probe's prediction (per the gate kind).
    """

    gate_logits: Float[Tensor, "batch expert"]
    gate: Float[Tensor, "batch expert"]
    expert_logits: Float[Tensor, "batch expert n_class"]
    log_probs: Float[Tensor, "batch n_class"]

    @property
    def expert_log_probs(self) -> Float[Tensor, "batch expert n_class"]:
        return self.expert_logits.log_softmax(dim=-1)

    def expert_nll(self, targets: Int[Tensor, " batch"]) -> Float[Tensor, "batch expert"]:
        """Each expert's negative log-likelihood of each target."""
        index = targets[:, None, None].expand(-1, self.expert_logits.shape[1], 1)
        return -self.expert_log_probs.gather(2, index).squeeze(2)


class GatedProbe(nn.Module):
    """``n_experts`` readouts of an activation vector and a gate that mixes or selects them.

    Attributes:
        n_classes: the classes each expert predicts (:attr:`ProbeData.n_classes` of the data it was built for).
        d_in: the width of the activation vector it reads.
        hook_names: the hook points whose activations it reads, concatenated in this order (``()`` where the
            caller did not say); :func:`~modmask_lens.probes.evaluate_probe` refuses other hooks.
        temperature: the gate's softmax temperature where a call names none: ``config.temperature`` until a
            :class:`~modmask_lens.probes.ProbeTrainer` sets it to the temperature of its last step (the end of
            ``config.temperature_decay``'s schedule; 1 with ``config.two_temperatures``, where the gate learns at 1),
            so the probe is evaluated as it was trained. It is a buffer of the state dict, so a probe saved and
            loaded with ``state_dict`` is evaluated at the temperature it was trained to.

    Example:
        >>> probe = GatedProbe(d_in=128, n_classes=10, config=ProbeConfig(n_experts=4))
        >>> probe(torch.randn(2, 128)).log_probs.shape
        torch.Size([2, 10])
    """

    def __init__(self, d_in: int, n_classes: int, config: ProbeConfig = ProbeConfig(), hook_names: Sequence[str] = ()):
        super().__init__()
        self.config, self.n_classes, self.d_in, self.hook_names = config, n_classes, d_in, tuple(hook_names)
        self.experts = nn.ModuleList(_readout(d_in, n_classes, config.expert_hidden) for _ in range(config.n_experts))
        self.gate = _readout(d_in, config.n_experts, config.gate_hidden)
        self.register_buffer("evaluation_temperature", torch.tensor(float(config.temperature)))

    @property
    def temperature(self) -> float:
        return float(self.evaluation_temperature)

    @temperature.setter
    def temperature(self, value: float) -> None:
        self.evaluation_temperature.fill_(value)

    def forward(
        self,
        activations: Float[Tensor, "batch d_in"],
        temperature: float | None = None,
        removed_experts: tuple[int, ...] = (),
    ) -> ProbeOutput:
        """Gate and expert outputs at the gate ``temperature`` (default :attr:`temperature`); ``removed_experts`` get
        zero gate (the others renormalised), for ablations.

        Raises:
            ValueError: ``removed_experts`` names an expert the probe does not have, or every expert (no gate is
                left to renormalise); ``temperature`` is not a positive finite number.
        """
        n_experts = self.config.n_experts
        unknown = sorted({index for index in removed_experts if not 0 <= index < n_experts})
        if unknown:
            raise ValueError(f"removed_experts {unknown}: the probe's experts are 0..{n_experts - 1}")
        if len(set(removed_experts)) == n_experts:
            raise ValueError(f"removed_experts removes all {n_experts} experts; keep at least one")
        temperature = self.temperature if temperature is None else temperature
        if not (math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"temperature must be > 0 and finite, got {temperature}")
        gate_logits = self.gate(activations)
        if removed_experts:
            removed = torch.tensor(removed_experts, device=gate_logits.device)
            gate_logits = gate_logits.index_fill(1, removed, float("-inf"))
        gate = (gate_logits / temperature).softmax(dim=-1)
        expert_logits = torch.stack([expert(activations) for expert in self.experts], dim=1)
        return ProbeOutput(gate_logits, gate, expert_logits, self._combine(gate, expert_logits))

    def _combine(self, gate: Tensor, expert_logits: Tensor) -> Tensor:
        kind = self.config.gate
        if kind == "expectation":
            mixture = (gate[..., None] * expert_logits.softmax(dim=-1)).sum(dim=1)
            return (mixture + LOG_EPSILON).log()
        if kind == "pre_softmax":
            return (gate[..., None] * expert_logits).sum(dim=1).log_softmax(dim=-1)
        chosen = gate.argmax(dim=1)  # top1, and stochastic at evaluation
        return expert_logits[torch.arange(len(chosen)), chosen].log_softmax(dim=-1)


def probe_loss(
    probe: GatedProbe,
    output: ProbeOutput,
    targets: Int[Tensor, " batch"],
    expert_gate: Float[Tensor, "batch expert"] | None = None,
) -> Tensor:
    """The task loss of ``output`` for the probe's gate kind (mean over the batch).

    ``expert_gate``, when given, is the gate the experts learn against (two-temperature training: the gate at
    temperature T, detached); the gate itself then learns from ``output.gate`` against detached experts.
    """
    kind = probe.config.gate
    expert_nll = output.expert_nll(targets)
    if kind == "top1":
        # Hard EM: assign each sample to argmax_e g_e p_e(y); that expert learns it, and the gate learns the assignment.
        assignment = (output.gate.detach().log() - expert_nll.detach()).argmax(dim=1)
        return expert_nll.gather(1, assignment[:, None]).mean() + F.cross_entropy(output.gate_logits, assignment)
    if expert_gate is None:
        return _mixture_nll(kind, output.gate, expert_nll, output.expert_logits, targets)
    return _mixture_nll(kind, expert_gate.detach(), expert_nll, output.expert_logits, targets) + _mixture_nll(
        kind, output.gate, expert_nll.detach(), output.expert_logits.detach(), targets
    )


def _mixture_nll(kind: str, gate: Tensor, expert_nll: Tensor, expert_logits: Tensor, targets: Tensor) -> Tensor:
    if kind == "stochastic":
        return -torch.logsumexp(gate.clamp_min(1e-12).log() - 0.5 * expert_nll, dim=1).mean()
    if kind == "pre_softmax":
        return F.cross_entropy((gate[..., None] * expert_logits).sum(dim=1), targets)
    mixture = (gate * (-expert_nll).exp()).sum(dim=1)  # expectation: p(y) = sum_e g_e p_e(y)
    return -(mixture + LOG_EPSILON).log().mean()


def importance_cv2(gate: Float[Tensor, "batch expert"]) -> Tensor:
    """Squared coefficient of variation of each expert's summed gate over the batch (Shazeer et al. 2017), with the
    population variance (divided by the number of experts E). The gated-modules reference code squares
    ``torch.std``, which divides by E - 1, so at the same weight its penalty is E / (E - 1) times this one (2x for 2
    experts, 1.25x for the default 5)."""
    importance = gate.sum(dim=0)
    return importance.var(unbiased=False) / importance.mean().pow(2)


def ideal_gate_loss(output: ProbeOutput, targets: Int[Tensor, " batch"]) -> Tensor:
    """MSE between the gate and the one-hot of each sample's lowest-loss expert (the reference code's ideal gate)."""
    best = F.one_hot(output.expert_nll(targets).detach().argmin(dim=1), output.gate.shape[1]).to(output.gate.dtype)
    return F.mse_loss(output.gate, best)
