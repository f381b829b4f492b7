"""Gated-module probes: a gate and expert readouts at hook points of a frozen model (Krishnamurthy & Watkins 2021)."""

from modmask_lens.probes.analysis import (
    ProbeEvaluation,
    error_attribution,
    evaluate_probe,
    expert_ablation,
    expert_accuracy,
    probe_accuracy,
    routing_information,
    routing_table,
    transfer_test,
)
from modmask_lens.probes.component_gate import (
    ComponentGate,
    ComponentGateConfig,
    compare_with_masks,
    component_usage,
    gated_logits,
    train_component_gate,
)
from modmask_lens.probes.config import ProbeConfig
from modmask_lens.probes.data import ProbeData, read_activations
from modmask_lens.probes.moe import GatedProbe, ProbeOutput
from modmask_lens.probes.training import ProbeTrainer

__all__ = [
    "ComponentGate",
    "ComponentGateConfig",
    "GatedProbe",
    "ProbeConfig",
    "ProbeData",
    "ProbeEvaluation",
    "ProbeOutput",
    "ProbeTrainer",
    "compare_with_masks",
    "component_usage",
    "error_attribution",
    "evaluate_probe",
    "expert_ablation",
    "expert_accuracy",
    "gated_logits",
    "probe_accuracy",
    "read_activations",
    "routing_information",
    "routing_table",
    "train_component_gate",
    "transfer_test",
]
