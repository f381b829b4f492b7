"""Head and neuron masks trained as gates on what each unit writes out: the whole batch in one pass, each example
gated by its chunk's mask sample.

A mask that masks only the tensor writing each unit out scales the unit's slice of a matrix that the model multiplies
with the unit's activations: a neuron's ``W_out`` row (``MaskConfig(granularity="neuron")``, whose default
``neuron_mask="output"`` selects it), a head's ``W_O`` slice (``granularity="head"``, default ``head_mask="output"``,
under the hard-concrete or Gumbel-sigmoid sampler; the head default, ``bernoulli``, gates ``hook_z`` without a
backward: :mod:`~modmask_lens.masks.local_expectation`). Scaling that slice by the sample ``m`` is the same as scaling
the unit's input features of that matrix by ``m``: ``x @ (W * m[:, None]) == (x * m) @ W``. So instead of one product
``W * m`` per sample and one forward and backward per chunk of the batch
(:func:`~modmask_lens.masks.apply.sampled_parameters`), the model runs once on the whole batch with the weights
untouched, and a forward pre-hook on each module that reads a masked writer multiplies its input by each example's
chunk's sample (a head's ``unit_width`` features alike). The samples, the loss and the logits' gradient are those of
the per-chunk products up to float rounding (tests/unit/test_output_gates.py, and the conformance check
``output_gates_equal_weight_products`` on every family); the backward computes no weight-sized gradient (the weights
are detached) and no product, only the activations'.

It applies where every unit of the mask is one such matrix whose units lie along its input axis
(:attr:`~modmask_lens.adapters.TensorSpec.input_axis`; not an expert stack, not a grouped projection, not a decoder
layer whose self- and cross-attention heads share a logit tensor, and not a tensor a block shared across depths
reads again); elsewhere training multiplies the weights per chunk as before (:func:`output_gates` returns ``None``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor, nn

from modmask_lens.core.bridge import Bridge
from modmask_lens.core.functional import depth_twins, slot_of, tensor_slots
from modmask_lens.masks.config import MaskConfig
from modmask_lens.masks.mask_set import MaskSet
from modmask_lens.masks.sampling import UniformNoise
from modmask_lens.masks.units import MaskUnit

WRITERS = {"neuron": "W_out", "head": "W_O"}
"""The role that writes a unit of each granularity out: what an output gate scales the input of."""


@dataclass(frozen=True)
class OutputGate:
    """Where one mask unit's heads or neurons are gated.

    Attributes:
        unit: the unit's name (``blocks.0.mlp``, ``blocks.0.attn``), the key of its logits.
        module: the path of the module that reads the unit's writer (``W_out``, ``W_O``): the last axis of its input
            holds the units' features.
        units: how many heads or neurons the unit holds (its logits).
        width: input features per head or neuron (``d_head`` for a head, 1 for a neuron).
    """

    unit: str
    module: str
    units: int
    width: int

    @property
    def features(self) -> int:
        """The gated module's input features: ``units * width``."""
        return self.units * self.width


def output_gates(bridge: Bridge, config: MaskConfig, units: list[MaskUnit]) -> list[OutputGate] | None:
    """One :class:`OutputGate` per unit of a mask of ``units`` under ``config`` (resolved: a concrete sampler), in
    unit order, or ``None`` where some unit cannot be gated on its writer's input (not a head or neuron mask, a
    sampler other than hard concrete or Gumbel-sigmoid, a unit that masks more than its writer, or a writer that is
    an expert stack, a grouped projection, shared across depths or not a plain matrix).

    Example:
        >>> from modmask_lens.testing.tiny_models import tiny_bridge
        >>> bridge = tiny_bridge()
        >>> masks = MaskSet.for_bridge(bridge, MaskConfig(granularity="neuron"))
        >>> output_gates(bridge, masks.config, masks.units)[0]
        OutputGate(unit='blocks.0.mlp', module='blocks.0.mlp.out._original_component', units=64, width=1)
        >>> masks = MaskSet.for_bridge(bridge, MaskConfig(granularity="head", sampler="hard-concrete"))
        >>> output_gates(bridge, masks.config, masks.units)[0]
        OutputGate(unit='blocks.0.attn', module='blocks.0.attn.o._original_component', units=4, width=8)
        >>> masks = MaskSet.for_bridge(bridge, MaskConfig(granularity="neuron", neuron_mask="in-out"))
        >>> output_gates(bridge, masks.config, masks.units) is None
        True
    """
    if config.granularity not in WRITERS or config.sampler not in ("hard-concrete", "gumbel-sigmoid"):
        return None
    twins = depth_twins(tensor_slots(bridge))
    gates = [_gate_of(bridge, unit, WRITERS[config.granularity], twins) for unit in units]
    return None if any(gate is None for gate in gates) else gates


