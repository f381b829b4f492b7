"""Model folders (``save_pretrained``, a compiled tracr program's) are written whole or not at all: a write that fails
after the config and some weights are down leaves the old folder as it was and no half-written folder at its place.
Before, they were written in place, and a process killed midway left a folder that looked like a model."""

from __future__ import annotations

import dataclasses
import importlib
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import GPT2Config, GPT2LMHeadModel

from experiments.groundtruth import plant_training
from experiments.zoo import train as zoo_train
from experiments.zoo.recipes import Architecture, recipe
from modmask_lens import export_masked_model
from modmask_lens.groundtruth.plants import PlantSpec
from modmask_lens.groundtruth.tracr_cases import TRACR_DIR, load_tracr_case, tracr_program_names
from modmask_lens.masks.mask_set import MaskSet
from modmask_lens.testing.tiny_models import TINY_HF_SIZES, boot_tiny

torch.set_num_threads(1)

tracr_cases = importlib.import_module("modmask_lens.groundtruth.tracr_cases")  # the package's tracr_cases: a function


class _Killed(Exception):
    """Stands for the process being killed while it writes the folder."""


def _fail(*args, **kwargs):
    raise _Killed


def _export_failing_at_the_tokenizer(folder: Path, scratch: Path, monkeypatch) -> None:
    bridge = boot_tiny(GPT2LMHeadModel(GPT2Config(**TINY_HF_SIZES)), scratch)
    monkeypatch.setattr(type(bridge.tokenizer), "save_pretrained", _fail)  # after the model's config and weights
    export_masked_model(bridge, MaskSet.for_bridge(bridge).binary(), folder)


def _train_zoo_model_failing_at_the_card(folder: Path, scratch: Path, monkeypatch) -> None:
    tiny = dataclasses.replace(
        recipe("modadd"),
        architecture=Architecture("llama", 1, 32, 4, n_key_value_heads=2),
        steps=2,
        warmup_steps=1,
        eval_every=2,
        checkpoint_every=2,
    )
    monkeypatch.setattr(zoo_train, "write_card", _fail)  # after the model and the tokenizer
    zoo_train.train(tiny, folder, scratch, "test run")


def _train_plant_failing_at_its_measurements(folder: Path, scratch: Path, monkeypatch) -> None:
    monkeypatch.setattr(plant_training, "MAX_STEPS", 1)
    monkeypatch.setattr(plant_training, "_measured", _fail)  # reads the saved model, before the card
    plant_training.train_plant(PlantSpec("entangled-head", "add-mul"), folder, log=lambda message: None)


def _write_tracr_program(folder: Path) -> None:
    """Write the shipped ``hist`` program to ``folder`` as the tracr build does (its compiled result: the shipped
    files)."""
    shipped = TRACR_DIR / "hist"
    reference = load_file(shipped / "reference.safetensors")
    tracr_cases.write_tracr_program(
        folder,
        load_file(shipped / "weights.safetensors"),
        reference["input_ids"],
        reference["output_ids"],
        reference["output_logits"],
        json.loads((shipped / "card.json").read_text()),
    )


def _build_tracr_program_failing_at_the_reference(folder: Path, scratch: Path, monkeypatch) -> None:
    def save_all_but_the_reference(tensors: dict, path: Path) -> None:
        if "input_ids" in tensors:  # the reference, after the weights
            raise _Killed
        save_file(tensors, path)

    monkeypatch.setattr(tracr_cases, "save_file", save_all_but_the_reference)
    _write_tracr_program(folder)


FOLDER_WRITERS = {  # each writes the model folder it is given (with a scratch folder for what else it writes)
    "export_masked_model": _export_failing_at_the_tokenizer,
    "zoo training": _train_zoo_model_failing_at_the_card,
    "plant training": _train_plant_failing_at_its_measurements,
    "tracr build": _build_tracr_program_failing_at_the_reference,
}


@pytest.mark.parametrize("write", FOLDER_WRITERS.values(), ids=FOLDER_WRITERS)
def test_a_model_folder_write_that_fails_midway_leaves_the_old_folder_whole(write, tmp_path, monkeypatch):
    parent = tmp_path / "models"
    folder = parent / "model"
    folder.mkdir(parents=True)
    old = {"config.json": b"old config", "model.safetensors": b"old weights", "card.json": b"old card"}
    for name, content in old.items():
        (folder / name).write_bytes(content)
    with pytest.raises(_Killed):
        write(folder, tmp_path / "scratch", monkeypatch)
    assert {file.name: file.read_bytes() for file in folder.iterdir()} == old
    assert sorted(parent.iterdir()) == [folder]


def test_an_export_replaces_an_earlier_export_whole(tmp_path):
    folder = tmp_path / "exports" / "model"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("old config")
    (folder / "model-00001-of-00002.safetensors").write_bytes(b"a shard the new export does not have")
    bridge = boot_tiny(GPT2LMHeadModel(GPT2Config(**TINY_HF_SIZES)), tmp_path / "source")
    export_masked_model(bridge, MaskSet.for_bridge(bridge).binary(), folder)
    assert not (folder / "model-00001-of-00002.safetensors").exists()
    tokens = torch.arange(8)[None]
    exported, source = (GPT2LMHeadModel.from_pretrained(path) for path in (folder, tmp_path / "source"))
    assert torch.equal(exported(tokens).logits, source(tokens).logits)  # a mask that keeps every weight
    assert sorted(folder.parent.iterdir()) == [folder]


def test_a_tracr_program_written_over_an_earlier_one_replaces_it_whole_and_loads(tmp_path):
    folder = tmp_path / "programs" / "mine"
    folder.mkdir(parents=True)
    (folder / "card.json").write_text("old card")
    (folder / "notes.txt").write_text("a file the new build does not write")
    _write_tracr_program(folder)
    assert sorted(file.name for file in folder.iterdir()) == [
        "card.json",
        "reference.safetensors",
        "weights.safetensors",
    ]
    assert tracr_program_names(folder.parent) == ["mine"]
    written, shipped = load_tracr_case("mine", folder.parent), load_tracr_case("hist")
    assert torch.equal(written.train["mine"].labels, shipped.train["hist"].labels)
    tokens = shipped.train["hist"].input_ids
    assert torch.equal(written.bridge(tokens), shipped.bridge(tokens))
