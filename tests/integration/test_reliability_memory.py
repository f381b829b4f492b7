"""Bounded memory: probe evaluation and exact-match evaluation stream activations batch by batch, so they finish under
an address-space cap that the whole task's activation cache would exceed.

The capped run is this file run as a script in a subprocess (``python test_reliability_memory.py``): it sets
``RLIMIT_AS`` to its current size plus :data:`CAP_BYTES`, shows that caching every activation of the task at once
fails under the cap, then evaluates, and prints the results as JSON for the test to compare with an uncapped run.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import torch
from conftest import VOCAB, boot_native

from modmask_lens import SubtaskData
from modmask_lens.analysis.accuracy import exact_match
from modmask_lens.probes import GatedProbe, ProbeConfig, ProbeData, evaluate_probe

CAP_BYTES = 400 * 2**20
N_EXAMPLES, N_POSITIONS = 12_000, 12
HOOK_NAMES = ["blocks.0.hook_resid_post", "blocks.1.hook_mlp_out"]


def build():
    """The model, the task, its probe data and a seeded probe: the same in every process."""
    torch.manual_seed(0)
    bridge = boot_native()
    input_ids = torch.randint(0, VOCAB, (N_EXAMPLES, N_POSITIONS), generator=torch.Generator().manual_seed(0))
    labels = torch.full_like(input_ids, -100)
    labels[:, -3:] = input_ids[:, -3:]
    data = SubtaskData("large", input_ids, labels)
    probe_data = ProbeData.from_subtasks([data], vocab_size=VOCAB)
    torch.manual_seed(0)
    probe = GatedProbe(2 * bridge.cfg.d_model, VOCAB, ProbeConfig(n_experts=2)).eval()
    return bridge, data, probe_data, probe


def evaluations(bridge, data, probe_data, probe) -> dict:
    evaluation = evaluate_probe(probe, bridge, HOOK_NAMES, probe_data)
    return {
        "probe_correct": evaluation.correct.tolist(),
        "chosen_expert": evaluation.chosen_expert.tolist(),
        "exact_match": exact_match(bridge, data),
    }


def address_space_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmSize in /proc/self/status")


def capped_run() -> None:
    bridge, data, probe_data, probe = build()
    with torch.no_grad():
        _, one_example = bridge.run_with_cache(data.input_ids[:1])
    full_cache_bytes = N_EXAMPLES * sum(tensor.numel() * tensor.element_size() for tensor in one_example.values())
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (address_space_bytes() + CAP_BYTES, hard))
    try:
        with torch.no_grad():
            bridge.run_with_cache(data.input_ids)
        full_cache = "fitted"
    except (MemoryError, RuntimeError) as error:  # torch's CPU allocator raises RuntimeError when malloc fails
        full_cache = f"refused: {type(error).__name__}"
    print(
        json.dumps(
            {"full_cache_bytes": full_cache_bytes, "full_cache": full_cache}
            | evaluations(bridge, data, probe_data, probe)
        )
    )


def test_probe_and_exact_match_evaluation_run_in_bounded_memory():
    result = subprocess.run(
        [sys.executable, __file__],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=Path(__file__).parent,
        # run as a script, it imports the shared helpers from tests/ (tests/conftest.py)
        env=os.environ | {"HF_HUB_OFFLINE": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    capped = json.loads(result.stdout.strip().splitlines()[-1])
    assert capped["full_cache_bytes"] > 2 * CAP_BYTES
    assert capped["full_cache"].startswith("refused"), capped["full_cache"]
    uncapped = evaluations(*build())
    assert {key: capped[key] for key in uncapped} == uncapped


if __name__ == "__main__":
    torch.set_num_threads(1)
    capped_run()
