"""Exact-match accuracy of a causal model on tokenized pairs, by batched greedy decoding or by teacher forcing.

An example counts as correct only if every completion token and the EOS are right (Csordás et al. 2021: "an item
counts as correct only if every digit/token is right"). Works on a TransformerLens ``TransformerBridge`` (whose call
returns logits) and on a plain Hugging Face causal LM (whose call returns an output with ``.logits``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import pandas as pd
import torch
from datasets import Dataset
from jaxtyping import Bool, Float, Int
from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from modmask_lens.tasks.encoding import IGNORE_INDEX, TokenizedExamples, encode_pairs

DEFAULT_BATCH_SIZE = 512  # examples per forward pass; the zoo models fit this easily in CPU memory


def next_token_logits(model: torch.nn.Module, input_ids: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch pos vocab"]:
    """Logits of ``model`` on ``input_ids``, for a ``TransformerBridge`` or a Hugging Face causal LM."""
    output = model(input_ids)
    return output if isinstance(output, Tensor) else output.logits


def _completion_mask(examples: TokenizedExamples) -> Bool[Tensor, "example pos"]:
    return examples.labels != IGNORE_INDEX


def teacher_forced_correct(
    model: torch.nn.Module, examples: TokenizedExamples, batch_size: int = DEFAULT_BATCH_SIZE
) -> Bool[Tensor, " example"]:
    """Per example: does the argmax at every gold prefix give the next completion token (EOS included)?

    This equals greedy exact match: greedy decoding is exact iff every gold-prefix argmax is gold.
    """
    correct = []
    with torch.inference_mode():
        for start in range(0, len(examples), batch_size):
            batch = examples.select(slice(start, start + batch_size))
            predictions = next_token_logits(model, batch.input_ids)[:, :-1].argmax(dim=-1)
            targets = batch.labels[:, 1:]
            correct.append(((predictions == targets) | (targets == IGNORE_INDEX)).all(dim=1))
    return torch.cat(correct) if correct else torch.zeros(0, dtype=torch.bool)


def _logits_and_cache(
    model: torch.nn.Module, input_ids: Int[Tensor, "batch new_pos"], cache: object | None
) -> tuple[Float[Tensor, "batch new_pos vocab"], object]:
    """One incremental step: logits of the new tokens and the updated Hugging Face KV cache."""
    if isinstance(model, PreTrainedModel):
        output = model(input_ids=input_ids, past_key_values=cache, use_cache=True)
        return output.logits, output.past_key_values
    # TransformerBridge's manual KV-cache entry point (TransformerLens 4.x).
    return model(input_ids, return_type="logits_and_cache", past_key_values=cache, use_cache=True)


def greedy_complete(
    model: torch.nn.Module, examples: TokenizedExamples, max_new_tokens: int
) -> Int[Tensor, "example pos"]:
    """Greedy continuations of the prompts of ``examples``, batched with a KV cache.

    Returns ``[example, max(prompt_lengths) + max_new_tokens]`` ids: each prompt, then its generated tokens up to
    and including its EOS, then pad. Rows with the same prompt length decode together, so no row needs padding or
    an attention mask while it decodes.
    """
    width = int(examples.prompt_lengths.max()) + max_new_tokens
    tokens = torch.full((len(examples), width), examples.pad_token_id, dtype=torch.long)
    with torch.inference_mode():
        for prompt_length in examples.prompt_lengths.unique().tolist():
            rows = torch.nonzero(examples.prompt_lengths == prompt_length).squeeze(1)
            generated = examples.input_ids[rows, :prompt_length]
            logits, cache = _logits_and_cache(model, generated, None)
            finished = torch.zeros(len(rows), dtype=torch.bool)
            for _ in range(max_new_tokens):
                predicted = torch.where(finished, examples.pad_token_id, logits[:, -1].argmax(dim=-1))
                generated = torch.cat([generated, predicted[:, None]], dim=1)
                finished |= predicted == examples.eos_token_id
                if finished.all():
                    break
                logits, cache = _logits_and_cache(model, predicted[:, None], cache)
            tokens[rows, : generated.shape[1]] = generated
    return tokens


def greedy_correct(
    model: torch.nn.Module, examples: TokenizedExamples, batch_size: int = DEFAULT_BATCH_SIZE
) -> Bool[Tensor, " example"]:
    """Per example: does greedy decoding from the prompt reproduce the completion and then EOS exactly?"""
    correct = []
    for start in range(0, len(examples), batch_size):
        batch = examples.select(slice(start, start + batch_size))
        completion = _completion_mask(batch)
        generated = greedy_complete(model, batch, max_new_tokens=int(completion.sum(dim=1).max()))
        width = batch.input_ids.shape[1]  # generated rows are at least this wide: longest prompt + completion
        correct.append(((generated[:, :width] == batch.input_ids) | ~completion).all(dim=1))
    return torch.cat(correct) if correct else torch.zeros(0, dtype=torch.bool)


Method = Literal["greedy", "teacher_forcing"]
CORRECTNESS_BY_METHOD = {"greedy": greedy_correct, "teacher_forcing": teacher_forced_correct}


def exact_match_correct(
    model: torch.nn.Module,
    examples: TokenizedExamples,
    method: Method = "greedy",
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> Bool[Tensor, " example"]:
    """Per-example exact match by ``method`` (``"greedy"`` or ``"teacher_forcing"``)."""
    if method not in CORRECTNESS_BY_METHOD:
        raise ValueError(f"unknown method {method!r}; use one of {', '.join(CORRECTNESS_BY_METHOD)}")
    return CORRECTNESS_BY_METHOD[method](model, examples, batch_size)


def accuracy_by_subtask(
    correct: Bool[Tensor, " example"], subtasks: Sequence[str | Sequence[str]] | None = None
) -> pd.DataFrame:
    """Exact-match accuracy overall (``subtask == "all"``) and per subtask label.

    ``subtasks`` gives each example one label or a list of labels (an example counts in every subtask it lists,
    e.g. SCAN's ``primitives`` column). Columns: ``subtask``, ``examples``, ``correct``, ``accuracy`` (0..1).
    """
    frame = pd.DataFrame({"correct": correct.numpy()})
    groups = [("all", frame["correct"])]
    if subtasks is not None:
        if len(subtasks) != len(frame):
            raise ValueError(f"got {len(subtasks)} subtask labels for {len(frame)} examples; pass one per example")
        frame["subtask"] = list(subtasks)
        exploded = frame.explode("subtask").dropna(subset=["subtask"])
        groups += [(str(name), group["correct"]) for name, group in exploded.groupby("subtask", sort=True)]
    return pd.DataFrame(
        [
            {"subtask": name, "examples": len(flags), "correct": int(flags.sum()), "accuracy": float(flags.mean())}
            for name, flags in groups
        ]
    )


def evaluate_exact_match(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    dataset: Dataset,
    method: Method = "greedy",
    subtask_column: str | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> pd.DataFrame:
    """Exact-match accuracy of ``model`` on a task split (``question`` / ``answer`` columns), overall and per subtask.

    ``subtask_column`` names a column holding each example's subtask label(s), e.g. ``"primitives"`` for SCAN or
    ``"module"`` for math. Returns the frame of :func:`accuracy_by_subtask`.
    """
    examples = encode_pairs(tokenizer, list(dataset["question"]), list(dataset["answer"]))
    correct = exact_match_correct(model, examples, method, batch_size)
    return accuracy_by_subtask(correct, None if subtask_column is None else list(dataset[subtask_column]))
