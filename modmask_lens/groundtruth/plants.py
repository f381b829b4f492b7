"""The shipped planted models: what each one is, and loading it as a :class:`GroundTruthCase`.

Every plant is a 2-layer Llama-style model (RMSNorm, rotary positions, gated MLP, no biases; d_model 32, 8 heads of
width 4, 64 MLP neurons) trained on one subtask pair of :mod:`~modmask_lens.groundtruth.digits` so that each
subtask's planted set (:mod:`~modmask_lens.groundtruth.plan`) is sufficient and its removal breaks the subtask.
The weights live in ``plants/<name>/`` with a ``card.json`` of measurements; ``python -m
experiments.groundtruth.plant_training`` reproduces them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from modmask_lens.adapters import adapter_for
from modmask_lens.adapters.base import model_shape
from modmask_lens.core.atomic_files import is_write_leftover
from modmask_lens.core.booting import boot_transformers
from modmask_lens.core.data import SubtaskData
from modmask_lens.groundtruth.case import GroundTruthCase
from modmask_lens.groundtruth.digits import PAIRS, digit_symbols, digit_tokenizer, pair_subtasks, subtask_data
from modmask_lens.groundtruth.plan import (
    PlantPlan,
    disconnected_plan,
    head_split_plan,
    neuron_split_plan,
    per_weight_plan,
)
from modmask_lens.groundtruth.truth import plant_truth

PLANTS_DIR = Path(__file__).parent / "plants"
CARD_FILE = "card.json"
PARTLY_SHARED_FRACTION = 0.25  # a quarter of every layer's neurons serve both subtasks
PLANT_ARCHITECTURE = {
    "family": "llama",
    "n_layers": 2,
    "d_model": 32,
    "n_heads": 8,
    "n_key_value_heads": None,
    "d_mlp": 64,
    "n_positions": 8,
}
"""The shipped plants' architecture, as their cards record it; a plant of another size is named by what differs."""


def spelled_architecture(architecture: dict) -> dict:
    """A plant's architecture (as its card records it) with the builder's defaults spelled out: ``n_key_value_heads``
    None is ``n_heads``, ``d_mlp`` None is ``4 * d_model``, so equal models compare equal."""
    fields = dict(architecture)
    if fields.get("n_key_value_heads") is None:
        fields["n_key_value_heads"] = fields["n_heads"]
    if fields.get("d_mlp") is None:
        fields["d_mlp"] = 4 * fields["d_model"]
    return fields


def architecture_changes(architecture: dict) -> dict:
    """The fields of a plant's architecture (as its card records it) that build another model than the shipped
    plants' (:data:`PLANT_ARCHITECTURE`), defaults spelled out (:func:`spelled_architecture`)."""
    shipped = spelled_architecture(PLANT_ARCHITECTURE)
    return {key: value for key, value in spelled_architecture(architecture).items() if shipped.get(key) != value}


@dataclass(frozen=True)
class PlantSpec:
    """One planted model: its family, subtask pair and seed (which also draws the plan)."""

    family: str
    pair: str
    seed: int = 0

    @property
    def name(self) -> str:
        return f"{self.family}-{self.pair}"

    @property
    def subtasks(self) -> tuple[str, str]:
        return pair_subtasks(self.pair)

    def primed(self, subtask: str) -> bool:
        """Whether ``subtask`` writes its digits primed: the second subtask of a disconnected plant."""
        return self.family == "disconnected" and subtask == self.subtasks[1]


FAMILIES = ("disconnected", "entangled-neuron", "entangled-head", "partly-shared", "per-weight")
PLANTS = {spec.name: spec for spec in (PlantSpec(family, pair) for family in FAMILIES for pair in PAIRS)}
"""The shipped plants by name."""


def plant_spec(name: str, seed: int = 0) -> PlantSpec:
    """The plant ``FAMILY-PAIR`` of any family and any pair of digit functions, e.g. ``"entangled-head-add-sub"``.

    Raises:
        ValueError: when ``name`` starts with no family of :data:`FAMILIES` or its pair is not two functions.
    """
    family = next((family for family in FAMILIES if name.startswith(f"{family}-")), None)
    if family is None:
        raise ValueError(f"plant {name!r} names no family: FAMILY-PAIR with FAMILY one of {list(FAMILIES)}")
    pair = name.removeprefix(f"{family}-")
    pair_subtasks(pair)  # raises where the pair is not two different functions
    return PlantSpec(family, pair, seed)


def plant_subtasks(spec: PlantSpec, tokenizer: PreTrainedTokenizerBase) -> dict[str, SubtaskData]:
    """The plant's two subtasks, all 100 examples each."""
    return {name: subtask_data(name, tokenizer, spec.primed(name)) for name in spec.subtasks}


