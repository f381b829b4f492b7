"""Prompt/completion pairs as the tensors mask training and evaluation consume.

Text format for decoder-only models: ``[BOS] prompt SEP completion EOS`` (BOS where asked for), right-padded with the
pad id. ``labels`` follow the Hugging Face convention (aligned with ``input_ids``; the model shifts internally, so
``logits[:, t]`` predicts ``labels[:, t + 1]``) and are ``IGNORE_INDEX`` everywhere except the completion tokens and
the EOS. Padding sits on the right of a causal model, so no attention mask is needed.

Tokenizers with a ``[CLS]`` token (the BERT family) wrap text in their own special-token template instead
(``[CLS] prompt [SEP] completion [SEP]``, the final ``[SEP]`` ending the completion), and every encoding for them
carries an attention mask: an encoder attends in both directions, so padding without one changes real tokens' states.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Int
from torch import Tensor
from transformers import PreTrainedTokenizerBase

IGNORE_INDEX = -100  # torch.nn.CrossEntropyLoss's default ignore_index, which Hugging Face models use


@dataclass(frozen=True)
class TokenizedExamples:
    """Tokenized (prompt, completion) pairs.

    ``input_ids``: ``prompt [SEP] completion EOS`` right-padded with ``pad_token_id``.
    ``labels``: the completion and EOS ids at their positions in ``input_ids``, ``IGNORE_INDEX`` elsewhere.
    ``prompt_lengths``: tokens before the completion (prompt plus SEP); greedy decoding starts there.
    ``attention_mask``: 1 on real tokens, 0 on padding, for tokenizers with a ``[CLS]`` template; else ``None``.
    """

    input_ids: Int[Tensor, "example pos"]
    labels: Int[Tensor, "example pos"]
    prompt_lengths: Int[Tensor, " example"]
    pad_token_id: int
    eos_token_id: int
    attention_mask: Int[Tensor, "example pos"] | None = None

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def select(self, indices: Int[Tensor, " subset"] | slice) -> TokenizedExamples:
        """The examples at ``indices`` (a slice or a 1-d index tensor), trimmed to their longest sequence."""
        input_ids, labels = self.input_ids[indices], self.labels[indices]
        positions = torch.arange(1, labels.shape[1] + 1)
        width = int(((labels != IGNORE_INDEX) * positions).max()) if len(labels) else 0
        return TokenizedExamples(
            input_ids=input_ids[:, :width].contiguous(),
            labels=labels[:, :width].contiguous(),
            prompt_lengths=self.prompt_lengths[indices],
            pad_token_id=self.pad_token_id,
            eos_token_id=self.eos_token_id,
            attention_mask=None if self.attention_mask is None else self.attention_mask[indices, :width].contiguous(),
        )


def encode_pairs(
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    completions: Sequence[str],
    max_len: int | None = None,
    prepend_bos: bool = False,
) -> TokenizedExamples:
    """Tokenize pairs as ``prompt [SEP] completion EOS`` (SEP only if the tokenizer has one).

    ``max_len`` pads every row to that many tokens (and raises if a pair is longer); by default rows are padded to
    the longest pair. Works with the task tokenizers and with any Hugging Face tokenizer that has an EOS token. An
    empty prompt needs a SEP token (or a BOS) before its completion (a causal model predicts no token at position 0).
    ``prepend_bos`` starts every pair with the tokenizer's BOS token, as TransformerLens's ``to_tokens`` does for
    models pretrained with one (GPT-2, Pythia, Llama); the task tokenizers and the zoo models train without it.

    >>> from modmask_lens.tasks.vocabulary import character_level_tokenizer
    >>> encode_pairs(character_level_tokenizer("0123456789+"), ["1+2"], ["3"]).input_ids.tolist()
    [[5, 14, 6, 1, 7, 2]]
    """
    if len(prompts) != len(completions):
        raise ValueError(f"got {len(prompts)} prompts but {len(completions)} completions; pass one of each per pair")
    prompt_ids = tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
    completion_ids = tokenizer(list(completions), add_special_tokens=False)["input_ids"]
    check_known_words(tokenizer, [*prompts, *completions], [*prompt_ids, *completion_ids])
    if uses_cls_template(tokenizer):
        if prepend_bos:
            raise ValueError(
                "prepend_bos is for decoder tokenizers: this one wraps every pair in its own [CLS] ... [SEP] "
                "template; leave prepend_bos off"
            )
        empty_completions = [number for number, ids in enumerate(completion_ids, start=1) if not ids]
        if empty_completions:
            raise ValueError(
                f"pair {empty_completions[0]} (and {len(empty_completions) - 1} more) has a completion of no tokens; "
                "the tokenizer's pair template ([CLS] prompt [SEP] completion [SEP]) then holds no completion to "
                "find, and the prompt would be scored in its place: give every pair a completion"
            )
        return _encode_cls_pairs(tokenizer, prompts, completions, max_len)
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no EOS token; set tokenizer.eos_token (it ends every completion)")
    if prepend_bos and tokenizer.bos_token_id is None:
        raise ValueError("prepend_bos: the tokenizer has no BOS token; set tokenizer.bos_token or leave it off")
    pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    start = [tokenizer.bos_token_id] if prepend_bos else []
    separator = [] if tokenizer.sep_token_id is None else [tokenizer.sep_token_id]
    empty_prompts = [number for number, ids in enumerate(prompt_ids, start=1) if not ids]
    if empty_prompts and not (start or separator):
        raise ValueError(
            f"pair {empty_prompts[0]} (and {len(empty_prompts) - 1} more) has a prompt of no tokens and the tokenizer "
            "has no SEP token, so its first answer token would sit at position 0, which no position predicts and "
            "nothing scores: give every pair a prompt, or prepend_bos=True"
        )
    sequences = [
        start + prompt + separator + completion + [tokenizer.eos_token_id]
        for prompt, completion in zip(prompt_ids, completion_ids)
    ]
    longest = max((len(sequence) for sequence in sequences), default=0)
    if max_len is not None and longest > max_len:
        raise ValueError(f"a pair has {longest} tokens but max_len is {max_len}; raise max_len or shorten the pair")
    width = longest if max_len is None else max_len
    input_ids = torch.full((len(sequences), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(sequences), width), IGNORE_INDEX, dtype=torch.long)
    prompt_lengths = torch.tensor([len(start + prompt + separator) for prompt in prompt_ids], dtype=torch.long)
    for row, (sequence, start) in enumerate(zip(sequences, prompt_lengths.tolist())):
        input_ids[row, : len(sequence)] = torch.tensor(sequence)
        labels[row, start : len(sequence)] = input_ids[row, start : len(sequence)]
    return TokenizedExamples(input_ids, labels, prompt_lengths, pad_token_id, tokenizer.eos_token_id)


def check_known_words(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], ids: Sequence[list[int]]) -> None:
    """Raise ``ValueError`` naming the words of ``texts`` that the tokenizer maps to its unknown token (a word-level
    or character-level vocabulary would read them all as the same ``<unk>``). ``ids``: each text's token ids. The
    unknown token written out in a text (``[UNK]``, ``<unk>``) is meant, and the words beside it are checked all the
    same.

    >>> from modmask_lens.tasks.vocabulary import character_level_tokenizer
    >>> tokenizer = character_level_tokenizer("0123456789+")
    >>> check_known_words(tokenizer, ["1+x"], [tokenizer("1+x", add_special_tokens=False)["input_ids"]])
    Traceback (most recent call last):
    ...
    ValueError: 1 text(s) hold words the tokenizer does not know: ['1+x'] (each would read as '<unk>'); ...
    """
    unknown_id = tokenizer.unk_token_id
    if unknown_id is None:
        return
    # Each unknown token written out reads as one unknown id; any more are words the tokenizer does not know
    unknown_texts = [
        text for text, text_ids in zip(texts, ids) if list(text_ids).count(unknown_id) > text.count(tokenizer.unk_token)
    ]
    if not unknown_texts:
        return
    words: dict[str, None] = {}
    for text in unknown_texts:
        for word in " ".join(text.split(tokenizer.unk_token)).split():
            if unknown_id in tokenizer(word, add_special_tokens=False)["input_ids"]:
                words[word] = None
    raise ValueError(
        f"{len(unknown_texts)} text(s) hold words the tokenizer does not know: {list(words)[:10]} (each would read "
        f"as {tokenizer.unk_token!r}); write them in the model's vocabulary (tokenizer.get_vocab())"
    )


def uses_cls_template(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether the tokenizer wraps text as ``[CLS] ... [SEP]`` (the BERT family's template)."""
    if tokenizer.cls_token_id is None or tokenizer.sep_token_id is None:
        return False
    wrapped = tokenizer("", add_special_tokens=True)["input_ids"]
    return (
        wrapped == [tokenizer.cls_token_id, tokenizer.sep_token_id] and tokenizer.cls_token_id != tokenizer.sep_token_id
    )


