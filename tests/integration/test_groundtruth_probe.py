"""The gated-module probe check on a disconnected plant: its tables, and a damaged expert that costs accuracy."""

from __future__ import annotations

from modmask_lens.groundtruth import load_plant, probe_check
from modmask_lens.probes import ProbeConfig


def test_probe_check_reports_routing_and_the_damaged_experts_errors():
    tables = probe_check(load_plant("disconnected-add-mul"), ProbeConfig(n_experts=2, steps=150, lr=1e-2))
    information = tables["information"].iloc[0]
    assert information.subtask_entropy == 1.0  # two subtasks of 100 examples each
    assert 0 <= information.mutual_information <= information.subtask_entropy + 1e-9
    attribution = tables["attribution"].set_index("condition")
    intact, damaged = attribution.iloc[0], attribution.iloc[1]
    assert damaged.name.startswith("damaged expert")
    assert damaged.errors > intact.errors
    assert damaged.gate_errors + damaged.expert_errors + damaged.mixing_errors == damaged.errors
    assert set(tables["accuracy"]["condition"]) == set(attribution.index)
