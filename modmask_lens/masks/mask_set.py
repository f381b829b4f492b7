"""Learnable mask logits for one subtask on one model (Csordás et al. 2021)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor

from modmask_lens.adapters import GranularityNotApplicable, TensorSpec, adapter_for, model_shape, unsupported
from modmask_lens.core.bridge import Bridge
from modmask_lens.masks.binary import BinaryMask
from modmask_lens.masks.config import AUTO_SAMPLER, MaskConfig
from modmask_lens.masks.head_outputs import resolved_config
from modmask_lens.masks.identity import MaskOrigin
from modmask_lens.masks.products import unit_products
from modmask_lens.masks.sampling import UniformNoise, keep_probability, sample_mask
from modmask_lens.masks.units import MaskUnit, build_units


@dataclass
class MaskSet:
    """Mask logits of one subtask: one tensor per :class:`~modmask_lens.masks.units.MaskUnit`.

    Build one with :meth:`for_bridge`; train it with :func:`~modmask_lens.train_masks`; read it out with
    :meth:`binary` (mask = logit > threshold).

    Attributes:
        name: the subtask this mask is for.
        config: which tensors are masked and at what granularity.
        units: the logit groups, in model order.
        logits: unit name -> logit tensor of ``unit.shape`` (leaf tensors with ``requires_grad``).
        origin: the model the mask is for (adapter, raw/compat weights, fingerprint).
        train_config: the training settings, once trained (saved with the mask).
        history: one row per logged training step (saved with the mask): ``step``, ``loss`` (the objective's loss
            of the step's sampled masks; by default answer-token cross-entropy, nats per token, or per example
            under ``TrainConfig(loss_increase_per="example")``), the objective's
            metric on the step's batch under its own name (``accuracy``: exact match by default; ``cosine``,
            ``agreement``, ``probe_accuracy``), ``kept`` (fraction kept by the binary readout, logit > 0),
            ``expected_density`` (mean keep probability), and every 100 steps ``faithfulness`` (the binary mask's
            metric over the full model's, on 256 examples spread through the subtask's).
            ``pandas.DataFrame(masks.history)`` tabulates it.
        objective: what the mask was trained to keep (:meth:`Objective.to_dict`; saved with the mask).
        threshold: the readout: a unit is kept when its logit is above it (saved with the mask). 0 is Csordás's
            readout; training with ``TrainConfig(readout="faithful")`` (the default) sets it with :meth:`read_out` to
            keep :func:`~modmask_lens.faithful_units` on the subtask's training examples.
        fingerprint: what the run that trained it was (model, data, mask and train settings; see
            :func:`~modmask_lens.masks.run_fingerprint.run_fingerprint`), saved with the mask; empty if untrained.

    Example:
        >>> masks = MaskSet.for_bridge(bridge, name="jump")            # doctest: +SKIP
        >>> masks.binary().kept_fraction(by="role")                     # doctest: +SKIP
    """

    name: str
    config: MaskConfig
    units: list[MaskUnit]
    logits: dict[str, Tensor]
    origin: MaskOrigin
    train_config: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    objective: dict = field(default_factory=lambda: {"name": "answer_cross_entropy"})
    threshold: float = 0.0
    fingerprint: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.config.sampler == AUTO_SAMPLER:
            raise ValueError(
                "a MaskSet holds the sampler it trains with, not 'auto' (which depends on the model): build it "
                "with MaskSet.for_bridge(bridge, config), or name the sampler in its MaskConfig"
            )
        if self.config.init_logit is None:
            raise ValueError(
                "a MaskSet holds the initial logit it trained from, not None (which depends on the sampler): build "
                "it with MaskSet.for_bridge(bridge, config), or set init_logit in its MaskConfig"
            )

    @classmethod
    def for_bridge(
        cls, bridge: Bridge, config: MaskConfig = MaskConfig(), name: str = "mask", origin: MaskOrigin | None = None
    ) -> MaskSet:
        """Fresh logits (all ``config.init_logit``, on the bridge's device) for every unit of ``bridge`` that ``config``
        selects, under ``config`` with its sampler resolved for ``bridge``
        (:func:`~modmask_lens.masks.head_outputs.resolved_config`: ``auto`` is ``bernoulli`` on heads with a
        ``hook_z``, else ``hard-concrete``), and its initial logit (``None``: the sampler's).

        ``origin`` may pass the bridge's :class:`MaskOrigin` when it is already known (hashing the weights is a pass
        over the whole model).
        """
        units = units_for(bridge, config)
        config = resolved_config(bridge, config, units)
        device = next(bridge.parameters()).device
        logits = {
            unit.name: torch.full(unit.shape, config.init_logit, device=device, requires_grad=True) for unit in units
        }
        return cls(name, config, units, logits, origin or MaskOrigin.of(bridge))

    @property
    def members(self) -> list[TensorSpec]:
        """Every masked tensor, in model order."""
        return [member for unit in self.units for member in unit.members]

    def parameters(self) -> list[Tensor]:
        """The logit tensors, for an optimiser."""
        return list(self.logits.values())

    def to(self, device: torch.device | str) -> MaskSet:
        """Move the logits (as new leaf tensors) to ``device``; the model is untouched."""
        self.logits = {name: logit.detach().to(device).requires_grad_(True) for name, logit in self.logits.items()}
        return self

    def sample(self, temperature: float = 1.0, noise: UniformNoise | None = None) -> dict[str, Tensor]:
        """One sample by ``config.sampler``: bridge parameter path -> mask broadcastable to its weight.

        ``temperature`` is the Gumbel-sigmoid's tau (hard concrete uses its own beta, 2/3). Unit i draws its noise
        from ``noise.substream(i)`` (default: a fresh random seed), so one unit's sample can be drawn on its own, as
        fully sharded training does block by block."""
        unit_samples = self.unit_samples(temperature, noise or UniformNoise.fresh())
        return {
            member.path: unit.expand(unit_samples[unit.name], member) for unit in self.units for member in unit.members
        }

    def unit_samples(self, temperature: float, noise: UniformNoise) -> dict[str, Tensor]:
        """One sample of every unit's logits, by unit name (each of its logits' shape), as :meth:`sample` draws it
        before expanding it onto the unit's tensors: unit i from ``noise.substream(i)``."""
        return {
            unit.name: sample_mask(self.logits[unit.name], self.config.sampler, temperature, noise.substream(index))
            for index, unit in enumerate(self.units)
        }

    def sample_products(
        self, weights: Mapping[str, Tensor], temperature: float = 1.0, noise: UniformNoise | None = None
    ) -> dict[str, Tensor]:
        """One sample applied: bridge parameter path -> ``weight * mask`` for every masked tensor, in the weight's
        dtype, differentiable in the logits.

        Equals ``weights[path] * self.sample(temperature, noise)[path]`` (the same sample for the same ``noise``),
        but a per-element unit draws and multiplies in one autograd function that keeps one tensor for the backward
        (:mod:`modmask_lens.masks.products`): the training path.

        Args:
            weights: bridge parameter path -> the frozen (detached) weight, for every member of every unit.
        """
        noise = noise or UniformNoise.fresh()
        products = {}
        for index, unit in enumerate(self.units):
            products |= unit_products(
                unit, self.logits[unit.name], weights, self.config.sampler, temperature, noise.substream(index)
            )
        return products

    def binary(self) -> BinaryMask:
        """The deterministic readout, mask = logit > :attr:`threshold`, expanded to every masked tensor's full
        shape."""
        return self.binary_from(self.kept_above(self.threshold))

    def read_out(self, kept: Mapping[str, Tensor]) -> None:
        """Make :meth:`binary` keep exactly ``kept`` (unit name -> bool of the unit's logit shape): set
        :attr:`threshold` between the ``n``-th and ``n+1``-th highest logit, ``n`` the kept count, and, where ``kept``
        is not the ``n`` highest logits (the faithful readout's removal search), move the logits that disagree to
        just across it: a kept unit's to midway between the threshold and the lowest kept logit above it, a removed
        unit's to midway between the threshold and the highest removed logit below it. Every other logit, and so
        their order, stays as trained.

        Raises:
            ValueError: where ``kept`` does not name exactly the units, or a unit's flags do not have its logit shape
                (flags of the right total size split another way would be assigned to the wrong units).
        """
        expected = {unit.name: tuple(self.logits[unit.name].shape) for unit in self.units}
        given = {name: tuple(flags.shape) for name, flags in kept.items()}
        if given != expected:
            wrong = {name: (given.get(name), shape) for name, shape in expected.items() if given.get(name) != shape}
            wrong |= {name: (shape, None) for name, shape in given.items() if name not in expected}
            raise ValueError(
                f"read_out: kept flags of the wrong units or shapes, as (given, expected) with None for a unit missing "
                f"or unknown: {wrong}; give unit name -> bool tensor shaped like masks.logits[name] for every unit "
                "(e.g. from masks.kept_above)"
            )
        flat_kept = torch.cat([kept[unit.name].flatten().to(torch.bool) for unit in self.units])
        flat_logits = torch.cat([self.logits[unit.name].detach().flatten() for unit in self.units])
        descending = flat_logits.sort(descending=True).values
        count = int(flat_kept.sum())
        if count == 0:
            self.threshold = float(descending[0]) + 1.0
        elif count == descending.numel():
            self.threshold = float(descending[-1]) - 1.0
        else:
            self.threshold = float(descending[count - 1] + descending[count]) / 2
        raised = flat_kept & (flat_logits <= self.threshold)
        lowered = ~flat_kept & (flat_logits > self.threshold)
        if not raised.any() and not lowered.any():
            return
        above = flat_logits[flat_kept & ~raised]
        below = flat_logits[~flat_kept & ~lowered]
        raised_to = (self.threshold + float(above.min())) / 2 if above.numel() else self.threshold + 1.0
        lowered_to = (self.threshold + float(below.max())) / 2 if below.numel() else self.threshold - 1.0
        # ``logit > threshold`` compares in the logits' dtype (the threshold rounded to it), and the moved logits are
        # stored in it: a raised logit is strictly above the rounded threshold, a lowered one at most it.
        rounded = torch.tensor(self.threshold, dtype=flat_logits.dtype, device=flat_logits.device)
        raised_to = torch.maximum(rounded.new_tensor(raised_to), torch.nextafter(rounded, rounded.new_tensor(math.inf)))
        lowered_to = torch.minimum(rounded.new_tensor(lowered_to), rounded)
        moved = torch.where(raised, raised_to, torch.where(lowered, lowered_to, flat_logits))
        sizes = [self.logits[unit.name].numel() for unit in self.units]
        with torch.no_grad():
            for unit, part in zip(self.units, moved.split(sizes)):
                self.logits[unit.name].copy_(part.view_as(self.logits[unit.name]))

    def kept_above(self, threshold: float) -> dict[str, Tensor]:
        """Unit name -> kept flags (bool, the unit's logit shape) of the logits above ``threshold``."""
        return {unit.name: self.logits[unit.name].detach() > threshold for unit in self.units}

    def binary_from(self, unit_kept: dict[str, Tensor]) -> BinaryMask:
        """A binary mask from a kept flag per logit (unit name -> bool of the unit's logit shape), expanded to every
        masked tensor's full shape; e.g. the units above :func:`~modmask_lens.masks.readout.faithful_threshold`."""
        kept = {}
        for unit in self.units:
            for member in unit.members:
                kept[member.key] = unit.expand(unit_kept[unit.name], member).expand(member.shape).clone()
        return BinaryMask(self.members, kept, self.origin, name=self.name)

    def random_binary(self, n_kept: int | None = None, seed: int = 0) -> BinaryMask:
        """A null control: ``n_kept`` logits chosen uniformly at random (default: as many as :meth:`binary` keeps,
        e.g. the same number of heads) kept, the rest dropped.

        Example:
            >>> from modmask_lens.testing.tiny_models import tiny_bridge
            >>> heads = MaskSet.for_bridge(tiny_bridge(), MaskConfig(granularity="head", roles=("W_O",)))
            >>> heads.random_binary(3, seed=1).kept_fraction(by="head").kept.gt(0).sum()
            np.int64(3)
        """
        sizes = [self.logits[unit.name].numel() for unit in self.units]
        if n_kept is None:
            n_kept = sum(int(kept.sum()) for kept in self.kept_above(self.threshold).values())
        if not 0 <= n_kept <= sum(sizes):
            raise ValueError(f"n_kept {n_kept} must lie in [0, {sum(sizes)}] (the mask's logits)")
        flags = torch.zeros(sum(sizes), dtype=torch.bool)
        flags[torch.randperm(sum(sizes), generator=torch.Generator().manual_seed(seed))[:n_kept]] = True
        return self.binary_from(
            {
                unit.name: part.reshape(self.logits[unit.name].shape).to(self.logits[unit.name].device)
                for unit, part in zip(self.units, flags.split(sizes))
            }
        )

    def logit_sum(self) -> Tensor:
        """Sum of all raw logits: Csordás's regulariser, ``(beta / batch_size) * logit_sum()``."""
        return torch.stack([logit.sum() for logit in self.logits.values()]).sum()

    def expected_density(self) -> Tensor:
        """Expected kept fraction of the masked weights: each logit keeps its weights with the sampler's keep
        probability (sigmoid(l) for Gumbel-sigmoid)."""
        kept = torch.stack(
            [unit.expected_kept(keep_probability(self.logits[unit.name], self.config.sampler)) for unit in self.units]
        ).sum()
        return kept / sum(member.numel for member in self.members)

    def check_model(self, bridge: Bridge, check_weights: bool = True) -> None:
        """Raise :class:`~modmask_lens.masks.identity.ModelMismatch` unless this mask was made for ``bridge``."""
        self.origin.check(bridge, self.members, check_weights)


