"""Untrusted files: mask files and mask / probe checkpoints whose header or bytes were damaged or tampered with give
one clear error and load nothing; user files are read with safetensors and JSON only, never with pickle."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from conftest import VOCAB, boot_native
from safetensors import safe_open
from safetensors.torch import save_file

import modmask_lens
from modmask_lens import (
    MaskConfig,
    MaskFileError,
    MaskSet,
    MaskTrainer,
    ModelMismatch,
    SubtaskData,
    TrainConfig,
    load_masks,
    save_masks,
)
from modmask_lens.core.checkpoint import CHECKSUM_FIELD, METADATA_KEY, content_sha256
from modmask_lens.masks.training import CHECKPOINT_FILE
from modmask_lens.probes import ProbeConfig, ProbeData, ProbeTrainer
from modmask_lens.probes.training import CHECKPOINT_FILE as PROBE_CHECKPOINT_FILE

HOOK_NAME = "blocks.0.hook_resid_post"


@pytest.fixture(scope="module")
def bridge():
    torch.manual_seed(0)
    return boot_native()


@pytest.fixture(scope="module")
def data():
    input_ids = torch.randint(0, VOCAB, (8, 6), generator=torch.Generator().manual_seed(0))
    labels = torch.full_like(input_ids, -100)
    labels[:, 4:] = input_ids[:, 4:]
    return SubtaskData("files", input_ids, labels)


def read(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    with safe_open(str(path), framework="pt") as handle:
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118 (safe_open is not iterable)
        return tensors, json.loads(handle.metadata()[METADATA_KEY])


def rewrite(path: Path, header: str, tensors: dict[str, torch.Tensor] | None = None) -> None:
    """Replace the file's JSON header by ``header`` (raw text) and optionally its tensors, as a tamperer would."""
    save_file(tensors if tensors is not None else read(path)[0], str(path), metadata={METADATA_KEY: header})


def edited(change: Callable[[dict], None]) -> Callable[[Path], None]:
    """A tampering that edits the decoded header with ``change`` and writes it back (keeping the tensors)."""

    def tamper(path: Path) -> None:
        tensors, metadata = read(path)
        change(metadata)
        rewrite(path, json.dumps(metadata), tensors)

    return tamper


def flip_byte(index: int) -> Callable[[Path], None]:
    """A tampering that inverts the file's byte at ``index``: 3 lies in the header length, -8 in the low mantissa
    byte of the last-but-one float32 (the value stays finite)."""

    def tamper(path: Path) -> None:
        content = bytearray(path.read_bytes())
        content[index] ^= 0xFF
        path.write_bytes(bytes(content))

    return tamper


def non_finite_logit(path: Path) -> None:
    """A NaN logit with a recomputed checksum: a deliberate edit, not line noise."""
    tensors, metadata = read(path)
    first = min(tensors)
    tensors[first] = tensors[first].clone()
    tensors[first].view(-1)[0] = float("nan")
    rewrite(path, json.dumps(metadata | {CHECKSUM_FIELD: content_sha256(tensors, metadata)}), tensors)


def duplicate_name_key(path: Path) -> None:
    """The header with a second ``name`` key appended: plain JSON would keep the last one."""
    tensors, metadata = read(path)
    rewrite(path, json.dumps(metadata)[:-1] + ', "name": "walk"}', tensors)


def replaced_by_a_folder(path: Path) -> None:
    path.unlink()
    path.mkdir()


MASK_FILE_CASES = {
    "header_is_a_list": (lambda path: rewrite(path, "[1, 2]"), MaskFileError, "not a modmask-lens/mask file"),
    "header_is_a_string": (lambda path: rewrite(path, '"mask"'), MaskFileError, "not a modmask-lens/mask file"),
    "header_is_not_json": (lambda path: rewrite(path, '{"format": '), MaskFileError, "not valid JSON"),
    "header_nested_100000_deep": (
        lambda path: rewrite(path, "[" * 100_000 + "]" * 100_000),
        MaskFileError,
        "not valid JSON",
    ),
    "format_missing": (edited(lambda m: m.pop("format")), MaskFileError, "not a modmask-lens/mask file"),
    "name_is_a_number": (edited(lambda m: m.update(name=7)), MaskFileError, "'name' must be a str"),
    "mask_config_is_a_list": (
        edited(lambda m: m.update(mask_config=[1])),
        MaskFileError,
        "'mask_config' must be a dict",
    ),
    "mask_config_has_unknown_keys": (
        edited(lambda m: m["mask_config"].update(evil="__import__('os')")),
        MaskFileError,
        "mask_config is invalid",
    ),
    "init_logit_left_to_the_library": (
        edited(lambda m: m["mask_config"].update(init_logit=None)),
        MaskFileError,
        "leaves init_logit to the library",
    ),
    "units_is_an_object": (edited(lambda m: m.update(units={})), MaskFileError, "'units' must be a list"),
    "model_is_a_string": (edited(lambda m: m.update(model="gpt2")), MaskFileError, "'model' must be a dict"),
    "library_version_is_a_number": (
        edited(lambda m: m.update(library_version=1)),
        MaskFileError,
        "'library_version' must be a str",
    ),
    "other_major_version": (
        edited(lambda m: m.update(library_version="99.0.0")),
        MaskFileError,
        "another major version",
    ),
    "wrong_fingerprint": (
        edited(lambda m: m["model"].update(weights_sha256="0" * 64)),
        ModelMismatch,
        "weights_sha256 differ",
    ),
    "fingerprint_removed": (edited(lambda m: m["model"].pop("weights_sha256")), ModelMismatch, "weights_sha256 differ"),
    "other_granularity_same_logits": (
        edited(lambda m: m["mask_config"].update(granularity="head")),
        MaskFileError,
        "wrong granularity",
    ),
    "corrupted_tensor_bytes": (flip_byte(-8), MaskFileError, "checksum"),
    "corrupted_header_length": (flip_byte(3), MaskFileError, "not a readable safetensors file"),
    "truncated": (
        lambda path: path.write_bytes(path.read_bytes()[:-7]),
        MaskFileError,
        "not a readable safetensors file",
    ),
    "non_finite_logit": (non_finite_logit, MaskFileError, "not finite"),
    # Once accepted (issue #20): the checksum covered the tensors only, and a deleted checksum skipped the check.
    "checksum_removed": (edited(lambda m: m.pop(CHECKSUM_FIELD)), MaskFileError, "carries no content_sha256"),
    "checksum_removed_and_logits_flipped": (
        lambda path: (flip_byte(-8)(path), edited(lambda m: m.pop(CHECKSUM_FIELD))(path)),
        MaskFileError,
        "carries no content_sha256",
    ),
    "name_edited": (edited(lambda m: m.update(name="walk")), MaskFileError, "tensors or header do not match"),
    "train_config_edited": (
        edited(lambda m: m["train_config"].update(steps=99)),
        MaskFileError,
        "tensors or header do not match",
    ),
    "history_edited": (
        edited(lambda m: m.update(history=[{"step": 1}])),
        MaskFileError,
        "tensors or header do not match",
    ),
    "duplicate_header_key": (duplicate_name_key, MaskFileError, "not valid JSON"),
    "a_folder_instead_of_the_file": (replaced_by_a_folder, MaskFileError, "is a folder, not a file"),
}


