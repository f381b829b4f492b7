"""A subtask as token ids (what masks, probes and ground-truth cases train and score on), and the checks that a
model can run it."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Int
from torch import Tensor

from modmask_lens.core.bridge import Bridge
from modmask_lens.core.encoding import (
    IGNORE_INDEX,
    check_known_words,
    encode_masked_sentences,
    encode_pairs,
    encode_texts,
)
from modmask_lens.core.pairs import FIELDS, PairSource, load_pairs

OPTIONAL_FIELDS = ("attention_mask", "foils", "classes")
"""Per-example tensors a subtask carries when its objective needs them (see :mod:`modmask_lens.masks.objectives`)."""


@dataclass(frozen=True)
class Batch:
    """Some examples of a subtask, trimmed to their width: what one training step or evaluation reads.

    Attributes:
        input_ids: ``[batch, pos]`` token ids.
        labels: ``[batch, pos]`` answer ids or :data:`IGNORE_INDEX` (scored at ``logits[:, t - label_shift]``).
        attention_mask: ``[batch, pos]`` 1 for real tokens, 0 for padding; ``None`` for right-padded causal data.
        foils: ``[batch, pos]`` the wrong token a logit difference compares each answer with, or IGNORE_INDEX.
        classes: ``[batch]`` class of each example, for a probe.
        label_shift: 1 for next-token labels (causal), 0 for masked-LM labels (scored at their own position).
    """

    input_ids: Int[Tensor, "batch pos"]
    labels: Int[Tensor, "batch pos"]
    attention_mask: Int[Tensor, "batch pos"] | None = None
    foils: Int[Tensor, "batch pos"] | None = None
    classes: Int[Tensor, " batch"] | None = None
    label_shift: int = 1

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def split(self, sections: int) -> list[Batch]:
        """``sections`` contiguous chunks (``Tensor.tensor_split``), as the mask samples of a step use them."""
        parts = {name: value.tensor_split(sections) for name, value in vars(self).items() if isinstance(value, Tensor)}
        return [
            dataclasses.replace(self, **{name: chunks[index] for name, chunks in parts.items()})
            for index in range(sections)
        ]

    @staticmethod
    def joined(batches: Sequence[Batch]) -> Batch:
        """``batches`` (of one width, as :meth:`split` gives them) one after another along the example axis."""
        first = batches[0]
        if len(batches) == 1:
            return first
        return dataclasses.replace(
            first,
            **{
                name: torch.cat([getattr(batch, name) for batch in batches])
                for name, value in vars(first).items()
                if isinstance(value, Tensor)
            },
        )

    def forward_kwargs(self) -> dict:
        """Keyword arguments of the model's forward: the attention mask, when there is one."""
        return {} if self.attention_mask is None else {"attention_mask": self.attention_mask}