def _pad_rows(sequences: Sequence[list[int]], pad_token_id: int, width: int) -> tuple[Tensor, Tensor]:
    """Right-padded ``[example, width]`` ids and their attention mask."""
    input_ids = torch.full((len(sequences), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, sequence in enumerate(sequences):
        input_ids[row, : len(sequence)] = torch.tensor(sequence, dtype=torch.long)
        attention_mask[row, : len(sequence)] = 1
    return input_ids, attention_mask


def _pad_id(tokenizer: PreTrainedTokenizerBase) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


def _second_segment_start(special_tokens_mask: Sequence[int]) -> int:
    """Position of the first token of a pair encoding's second segment: the start of its last run of non-special
    tokens (after however many template tokens separate the segments: BERT's one ``[SEP]``, RoBERTa's two)."""
    start = max(position for position, special in enumerate(special_tokens_mask) if not special)
    while start > 0 and not special_tokens_mask[start - 1]:
        start -= 1
    return start


def _encode_cls_pairs(
    tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], completions: Sequence[str], max_len: int | None
) -> TokenizedExamples:
    """Pairs in the tokenizer's own pair template (``[CLS] prompt [SEP] completion [SEP]``, RoBERTa's
    ``<s> prompt </s> </s> completion </s>``); the completion and the template's closing tokens are scored, as the
    completion and EOS are for causal tokenizers."""
    encoded = tokenizer(list(prompts), list(completions), add_special_tokens=True, return_special_tokens_mask=True)
    sequences = encoded["input_ids"]
    prompt_lengths = torch.tensor(
        [_second_segment_start(special) for special in encoded["special_tokens_mask"]], dtype=torch.long
    )
    longest = max((len(sequence) for sequence in sequences), default=0)
    if max_len is not None and longest > max_len:
        raise ValueError(f"a pair has {longest} tokens but max_len is {max_len}; raise max_len or shorten the pair")
    input_ids, attention_mask = _pad_rows(sequences, _pad_id(tokenizer), longest if max_len is None else max_len)
    labels = torch.where(
        (torch.arange(input_ids.shape[1])[None, :] >= prompt_lengths[:, None]) & attention_mask.bool(),
        input_ids,
        IGNORE_INDEX,
    )
    return TokenizedExamples(
        input_ids, labels, prompt_lengths, _pad_id(tokenizer), tokenizer.sep_token_id, attention_mask
    )


def encode_texts(
    tokenizer: PreTrainedTokenizerBase, texts: Sequence[str]
) -> tuple[Int[Tensor, "example pos"], Int[Tensor, "example pos"]]:
    """Texts in the tokenizer's own template (``[CLS] text [SEP]`` for BERT; as they are for GPT-2), right-padded,
    with their attention mask. Words the tokenizer does not know are refused (:func:`check_known_words`)."""
    sequences = tokenizer(list(texts), add_special_tokens=True)["input_ids"]
    check_known_words(tokenizer, texts, sequences)
    return _pad_rows(sequences, _pad_id(tokenizer), max(len(sequence) for sequence in sequences))


def encode_masked_sentences(
    tokenizer: PreTrainedTokenizerBase, sentences: Sequence[str], answers: Sequence[str]
) -> tuple[Int[Tensor, "example pos"], Int[Tensor, "example pos"], Int[Tensor, "example pos"]]:
    """Masked-LM examples: ``input_ids`` and ``attention_mask`` of each sentence in the tokenizer's template, and
    ``labels`` holding the answer's tokens at the sentence's mask-token positions (in order), IGNORE elsewhere.

    Raises:
        ValueError: naming the sentence whose mask-token count differs from its answer's token count, or the words
            the tokenizer does not know (:func:`check_known_words`).
    """
    if tokenizer.mask_token_id is None:
        raise ValueError("the tokenizer has no mask token; masked-LM subtasks need a BERT-family tokenizer")
    sequences = tokenizer(list(sentences), add_special_tokens=True)["input_ids"]
    answer_ids = tokenizer(list(answers), add_special_tokens=False)["input_ids"]
    check_known_words(tokenizer, [*sentences, *answers], [*sequences, *answer_ids])
    input_ids, attention_mask = _pad_rows(sequences, _pad_id(tokenizer), max(len(sequence) for sequence in sequences))
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    for row, answer in enumerate(answer_ids):
        positions = (input_ids[row] == tokenizer.mask_token_id).nonzero().flatten()
        if len(positions) != len(answer) or not answer:
            raise ValueError(
                f"sentence {row + 1} has {len(positions)} {tokenizer.mask_token} token(s) but its answer "
                f"{answers[row]!r} has {len(answer)} token(s); give one {tokenizer.mask_token} per answer token"
            )
        labels[row, positions] = torch.tensor(answer, dtype=torch.long)
    return input_ids, labels, attention_mask


def restrict_labels(examples: TokenizedExamples, completion_offsets: Sequence[int]) -> TokenizedExamples:
    """The same examples with labels kept only at ``completion_offsets`` (0 = first completion token).

    Scores part of an answer, e.g. one pair of the double-addition task (Csordás et al. 2021's per-pair stages:
    the loss falls on that pair's output slot only).
    """
    offsets = torch.arange(examples.labels.shape[1])[None, :] - examples.prompt_lengths[:, None]
    keep = torch.isin(offsets, torch.tensor(list(completion_offsets), dtype=torch.long))
    labels = torch.where(keep, examples.labels, torch.full_like(examples.labels, IGNORE_INDEX))
    return dataclasses.replace(examples, labels=labels)
