"""What a mask training run is: the fingerprint its checkpoint and its mask files carry, and the comparison a resume
makes.

A fingerprint is a dict of named fields, each a plain JSON value: ``model`` (adapter, processing mode, dimensions and
SHA-256 of the weights), ``data`` (SHA-256 of the subtask's token ids and labels), ``mask_config`` and
``train_config`` (the settings that decide the result, :meth:`TrainConfig.deciding_fields`) and ``objective`` (what
the masks keep). A new ingredient of a run is one more key here; resumes then compare it too.
"""

from __future__ import annotations

import json

from modmask_lens.core.data import SubtaskData
from modmask_lens.masks.config import NEURON_MASK_OF_OLD_FILES, MaskConfig, TrainConfig
from modmask_lens.masks.identity import MaskOrigin, model_differences
from modmask_lens.masks.model_config import comparable_models
from modmask_lens.masks.objectives import AnswerCrossEntropy, Objective

RESTART_HINT = "set it back to resume, or start over with --restart (restart=True in Python)"
TRAIN_SETTINGS_OF_OLD_RUNS: dict[str, object] = {
    "loss_increase_per": "token",
    "complement_loss_fraction": None,
    "heads_estimated_per_step": "every head, each chunk a fixed share by model order (before session 10)",
}
"""Train settings added after checkpoints were first written, with the value that reproduces a run written before
them: a checkpoint without the setting resumes under that value (and only under it). A value no setting can take
(Bernoulli head runs before the share of heads per step: no current setting deals the heads as they did) names what
the old run did, so that the refusal says why."""
MASK_SETTINGS_OF_OLD_RUNS: dict[str, object] = {"neuron_mask": NEURON_MASK_OF_OLD_FILES}
"""Mask settings added after checkpoints were first written, with the value of the runs written before them (as
:data:`TRAIN_SETTINGS_OF_OLD_RUNS`): a neuron mask masked each neuron's ``W_in``/``W_gate`` column and ``W_out`` row."""
NEURON_ONLY_MASK_SETTINGS = ("neuron_mask",)
"""Mask settings that only neuron masks without ``roles`` read: left out of the fingerprint of every other run."""
BERNOULLI_ONLY_SETTINGS = ("heads_estimated_per_step",)
"""Train settings that only Bernoulli head masks read: left out of the fingerprint of every other run, so that a
run they do not change resumes whatever their value."""


class RunMismatch(ValueError):
    """A checkpoint was written by another run than the one resuming it (another model, data or settings)."""


def run_fingerprint(
    origin: MaskOrigin,
    data: SubtaskData,
    mask_config: MaskConfig,
    train_config: TrainConfig,
    objective: Objective = AnswerCrossEntropy(),
) -> dict[str, object]:
    """The fingerprint of training one subtask's mask: field name -> JSON value (see the module docstring).

    Example:
        >>> import torch
        >>> from modmask_lens.testing.tiny_models import tiny_bridge
        >>> data = SubtaskData("copy", torch.tensor([[1, 2, 2]]), torch.tensor([[-100, -100, 2]]))
        >>> fields = run_fingerprint(MaskOrigin.of(tiny_bridge()), data, MaskConfig(), TrainConfig())
        >>> sorted(fields)
        ['data', 'mask_config', 'model', 'objective', 'train_config']
    """
    deciding = train_config.deciding_fields()
    # the unit in effect, not as written: "auto" trains weight masks as "token" did, and without the loss
    # constraint no unit applies (runs written then recorded "token")
    deciding["loss_increase_per"] = (
        train_config.loss_unit(mask_config.granularity) if train_config.max_loss_increase is not None else "token"
    )
    if mask_config.sampler != "bernoulli":
        deciding = {key: value for key, value in deciding.items() if key not in BERNOULLI_ONLY_SETTINGS}
    mask_settings = mask_config.to_dict()
    if mask_config.granularity != "neuron" or mask_config.roles is not None:  # then neuron_mask selects nothing
        mask_settings = {key: value for key, value in mask_settings.items() if key not in NEURON_ONLY_MASK_SETTINGS}
    return {
        "model": {"adapter": origin.adapter, "processing_mode": origin.mode} | origin.model,
        "data": data.fingerprint(),
        "mask_config": mask_settings,
        "train_config": deciding,
        "objective": objective.to_dict(),
    }


def check_same_run(saved: object, current: dict[str, object], source: str, subtask: str) -> None:
    """Raise :class:`RunMismatch` naming the first field (and the first setting inside it) in which the
    checkpoint's run ``saved`` differs from this run's ``current``, with the fix.

    Example:
        >>> check_same_run({"data": "ab"}, {"data": "cd"}, "ckpt", "copy")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        modmask_lens.masks.run_fingerprint.RunMismatch: ckpt: subtask 'copy' was trained on other data ...
    """
    if not isinstance(saved, dict):
        raise RunMismatch(
            f"{source}: subtask {subtask!r} has no run fingerprint (the checkpoint predates them), so it cannot be "
            "checked against this run; start over with --restart (restart=True in Python)"
        )
    for field, old_settings in (
        ("train_config", TRAIN_SETTINGS_OF_OLD_RUNS),
        ("mask_config", MASK_SETTINGS_OF_OLD_RUNS),
    ):
        if isinstance(saved.get(field), dict) and isinstance(current.get(field), dict):
            old_defaults = {key: value for key, value in old_settings.items() if key in current[field]}
            saved = saved | {field: old_defaults | saved[field]}
    if isinstance(saved.get("model"), dict) and isinstance(current.get("model"), dict):
        # a checkpoint written before model records held the config resumes, its weights compared (with a warning)
        saved_model, current_model = comparable_models(
            saved["model"], current["model"], f"{source} (subtask {subtask!r})"
        )
        saved, current = saved | {"model": saved_model}, current | {"model": current_model}
    for field in [*current, *sorted(saved.keys() - current.keys())]:
        before, now = saved.get(field), current.get(field)
        if _as_json(before) != _as_json(now):
            raise RunMismatch(f"{source}: subtask {subtask!r} {_difference(field, before, now)}; {RESTART_HINT}")


def _difference(field: str, before: object, now: object) -> str:
    """How the checkpoint's ``field`` differs from this run's, in words."""
    if field == "data":
        return "was trained on other data (token ids or labels differ)"
    if isinstance(before, dict) and isinstance(now, dict):
        if field == "model":
            differing = model_differences(before, now, ("in the checkpoint", "in this run"))
            return f"was trained on another model ({', '.join(differing)} differ)"
        keys = [key for key in [*now, *sorted(before.keys() - now.keys())] if _entry(before, key) != _entry(now, key)]
        setting = {"train_config": "", "mask_config": "mask config "}.get(field, f"{field} ")
        key, others = keys[0], keys[1:]
        also = f"; also differ: {', '.join(others)}" if others else ""
        return (
            f"was trained with {setting}{key}={before.get(key, '(not set)')!r}, this run has "
            f"{key}={now.get(key, '(not set)')!r} ({field}{also})"
        )
    return f"was trained with another {field} ({before!r}, this run has {now!r})"


def _entry(fields: dict, key: str) -> str | None:
    """``fields[key]`` as canonical JSON, ``None`` when the key is absent (absent and ``null`` differ)."""
    return _as_json(fields[key]) if key in fields else None


def _as_json(value: object) -> str:
    """``value`` as canonical JSON, so that tuples and the lists they become in a file compare equal."""
    return json.dumps(value, sort_keys=True)