def units_for(bridge: Bridge, config: MaskConfig) -> list[MaskUnit]:
    """The mask units ``config`` gives on ``bridge``, through its adapter.

    Raises:
        GranularityNotApplicable: head granularity on a model without attention, neuron granularity on one without
            MLPs.
        UnsupportedArchitecture: head or neuron granularity on a family whose adapter locates no head or neuron in
            any matrix.
    """
    adapter = adapter_for(bridge)
    specs = adapter.tensor_specs(bridge)
    reason = adapter.inapplicable(bridge, config.granularity, specs)
    if reason is not None:
        raise GranularityNotApplicable(f"{bridge.cfg.architecture}: {reason}")
    unit_kinds = {"head": ("head", "kv_head"), "neuron": ("neuron",)}.get(config.granularity)
    if unit_kinds and not any(spec.unit in unit_kinds and spec.input_axis is not None for spec in specs):
        raise unsupported(
            bridge.cfg.architecture,
            f" that locates {config.granularity}s ({adapter.name} adapter: TransformerLens's map of this family "
            "declares no head or neuron layout; weight and matrix granularity work)",
        )
    units = build_units(specs, config, model_shape(bridge))
    locates_units = any(spec.unit in ("head", "kv_head", "neuron") and spec.input_axis is not None for spec in specs)
    if not locates_units and config.roles is None and config.layers is None:
        _check_coverage(bridge, adapter.name, units)
    return units


