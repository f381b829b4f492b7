"""A toy model for tests and tutorials: a 2-layer GPT-2 trained in seconds on two copy subtasks.

``copy_first`` (``a b FIRST -> a``) and ``copy_second`` (``a b SECOND -> b``) share a format but need attention to
different positions, which makes them a quick, real case for masks, probes and views.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformer_lens.model_bridge import TransformerBridge
from transformers import GPT2Config, GPT2LMHeadModel

from modmask_lens.core.booting import boot_transformers
from modmask_lens.core.data import SubtaskData
from modmask_lens.core.random import seeded
from modmask_lens.core.scoring import score_answers

DIGITS, FIRST, SECOND, EOS = 10, 10, 11, 12


def copy_subtask(name: str, marker: int, copied_position: int) -> SubtaskData:
    """``a b MARKER -> x EOS`` for all digit pairs, where x is the token at ``copied_position``."""
    pairs = torch.cartesian_prod(torch.arange(DIGITS), torch.arange(DIGITS))
    count = pairs.shape[0]
    input_ids = torch.stack(
        [pairs[:, 0], pairs[:, 1], torch.full((count,), marker), pairs[:, copied_position], torch.full((count,), EOS)],
        1,
    )
    labels = input_ids.clone()
    labels[:, :3] = -100
    return SubtaskData(name, input_ids, labels)


def build_model(directory: Path, steps: int = 400, seed: int = 0) -> TransformerBridge:
    """Train a 2-layer GPT-2 on both copy subtasks, save it in Hugging Face format, and boot it as a bridge."""
    with seeded(seed):
        model = GPT2LMHeadModel(
            GPT2Config(
                n_layer=2,
                n_embd=64,
                n_head=4,
                vocab_size=EOS + 1,
                n_positions=8,
                resid_pdrop=0.0,
                embd_pdrop=0.0,
                attn_pdrop=0.0,
            )
        )
    subtasks = [copy_subtask("copy_first", FIRST, 0), copy_subtask("copy_second", SECOND, 1)]
    input_ids = torch.cat([subtask.input_ids for subtask in subtasks])
    labels = torch.cat([subtask.labels for subtask in subtasks])
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(steps):
        optimizer.zero_grad()
        score = score_answers(model(input_ids).logits, labels)
        (score.loss_sum / score.n_tokens).backward()
        optimizer.step()
    model.save_pretrained(directory)
    return boot_transformers(str(directory), device="cpu")
