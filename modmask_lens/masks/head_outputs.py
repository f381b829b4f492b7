"""Where each masked head writes its output, and the sampler and initial logit a mask trains with when its config
leaves the choice to the library (``MaskConfig(sampler="auto", init_logit=None)``, the defaults).

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
from modmask_lens.masks.config import AUTO_SAMPLER, BERNOULLI_INIT_LOGIT, PATHWISE_INIT_LOGIT, MaskConfig
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


def resolved_config(bridge: Bridge, config: MaskConfig, units: list[MaskUnit]) -> MaskConfig:
    """``config`` with a concrete sampler and initial logit for ``units`` on ``bridge``: ``auto`` becomes
    ``bernoulli`` at head granularity where :func:`head_outputs` finds every head's ``hook_z``, and ``hard-concrete``
    otherwise; any other sampler stays. ``init_logit=None`` becomes the sampler's own
    (:data:`~modmask_lens.masks.config.BERNOULLI_INIT_LOGIT` or :data:`~modmask_lens.masks.config.PATHWISE_INIT_LOGIT`).

    Raises:
        ValueError: ``sampler="bernoulli"`` on heads without a ``hook_z`` (before training starts).

    Example:
        >>> from modmask_lens.masks.mask_set import units_for
        >>> from modmask_lens.testing.tiny_models import tiny_bridge
        >>> bridge = tiny_bridge()
        >>> configs = [MaskConfig(granularity=granularity) for granularity in ("head", "neuron")]
        >>> [(resolved.sampler, resolved.init_logit)
        ...  for resolved in (resolved_config(bridge, config, units_for(bridge, config)) for config in configs)]
        [('bernoulli', 0.01), ('hard-concrete', 3.0)]
    """
    config = dataclasses.replace(config, sampler=_resolved_sampler(bridge, config, units))
    if config.init_logit is None:
        init_logit = BERNOULLI_INIT_LOGIT if config.sampler == "bernoulli" else PATHWISE_INIT_LOGIT
        config = dataclasses.replace(config, init_logit=init_logit)
    return config


def _resolved_sampler(bridge: Bridge, config: MaskConfig, units: list[MaskUnit]) -> str:
    """The sampler :func:`resolved_config` gives ``config`` on ``bridge`` (raises as it does)."""
    if config.sampler == "bernoulli":
        head_outputs(bridge, units)  # raises, before training starts, where a head has no hook_z
    if config.sampler != AUTO_SAMPLER:
        return config.sampler
    if config.granularity != "head":
        return "hard-concrete"
    try:
        head_outputs(bridge, units)
    except ValueError:
        return "hard-concrete"
    return "bernoulli"


def _no_hook_z(reason: str) -> ValueError:
    return ValueError(
        f"sampler 'bernoulli' removes heads at their hook_z, which this model's masked heads lack ({reason}); "
        "train its head masks with sampler='hard-concrete'"
    )
