"""A model's identity as masks record it: architecture, shapes, a hash of the weights, the settings beyond the weights
that decide what it computes (``config``, :func:`modmask_lens.masks.model_config.model_config`), and the processing
mode.

Tensors of a part the model's checkpoint lacks entirely (a head, such as all-MiniLM-L6-v2's masked-LM head) are
initialised afresh, from a new random draw, at every load: the hash leaves them out and the fingerprint lists them
under ``fresh_tensors``, so that a mask made in one process still loads in the next.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from modmask_lens.adapters import Adapter, TensorSpec, adapter_for, installed_adapters, model_shape
from modmask_lens.adapters.components import BlockComponents
from modmask_lens.adapters.norms import NormLayout
from modmask_lens.core.bridge import Bridge
from modmask_lens.masks.model_config import comparable_models, model_config


def processing_mode(bridge: Bridge) -> str:
    """``raw`` for Hugging Face weights as loaded, ``compat`` after ``enable_compatibility_mode()``.

    Masks learned on compat-processed weights act on folded and centred tensors, so the two are not interchangeable.
    """
    processed = bool(getattr(bridge, "_weights_processed", False) or getattr(bridge, "compatibility_mode", False))
    return "compat" if processed else "raw"


def checkpoint_tensor_names(bridge: Bridge) -> set[str] | None:
    """Names of the tensors in the safetensors checkpoint the bridge was loaded from (read from the files' headers),
    or ``None`` when that is unknown (a native bridge, a hub name, a ``.bin`` checkpoint)."""
    config = getattr(getattr(bridge, "original_model", None), "config", None)
    name_or_path = str(getattr(config, "_name_or_path", "") or "")
    # An empty name (a native bridge, a model built from its config) is no folder: Path("") is the working directory.
    folder = Path(name_or_path) if name_or_path else None
    files = sorted(folder.glob("*.safetensors")) if folder is not None and folder.is_dir() else []
    if not files:
        return None
    names: set[str] = set()
    for file in files:
        with safe_open(str(file), framework="pt") as handle:
            names.update(handle.keys())
    return names


def fresh_tensors(bridge: Bridge, specs: list[TensorSpec]) -> list[str]:
    """Keys of the tensors in ``specs`` that belong to a part of the model its checkpoint lacks entirely (a head the
    checkpoint does not hold, such as an encoder-only checkpoint's masked-LM head): initialised at load time, they
    differ from one load of the same model to the next.

    A part is a top-level submodule of the Hugging Face model (``cls``, ``encoder``; the base model's prefix such as
    ``bert.`` removed on both sides). Parts the checkpoint holds count whole, also where the bridge renames or splits
    their tensors (a fused attention matrix into ``q``, ``k``, ``v``): a missing tensor inside a stored part still
    counts.
    """
    stored = checkpoint_tensor_names(bridge)
    if stored is None:
        return []
    model = bridge.original_model
    prefix = f"{getattr(model, 'base_model_prefix', '') or ''}."

    def part(name: str) -> str:
        return name.replace("._original_component", "").removeprefix(prefix).split(".")[0]

    stored_parts = {part(name) for name in stored}
    # Tied tensors are listed once, under their first name (the embedding, for a tied unembedding).
    parts = {id(parameter): part(name) for name, parameter in model.named_parameters()}
    owners = [parts.get(id(bridge.get_parameter(spec.path))) for spec in specs]  # None: not a model parameter
    return [spec.key for spec, owner in zip(specs, owners) if owner is not None and owner not in stored_parts]


def weights_sha256(bridge: Bridge, specs: list[TensorSpec], skip: frozenset[str] = frozenset()) -> str:
    """SHA-256 over the bytes of every tensor in ``specs`` (in order) but those keyed in ``skip``, read through the
    bridge."""
    digest = hashlib.sha256()
    for spec in specs:
        if spec.key in skip:
            continue
        tensor = bridge.get_parameter(spec.path).detach()
        digest.update(spec.key.encode())
        digest.update(tensor.to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()


def model_dimensions(bridge: Bridge) -> dict:
    """Architecture name, dimensions and weight dtype of a bridge, as plain JSON values."""
    dims = model_shape(bridge)
    return {
        "architecture": str(getattr(bridge.cfg, "architecture", None)),
        "dtype": str(next(bridge.parameters()).dtype).removeprefix("torch."),
        "n_layers": dims.n_layers,
        "d_model": dims.d_model,
        "n_heads": dims.n_heads,
        "n_kv_heads": dims.n_kv_heads,
        "d_head": dims.d_head,
        "d_mlp": dims.d_mlp,
        "d_vocab": dims.d_vocab,
    }


def fingerprint(bridge: Bridge, specs: list[TensorSpec]) -> dict:
    """Everything a mask file checks before it is applied to a model: dimensions, the settings that decide what the
    weights compute (``config``, :func:`model_config`) and a hash of all read weights but those the checkpoint did not
    contain (listed under ``fresh_tensors`` when there are any)."""
    fresh = fresh_tensors(bridge, specs)
    hashed = {"weights_sha256": weights_sha256(bridge, specs, frozenset(fresh))}
    return (
        model_dimensions(bridge)
        | {"config": model_config(bridge)}
        | hashed
        | ({"fresh_tensors": fresh} if fresh else {})
    )


def model_differences(first: dict, second: dict, sides: tuple[str, str] = ("in the mask", "here")) -> list[str]:
    """The model record entries in which ``first`` and ``second`` differ (keys on either side: a record with an entry
    removed must not skip that comparison), sorted; ``config`` with the settings that differ and their values, each
    followed by the words in ``sides`` that say where it was found."""
    differing = []
    for key in sorted(first.keys() | second.keys()):
        if first.get(key) == second.get(key):
            continue
        if key == "config" and isinstance(first.get(key), dict) and isinstance(second.get(key), dict):
            settings = [
                f"{name}: {first[key].get(name, '(not set)')} {sides[0]}, {second[key].get(name, '(not set)')} "
                f"{sides[1]}"
                for name in sorted(first[key].keys() | second[key].keys())
                if first[key].get(name) != second[key].get(name)
            ]
            differing.append(f"config ({'; '.join(settings)})")
        else:
            differing.append(key)
    return differing


class ModelMismatch(ValueError):
    """A mask was made for another model, another weight processing mode, or another adapter."""


@dataclass(frozen=True)
class MaskOrigin:
    """The model a mask was made for: adapter name, processing mode, :func:`fingerprint`, where the model's norms
    sit in front of its readers (``norms``, from its adapter; ``None`` in an origin built by hand without it, which
    analyses read as the adapter class's default, :meth:`norm_layout`), and which blocks run attention heads and which
    an MLP (``components``, from its adapter; ``None`` in an origin built by hand without it, which the circuit graph
    reads as heads and an MLP in every block).

    Mask files store neither ``norms`` nor ``components``: like the tensors' specs, they are read again from the
    bridge a file is loaded onto, which :meth:`check` has proved to be the model the mask was made for; files saved
    before they existed load with them too.
    """

    adapter: str
    mode: str
    model: dict
    norms: NormLayout | None = None
    components: BlockComponents | None = None

    @classmethod
    def of(cls, bridge: Bridge) -> MaskOrigin:
        adapter = adapter_for(bridge)
        specs = adapter.tensor_specs(bridge)
        return cls(
            adapter.name,
            processing_mode(bridge),
            fingerprint(bridge, specs),
            adapter.norm_layout(),
            adapter.block_components(bridge),
        )

    def norm_layout(self) -> NormLayout:
        """The recorded :attr:`norms`, or where none was recorded, the default of the adapter class named
        :attr:`adapter` (pre-norm for the derived adapter, whose placement is read from a model; pre-norm for an
        adapter not installed here)."""
        if self.norms is not None:
            return self.norms
        return installed_adapters().get(self.adapter, Adapter)().norm_layout()

    def check(self, bridge: Bridge, masked: list[TensorSpec], check_weights: bool = True) -> None:
        """Raise :class:`ModelMismatch`, explaining the first difference, unless ``bridge`` is this model.

        Args:
            bridge: the model the mask is about to be applied to.
            masked: the tensors the mask covers; their shapes must match.
            check_weights: also compare the weights hash (costs one pass over the weights).
        """
        current_mode = processing_mode(bridge)
        if self.mode != current_mode:
            fix = (
                "call bridge.enable_compatibility_mode() before applying it"
                if self.mode == "compat"
                else "apply it to a bridge booted without enable_compatibility_mode()"
            )
            raise ModelMismatch(f"the mask was trained on {self.mode} weights but the bridge has {current_mode}; {fix}")
        adapter = adapter_for(bridge)
        if self.adapter not in (adapter.name, *adapter.former_names):
            raise ModelMismatch(
                f"the mask was made with the {self.adapter!r} adapter; this model uses {adapter.name!r}"
            )
        specs = adapter.tensor_specs(bridge)
        shapes = {spec.key: spec.shape for spec in specs}
        made_for = (
            f"{self.model.get('architecture')}, {self.model.get('n_layers')} layers, "
            f"d_model {self.model.get('d_model')}"
        )
        for spec in masked:
            if shapes.get(spec.key) != spec.shape:
                raise ModelMismatch(
                    f"the mask is for another model ({made_for}): {spec.key} is {spec.shape} in the mask but "
                    f"{shapes.get(spec.key)} here; load it onto the model it was trained on"
                )
        current = (
            fingerprint(bridge, specs)
            if check_weights
            else self.model | model_dimensions(bridge) | {"config": model_config(bridge)}
        )
        if self.model.get("dtype", current["dtype"]) != current["dtype"]:
            raise ModelMismatch(
                f"the mask was trained on the {self.model['dtype']} model ({made_for}) but this bridge holds "
                f"{current['dtype']} weights; rounding to another dtype changes every weight, so apply it to the "
                f"{self.model['dtype']} model (e.g. bridge.to(torch.{self.model['dtype']})) or retrain it on this one"
            )
        # Files written before the dtype was recorded lack it (the weights hash still covers it); files written
        # before the config was recorded lack that (comparable_models warns that it went unchecked).
        recorded, current = comparable_models(self.model, current, "the mask")
        differing = [
            difference
            for difference in model_differences(recorded, current)
            if difference != "dtype" or "dtype" in recorded
        ]
        if differing:
            raise ModelMismatch(
                f"the mask is for another model ({made_for}): {', '.join(differing)} differ; load it onto the model "
                f"it was trained on, or retrain it on this one{_added_tensors_hint(differing, specs, bridge)}"
            )


def _added_tensors_hint(differing: list[str], specs: list[TensorSpec], bridge: Bridge) -> str:
    """The other cause of a differing weights hash on a model whose adapter reads tensors beyond
    ``bridge.state_dict()`` (a mixture-of-experts model's batched experts): the hash covers every tensor the adapter
    reads, and earlier versions read fewer of them."""
    if differing != ["weights_sha256"] or {spec.key for spec in specs} <= bridge.state_dict().keys():
        return ""
    return (
        " (a mask saved by an earlier modmask-lens that masked fewer of this mixture-of-experts model's tensors, "
        "such as its expert stacks and their biases, fails here too: retrain it with this version)"
    )
