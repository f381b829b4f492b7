"""Compiled tracr programs as ground-truth cases: shipped TransformerLens weights, their data and the used units.

Each program under ``modmask_lens/groundtruth/tracr/<program>/`` was compiled with tracr and converted by
:mod:`experiments.groundtruth.tracr_build` (run in a separate venv with jax; this module needs neither), which
writes each folder whole through :func:`write_tracr_program`. A folder holds ``weights.safetensors`` (the bridge's
parameters under their ``bridge.state_dict()`` keys), ``reference.safetensors`` (every input and tracr's own outputs
on it) and ``card.json`` (the TransformerLens config, token maps, the program's spaces, the used heads, MLPs and
neurons, and the measurements behind them).

Sequence-to-sequence outputs are scored as next-token answers: the input is ``BOS x_1 .. x_n PAD``, and tracr's
output at position ``t`` (for ``t = 1 .. n``) is the label at ``t + 1``, so that ``score_answers`` compares the
logits at position ``t`` with it. Output ids index the output vocabulary (``cfg.d_vocab_out``), as tracr's unembedding
does; input ids index the input vocabulary (``cfg.d_vocab``), whose id 0 is ``PAD``.

Example:
    >>> case = load_tracr_case("reverse")
    >>> sorted(case.truth["reverse"])
    ['head', 'neuron', 'weight']
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from jaxtyping import Float, Int
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from transformer_lens.model_bridge import TransformerBridge

from modmask_lens.adapters import adapter_for
from modmask_lens.core.atomic_files import is_write_leftover, replace_folder_atomically
from modmask_lens.core.data import SubtaskData
from modmask_lens.core.encoding import IGNORE_INDEX
from modmask_lens.groundtruth.case import GroundTruthCase, UnitTruth
from modmask_lens.masks.binary import BinaryMask
from modmask_lens.masks.config import MaskConfig
from modmask_lens.masks.mask_set import MaskSet, units_for

TRACR_DIR = Path(__file__).parent / "tracr"
"""Folder of the shipped programs, one subfolder per program."""

TRUTH_GRANULARITIES = ("head", "neuron", "weight")

OUTPUT_TIE = 1e-3
"""tracr's two largest output values at a position within this of each other tie: tracr defines no answer there (a
position where the program's value is undefined, such as ``detect_pattern``'s first positions, decodes to all-zero
outputs, whose argmax is float rounding)."""


def tracr_program_names(directory: Path = TRACR_DIR) -> list[str]:
    """Names of the programs in ``directory`` (default: the shipped ones, :data:`TRACR_DIR`): its folders with a
    card, less what a killed write left, sorted.

    Raises:
        ValueError: ``directory`` is not a folder.
    """
    if not Path(directory).is_dir():
        raise ValueError(f"{directory} is not a folder of tracr programs (the --out of the tracr build)")
    return sorted(
        path.name
        for path in Path(directory).iterdir()
        if (path / "card.json").is_file() and not is_write_leftover(path)
    )


def tracr_cases(directory: Path = TRACR_DIR) -> list[GroundTruthCase]:
    """Every program in ``directory`` (default: the shipped ones) as a :class:`GroundTruthCase`
    (see :func:`load_tracr_case`)."""
    return [load_tracr_case(name, directory) for name in tracr_program_names(directory)]


def load_tracr_case(name: str, directory: Path = TRACR_DIR) -> GroundTruthCase:
    """One compiled tracr program: its bridge, data and used units.

    The case has one subtask, named after the program. ``train`` and ``test`` hold the same examples: every input
    up to the program's ``max_seq_len`` (the task has no more). ``truth[name]`` answers at ``head``, ``neuron`` and
    ``weight`` granularity for the default mask kinds; the unembedding is not scored.

    Args:
        name: the program's folder name.
        directory: where its folder lies: the shipped programs (default), or the ``--out`` of
            ``python -m experiments.groundtruth.tracr_build`` for programs built elsewhere.

    Raises:
        ValueError: when ``directory`` holds no program of that name, or its outputs tie at a scored position
            (:func:`check_defined_outputs`; a folder built before the build refused such programs).
    """
    folder = Path(directory) / name
    if not (folder / "card.json").is_file():
        raise ValueError(
            f"no tracr program {name!r} in {directory}; there: {tracr_program_names(directory)}. Build more with "
            "`python -m experiments.groundtruth.tracr_build --out DIR` in the tracr venv (docs/tracr.md)"
        )
    card = json.loads((folder / "card.json").read_text())
    unneeded = [
        label
        for kind, label in (("head", "heads"), ("mlp_layer", "MLP layers"))
        if not card["each_used_unit_necessary"][kind]
    ]
    if unneeded:
        warnings.warn(
            f"tracr program {name!r}: some used {' and '.join(unneeded)} are not necessary (removing one alone "
            "keeps exact match 1; card['ablations']), so the truth there is what the weights compute, not what the "
            "answers need: a faithful mask that drops them scores lower recall and AUROC (docs/tracr.md)",
            stacklevel=2,
        )
    bridge = boot_tracr_bridge(card["tl_config"], load_file(folder / "weights.safetensors"))
    reference = load_file(folder / "reference.safetensors")
    check_defined_outputs(name, reference["input_ids"], reference["output_ids"], reference["output_logits"])
    data = subtask_data(name, reference["input_ids"], reference["output_ids"])
    truth = {granularity: truth_units(bridge, card["truth"], granularity) for granularity in TRUTH_GRANULARITIES}
    return GroundTruthCase(
        name=f"tracr/{name}",
        family="tracr",
        bridge=bridge,
        train={name: data},
        test={name: data},
        truth={name: truth},
        unique=card["unique"],
        card=card,
    )


def write_tracr_program(
    folder: Path,
    weights: dict[str, Tensor],
    input_ids: Int[Tensor, "example pos"],
    output_ids: Int[Tensor, "example pos"],
    output_logits: Float[Tensor, "example pos output"],
    card: dict,
) -> Path:
    """Write one program's folder, as :func:`load_tracr_case` reads it, whole or not at all; returns the folder.

    The folder goes through :func:`~modmask_lens.core.atomic_files.replace_folder_atomically` (its marker:
    ``card.json``): a build that fails or is killed midway leaves the folder it would replace as it was, never new
    weights beside an old card, nor a new folder that :func:`tracr_program_names` lists.

    Args:
        folder: the program's folder (``DIR/<program>``), replaced whole if it holds a program already.
        weights: ``bridge.state_dict()`` key -> tensor, every tensor the bridge reads.
        input_ids: ``BOS x_1 .. x_n PAD ..`` per input, input-vocabulary ids.
        output_ids: tracr's output (output-vocabulary id) at positions ``1 .. n``, :data:`IGNORE_INDEX` elsewhere.
        output_logits: tracr's output-space values (``output`` = ``d_vocab_out``), zero where no output.
        card: the card (config, token maps, truth, measurements), written as ``card.json``.

    Raises:
        FileExistsError: ``folder`` is a file, or a folder that is not empty and has no ``card.json`` (such as what
            a build killed midway left before builds wrote whole folders): delete it first.
    """
    reference = {"input_ids": input_ids, "output_ids": output_ids, "output_logits": output_logits}

    def save(temporary: Path) -> None:
        save_file(weights, temporary / "weights.safetensors")
        save_file(reference, temporary / "reference.safetensors")
        (temporary / "card.json").write_text(json.dumps(card, indent=1) + "\n")

    return replace_folder_atomically(folder, save, marker="card.json")


def check_defined_outputs(
    name: str,
    input_ids: Int[Tensor, "example pos"],
    output_ids: Int[Tensor, "example pos"],
    output_logits: Float[Tensor, "example pos output"],
) -> None:
    """Raise ``ValueError`` naming an input and position where tracr's output values tie (:data:`OUTPUT_TIE`) at a
    scored position (``output_ids`` not :data:`IGNORE_INDEX`): no answer is defined there, so exact match would judge
    float rounding. The build refuses such a program, and loading refuses its folder."""
    if output_logits.shape[-1] < 2:
        return
    top_two = output_logits.topk(2, dim=-1).values
    scored = output_ids != IGNORE_INDEX
    tied = scored & (top_two[..., 0] - top_two[..., 1] <= OUTPUT_TIE)
    if bool(tied.any()):
        example, position = tied.nonzero()[0].tolist()
        raise ValueError(
            f"tracr program {name!r}: its output ties at {int(tied.sum())} of {int(scored.sum())} "
            f"scored positions (its two largest output values differ by at most {OUTPUT_TIE}), where tracr defines no "
            f"answer, e.g. input ids {input_ids[example].tolist()} at position {position}: change the program or its "
            "inputs so that every scored position has one output"
        )


def boot_tracr_bridge(tl_config: dict, weights: dict[str, Tensor]) -> nn.Module:
    """A ``boot_native`` bridge holding ``weights`` (``bridge.state_dict()`` key -> tensor, every read tensor).

    Raises:
        ValueError: when ``weights`` misses a tensor the bridge reads, or names one it does not have.
    """
    bridge = TransformerBridge.boot_native(tl_config)
    specs = adapter_for(bridge).tensor_specs(bridge)
    missing = sorted({spec.key for spec in specs} - weights.keys())
    unknown = sorted(weights.keys() - {spec.key for spec in specs})
    if missing or unknown:
        raise ValueError(
            f"tracr weights do not fit the bridge: missing {missing}, unknown {unknown}; rebuild them "
            "with `python -m experiments.groundtruth.tracr_build`"
        )
    with torch.no_grad():
        for spec in specs:
            bridge.get_parameter(spec.path).copy_(weights[spec.key])
    return bridge.eval()


def subtask_data(
    name: str, input_ids: Int[Tensor, "example pos"], output_ids: Int[Tensor, "example pos"]
) -> SubtaskData:
    """The program's outputs as answers: the output at position ``t`` becomes the label at ``t + 1``.

    Args:
        name: subtask name.
        input_ids: ``BOS x_1 .. x_n PAD ..`` per example, right-padded with ``PAD`` (id 0).
        output_ids: tracr's output (output-vocabulary id) at each position ``1 .. n``, :data:`IGNORE_INDEX`
            elsewhere; the last position is always padding.
    """
    if bool((output_ids[:, -1] != IGNORE_INDEX).any()):
        raise ValueError(
            f"subtask {name!r}: the last position holds an output, which no next position can score; "
            "end every example with PAD"
        )
    labels = torch.full_like(output_ids, IGNORE_INDEX)
    labels[:, 1:] = output_ids[:, :-1]
    return SubtaskData(name, input_ids, labels)


def truth_units(bridge: nn.Module, truth: dict, granularity: str) -> UnitTruth:
    """The card's used units in the shapes of ``units_for(bridge, MaskConfig(granularity=granularity))``.

    ``head``: ``blocks.{layer}.attn`` -> ``[n_heads]``; ``neuron``: ``blocks.{layer}.mlp`` -> ``[d_mlp]``; ``weight``:
    each attention and MLP weight -> its shape, True on the nonzero elements of used heads and neurons (a zero weight
    is the same whether masked or not, so no mask can tell). The unembedding is left out.

    Args:
        bridge: the program's bridge.
        truth: the card's ``truth`` record: ``heads`` ([layer, head] pairs) and ``neurons`` (layer -> indices).
        granularity: ``head``, ``neuron`` or ``weight``.
    """
    if granularity not in TRUTH_GRANULARITIES:
        raise ValueError(f"tracr cases answer at {TRUTH_GRANULARITIES}, not {granularity!r}")
    if granularity == "weight":
        return _weight_truth(bridge, truth)
    used = (
        [tuple(pair) for pair in truth["heads"]]
        if granularity == "head"
        else [(int(layer), index) for layer, indices in truth["neurons"].items() for index in indices]
    )
    units = {}
    for unit in units_for(bridge, MaskConfig(granularity=granularity)):
        layer = int(unit.name.split(".")[1])
        units[unit.name] = torch.zeros(unit.shape, dtype=torch.bool)
        used_here = [index for used_layer, index in used if used_layer == layer]
        units[unit.name][torch.tensor(used_here, dtype=torch.long)] = True
    return units


def _weight_truth(bridge: nn.Module, truth: dict) -> UnitTruth:
    """Nonzero elements of used heads and neurons, per attention and MLP weight."""
    units = {}
    for granularity in ("head", "neuron"):
        unit_truth = truth_units(bridge, truth, granularity)
        # every weight of a used head is used, whatever a head mask's logit covers
        for unit in units_for(bridge, MaskConfig(granularity=granularity, head_mask="qkvo", neuron_mask="in-out")):
            for member in unit.members:
                used = unit.expand(unit_truth[unit.name], member).expand(member.shape)
                units[member.key] = used & (bridge.get_parameter(member.path).detach() != 0)
    return units


def truth_mask(bridge: nn.Module, truth: UnitTruth, granularity: str) -> BinaryMask:
    """A binary mask keeping exactly the units ``truth`` marks used (units absent from it are kept whole).

    Example:
        >>> case = load_tracr_case("hist")
        >>> mask = truth_mask(case.bridge, case.truth["hist"]["head"], "head")
        >>> mask.count > 0
        True
    """
    masks = MaskSet.for_bridge(bridge, MaskConfig(granularity=granularity))
    for unit_name, logit in masks.logits.items():
        kept = truth.get(unit_name, torch.ones(logit.shape, dtype=torch.bool))
        masks.logits[unit_name] = torch.where(kept, 1.0, -1.0)
    return masks.binary()