@dataclass(frozen=True)
class SubtaskData:
    """A subtask as token ids: the prompt, answer and EOS of each example, right-padded.

    ``labels`` follow the Hugging Face convention: aligned with ``input_ids`` (the model's logits at position t are
    scored against ``labels[:, t + 1]``) and :data:`IGNORE_INDEX` everywhere except the answer tokens and the EOS.
    Padding on the right of a causal model needs no attention mask; an encoder (BERT) sees the padding on both
    sides of every token, so encoder data carries ``attention_mask`` and the model is run with it.

    Attributes:
        name: the subtask's name; masks and results are labelled with it.
        input_ids: ``[example, pos]`` token ids.
        labels: ``[example, pos]`` target ids or :data:`IGNORE_INDEX`. Sentences without answers (for the
            hidden-state and probe objectives) have none scored; otherwise every example needs one.
        attention_mask: ``[example, pos]`` 1 for real tokens, 0 for padding (``None``: right-padded causal data).
        foils: ``[example, pos]`` for a logit difference: the wrong token each answer token is compared with, at the
            answer's position in ``labels``, :data:`IGNORE_INDEX` elsewhere.
        classes: ``[example]`` class ids, for a linear probe's objective.
        label_shift: 1 (causal: ``logits[:, t]`` predicts ``labels[:, t + 1]``) or 0 (masked LM:
            ``logits[:, t]`` predicts ``labels[:, t]``, the answers sit at the ``[MASK]`` positions).
    """

    name: str
    input_ids: Int[Tensor, "example pos"]
    labels: Int[Tensor, "example pos"]
    attention_mask: Int[Tensor, "example pos"] | None = None
    foils: Int[Tensor, "example pos"] | None = None
    classes: Int[Tensor, " example"] | None = None
    label_shift: int = 1

    def __post_init__(self) -> None:
        for field_name in ("input_ids", "labels", *OPTIONAL_FIELDS):
            value = getattr(self, field_name)
            if value is not None and field_name != "attention_mask" and value.dtype != torch.long:
                raise ValueError(
                    f"subtask {self.name!r}: {field_name} has dtype {value.dtype}; token ids, labels, foils and "
                    "classes must be torch.long (int64): convert with .long()"
                )
        for field_name in ("labels", "attention_mask", "foils"):
            value = getattr(self, field_name)
            if value is not None and value.shape != self.input_ids.shape:
                raise ValueError(
                    f"subtask {self.name!r}: input_ids {tuple(self.input_ids.shape)} and {field_name} "
                    f"{tuple(value.shape)} differ in shape; encode prompts and answers together"
                )
        if self.input_ids.shape[0] == 0:
            raise ValueError(f"subtask {self.name!r} is empty; give it at least one example")
        if self.classes is not None and self.classes.shape != self.input_ids.shape[:1]:
            raise ValueError(
                f"subtask {self.name!r}: classes {tuple(self.classes.shape)} must hold one class per example "
                f"({self.input_ids.shape[0]})"
            )
        if self.label_shift not in (0, 1):
            raise ValueError(f"label_shift {self.label_shift} must be 1 (causal) or 0 (masked LM)")
        scored = self.labels[:, self.label_shift :] != IGNORE_INDEX
        if bool(scored.any()) and not bool(scored.any(dim=1).all()):
            raise ValueError(
                f"subtask {self.name!r}: some examples have no answer token to score (labels all {IGNORE_INDEX} "
                f"after position {self.label_shift - 1 if self.label_shift else 'none'}); every example needs a "
                "non-empty completion"
            )
        if not bool(scored.any()) and self.attention_mask is None:
            raise ValueError(
                f"subtask {self.name!r} has no answer token to score (labels all {IGNORE_INDEX}); "
                "give completions, or for sentences without answers build it with SubtaskData.from_texts"
            )
        if self.attention_mask is not None and not bool(self.attention_mask.bool().any(dim=1).all()):
            empty = int((~self.attention_mask.bool().any(dim=1)).nonzero()[0])
            raise ValueError(
                f"subtask {self.name!r}: example {empty} attends to no position (its attention_mask row is all 0); "
                "drop empty examples or encode them with the tokenizer, which marks every real token with 1"
            )
        if self.attention_mask is not None and bool((self.labels != IGNORE_INDEX)[~self.attention_mask.bool()].any()):
            example = int(((self.labels != IGNORE_INDEX) & ~self.attention_mask.bool()).any(dim=1).nonzero()[0])
            raise ValueError(
                f"subtask {self.name!r}: example {example} has a scored label where its attention_mask is 0 (padding); "
                "batches are cut after the last attended position, so that label would never be scored: mark every "
                "token of the prompt and the answer with 1 (the tokenizer does), or set the label to "
                f"{IGNORE_INDEX}"
            )
        if self.foils is not None and bool(((self.foils != IGNORE_INDEX) & (self.labels == IGNORE_INDEX)).any()):
            example, position = ((self.foils != IGNORE_INDEX) & (self.labels == IGNORE_INDEX)).nonzero()[0].tolist()
            raise ValueError(
                f"subtask {self.name!r}: example {example} has a foil at position {position}, where its label is "
                f"{IGNORE_INDEX} (not scored); a logit difference compares a foil with the answer token at its "
                "position: put each foil where its answer's label is, as SubtaskData.with_foils does"
            )

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def to(self, device: torch.device | str) -> SubtaskData:
        """The same subtask with every tensor (ids, labels, attention mask, foils, classes) on ``device``."""
        moved = {
            name: getattr(self, name).to(device)
            for name in ("input_ids", "labels", *OPTIONAL_FIELDS)
            if getattr(self, name) is not None
        }
        return dataclasses.replace(self, **moved)

    @classmethod
    def from_pairs(
        cls,
        name: str,
        source: PairSource,
        tokenizer,
        fields: tuple[str, str] = FIELDS,
        part: str | None = None,
        prepend_bos: bool = False,
    ) -> SubtaskData:
        """A subtask from (prompt, completion) pairs, a JSONL file or a ``datasets.Dataset``, for any tokenizer.

        Encoded as ``prompt [SEP] completion EOS`` (SEP only if the tokenizer has one); the completion and the EOS
        are scored. For BPE tokenizers such as GPT-2's, start completions with the space they need (``" Paris"``).
        ``fields`` names the prompt and completion fields of JSONL and Dataset sources (the built-in tasks use
        ``("question", "answer")``). ``part`` picks the rows of one part of an exported JSONL file
        (:func:`~modmask_lens.core.pairs.load_pairs`). Words the tokenizer does not know are refused, not read as
        ``<unk>``. ``prepend_bos=True`` starts every pair with the tokenizer's BOS token, as TransformerLens's
        ``to_tokens`` does: pass it for models pretrained with one (GPT-2, Pythia, Llama), whose first position
        otherwise reads a prompt token where it learned a BOS; the built-in tasks and the zoo models use none.

        Example:
            >>> capitals = SubtaskData.from_pairs("capitals", [("The capital of France is", " Paris"),
            ...                                                 ("The capital of Italy is", " Rome")],
            ...                                   bridge.tokenizer, prepend_bos=True)              # doctest: +SKIP
        """
        if tokenizer is None:
            raise ValueError(
                f"subtask {name!r}: the model has no tokenizer; pass the tokenizer its ids come from "
                "(for a model folder: save it there with tokenizer.save_pretrained(folder))"
            )
        prompts, completions = load_pairs(source, fields, part)
        examples = encode_pairs(tokenizer, prompts, completions, prepend_bos=prepend_bos)
        return cls(name, examples.input_ids, examples.labels, examples.attention_mask)

    @classmethod
    def from_texts(
        cls, name: str, texts: Sequence[str], tokenizer, classes: Sequence[int] | None = None
    ) -> SubtaskData:
        """Sentences without answers, for the hidden-state and probe objectives (e.g. sentence embeddings).

        Each text is encoded with the tokenizer's own special tokens (``[CLS] text [SEP]`` for BERT) and
        right-padded, with an attention mask. ``classes`` gives a probe's class id per text.

        Example:
            >>> sports = SubtaskData.from_texts("sports", ["The match went to extra time.",
            ...                                            "She won the race."], bridge.tokenizer)   # doctest: +SKIP
        """
        if len(texts) < 2:
            raise ValueError(f"subtask {name!r} needs at least 2 texts, got {len(texts)}")
        input_ids, attention_mask = encode_texts(tokenizer, texts)
        return cls(
            name,
            input_ids,
            torch.full_like(input_ids, IGNORE_INDEX),
            attention_mask,
            classes=None if classes is None else torch.tensor(list(classes), dtype=torch.long),
        )

    @classmethod
    def from_masked_sentences(cls, name: str, source: PairSource, tokenizer) -> SubtaskData:
        """A masked-LM subtask: (sentence with the tokenizer's mask token, answer) pairs; the answer's tokens are
        scored at the mask positions (``label_shift=0``), as a BERT-family model is trained.

        Example:
            >>> capitals = SubtaskData.from_masked_sentences("capitals", [("Paris is the capital of [MASK].",
            ...     "france"), ("Rome is the capital of [MASK].", "italy")], bridge.tokenizer)   # doctest: +SKIP
        """
        sentences, answers = load_pairs(source)
        input_ids, labels, attention_mask = encode_masked_sentences(tokenizer, sentences, answers)
        return cls(name, input_ids, labels, attention_mask, label_shift=0)

    def with_foils(self, foils: Sequence[str], tokenizer) -> SubtaskData:
        """The same subtask with one foil per example for a logit difference: the foil's first token is compared
        with the answer's first token (e.g. answer ``" Mary"``, foil ``" John"`` in IOI), so the two must differ
        (answer ``"12"`` and foil ``"13"`` in a character-level vocabulary are refused: both start with ``1``). Words
        the tokenizer does not know are refused, not read as ``<unk>``."""
        if len(foils) != len(self):
            raise ValueError(f"got {len(foils)} foils for {len(self)} examples; give one per example")
        foil_ids = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in foils]
        check_known_words(tokenizer, foils, foil_ids)
        empty = [index for index, ids in enumerate(foil_ids) if not ids]
        if empty:
            raise ValueError(f"foils {empty} encode to no token; give non-empty foils")
        scored = self.labels != IGNORE_INDEX
        scored[:, : self.label_shift] = False
        first = scored.int().argmax(dim=1)
        foil_firsts = torch.tensor([ids[0] for ids in foil_ids], dtype=torch.long, device=self.labels.device)
        answer_firsts = self.labels[torch.arange(len(self)), first]
        same = (foil_firsts == answer_firsts).nonzero().flatten().tolist()
        if same:
            raise ValueError(
                f"the foils of examples {same[:10]} ({len(same)} in all) start with their answer's first token "
                f"(example {same[0]}: foil {foils[same[0]]!r}), and a logit difference compares first tokens only, "
                "so theirs would be 0 whatever the model does: give foils whose first token differs from the answer's"
            )
        grid = torch.full_like(self.labels, IGNORE_INDEX)
        grid[torch.arange(len(self)), first] = foil_firsts
        return dataclasses.replace(self, foils=grid)

    @classmethod
    def concatenate(cls, name: str, parts: list[SubtaskData]) -> SubtaskData:
        """All examples of ``parts`` as one subtask (e.g. the control task of a mask set), padded to one width.

        Positions after an example's answer are never scored and, the model being causal, never seen by scored
        positions, so the added padding only has to be a valid token id: 0.
        """
        width = max(part.input_ids.shape[1] for part in parts)

        def pad(tensor: Tensor, value: int) -> Tensor:
            return torch.nn.functional.pad(tensor, (0, width - tensor.shape[1]), value=value)

        shared = {}
        for field_name, padding in (("attention_mask", 0), ("foils", IGNORE_INDEX), ("classes", None)):
            present = [getattr(part, field_name) is not None for part in parts]
            if any(present) and not all(present):
                raise ValueError(f"some parts of {name!r} have {field_name} and some not; give it to all or none")
            if all(present):
                values = [getattr(part, field_name) for part in parts]
                shared[field_name] = torch.cat(values if padding is None else [pad(value, padding) for value in values])
        shifts = {part.label_shift for part in parts}
        if len(shifts) > 1:
            raise ValueError(f"parts of {name!r} mix causal and masked-LM labels; concatenate one kind only")
        return cls(
            name,
            torch.cat([pad(part.input_ids, 0) for part in parts]),
            torch.cat([pad(part.labels, IGNORE_INDEX) for part in parts]),
            label_shift=shifts.pop(),
            **shared,
        )

    def head(self, count: int) -> SubtaskData:
        """The first ``count`` examples (all of them where the data holds no more), with everything they carry."""
        self._check_count(count)
        return self._rows(slice(count))

    def evenly_spaced(self, count: int) -> SubtaskData:
        """``count`` examples evenly spaced through the data, in order (all of it where it holds no more), with
        everything they carry: a sample across the data's order, so that data ordered by length or difficulty (a
        tracr program's inputs, shortest first) is not judged by its first examples alone.

        Example:
            >>> import torch
            >>> rows = torch.arange(10).view(10, 1).repeat(1, 2)  # example i holds the tokens i, i
            >>> SubtaskData("counting", rows, rows).evenly_spaced(4).input_ids[:, 0].tolist()
            [0, 2, 5, 7]
        """
        self._check_count(count)
        if count >= len(self):
            return self
        return self._rows(torch.arange(count) * len(self) // count)

    def _check_count(self, count: int) -> None:
        """Raise ``ValueError`` unless ``count`` (examples to keep) is at least 1: Python reads ``head(-3)`` as "all
        but the last 3"."""
        if count < 1:
            raise ValueError(f"subtask {self.name!r}: keep at least 1 example, got a count of {count}")

    def _rows(self, rows: slice | Int[Tensor, " row"]) -> SubtaskData:
        """The examples at ``rows``, with everything they carry."""
        return dataclasses.replace(
            self, **{name: value[rows] for name, value in vars(self).items() if isinstance(value, Tensor)}
        )

    def fingerprint(self) -> str:
        """SHA-256 of the token ids and labels (shapes included), and of the attention mask, foils and classes
        when present: what a checkpoint records of its data."""
        digest = hashlib.sha256()
        tensors = [self.input_ids, self.labels] + [
            getattr(self, name) for name in OPTIONAL_FIELDS if getattr(self, name) is not None
        ]
        digest.update(tensor_bytes(tensors))
        if self.label_shift != 1:
            digest.update(f"label_shift={self.label_shift}".encode())
        return digest.hexdigest()

    def batch(self, indices: Int[Tensor, " batch"]) -> tuple[Int[Tensor, "batch pos"], Int[Tensor, "batch pos"]]:
        """Token ids and labels of the examples at ``indices``, trimmed to their width: the last scored position, or
        the last attended one when there is an attention mask (an encoder reads to the end)."""
        length = self._width(indices)
        return self.input_ids[indices, :length], self.labels[indices, :length]

    def examples(self, indices: Int[Tensor, " batch"]) -> Batch:
        """The examples at ``indices`` with everything they carry, trimmed as :meth:`batch`."""
        input_ids, labels = self.batch(indices)
        length = input_ids.shape[1]
        return Batch(
            input_ids,
            labels,
            None if self.attention_mask is None else self.attention_mask[indices, :length],
            None if self.foils is None else self.foils[indices, :length],
            None if self.classes is None else self.classes[indices],
            self.label_shift,
        )

    def _width(self, indices: Int[Tensor, " batch"] | slice = slice(None)) -> int:
        if self.attention_mask is not None:
            return int(self.attention_mask[indices].any(dim=0).nonzero().max()) + 1
        return _scored_length(self.labels[indices])

    def check_fits(self, bridge: Bridge, answers_scored: bool = True) -> None:
        """Raise ``ValueError`` unless the model can run this subtask: same device, ids in its vocabulary, scored
        labels and foils in its output vocabulary (``cfg.d_vocab_out``), every scored example within its context
        length ``cfg.n_ctx``, and, where the labels are scored as answers the model predicts (``answers_scored``; not so
        for objectives that match the full model's activations or outputs), no next-token answers that a
        bidirectional model (``cfg.attention_dir``) reads in its input.

        Example:
            >>> import torch
            >>> from modmask_lens.testing.tiny_models import tiny_bridge
            >>> bridge = tiny_bridge()  # vocabulary 40, context 16
            >>> SubtaskData("small", torch.tensor([[1, 2, 3]]), torch.tensor([[-100, -100, 3]])).check_fits(bridge)
            >>> wide = SubtaskData("wide", torch.tensor([[1, 2, 99]]), torch.tensor([[-100, -100, 99]]))
            >>> wide.check_fits(bridge)  # doctest: +ELLIPSIS
            Traceback (most recent call last):
            ...
            ValueError: subtask 'wide' has token ids outside the model's vocabulary [0, 40); encode it ...
        """
        check_device(bridge, self.input_ids, f"subtask {self.name!r}")
        vocab = bridge.cfg.d_vocab
        if int(self.input_ids.max()) >= vocab or int(self.input_ids.min()) < 0:
            raise ValueError(
                f"subtask {self.name!r} has token ids outside the model's vocabulary [0, {vocab}); "
                "encode it with the model's own tokenizer"
            )
        # Labels index the logits, whose width is the output vocabulary (tracr's differs from its input's).
        outputs = int(getattr(bridge.cfg, "d_vocab_out", 0) or 0)
        outputs = outputs if outputs > 0 else vocab
        # A foil is read from the logits as its answer is: one outside them would index past them, or (a negative
        # id) be clamped to token 0 and compared with it.
        for field_name in ("labels", "foils"):
            ids = getattr(self, field_name)
            if ids is None:
                continue
            read = ids[ids != IGNORE_INDEX]
            if read.numel() and (int(read.min()) < 0 or int(read.max()) >= outputs):
                raise ValueError(
                    f"subtask {self.name!r} has {field_name} outside the model's output vocabulary [0, {outputs}) "
                    f"other than {IGNORE_INDEX} (not scored); encode the answers and foils with the model's own "
                    "tokenizer"
                )
        check_context(bridge, self._width(), f"subtask {self.name!r}")
        scored = self.labels != IGNORE_INDEX
        if (
            answers_scored
            and getattr(bridge.cfg, "attention_dir", "causal") == "bidirectional"
            and self.label_shift > 0
            and bool(scored.any())  # texts without answers (from_texts) score nothing
            and torch.equal(self.labels[scored], self.input_ids[scored])
        ):
            raise ValueError(
                f"subtask {self.name!r} scores each answer token from the position before it, but the model attends "
                "in both directions and so sees the answer in its input (every scored label is the input token at "
                "its own position): for a masked-LM model build the subtask with SubtaskData.from_masked_sentences "
                "(answers at [MASK] positions), or train on hidden states (HiddenState) of SubtaskData.from_texts"
            )


def _scored_length(labels: Int[Tensor, "example pos"]) -> int:
    """Positions up to and including the last scored label of any example (the rest is padding)."""
    return int((labels != IGNORE_INDEX).any(dim=0).nonzero().max()) + 1


def tensor_bytes(tensors: Sequence[Tensor]) -> bytes:
    """Each integer tensor's shape and values (as int64, on CPU), concatenated: what data fingerprints hash."""
    return b"".join(
        str(tuple(tensor.shape)).encode() + tensor.detach().to("cpu", torch.int64).contiguous().numpy().tobytes()
        for tensor in tensors
    )


def check_context(bridge: Bridge, positions: int, what: str) -> None:
    """Raise ``ValueError`` naming the limit if ``positions`` exceed the model's context ``cfg.n_ctx``."""
    n_ctx = getattr(bridge.cfg, "n_ctx", None)
    if n_ctx is not None and positions > n_ctx:
        raise ValueError(
            f"{what} has examples of {positions} positions; the model's context is n_ctx={n_ctx}: "
            "shorten the prompts or drop the longest examples"
        )


def check_device(bridge: Bridge, tensor: Tensor, what: str) -> None:
    """Raise ``ValueError`` naming both devices unless ``tensor`` is on the device of the model's parameters."""
    model_device = next(bridge.parameters()).device
    if tensor.device != model_device:
        raise ValueError(
            f"{what} is on device {tensor.device} but the model is on {model_device}; move one to the other "
            f"(e.g. tensor.to({str(model_device)!r}) or bridge.to({str(tensor.device)!r}))"
        )
