"""A ground-truth case: a model whose subtasks' weights are known, and that known answer per mask unit.

Every case of the ground-truth suite (planted subnetworks, compiled tracr programs) is one :class:`GroundTruthCase`.
The answer is given per mask unit, in the shapes of :attr:`modmask_lens.MaskSet.logits`, so a trained mask's
logits and the answer line up element by element at the granularity they were trained at.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from modmask_lens.core.data import SubtaskData
from modmask_lens.masks.config import MaskConfig
from modmask_lens.masks.mask_set import units_for

UnitTruth = dict[str, Tensor]
"""Mask unit name (as in ``MaskSet.units``) -> bool tensor of the unit's logit shape: True where the subtask uses
the element. Units absent from the dict are not scored (e.g. norm gains that every subtask needs)."""


@dataclass
class GroundTruthCase:
    """A model, its subtasks, and which units each subtask uses, at each granularity the case answers.

    Attributes:
        name: unique case name, e.g. ``"disconnected/seed0"`` or ``"tracr/reverse"``.
        family: ``"disconnected"``, ``"entangled-neuron"``, ``"entangled-head"``, ``"partly-shared"``,
            ``"per-weight"`` or ``"tracr"``.
        bridge: the model, a ``TransformerBridge``.
        train: subtask name -> data the mask trains on.
        test: subtask name -> held-out data (the same examples as ``train`` where the task has no more).
        truth: subtask name -> granularity (``"weight"``, ``"neuron"``, ``"head"``) -> :data:`UnitTruth`.
        unique: whether the known answer is the only sufficient one (measured; see the case's card).
        card: measurements that back the answer (necessity and sufficiency of each planted set), free-form.
    """

    name: str
    family: str
    bridge: nn.Module
    train: dict[str, SubtaskData]
    test: dict[str, SubtaskData]
    truth: dict[str, dict[str, UnitTruth]]
    unique: bool
    card: dict = field(default_factory=dict)


def check_truth(case: GroundTruthCase, granularity: str, mask_configs: Sequence[MaskConfig] = ()) -> None:
    """Refuse an answer key that does not line up with the masks the suite trains at ``granularity``: a subtask
    without data, a unit none of the masks has, or an answer whose shape or dtype is not the unit's logits' (bool).

    Args:
        case: the case whose key is checked.
        granularity: the granularity of the key.
        mask_configs: the configurations the methods train masks with (default: ``MaskConfig(granularity=...)``).

    Raises:
        ValueError: naming the case, subtask and unit, and the shape expected.
    """
    shapes = {
        unit.name: tuple(unit.shape)
        for config in mask_configs or (MaskConfig(granularity=granularity),)
        for unit in units_for(case.bridge, config)
    }
    for subtask, by_granularity in case.truth.items():
        if subtask not in case.train or subtask not in case.test:
            raise ValueError(
                f"case {case.name!r}: subtask {subtask!r} has a truth but no train or test data; "
                f"its data names: {sorted(case.train)}"
            )
        for unit, answer in by_granularity.get(granularity, {}).items():
            if unit not in shapes:
                raise ValueError(
                    f"case {case.name!r}: the {granularity} truth of {subtask!r} names {unit!r}, which "
                    "no method's masks have; their units begin "
                    f"{', '.join(list(shapes)[:6])}"
                )
            if tuple(answer.shape) != shapes[unit] or answer.dtype != torch.bool:
                raise ValueError(
                    f"case {case.name!r}: the {granularity} truth of {subtask!r} for {unit!r} is {answer.dtype} "
                    f"{tuple(answer.shape)}; give a bool tensor of the unit's logit shape {shapes[unit]}"
                )