def _gate_of(bridge: Bridge, unit: MaskUnit, writer: str, twins: dict) -> OutputGate | None:
    """The unit's gate, where its only member is a plain ``writer`` matrix whose input axis holds its units, each
    ``unit_width`` consecutive features."""
    if len(unit.members) != 1:
        return None
    (member,) = unit.members
    plain = (
        member.role == writer
        and member.expert_axis is None
        and member.expert_width == 1
        and member.input_axis is not None
        and member.unit_axis == member.input_axis
        and member.unit_repeats == 1
        and member.unit_offset == 0
        and member.unit_count == unit.numel
        and member.shape[member.unit_axis] == unit.numel * member.unit_width
    )
    if not plain or slot_of(bridge, member.path) in twins:
        return None
    return OutputGate(unit.name, member.path.rpartition(".")[0], unit.numel, member.unit_width)


def chunk_samples(
    mask_set: MaskSet, temperature: float, noises: Sequence[UniformNoise]
) -> dict[str, Float[Tensor, "chunk unit"]]:
    """Unit name -> one sample per chunk, stacked: chunk k's is :meth:`MaskSet.unit_samples`'s for ``noises[k]``
    (what :meth:`MaskSet.sample` expands), differentiable in the logits."""
    per_chunk = [mask_set.unit_samples(temperature, noise) for noise in noises]
    return {unit.name: torch.stack([samples[unit.name] for samples in per_chunk]) for unit in mask_set.units}


@contextmanager
def gated(
    bridge: Bridge,
    gates: list[OutputGate],
    samples: dict[str, Float[Tensor, "chunk unit"]],
    chunk_sizes: Sequence[int],
) -> Iterator[None]:
    """Within the block, each gated module's input is multiplied, example by example, by the sample of the example's
    chunk (chunk k holds the next ``chunk_sizes[k]`` examples of the batch the bridge runs on), each unit's
    :attr:`OutputGate.width` features alike; the hooks are removed afterwards, also when the block raises.

    Raises:
        ValueError: (inside the block) a gated module read an input whose examples or features are not the batch's
            and the unit's; (on leaving it) a gated module never ran its ``forward``, so its units were never gated
            (a model that reads the weight some other way): the mask would learn nothing about them.
    """
    repeats = torch.tensor(list(chunk_sizes))
    ran: set[str] = set()
    handles = []
    try:
        for gate in gates:
            per_example = samples[gate.unit].repeat_interleave(repeats.to(samples[gate.unit].device), dim=0)
            per_example = per_example.repeat_interleave(gate.width, dim=1)  # [example, features]
            module = bridge.get_submodule(gate.module)
            handles.append(module.register_forward_pre_hook(_scaling(gate, per_example, ran)))
        yield
        silent = [gate.module for gate in gates if gate.module not in ran]
        if silent:
            raise ValueError(f"{silent[:3]} never ran their forward, so the units they read were never gated: {_FIX}")
    finally:
        for handle in handles:
            handle.remove()


_FIX = (
    "this model reads its units' writers some other way; train its neuron masks with neuron_mask='in-out' and its head "
    "masks with head_mask='qkvo' (or roles beyond the writer), which multiply the weights instead"
)


def _scaling(gate: OutputGate, per_example: Float[Tensor, "example feature"], ran: set[str]):
    """A forward pre-hook multiplying the module's input by ``per_example`` (and adding the module to ``ran``): an
    input ``[example, ..., feature]``, or one whose examples' positions are flattened into its first axis,
    example-major (``[example * pos, feature]``, as OPT's MLP reads them)."""
    examples = per_example.shape[0]

    def pre_hook(module: nn.Module, args: tuple) -> tuple:
        activation = args[0]
        rows = activation.shape[0]
        if activation.shape[-1] != gate.features or rows % examples:
            raise ValueError(
                f"{gate.module} read an input of shape {tuple(activation.shape)}, not [{examples} examples, ..., "
                f"{gate.units} units x {gate.width} features]: {_FIX}"
            )
        ran.add(gate.module)
        per_row = per_example if rows == examples else per_example.repeat_interleave(rows // examples, dim=0)
        scale = per_row.to(activation.dtype).reshape(rows, *[1] * (activation.dim() - 2), gate.features)
        return (activation * scale, *args[1:])

    return pre_hook
