"""A component gate: per-example gates on the model's own heads and MLPs, from the residual stream at the input.

A small network reads ``blocks.0.hook_resid_pre`` at the example's last prompt position and outputs one sigmoid gate
per attention head (scaling ``blocks.{l}.attn.hook_z[:, :, h]``) and per MLP (scaling ``blocks.{l}.hook_mlp_out``),
applied through hooks on the frozen model. Trained on the answer loss plus a sparsity penalty on the mean gate, it
shows which of the model's components each subtask is routed through; :func:`compare_with_masks` sets that against
the weight masks of the same subtasks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor, nn
from tqdm.auto import tqdm

from modmask_lens.core.bridge import Bridge, eval_mode
from modmask_lens.core.data import SubtaskData
from modmask_lens.core.encoding import IGNORE_INDEX
from modmask_lens.core.functional import frozen_call
from modmask_lens.core.random import seeded, step_generator
from modmask_lens.core.scoring import score_answers
from modmask_lens.probes.data import ProbeData, read_activations

INPUT_HOOK = "blocks.0.hook_resid_pre"


@dataclass(frozen=True)
class ComponentGateConfig:
    """Training of a component gate. ``sparsity`` weighs the mean gate (an L1 penalty, as the gates are >= 0)."""

    hidden: int = 64
    sparsity: float = 0.05
    lr: float = 1e-2
    steps: int = 300
    batch_size: int = 32
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("hidden", "steps", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")
        if not (math.isfinite(self.sparsity) and self.sparsity >= 0):
            raise ValueError(f"sparsity must be >= 0 and finite, got {self.sparsity}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be > 0 and finite, got {self.lr}")


class ComponentGate(nn.Module):
    """Residual stream at the input -> gates ``[batch, n_layers, n_heads + 1]`` (heads, then the layer's MLP)."""

    def __init__(self, d_model: int, n_layers: int, n_heads: int, hidden: int = 64):
        super().__init__()
        self.n_layers, self.n_heads = n_layers, n_heads
        self.network = nn.Sequential(nn.Linear(d_model, hidden), nn.ReLU(), nn.Linear(hidden, n_layers * (n_heads + 1)))

    def forward(self, residual: Float[Tensor, "batch d_model"]) -> Float[Tensor, "batch n_layers n_gates"]:
        return self.network(residual).sigmoid().view(-1, self.n_layers, self.n_heads + 1)


def mlp_layers(bridge: Bridge) -> list[int]:
    """The layers whose block has an MLP (a ``blocks.{l}.hook_mlp_out`` hook point): all but attention-only ones."""
    return [layer for layer in range(bridge.cfg.n_layers) if f"blocks.{layer}.hook_mlp_out" in bridge.hook_dict]


def check_gates(bridge: Bridge, gates: Float[Tensor, "batch n_layers n_gates"]) -> None:
    """Raise ``ValueError`` unless ``gates`` hold one gate per head and one per MLP of every layer of ``bridge``."""
    expected = (bridge.cfg.n_layers, bridge.cfg.n_heads + 1)
    if gates.dim() != 3 or tuple(gates.shape[1:]) != expected:
        raise ValueError(
            f"gates have shape {tuple(gates.shape)}; this model needs [batch, {expected[0]}, {expected[1]}] (per "
            "layer, each head's gate, then the MLP's): use a ComponentGate built for this model"
        )


def gated_logits(
    bridge: Bridge,
    gates: Float[Tensor, "batch n_layers n_gates"],
    input_ids: Int[Tensor, "batch pos"],
    attention_mask: Int[Tensor, "batch pos"] | None = None,
) -> Float[Tensor, "batch pos vocab"]:
    """The frozen model's logits with each head's ``hook_z`` and each MLP's output scaled by its gate (layers
    without an MLP have no MLP gate to apply; the gates are cast to the activations' dtype). ``attention_mask`` is
    passed to the model where given. The model runs in eval mode (no dropout).

    The model's parameters are passed detached (:func:`masked_call` with no mask), so gradients reach the gates only.

    Raises:
        ValueError: ``gates`` are not shaped for this model (:func:`check_gates`).
    """
    check_gates(bridge, gates)

    def scale_heads(layer: int):
        def hook(z, hook):
            return z * gates[:, layer, :-1, None][:, None].to(z.dtype)  # z: [batch, pos, head, d_head]

        return hook

    def scale_mlp(layer: int):
        def hook(mlp_out, hook):
            return mlp_out * gates[:, layer, -1][:, None, None].to(mlp_out.dtype)  # mlp_out: [batch, pos, d_model]

        return hook

    hooks = [(f"blocks.{layer}.attn.hook_z", scale_heads(layer)) for layer in range(gates.shape[1])]
    hooks += [(f"blocks.{layer}.hook_mlp_out", scale_mlp(layer)) for layer in mlp_layers(bridge)]
    padding = {} if attention_mask is None else {"attention_mask": attention_mask}
    with eval_mode(bridge):
        return frozen_call(bridge, bridge.run_with_hooks, input_ids, fwd_hooks=hooks, **padding)


def train_component_gate(
    bridge: Bridge,
    subtasks: Sequence[SubtaskData],
    config: ComponentGateConfig = ComponentGateConfig(),
    progress: bool = True,
) -> ComponentGate:
    """Train a :class:`ComponentGate` on the answers of ``subtasks`` (all mixed) with a sparsity penalty.

    Raises:
        ValueError: no subtasks, or a subtask has examples without answers (:meth:`SubtaskData.from_texts`): nothing
            to train on.
    """
    if not subtasks:
        raise ValueError("no subtasks given: the component gate trains on the answers of at least one subtask")
    unanswered = [part.name for part in subtasks if bool((part.labels == IGNORE_INDEX).all())]
    if unanswered:
        raise ValueError(
            f"subtasks {unanswered} have no answers to train the gate on (SubtaskData.from_texts); build them with "
            "answers, e.g. SubtaskData.from_pairs"
        )
    merged = SubtaskData.concatenate("all", list(subtasks))
    positions = ProbeData.from_subtasks(subtasks, target="subtask").positions
    device = merged.input_ids.device
    with seeded(config.seed):  # initialised on the CPU, so that a seed gives one gate on every device
        gate = ComponentGate(bridge.cfg.d_model, bridge.cfg.n_layers, bridge.cfg.n_heads, config.hidden).to(device)
    optimizer = torch.optim.Adam(gate.parameters(), lr=config.lr)
    for step in tqdm(range(config.steps), disable=not progress, desc="component gate", unit="step"):
        indices = torch.randint(len(merged), (config.batch_size,), generator=step_generator(config.seed, step))
        batch = merged.examples(indices.to(device))
        gates = gate(read_activations(bridge, [INPUT_HOOK], batch.input_ids, positions[indices], batch.attention_mask))
        logits = gated_logits(bridge, gates, batch.input_ids, batch.attention_mask)
        score = score_answers(logits, batch.labels, batch.label_shift)
        loss = score.loss_sum / score.n_tokens + config.sparsity * gates.mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return gate.eval()


def component_usage(gate: ComponentGate, bridge: Bridge, subtasks: Sequence[SubtaskData]) -> pd.DataFrame:
    """Mean gate of every head and MLP per subtask (a layer without an MLP has no ``mlp`` row).

    Returns:
        Columns ``subtask``, ``layer``, ``component`` (``head`` or ``mlp``), ``head`` (-1 for the MLP), ``mean_gate``.

    Raises:
        ValueError: ``gate`` was built for other layers or heads than ``bridge`` has (:func:`check_gates`).
    """
    data = ProbeData.from_subtasks(subtasks, target="subtask")
    with torch.no_grad():
        gates = gate(read_activations(bridge, [INPUT_HOOK], data.input_ids, data.positions, data.attention_mask))
    check_gates(bridge, gates)
    with_mlp = set(mlp_layers(bridge))
    rows = []
    for index, name in enumerate(data.subtask_names):
        mean = gates[data.subtasks == index].mean(dim=0)
        for layer in range(gate.n_layers):
            rows += [
                {
                    "subtask": name,
                    "layer": layer,
                    "component": "head",
                    "head": head,
                    "mean_gate": float(mean[layer, head]),
                }
                for head in range(gate.n_heads)
            ]
            if layer in with_mlp:
                rows.append(
                    {
                        "subtask": name,
                        "layer": layer,
                        "component": "mlp",
                        "head": -1,
                        "mean_gate": float(mean[layer, -1]),
                    }
                )
    return pd.DataFrame(rows)


def compare_with_masks(usage: pd.DataFrame, head_importance: pd.DataFrame) -> pd.DataFrame:
    """Per subtask: each head's mean gate beside its kept fraction under the subtask's weight mask, and their
    Spearman rank correlation (column ``spearman``, the same on every row of a subtask).

    Args:
        usage: :func:`component_usage`.
        head_importance: :func:`modmask_lens.analysis.unit_importance` of each subtask's mask, concatenated
            (a subtask's mask carries the subtask's name in its ``mask`` column).

    Raises:
        ValueError: a subtask of ``usage`` has no mask of its name in ``head_importance``.
    """
    unmatched = sorted(set(usage["subtask"]) - set(head_importance["mask"]))
    if unmatched:
        raise ValueError(
            f"no mask named {unmatched} in head_importance (its masks: {sorted(set(head_importance['mask']))}); "
            "name each subtask's mask as the subtask (train_masks does)"
        )
    heads = usage[usage.component == "head"][["subtask", "layer", "head", "mean_gate"]]
    masks = head_importance[["mask", "layer", "head", "kept_fraction"]].astype({"layer": int, "head": int})
    table = heads.merge(
        masks, left_on=["subtask", "layer", "head"], right_on=["mask", "layer", "head"], how="inner"
    ).drop(columns="mask")
    correlation = table.groupby("subtask")[["mean_gate", "kept_fraction"]].apply(
        lambda group: group["mean_gate"].rank().corr(group["kept_fraction"].rank())
    )
    return table.assign(spearman=table["subtask"].map(correlation))
