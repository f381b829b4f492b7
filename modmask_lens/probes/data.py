"""What a probe reads and predicts: activations of a frozen model at hook points, and a target per example.

Activations are streamed batch by batch with ``run_with_cache(names_filter=...)``: only the probed hooks are cached,
at the probed position, and nothing else is kept.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from modmask_lens.core.bridge import Bridge, eval_mode
from modmask_lens.core.data import SubtaskData, check_context, check_device, tensor_bytes
from modmask_lens.core.encoding import IGNORE_INDEX
from modmask_lens.core.hook_layout import position_major

TARGETS = ("answer", "subtask")


@dataclass(frozen=True)
class ProbeData:
    """Examples for a probe: token ids, the position to read, the target class and the subtask of each example.

    Attributes:
        input_ids: ``[example, pos]`` right-padded prompts and answers.
        positions: ``[example]`` the position whose activations are read: where the model predicts the first
            answer token (the last prompt token of causal data, the first ``[MASK]`` of masked-LM data), or, for
            data without answers (:meth:`SubtaskData.from_texts`), the last real token.
        targets: ``[example]`` class ids: the first answer token, or the subtask index.
        subtasks: ``[example]`` subtask index into ``subtask_names``.
        subtask_names: the subtasks' names.
        n_classes: number of target classes (the vocabulary, or the number of subtasks).
        attention_mask: ``[example, pos]`` 1 for real tokens, 0 for padding, passed to the model (encoder data);
            ``None`` for right-padded causal data.
    """

    input_ids: Int[Tensor, "example pos"]
    positions: Int[Tensor, " example"]
    targets: Int[Tensor, " example"]
    subtasks: Int[Tensor, " example"]
    subtask_names: tuple[str, ...]
    n_classes: int
    attention_mask: Int[Tensor, "example pos"] | None = None

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def fingerprint(self) -> str:
        """SHA-256 of everything a probe is trained on (ids, read positions, targets, subtasks and their names, the
        number of classes, the attention mask): what a probe checkpoint records of its data."""
        digest = hashlib.sha256(f"{self.subtask_names}|{self.n_classes}".encode())
        tensors = [self.input_ids, self.positions, self.targets, self.subtasks]
        digest.update(tensor_bytes(tensors + ([] if self.attention_mask is None else [self.attention_mask])))
        return digest.hexdigest()

    @classmethod
    def from_subtasks(
        cls, subtasks: Sequence[SubtaskData], target: str = "answer", vocab_size: int | None = None
    ) -> ProbeData:
        """Examples of several subtasks, labelled with the subtask they come from.

        Args:
            subtasks: one :class:`SubtaskData` per subtask.
            target: ``answer`` (predict the first answer token; needs ``vocab_size``) or ``subtask``.
            vocab_size: the model's vocabulary size (``bridge.cfg.d_vocab``), for ``answer`` targets.
        """
        if target not in TARGETS:
            raise ValueError(f"target {target!r}: choose one of {TARGETS}")
        if target == "answer" and vocab_size is None:
            raise ValueError("answer targets need vocab_size (bridge.cfg.d_vocab)")
        if not subtasks:
            raise ValueError("no subtasks given: a probe needs the examples of at least one subtask")
        names = [part.name for part in subtasks]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"subtask names {repeated} repeat; give each subtask its own name")
        merged = SubtaskData.concatenate("probe", list(subtasks))
        scored = merged.labels != IGNORE_INDEX
        scored[:, : merged.label_shift] = False  # labels[t] is predicted at position t - label_shift
        answered = scored.any(dim=1)
        if target == "answer" and not bool(answered.all()):
            raise ValueError(
                f"answer targets need an answer in every example; {int((~answered).sum())} have none "
                "(SubtaskData.from_texts data): use target='subtask'"
            )
        first_answer = scored.int().argmax(dim=1)
        if merged.attention_mask is None:
            last_token = torch.full_like(first_answer, merged.input_ids.shape[1] - 1)
        else:
            last_token = merged.attention_mask.shape[1] - 1 - merged.attention_mask.flip(1).int().argmax(dim=1)
        positions = torch.where(answered, first_answer - merged.label_shift, last_token)
        answers = merged.labels.gather(1, first_answer[:, None]).squeeze(1)
        if target == "answer" and int(answers.max()) >= vocab_size:
            raise ValueError(
                f"answer token {int(answers.max())} is outside vocab_size {vocab_size}; pass the model's "
                "bridge.cfg.d_vocab"
            )
        subtask_index = torch.cat([torch.full((len(part),), index) for index, part in enumerate(subtasks)])
        return cls(
            merged.input_ids,
            positions,
            answers if target == "answer" else subtask_index,
            subtask_index,
            tuple(names),
            vocab_size if target == "answer" else len(subtasks),
            merged.attention_mask,
        )

    def select(self, indices: Int[Tensor, " batch"]) -> ProbeData:
        """The examples at ``indices``."""
        return ProbeData(
            self.input_ids[indices],
            self.positions[indices],
            self.targets[indices],
            self.subtasks[indices],
            self.subtask_names,
            self.n_classes,
            None if self.attention_mask is None else self.attention_mask[indices],
        )


def read_activations(
    bridge: Bridge,
    hook_names: Sequence[str],
    input_ids: Int[Tensor, "batch pos"],
    positions: Int[Tensor, " batch"],
    attention_mask: Int[Tensor, "batch pos"] | None = None,
) -> Float[Tensor, "batch d_in"]:
    """The activations of ``hook_names`` at each example's position, concatenated, in float32 on the model's device
    (no gradient, nothing else kept; the model runs in eval mode, without dropout). Attention patterns and scores
    are read at the example's query position: every head's attention from it; a hook that declares its position
    axis (``HookPoint.pos_dim``) at that axis (:func:`~modmask_lens.core.hook_layout.position_major`).
    ``attention_mask`` (:attr:`ProbeData.attention_mask`) is passed to the model where given.

    Raises:
        KeyError: naming the hook points that do not exist, and some that do.
        ValueError: ``input_ids`` are not on the model's device, or longer than its context; a hook's activation is
            not laid out per example and position (a router's ``[batch * pos, experts]``, a rotary table's ``[1,
            pos, d]``), naming the hooks that can be read.
    """
    available = set(bridge.hook_dict)
    missing = [name for name in hook_names if name not in available]
    if missing:
        examples = ", ".join(sorted(name for name in available if name.endswith("hook_resid_post"))[:3])
        raise KeyError(f"no hook point {missing}; use names such as {examples}")
    check_device(bridge, input_ids, "the probe data")
    check_context(bridge, input_ids.shape[1], "the probe data")
    with torch.no_grad(), eval_mode(bridge):
        padding = {} if attention_mask is None else {"attention_mask": attention_mask}
        _, cache = bridge.run_with_cache(input_ids, names_filter=list(hook_names), **padding)
    rows = torch.arange(input_ids.shape[0], device=input_ids.device)
    positions = positions.to(input_ids.device)
    read = []
    for name in hook_names:
        activations = position_major(bridge, name, cache[name], *input_ids.shape)
        read.append(activations[rows, positions].reshape(len(rows), -1).float())
    return torch.cat(read, dim=-1)
