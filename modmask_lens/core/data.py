"""A subtask as token ids (what masks, probes and ground-truth cases train and score on), and the checks that a
model can run it."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch
from jaxtyping import Int
from torch import Tensor

from modmask_lens.core.bridge import Bridge
from modmask_lens.core.encoding import IGNORE_INDEX, encode_pairs
from modmask_lens.core.pairs import FIELDS, PairSource, load_pairs


@dataclass(frozen=True)
class SubtaskData:
    """A subtask as token ids: the prompt, answer and EOS of each example, right-padded.

    ``labels`` follow the Hugging Face convention: aligned with ``input_ids`` (the model's logits at position t are
    scored against ``labels[:, t + 1]``) and :data:`IGNORE_INDEX` everywhere except the answer tokens and the EOS.
    Padding on the right of a causal model needs no attention mask.

    Attributes:
        name: the subtask's name; masks and results are labelled with it.
        input_ids: ``[example, pos]`` token ids.
        labels: ``[example, pos]`` target ids or :data:`IGNORE_INDEX`.
    """

    name: str
    input_ids: Int[Tensor, "example pos"]
    labels: Int[Tensor, "example pos"]

    def __post_init__(self) -> None:
        if self.input_ids.shape != self.labels.shape:
            raise ValueError(
                f"subtask {self.name!r}: input_ids {tuple(self.input_ids.shape)} and labels "
                f"{tuple(self.labels.shape)} differ in shape; encode prompts and answers together"
            )
        if self.input_ids.shape[0] == 0:
            raise ValueError(f"subtask {self.name!r} is empty; give it at least one example")
        scored = self.labels[:, 1:] != IGNORE_INDEX
        if not bool(scored.any(dim=1).all()):
            raise ValueError(
                f"subtask {self.name!r}: some examples have no answer token to score (labels all {IGNORE_INDEX} "
                "after position 0); every example needs a non-empty completion"
            )

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    @classmethod
    def from_pairs(
        cls, name: str, source: PairSource, tokenizer, fields: tuple[str, str] = FIELDS, part: str | None = None
    ) -> SubtaskData:
        """A subtask from (prompt, completion) pairs, a JSONL file or a ``datasets.Dataset``, for any tokenizer.

        Encoded as ``prompt [SEP] completion EOS`` (SEP only if the tokenizer has one); the completion and the EOS
        are scored. For BPE tokenizers such as GPT-2's, start completions with the space they need (``" Paris"``).
        ``fields`` names the prompt and completion fields of JSONL and Dataset sources (the built-in tasks use
        ``("question", "answer")``). ``part`` picks the rows of one part of an exported JSONL file
        (:func:`~modmask_lens.core.pairs.load_pairs`). Words the tokenizer does not know are refused, not read as
        ``<unk>``.

        Example:
            >>> capitals = SubtaskData.from_pairs("capitals", [("The capital of France is", " Paris"),
            ...                                                 ("The capital of Italy is", " Rome")],
            ...                                   bridge.tokenizer)                                # doctest: +SKIP
        """
        if tokenizer is None:
            raise ValueError(
                f"subtask {name!r}: the model has no tokenizer; pass the tokenizer its ids come from "
                "(for a model folder: save it there with tokenizer.save_pretrained(folder))"
            )
        prompts, completions = load_pairs(source, fields, part)
        examples = encode_pairs(tokenizer, prompts, completions)
        return cls(name, examples.input_ids, examples.labels)

    @classmethod
    def concatenate(cls, name: str, parts: list[SubtaskData]) -> SubtaskData:
        """All examples of ``parts`` as one subtask (e.g. the control task of a mask set), padded to one width.

        Positions after an example's answer are never scored and, the model being causal, never seen by scored
        positions, so the added padding only has to be a valid token id: 0.
        """
        width = max(part.input_ids.shape[1] for part in parts)

        def pad(tensor: Tensor, value: int) -> Tensor:
            return torch.nn.functional.pad(tensor, (0, width - tensor.shape[1]), value=value)

        return cls(
            name,
            torch.cat([pad(part.input_ids, 0) for part in parts]),
            torch.cat([pad(part.labels, IGNORE_INDEX) for part in parts]),
        )

    def fingerprint(self) -> str:
        """SHA-256 of the token ids and labels (shapes included): what a checkpoint records of its data."""
        digest = hashlib.sha256()
        for tensor in (self.input_ids, self.labels):
            digest.update(str(tuple(tensor.shape)).encode())
            digest.update(tensor.detach().to("cpu", torch.int64).contiguous().numpy().tobytes())
        return digest.hexdigest()

    def batch(self, indices: Int[Tensor, " batch"]) -> tuple[Int[Tensor, "batch pos"], Int[Tensor, "batch pos"]]:
        """The examples at ``indices``, trimmed to the longest scored position among them."""
        labels = self.labels[indices]
        length = _scored_length(labels)
        return self.input_ids[indices, :length], labels[:, :length]

    def check_fits(self, bridge: Bridge) -> None:
        """Raise ``ValueError`` unless the model can run this subtask: same device, ids in its vocabulary, and
        every scored example within its context length ``cfg.n_ctx``.

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
        check_context(bridge, _scored_length(self.labels), f"subtask {self.name!r}")


def _scored_length(labels: Int[Tensor, "example pos"]) -> int:
    """Positions up to and including the last scored label of any example (the rest is padding)."""
    return int((labels != IGNORE_INDEX).any(dim=0).nonzero().max()) + 1


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
