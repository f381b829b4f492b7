"""A gated-module probe on a disconnected plant, where the subtask decomposition is known: does the gate route by
subtask, and does error attribution blame an expert whose readout was damaged on purpose?"""

from __future__ import annotations

import pandas as pd
import torch

from modmask_lens.groundtruth.case import GroundTruthCase
from modmask_lens.probes import (
    ProbeConfig,
    ProbeData,
    ProbeTrainer,
    error_attribution,
    evaluate_probe,
    probe_accuracy,
    routing_information,
    routing_table,
)

PROBE_HOOK = "blocks.1.hook_resid_post"  # the last residual stream, at the position that predicts the answer
PROBE_CONFIG = ProbeConfig(n_experts=2, steps=600, lr=1e-2)


def probe_check(
    case: GroundTruthCase, config: ProbeConfig = PROBE_CONFIG, hook: str = PROBE_HOOK
) -> dict[str, pd.DataFrame]:
    """Train a probe predicting the answer from ``hook`` on all of the case's subtasks, then damage (zero) the
    readout of the expert the first subtask is routed to, and evaluate again.

    Returns:
        ``routing`` (subtask x expert counts), ``information`` (I(expert; subtask) against H(subtask), in bits),
        ``attribution`` and ``accuracy`` (error attribution and per-subtask accuracy), the last two with a
        ``condition`` column: ``intact`` or ``damaged expert <e>``.
    """
    data = ProbeData.from_subtasks(list(case.test.values()), "answer", case.bridge.cfg.d_vocab)
    probe = ProbeTrainer(case.bridge, [hook], data, config, progress=False).train()
    intact = evaluate_probe(probe, case.bridge, [hook], data)
    routing = routing_table(intact)
    first = routing[routing["subtask"] == data.subtask_names[0]]
    damaged_expert = int(first.sort_values("count", ascending=False)["expert"].iloc[0])
    with torch.no_grad():
        for parameter in probe.experts[damaged_expert].parameters():
            parameter.zero_()
    damaged = evaluate_probe(probe, case.bridge, [hook], data)
    conditions = {"intact": intact, f"damaged expert {damaged_expert}": damaged}
    return {
        "routing": routing.assign(case=case.name),
        "information": routing_information(intact).assign(case=case.name),
        "attribution": pd.concat(
            [
                error_attribution(evaluation).assign(condition=condition, case=case.name)
                for condition, evaluation in conditions.items()
            ],
            ignore_index=True,
        ),
        "accuracy": pd.concat(
            [
                probe_accuracy(evaluation).assign(condition=condition, case=case.name)
                for condition, evaluation in conditions.items()
            ],
            ignore_index=True,
        ),
    }
