"""Exact-match accuracy of a causal model on tokenized pairs, by batched greedy decoding or by teacher forcing.

An example counts as correct only if every completion token and the EOS are right
(:mod:`modmask_lens.core.scoring`). Works on a TransformerLens ``TransformerBridge`` (whose call
returns logits) and on a plain Hugging Face causal LM (whose call returns an output with ``.logits``), run in eval
mode (no dropout) whatever mode the caller left it in.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Literal

import pandas as pd
import torch
from datasets import Dataset
from jaxtyping import Bool, Float, Int
from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from modmask_lens.core.bridge import eval_mode
from modmask_lens.core.encoding import IGNORE_INDEX, TokenizedExamples, encode_pairs
from modmask_lens.core.scoring import answer_correct, check_batch_size
from modmask_lens.versions import describe_installed

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
    check_batch_size(batch_size)
    correct = []
    with torch.inference_mode(), eval_mode(model):
        for start in range(0, len(examples), batch_size):
            batch = examples.select(slice(start, start + batch_size))
            correct.append(answer_correct(next_token_logits(model, batch.input_ids), batch.labels))
    return torch.cat(correct) if correct else torch.zeros(0, dtype=torch.bool)


def step_with_cache(
    model: torch.nn.Module, input_ids: Int[Tensor, "batch new_pos"], cache: object | None
) -> tuple[Float[Tensor, "batch new_pos vocab"], object]:
    """One incremental step: logits of the new tokens and the updated Hugging Face KV cache."""
    if isinstance(model, PreTrainedModel):
        output = model(input_ids=input_ids, past_key_values=cache, use_cache=True)
        return output.logits, output.past_key_values
    # TransformerBridge's manual KV-cache entry point (TransformerLens 4.x).
    return model(input_ids, return_type="logits_and_cache", past_key_values=cache, use_cache=True)


def _decode(
    model: torch.nn.Module, examples: TokenizedExamples, max_new_tokens: int, use_cache: bool
) -> Int[Tensor, "example pos"]:
    """Greedy continuations, each step from the KV cache (``use_cache``) or from a forward over the whole prefix."""
    width = int(examples.prompt_lengths.max()) + max_new_tokens
    tokens = torch.full((len(examples), width), examples.pad_token_id, dtype=torch.long)
    with torch.inference_mode():
        for prompt_length in examples.prompt_lengths.unique().tolist():
            rows = torch.nonzero(examples.prompt_lengths == prompt_length).squeeze(1)
            generated = examples.input_ids[rows, :prompt_length]
            logits, cache = (
                step_with_cache(model, generated, None) if use_cache else (next_token_logits(model, generated), None)
            )
            finished = torch.zeros(len(rows), dtype=torch.bool)
            for _ in range(max_new_tokens):
                predicted = torch.where(finished, examples.pad_token_id, logits[:, -1].argmax(dim=-1))
                generated = torch.cat([generated, predicted[:, None]], dim=1)
                finished |= predicted == examples.eos_token_id
                if finished.all():
                    break
                if use_cache:
                    logits, cache = step_with_cache(model, predicted[:, None], cache)
                else:
                    logits = next_token_logits(model, generated)
            tokens[rows, : generated.shape[1]] = generated
    return tokens


def _generated_positions(
    examples: TokenizedExamples, tokens: Int[Tensor, "example pos"]
) -> Bool[Tensor, "example pos"]:
    """Positions holding a generated token: from the prompt's end up to and including the first EOS, at most
    ``width - max(prompt_lengths)`` of them (the layout of :func:`greedy_complete`)."""
    positions = torch.arange(tokens.shape[1])
    max_new_tokens = tokens.shape[1] - int(examples.prompt_lengths.max())
    starts = examples.prompt_lengths[:, None]
    after_prompt = (positions[None, :] >= starts) & (positions[None, :] < starts + max_new_tokens)
    eos_so_far = torch.cumsum((tokens == examples.eos_token_id) & after_prompt, dim=1)
    return after_prompt & ((eos_so_far == 0) | ((eos_so_far == 1) & (tokens == examples.eos_token_id)))


def is_greedy_continuation(
    model: torch.nn.Module, examples: TokenizedExamples, tokens: Int[Tensor, "example pos"]
) -> bool:
    """Does every generated token of ``tokens`` equal the argmax of one uncached forward over ``tokens``?

    ``tokens`` is laid out as :func:`greedy_complete` returns it.

    A token counts as the argmax when its logit is within float tolerance of the maximum (``sqrt(eps)`` of the
    logits' dtype, relative to the largest logit), so rounding differences between the cached and the uncached path
    do not count as disagreement, while a broken cache (which changes the tokens outright) does.
    """
    with torch.inference_mode():
        logits = next_token_logits(model, tokens)[:, :-1]
    generated = _generated_positions(examples, tokens)[:, 1:]
    chosen = logits.gather(-1, tokens[:, 1:, None]).squeeze(-1)
    best = logits.max(dim=-1).values
    tolerance = torch.finfo(logits.dtype).eps ** 0.5 * best.abs().clamp(min=1.0)
    return bool(((chosen >= best - tolerance) | ~generated).all())


class KvCacheMismatch(UserWarning):
    """Cached greedy decoding disagreed with an uncached forward; decoding fell back to the uncached path."""


def greedy_complete(
    model: torch.nn.Module, examples: TokenizedExamples, max_new_tokens: int
) -> Int[Tensor, "example pos"]:
    """Greedy continuations of the prompts of ``examples``, batched with a KV cache that is checked, not trusted.

    Returns ``[example, max(prompt_lengths) + max_new_tokens]`` ids: each prompt, then its generated tokens up to
    and including its EOS, then pad. Rows with the same prompt length decode together, so no row needs padding or
    an attention mask while it decodes.

    The cached result is checked with one uncached forward (:func:`is_greedy_continuation`, about the cost of
    teacher forcing). If the cache gave other tokens, as TransformerLens 4.3's bridge does under transformers 5.24+,
    a :class:`KvCacheMismatch` warning names the installed versions and the batch decodes again without the cache
    (about 10x slower on the zoo's SCAN model), so the result is right under every version.
    """
    with eval_mode(model):
        tokens = _decode(model, examples, max_new_tokens, use_cache=True)
        if is_greedy_continuation(model, examples, tokens):
            return tokens
        warnings.warn(
            f"cached greedy decoding of {type(model).__name__} disagrees with an uncached forward under "
            f"{describe_installed()}; decoding without the KV cache instead (slower, same answers). "
            'Fix: pip install "transformers<5.24", or `make install`, which installs requirements.lock',
            KvCacheMismatch,
            stacklevel=2,
        )
        return _decode(model, examples, max_new_tokens, use_cache=False)


def greedy_correct(
    model: torch.nn.Module, examples: TokenizedExamples, batch_size: int = DEFAULT_BATCH_SIZE
) -> Bool[Tensor, " example"]:
    """Per example: does greedy decoding from the prompt reproduce the completion and then EOS exactly?"""
    check_batch_size(batch_size)
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

    ``subtasks`` gives each example one label or a list of labels (an example counts once in every subtask it lists,
    e.g. SCAN's ``primitives`` column). Columns: ``subtask``, ``examples``, ``correct``, ``accuracy`` (0..1).

    Example:
        >>> accuracy_by_subtask(torch.tensor([True, False]), [["add", "add", "mul"], ["add"]]).to_dict("records")[1]
        {'subtask': 'add', 'examples': 2, 'correct': 1, 'accuracy': 0.5}
    """
    frame = pd.DataFrame({"correct": correct.numpy()})
    groups = [("all", frame["correct"])]
    if subtasks is not None:
        if len(subtasks) != len(frame):
            raise ValueError(f"got {len(subtasks)} subtask labels for {len(frame)} examples; pass one per example")
        frame["subtask"] = list(subtasks)
        exploded = frame.explode("subtask").dropna(subset=["subtask"])
        exploded = exploded[~exploded.reset_index().duplicated(["index", "subtask"]).to_numpy()]  # a label listed twice
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
