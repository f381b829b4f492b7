"""Tokenizers for the offline tasks: word-level (SCAN) and character-level (arithmetic, math).

Both are ``tokenizers`` WordLevel models wrapped as ``transformers.PreTrainedTokenizerFast`` so that they save and
load with a model folder. Special tokens come first and have the same ids in every task tokenizer.
"""

from __future__ import annotations

import string
from collections.abc import Sequence

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

PAD_TOKEN, SEP_TOKEN, EOS_TOKEN, UNK_TOKEN = "<pad>", "<sep>", "<eos>", "<unk>"
SPECIAL_TOKENS = (PAD_TOKEN, SEP_TOKEN, EOS_TOKEN, UNK_TOKEN)
# Every printable ASCII character except tab/newline-like whitespace: covers all math question templates.
PRINTABLE_CHARACTERS = "".join(char for char in string.printable if char == " " or not char.isspace())


def _wrap(tokenizer: Tokenizer) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token=PAD_TOKEN,
        sep_token=SEP_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=UNK_TOKEN,
    )


def _vocabulary(symbols: Sequence[str]) -> dict[str, int]:
    if len(set(symbols)) != len(symbols):
        raise ValueError("tokenizer symbols must be unique; remove the repeated ones")
    return {symbol: index for index, symbol in enumerate((*SPECIAL_TOKENS, *symbols))}


def word_level_tokenizer(words: Sequence[str]) -> PreTrainedTokenizerFast:
    """A tokenizer that splits on whitespace and maps each word of ``words`` to one id (specials first).

    >>> word_level_tokenizer(["walk", "I_WALK"])("walk walk")["input_ids"]
    [4, 4]
    """
    tokenizer = Tokenizer(models.WordLevel(_vocabulary(words), unk_token=UNK_TOKEN))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return _wrap(tokenizer)


def character_level_tokenizer(characters: str = PRINTABLE_CHARACTERS) -> PreTrainedTokenizerFast:
    """A tokenizer with one id per character of ``characters`` (spaces included; specials first).

    >>> character_level_tokenizer("0123456789+")("12+3")["input_ids"]
    [5, 6, 14, 7]
    """
    tokenizer = Tokenizer(models.WordLevel(_vocabulary(list(characters)), unk_token=UNK_TOKEN))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tokenizer.decoder = decoders.Fuse()
    return _wrap(tokenizer)
