"""Mask training under torchrun (2 CPU processes, gloo), data parallel or fully sharded, equals one process up to
float tolerance: masks, and the checkpoint with its Adam state."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from modmask_lens import CSORDAS_MASKS
from modmask_lens.masks.config import PATHWISE_INIT_LOGIT
from modmask_lens.testing.tiny_models import boot_tiny


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _train(
    command_prefix: list[str], folder: Path, tasks: list[Path], out: Path, options: list[str]
) -> subprocess.CompletedProcess:
    arguments = [
        "masks",
        "train",
        "--model",
        str(folder),
        "--steps",
        "5",
        "--batch-size",
        "16",
        "--out",
        str(out),
        *options,
    ]
    for task in tasks:
        arguments += ["--task", str(task)]
    environment = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    return subprocess.run(
        [*command_prefix, *arguments], capture_output=True, text=True, timeout=600, env=environment, check=False
    )


MODELS = {
    "gpt2": lambda: GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=40, n_positions=16)),
    "llama-gqa": lambda: LlamaForCausalLM(
        LlamaConfig(
            num_hidden_layers=2,
            hidden_size=32,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=64,
            vocab_size=40,
            max_position_embeddings=16,
        )
    ),
}


@pytest.mark.parametrize(
    ("model", "options"),
    [
        ("gpt2", []),  # data parallel
        ("gpt2", ["--fully-shard", "--method", "csordas"]),
        ("llama-gqa", ["--fully-shard", "--method", "csordas", "--granularity", "head", "--n-samples", "2"]),
    ],
    ids=["ddp-gpt2-weights", "fsdp-gpt2-weights", "fsdp-llama-gqa-heads"],
)
def test_two_process_mask_training_equals_one_process(tmp_path, model, options):
    folder = tmp_path / "model"
    boot_tiny(MODELS[model](), folder)
    tasks = []
    for name, offset in (("evens", 0), ("odds", 1)):
        rows = [
            {"prompt": f"w{a} w{b}", "completion": f"w{(a + b) % 20 + 5}"}
            for a in range(5, 15)
            for b in range(5, 9)
            if (a + b) % 2 == offset
        ]
        tasks.append(tmp_path / f"{name}.jsonl")
        tasks[-1].write_text("\n".join(json.dumps(row) for row in rows))
    cli = shutil.which("modmask-lens", path=str(Path(sys.executable).parent))
    single = _train([cli], folder, tasks, tmp_path / "single", options)
    assert single.returncode == 0, single.stderr
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(_free_port()),
        cli,
    ]
    distributed = _train(torchrun, folder, tasks, tmp_path / "ddp", options)
    assert distributed.returncode == 0, distributed.stderr[-3000:]
    for name in ("evens", "odds"):
        one = load_file(tmp_path / "single" / f"masks-{name}.safetensors")
        two = load_file(tmp_path / "ddp" / f"masks-{name}.safetensors")
        assert one.keys() == two.keys()
        for key in one:
            torch.testing.assert_close(two[key], one[key], rtol=0, atol=1e-5)
        init_logit = CSORDAS_MASKS.init_logit if "csordas" in options else PATHWISE_INIT_LOGIT
        assert any(not torch.equal(value, torch.full_like(value, init_logit)) for value in one.values())
    one = load_file(tmp_path / "single" / "checkpoints" / "checkpoint.safetensors")
    two = load_file(tmp_path / "ddp" / "checkpoints" / "checkpoint.safetensors")
    assert one.keys() == two.keys() and any("/adam/" in key for key in one)
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=0, atol=1e-5)
