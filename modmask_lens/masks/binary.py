"""Binary masks: set algebra (and / or / not), counts, and kept fractions per layer, role, head and neuron."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch
from torch import Tensor

from modmask_lens.adapters import TensorSpec
from modmask_lens.masks.config import PARAMETER_KINDS
from modmask_lens.masks.identity import MaskOrigin

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

    def __and__(self, other: BinaryMask) -> BinaryMask:
        return self._combine(other, torch.logical_and, "&")

    def __or__(self, other: BinaryMask) -> BinaryMask:
        return self._combine(other, torch.logical_or, "|")

    def __invert__(self) -> BinaryMask:
        return self.inverse()

    def inverse(self, kinds: tuple[str, ...] = INVERTED_KINDS, beyond: BinaryMask | None = None) -> BinaryMask:
        """The model without what this mask keeps: removes this mask's kept elements of tensors of ``kinds``.

        Tensors of other kinds are kept whole. By default only ``linear`` weights are inverted: norm gains are kept
        by nearly every mask (every subtask needs them), so inverting them removes all of them and breaks every
        subtask alike, whatever the masks found. ``kinds=PARAMETER_KINDS`` gives the plain complement.

        Args:
            kinds: parameter kinds (``linear``, ``norm``, ``embedding``, ``bias``) whose kept elements are removed.
            beyond: a control mask (e.g. another subtask's mask, or what every mask keeps); only what this mask
                keeps and ``beyond`` does not is removed, so elements every mask needs do not decide the result.

        Example:
            >>> with masked(bridge, jump.inverse(beyond=walk)):                  # doctest: +SKIP
            ...     logits = bridge(walk_ids)   # walk without what only jump uses
        """
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

    def _combine(self, other: BinaryMask, operation, symbol: str) -> BinaryMask:
        if [spec.key for spec in self.specs] != [spec.key for spec in other.specs] or self.origin != other.origin:
            raise ValueError(
                f"cannot combine masks {self.name!r} and {other.name!r}: they cover different tensors or models; "
                "train both with the same MaskConfig on the same model"
            )
        kept = {key: operation(self.kept[key], other.kept[key]) for key in self.kept}
        return BinaryMask(self.specs, kept, self.origin, f"({self.name} {symbol} {other.name})")

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
                of each MLP tensor).

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
            kept = self.kept[spec.key].movedim(spec.unit_axis, 0)
            per_unit = kept.reshape(-1, spec.unit_width * kept[0].numel()).sum(dim=1)
            total = spec.numel // per_unit.numel()
            rows += [
                {"layer": spec.layer, "role": spec.role, column: index, "kept": int(count), "total": total}
                for index, count in enumerate(per_unit.tolist())
            ]
        return rows
