"""Binary masks: set algebra (and / or / not), counts, and kept fractions per layer, role, head and neuron."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch
from jaxtyping import Bool, Int
from torch import Tensor

from modmask_lens.adapters import TensorSpec
from modmask_lens.masks.config import PARAMETER_KINDS
from modmask_lens.masks.identity import MaskOrigin, model_differences
from modmask_lens.masks.model_config import comparable_models
from modmask_lens.masks.units import MaskUnit

INVERTED_KINDS = ("linear",)
"""Kinds :meth:`BinaryMask.inverse` (and ``~``) removes by default: weights, not the norm gains every mask keeps."""

GROUPINGS = ("all", "tensor", "layer", "role", "layer_role", "head", "neuron")
"""Groupings of :meth:`BinaryMask.kept_fraction`, and the columns each one adds."""
GROUP_COLUMNS = {
    "all": [],
    "tensor": ["key", "layer", "role"],
    "layer": ["layer"],
    "role": ["role"],
    "layer_role": ["layer", "role"],
    "head": ["layer", "role", "head"],
    "neuron": ["layer", "role", "neuron"],
}


@dataclass
class BinaryMask:
    """Kept (True) / removed (False) for every element of every masked tensor.

    ``a & b`` and ``a | b`` act on the masked tensors only (unmasked tensors are always kept). ``~a`` is
    :meth:`inverse` with its defaults: the subtask's linear weights removed, everything else kept, which is
    Csordás's inverse-mask test when applied with :func:`~modmask_lens.masked`.

    Attributes:
        specs: the masked tensors.
        kept: state_dict key -> bool tensor of the tensor's shape.
        origin: the model the mask is for.
        name: a label (the subtask, or an expression such as ``(add & mul)``).

    Example:
        >>> shared = add_mask.binary() & mul_mask.binary()                    # doctest: +SKIP
        >>> shared.kept_fraction(by="layer_role")                             # doctest: +SKIP
    """

    specs: list[TensorSpec]
    kept: dict[str, Tensor]
    origin: MaskOrigin
    name: str = "mask"

    def __post_init__(self) -> None:
        # Flags of another shape broadcast when applied but are counted as they are: the counts would disagree with
        # what the masked model runs, without a word.
        expected = {spec.key: spec.shape for spec in self.specs}
        given = {key: (tuple(kept.shape), kept.dtype) for key, kept in self.kept.items()}
        wrong = {
            key: (given.get(key), expected.get(key))
            for key in sorted(expected.keys() | given.keys())
            if given.get(key) != (expected.get(key), torch.bool)
        }
        if wrong:
            raise ValueError(
                f"BinaryMask {self.name!r}: kept needs one bool tensor of each spec's shape, under the spec's key; "
                f"got ((shape, dtype), expected shape), None where a key is missing or unknown: {wrong}; shape each "
                "from the mask's own flags (e.g. torch.rand(mask.kept[key].shape) < 0.5)"
            )

    def __and__(self, other: object) -> BinaryMask:
        return self._combine(other, torch.logical_and, "&")

    def __or__(self, other: object) -> BinaryMask:
        return self._combine(other, torch.logical_or, "|")

    def __invert__(self) -> BinaryMask:
        return self.inverse()

    def inverse(self, kinds: tuple[str, ...] | str = INVERTED_KINDS, beyond: BinaryMask | None = None) -> BinaryMask:
        """The model without what this mask keeps: removes this mask's kept elements of tensors of ``kinds``.

        Tensors of other kinds are kept whole. By default only ``linear`` weights are inverted: norm gains are kept
        by nearly every mask (every subtask needs them), so inverting them removes all of them and breaks every
        subtask alike, whatever the masks found. ``kinds=PARAMETER_KINDS`` gives the plain complement.

        The inverse is taken element by element. A head mask with ``head_mask="qkvo"`` on grouped-query attention
        keeps a key/value group's ``W_K``/``W_V`` rows while any of its query heads is kept, so its inverse removes
        that group for every head reading it, kept or not. For "the model without these heads" there, use the
        default ``head_mask="output"``, whose inverse removes exactly the kept heads' ``W_O`` slices.

        Args:
            kinds: parameter kinds (``linear``, ``norm``, ``embedding``, ``bias``) whose kept elements are removed; a
                string names one kind.
            beyond: a control mask (e.g. another subtask's mask, or what every mask keeps); only what this mask
                keeps and ``beyond`` does not is removed, so elements every mask needs do not decide the result.

        Example:
            >>> with masked(bridge, jump.inverse(beyond=walk)):                  # doctest: +SKIP
            ...     logits = bridge(walk_ids)   # walk without what only jump uses
        """
        kinds = (kinds,) if isinstance(kinds, str) else tuple(kinds)  # one kind, not its letters
        unknown = set(kinds) - set(PARAMETER_KINDS)
        if unknown:
            raise ValueError(f"unknown kinds {sorted(unknown)}; choose from {PARAMETER_KINDS}")
        removed = self if beyond is None else self & beyond.inverse(PARAMETER_KINDS)
        kept = {
            spec.key: ~removed.kept[spec.key] if spec.kind in kinds else torch.ones_like(self.kept[spec.key])
            for spec in self.specs
        }
        name = f"~{self.name}" if beyond is None else f"~({self.name} - {beyond.name})"
        return BinaryMask(self.specs, kept, self.origin, name)

    def _combine(self, other: object, operation, symbol: str) -> BinaryMask:
        if not isinstance(other, BinaryMask):
            # A trained MaskSet holds logits, not kept flags: reading its attributes as flags failed deep inside.
            raise TypeError(
                f"cannot combine mask {self.name!r} with a {type(other).__name__}: combine binary masks; read a "
                "trained MaskSet out first with mask_set.binary()"
            )
        if [spec.key for spec in self.specs] != [spec.key for spec in other.specs]:
            raise ValueError(
                f"cannot combine masks {self.name!r} and {other.name!r}: they cover different tensors; "
                "train both with the same MaskConfig on the same model"
            )
        self.check_same_model(other)
        kept = {key: operation(self.kept[key], other.kept[key]) for key in self.kept}
        return BinaryMask(self.specs, kept, self.origin, f"({self.name} {symbol} {other.name})")

    def check_same_model(self, other: BinaryMask) -> None:
        """Raise ``ValueError`` unless ``other`` was made for the same model as this mask (the same :attr:`origin`):
        the flags of two models' tensors of one shape would otherwise be read together without a word."""
        if self.origin == other.origin:
            return
        # a mask loaded from a file written before model records held the config is compared without it (warned)
        models = comparable_models(self.origin.model, other.origin.model, f"mask {self.name!r} or {other.name!r}")
        differing = [
            *(field for field in ("adapter", "mode") if getattr(self.origin, field) != getattr(other.origin, field)),
            *model_differences(*models, (f"in {self.name!r}", f"in {other.name!r}")),
            *(
                field
                for field in ("norms", "components")
                if getattr(self.origin, field) != getattr(other.origin, field)
            ),
        ]
        if differing:
            raise ValueError(
                f"masks {self.name!r} and {other.name!r} were made for different models ({', '.join(differing)} "
                "differ); use masks trained on one model (load_masks(path, bridge) refuses a file of another)"
            )

    def check_model(self, bridge, check_weights: bool = True) -> None:
        """Raise :class:`~modmask_lens.masks.identity.ModelMismatch` unless this mask was made for ``bridge``."""
        self.origin.check(bridge, self.specs, check_weights)

    @property
    def count(self) -> int:
        """Number of kept elements over all masked tensors."""
        return int(sum(int(kept.sum()) for kept in self.kept.values()))

    @property
    def total(self) -> int:
        """Number of masked elements (kept or not)."""
        return sum(spec.numel for spec in self.specs)

    def weight_masks(self) -> dict[str, Tensor]:
        """Bridge parameter path -> float mask (1.0 kept, 0.0 removed), for :func:`~modmask_lens.masked`."""
        return {spec.path: self.kept[spec.key].to(torch.float32) for spec in self.specs}

    def kept_fraction(self, by: str = "tensor") -> pd.DataFrame:
        """Kept counts as a tidy DataFrame.

        Args:
            by: ``all`` (one row: every masked tensor pooled), ``tensor`` (one row per masked tensor), ``layer``,
                ``role``, ``layer_role``, ``head`` (one row per head of each attention tensor; for ``W_K``/``W_V``
                with grouped-query attention ``head`` is the key/value group) or ``neuron`` (one row per MLP neuron
                of each MLP tensor; in a mixture-of-experts layer neuron ``e * d_expert + i`` is hidden unit i of
                expert e, its gate and up halves pooled, and the shared expert's neurons follow, as
                :func:`kept_per_unit` counts them).

        Returns:
            Columns ``mask`` (its name), the grouping columns, ``kept``, ``total`` and ``kept_fraction``.
        """
        if by not in GROUPINGS:
            raise ValueError(f"by={by!r}: choose one of {GROUPINGS}")
        if by in ("head", "neuron"):
            frame = pd.DataFrame(self._unit_rows(("neuron",) if by == "neuron" else ("head", "kv_head"), by))
        else:
            rows = [
                {
                    "key": spec.key,
                    "layer": spec.layer,
                    "role": spec.role,
                    "kept": int(self.kept[spec.key].sum()),
                    "total": spec.numel,
                }
                for spec in self.specs
            ]
            frame = pd.DataFrame(rows)
            if by == "all":
                frame = frame[["kept", "total"]].sum().to_frame().T
            elif by != "tensor":
                frame = (
                    frame.groupby(GROUP_COLUMNS[by], dropna=False, sort=False)[["kept", "total"]].sum().reset_index()
                )
        if frame.empty:
            return frame
        frame.insert(0, "mask", self.name)
        if "layer" in frame:
            frame["layer"] = frame["layer"].astype("Int64")
        frame["kept_fraction"] = frame["kept"] / frame["total"]
        return frame

    def _unit_rows(self, units, column: str) -> list[dict]:
        rows = []
        for spec in self.specs:
            if spec.unit not in units:
                continue
            kept, total = kept_per_unit(spec, self.kept[spec.key])
            rows += [
                {"layer": spec.layer, "role": spec.role, column: index, "kept": int(kept[index]), "total": int(count)}
                for index, count in enumerate(total.tolist())
                if count
            ]
        return rows


def kept_per_unit(
    spec: TensorSpec, kept: Bool[Tensor, "*shape"], halves_apart: bool = False
) -> tuple[Int[Tensor, "*half unit"], Int[Tensor, "*half unit"]]:
    """Kept and total elements of each head, key/value group or neuron in one tensor, indexed by the unit's number
    in its layer (a mixture-of-experts layer numbers hidden unit i of expert e ``e * d_expert + i``, then its shared
    expert's units; units this tensor does not hold have total 0).

    With ``halves_apart``, a fused gate/up projection, which holds each neuron twice along the unit axis (all gate
    rows, then all up rows: ``spec.unit_repeats`` 2; or each neuron's gate and up rows side by side, as GPT-OSS does:
    a neuron tensor's ``spec.unit_width`` 2), is counted per half: ``[2, units]``, so that a neuron whose up half
    lost every weight can be told from one whose halves both keep some.

    Which unit an element belongs to is what :meth:`~modmask_lens.masks.units.MaskUnit.expand` says: expanding the
    unit numbers ``0, 1, ...`` onto the tensor gives each element's unit, so counts follow the mask's own layout
    (fused gate/up halves count for one neuron, the expert axis separates experts).

    Args:
        spec: a tensor with units (``spec.unit`` set).
        kept: its boolean mask, ``spec.shape``.

    Returns:
        ``(kept, total)``, each ``[spec.unit_offset + spec.unit_count]`` (``[2, ...]`` for a fused gate/up
        projection with ``halves_apart``).

    >>> from modmask_lens.adapters import TensorSpec
    >>> gate_up = TensorSpec("experts.gate_up_proj", "W_experts_in", 0, "p", (2, 6, 4), "neuron", 1, 1, "linear",
    ...                      unit_repeats=2, expert_axis=0)  # 2 experts x 3 hidden units, gate rows then up rows
    >>> kept = torch.ones(2, 6, 4, dtype=torch.bool)
    >>> kept[1, 4, :2] = False  # up row of expert 1's hidden unit 1: neuron 4
    >>> kept_per_unit(gate_up, kept)
    (tensor([8, 8, 8, 8, 6, 8]), tensor([8, 8, 8, 8, 8, 8]))
    >>> kept_per_unit(gate_up, kept, halves_apart=True)[0]
    tensor([[4, 4, 4, 4, 4, 4],
            [4, 4, 4, 4, 2, 4]])
    >>> interleaved = TensorSpec("experts.gate_up_proj", "W_experts_in", 0, "p", (2, 4, 6), "neuron", 2, 2,
    ...                          "linear", expert_axis=0)  # [expert, d_model, (gate, up) of each hidden unit]
    >>> kept = torch.ones(2, 4, 6, dtype=torch.bool)
    >>> kept[0, :, 3] = False  # up column of expert 0's hidden unit 1: neuron 1
    >>> kept_per_unit(interleaved, kept, halves_apart=True)[0]
    tensor([[4, 4, 4, 4, 4, 4],
            [4, 0, 4, 4, 4, 4]])
    """
    n_units = spec.unit_offset + spec.unit_count
    unit_of = MaskUnit(spec.key, (n_units,), (spec,)).expand(torch.arange(n_units), spec)
    interleaved = spec.unit == "neuron" and spec.unit_width > 1
    halves = (spec.unit_width if interleaved else spec.unit_repeats) if halves_apart else 1
    if halves > 1:  # number the gate half 0 and the up half 1, apart
        size = spec.shape[spec.unit_axis]
        along_unit_axis = [1] * len(spec.shape)
        along_unit_axis[spec.unit_axis] = size
        position = torch.arange(size)
        half_of = position % halves if interleaved else position // (size // halves)
        unit_of = unit_of + n_units * half_of.view(along_unit_axis)
    # Sum over the axes the unit numbers broadcast along, then add each position's count to its unit.
    pooled_axes = [axis for axis, size in enumerate(unit_of.shape) if size == 1 and spec.shape[axis] > 1]
    # Counted on the CPU, where the unit numbers are: flags of a mask trained on a GPU live there.
    kept_here = (kept.sum(dim=pooled_axes, keepdim=True) if pooled_axes else kept.long()).cpu()
    unit_of = unit_of.expand(kept_here.shape).reshape(-1)
    kept_counts = torch.zeros(halves * n_units, dtype=torch.long).index_add_(0, unit_of, kept_here.reshape(-1))
    total = torch.bincount(unit_of, minlength=halves * n_units) * (spec.numel // kept_here.numel())
    if halves > 1:
        return kept_counts.view(halves, n_units), total.view(halves, n_units)
    return kept_counts, total
