"""Where each masked head writes its output, and the sampler a head mask trains with when its config leaves the
choice to the library (``MaskConfig(sampler="auto")``, the default).

A head is removed at its ``hook_z`` slice on the attention component that holds it (its ``width`` consecutive entries
of the hook's flattened per-position features, head-major: ``[batch, pos, head, d_head]`` on most families; on
latent attention TransformerLens splits ``hook_z`` by the rotary width, not the ``v_head_dim`` that ``W_O`` reads):
the component of the ``W_O`` tensor that writes it out, whose ``unit_offset`` says where its heads start among the
layer's logits (a decoder block's cross-attention heads follow its self-attention heads). The conformance kit checks
on every family that turning a head's logit off equals zeroing that slice (``modmask_lens.testing.conformance``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from modmask_lens.core.bridge import Bridge
from modmask_lens.masks.config import AUTO_SAMPLER, MaskConfig
from modmask_lens.masks.units import MaskUnit


@dataclass(frozen=True)
class HeadOutput:
    """The heads of one attention component, as the mask sees them.

    Attributes:
        hook: the component's ``hook_z`` (``blocks.0.attn.hook_z``, ``decoder_blocks.0.cross_attn.hook_z``).
        first_logit: position of its head 0 among the mask's head logits, concatenated in model order.
        heads: how many heads it holds.
        width: entries of the hook's flattened per-position features per head (``W_O``'s
            :attr:`~modmask_lens.adapters.TensorSpec.unit_width`).
    """

    hook: str
    first_logit: int
    heads: int
    width: int


def head_outputs(bridge: Bridge, units: list[MaskUnit]) -> list[HeadOutput]:
    """The ``hook_z`` of every head of ``units`` (head-granularity mask units of ``bridge``), in logit order.

    Raises:
        ValueError: some head has none (saying why): a layer whose masked tensors include no ``W_O`` (``roles``
            without it), or a component without a ``hook_z`` hook.

    Example:
        >>> from modmask_lens.masks.mask_set import units_for
        >>> from modmask_lens.testing.tiny_models import tiny_bridge
        >>> bridge = tiny_bridge()
        >>> head_outputs(bridge, units_for(bridge, MaskConfig(granularity="head")))[1]
        HeadOutput(hook='blocks.1.attn.hook_z', first_logit=4, heads=4, width=8)
    """
    outputs: list[HeadOutput] = []
    offset = 0
    for unit in units:
        writers = {
            (member.key.rsplit(".", 2)[0], member.unit_offset): (member.unit_count, member.unit_width)
            for member in unit.members
            if member.role == "W_O" and member.unit == "head"
        }
        covered = sum(heads for heads, _ in writers.values())
        if covered != unit.numel:
            raise _no_hook_z(f"{covered} of the {unit.numel} heads of {unit.name} have a W_O among the masked tensors")
        for (component, unit_offset), (heads, width) in sorted(writers.items(), key=lambda item: item[0][1]):
            hook = f"{component}.hook_z"
            if hook not in bridge.hook_dict:
                raise _no_hook_z(f"{component} has no hook_z")
            outputs.append(HeadOutput(hook, offset + unit_offset, heads, width))
        offset += unit.numel
    return outputs


def resolved_sampler(bridge: Bridge, config: MaskConfig, units: list[MaskUnit]) -> MaskConfig:
    """``config`` with a concrete sampler for ``units`` on ``bridge``: ``auto`` becomes ``bernoulli`` at head
    granularity where :func:`head_outputs` finds every head's ``hook_z``, and ``hard-concrete`` otherwise; any other
    sampler stays.

    Raises:
        ValueError: ``sampler="bernoulli"`` on heads without a ``hook_z`` (before training starts).

    Example:
        >>> from modmask_lens.masks.mask_set import units_for
        >>> from modmask_lens.testing.tiny_models import tiny_bridge
        >>> bridge = tiny_bridge()
        >>> [resolved_sampler(bridge, MaskConfig(granularity=g), units_for(bridge, MaskConfig(granularity=g))).sampler
        ...  for g in ("head", "neuron")]
        ['bernoulli', 'hard-concrete']
    """
    if config.sampler not in (AUTO_SAMPLER, "bernoulli"):
        return config
    if config.sampler == "bernoulli":
        head_outputs(bridge, units)  # raises, before training starts, where a head has no hook_z
        return config
    if config.granularity != "head":
        return dataclasses.replace(config, sampler="hard-concrete")
    try:
        head_outputs(bridge, units)
    except ValueError:
        return dataclasses.replace(config, sampler="hard-concrete")
    return dataclasses.replace(config, sampler="bernoulli")


def _no_hook_z(reason: str) -> ValueError:
    return ValueError(
        f"sampler 'bernoulli' removes heads at their hook_z, which this model's masked heads lack ({reason}); "
        "train its head masks with sampler='hard-concrete'"
    )