MIN_COVERAGE = 0.25
"""Below this fraction of the model's parameters, masks from an adapter that finds no heads or neurons (a family
TransformerLens maps outside ``attn``/``mlp``, such as T5: only ``W_U``, 14% of a tiny model) would say almost
nothing about the model, so they are refused rather than trained."""


def _check_coverage(bridge: Bridge, adapter_name: str, units: list[MaskUnit]) -> None:
    """Raise ``UnsupportedArchitecture`` if the masked tensors cover under :data:`MIN_COVERAGE` of the model's
    parameters (each shared tensor counted once)."""
    members = [member for unit in units for member in unit.members]
    covered = sum(member.numel for member in members)
    total = sum(parameter.numel() for parameter in bridge.parameters())
    if total and covered / total < MIN_COVERAGE:
        roles = sorted({member.role for member in members}) or "nothing"
        raise unsupported(
            bridge.cfg.architecture,
            f" that maps its weights: the {adapter_name} adapter finds only {roles} ({covered:,} of the model's "
            f"{total:,} parameters, {covered / total:.0%}), so a mask would say almost nothing. To mask just those "
            "tensors knowingly, name them: MaskConfig(roles=...)",
        )


def binaries(masks: Mapping[str, MaskSet | BinaryMask]) -> dict[str, BinaryMask]:
    """Each of ``masks`` as a :class:`BinaryMask`: a :class:`MaskSet` (what ``train_masks`` returns) by its readout
    :meth:`MaskSet.binary`, a binary mask as it is; anything else is refused with the fix."""
    converted = {}
    for name, mask in masks.items():
        if isinstance(mask, MaskSet):
            mask = mask.binary()
        if not isinstance(mask, BinaryMask):
            raise TypeError(
                f"mask {name!r} is a {type(mask).__name__}; pass a MaskSet (train_masks' result) or a BinaryMask "
                "(MaskSet.binary(), load_masks, or masks combined with & | ~)"
            )
        converted[name] = mask
    return converted