def plant_plan(spec: PlantSpec, bridge: nn.Module) -> PlantPlan:
    """The plan of ``spec`` on a bridge of the plant's architecture (drawn from ``spec.seed``)."""
    dims = model_shape(bridge)
    names = spec.subtasks
    if spec.family == "disconnected":
        tokenizer = digit_tokenizer()
        tokens = {}
        for name in names:
            owned = torch.zeros(dims.d_vocab, dtype=torch.bool)
            owned[tokenizer.convert_tokens_to_ids([name, *digit_symbols(spec.primed(name))])] = True
            tokens[name] = owned
        return disconnected_plan(dims, tokens, spec.seed)
    if spec.family in ("entangled-neuron", "partly-shared"):
        shared = PARTLY_SHARED_FRACTION if spec.family == "partly-shared" else 0.0
        return neuron_split_plan(dims, names, spec.seed, shared)
    if spec.family == "entangled-head":
        return head_split_plan(dims, names, spec.seed)
    if spec.family == "per-weight":
        return per_weight_plan(dims, adapter_for(bridge).tensor_specs(bridge), names, spec.seed)
    raise ValueError(f"unknown plant family {spec.family!r}; choose from {FAMILIES}")


def available_plants() -> list[str]:
    """Names of the shipped plants (folders with a card, less what a killed write left), sorted."""
    return sorted(path.parent.name for path in PLANTS_DIR.glob(f"*/{CARD_FILE}") if not is_write_leftover(path.parent))


def load_plant(name: str, directory: Path | None = None) -> GroundTruthCase:
    """A shipped plant (or the plant folder ``directory``, trained elsewhere) as a ground-truth case, booted offline
    on CPU. The family, pair and seed, and so the plan the answer key is drawn from, are read from the plant's card;
    a plant of another seed than 0, or of another architecture than the shipped ones' (:data:`PLANT_ARCHITECTURE`),
    is named by what differs: ``family/pair@seedN``, ``family/pair@d_model=64,d_mlp=128``.

    Example:
        >>> case = load_plant("disconnected-add-mul")                                   # doctest: +SKIP
        >>> case.card["measurements"]["add"]["kept_only_accuracy"]                    # doctest: +SKIP
        1.0
    """
    if directory is None and name not in PLANTS:
        raise KeyError(f"no plant {name!r}; known: {', '.join(PLANTS)}")
    folder = Path(directory) if directory is not None else PLANTS_DIR / name
    if not (folder / CARD_FILE).exists():
        raise FileNotFoundError(
            f"{folder} holds no trained plant; train it with python -m experiments.groundtruth.plant_training {name}"
        )
    card = json.loads((folder / CARD_FILE).read_text())
    try:
        spec = plant_spec(f"{card['family']}-{card['pair']}", int(card["seed"]))
    except ValueError as error:
        raise ValueError(f"{folder / CARD_FILE}: {error}") from error
    resized = [f"{key}={value}" for key, value in architecture_changes(card["architecture"]).items()]
    tags = [f"seed{spec.seed}"] * bool(spec.seed) + resized
    bridge = boot_transformers(str(folder), device="cpu")
    _check_card_architecture(folder, card["architecture"], bridge)
    data = plant_subtasks(spec, AutoTokenizer.from_pretrained(str(folder)))
    return GroundTruthCase(
        name=f"{spec.family}/{spec.pair}" + (f"@{','.join(tags)}" if tags else ""),
        family=spec.family,
        bridge=bridge,
        train=data,
        test=data,
        truth=plant_truth(bridge, plant_plan(spec, bridge)),
        unique=card["unique"],
        card=card,
    )


def _check_card_architecture(folder: Path, architecture: dict, bridge: nn.Module) -> None:
    """Refuse a plant whose card records another size than its weights have: the case is named, and its answer key
    drawn, from the card, so a card copied beside other weights would give a misleading name or a key of the wrong
    shape."""
    shape = model_shape(bridge)
    booted = {
        "n_layers": shape.n_layers,
        "d_model": shape.d_model,
        "n_heads": shape.n_heads,
        "n_key_value_heads": shape.n_kv_heads,
        "d_mlp": shape.d_mlp,
    }
    carded = {key: value for key, value in spelled_architecture(architecture).items() if key in booted}
    differ = {key: (carded[key], booted[key]) for key in carded if carded[key] != booted[key]}
    if differ:
        raise ValueError(
            f"{folder / CARD_FILE} records another architecture than the weights beside it (card, weights): {differ}; "
            "retrain the plant, or write the card that came with these weights"
        )


def plant_cases(names: list[str] | None = None) -> list[GroundTruthCase]:
    """The shipped plants (all, or ``names``) as ground-truth cases."""
    return [load_plant(name) for name in (names or available_plants())]