@pytest.mark.parametrize("case", sorted(MASK_FILE_CASES))
def test_a_damaged_or_tampered_mask_file_gives_one_clear_error(case, bridge, tmp_path):
    tamper, error, message = MASK_FILE_CASES[case]
    masks = MaskSet.for_bridge(bridge, MaskConfig(), name="files")
    path = save_masks(masks, tmp_path / "files.safetensors")
    assert load_masks(path, bridge).name == "files"
    tamper(path)
    with pytest.raises(error, match=message) as raised:
        load_masks(path, bridge)
    assert str(path) in str(raised.value) or error is ModelMismatch
    assert "\n" not in str(raised.value)


CHECKPOINT_CASES = {
    "step_is_a_string": (edited(lambda m: m.update(step="3")), "'step' must be a int"),
    "step_is_a_boolean": (edited(lambda m: m.update(step=True)), "'step' must be a int"),
    "tasks_hold_a_number": (edited(lambda m: m.update(tasks=[3])), r"\(a task\): header field 'prefix'"),
    # The checksum covers the header, so an edit inside a task's mask header is refused before it is read.
    "task_mask_header_tampered": (
        edited(lambda m: m["tasks"][0]["mask"].update(units=None)),
        "tensors or header do not match",
    ),
    "corrupted_optimiser_state": (flip_byte(-8), "checksum"),
    "run_fingerprint_edited": (
        edited(lambda m: m["tasks"][0]["fingerprint"].update(data="0" * 64)),
        "tensors or header do not match",
    ),
}


@pytest.mark.parametrize("case", sorted(CHECKPOINT_CASES))
def test_a_tampered_mask_checkpoint_is_refused_before_anything_resumes(case, bridge, data, tmp_path):
    tamper, message = CHECKPOINT_CASES[case]
    config = TrainConfig(steps=2, batch_size=4, n_samples=2, checkpoint_every=1)
    MaskTrainer(bridge, [data], train_config=config, checkpoint_dir=tmp_path, progress=False).train()
    tamper(tmp_path / CHECKPOINT_FILE)
    with pytest.raises(MaskFileError, match=message):
        MaskTrainer(bridge, [data], train_config=config, checkpoint_dir=tmp_path, progress=False)


@pytest.mark.parametrize(
    "tamper, message",
    [
        (edited(lambda m: m.update(hook_names=HOOK_NAME)), "'hook_names' must be a list"),
        (lambda path: rewrite(path, "{" * 50_000), "not valid JSON"),
        (flip_byte(-8), "checksum"),
    ],
    ids=["hook_names_is_a_string", "header_nested_deep", "corrupted_bytes"],
)
def test_a_tampered_probe_checkpoint_is_refused(tamper, message, bridge, data, tmp_path):
    probe_data = ProbeData.from_subtasks([data], vocab_size=VOCAB)
    config = ProbeConfig(steps=1, batch_size=4, checkpoint_every=1, n_experts=2)
    ProbeTrainer(bridge, [HOOK_NAME], probe_data, config, checkpoint_dir=tmp_path, progress=False).train()
    tamper(tmp_path / PROBE_CHECKPOINT_FILE)
    with pytest.raises(MaskFileError, match=message):
        ProbeTrainer(bridge, [HOOK_NAME], probe_data, config, checkpoint_dir=tmp_path, progress=False)


def test_no_user_file_is_read_with_pickle():
    """Mask, probe and checkpoint files (the zoo trainer's included), and everything else a user passes in, are
    safetensors and JSON: nothing in the package reads or writes a pickle."""
    package = Path(modmask_lens.__file__).parent
    pickle_readers = re.compile(r"import (c?pickle|dill|joblib)|pickle\.loads?\(|allow_pickle=True|weights_only=False")
    readers = sorted(
        str(path.relative_to(package))
        for path in package.rglob("*.py")
        if pickle_readers.search(path.read_text(encoding="utf-8"))
    )
    assert readers == []
    torch_pickles = [
        line
        for path in package.rglob("*.py")
        for line in path.read_text(encoding="utf-8").splitlines()
        if "torch.load(" in line or "torch.save(" in line
    ]
    assert torch_pickles == []
