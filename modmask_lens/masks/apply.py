"""Running a bridge with masked weights: ``torch.func.functional_call`` with ``weight * mask`` per read tensor.

The model is never modified: ``functional_call`` swaps each module attribute for the duration of one call and
restores the original ``nn.Parameter`` afterwards, also when the call raises. ``tie_weights=False`` with exactly one
path per (module, attribute) is essential: with the default ``tie_weights=True`` TransformerLens 4.x bridges (whose
parameters are reachable through several module paths) are left holding the masked tensor for good.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from torch import Tensor, nn

from modmask_lens.core.bridge import Bridge
from modmask_lens.core.functional import TensorKey, call_with_parameters, depth_twins, slot_of, tensor_slots
from modmask_lens.masks.binary import BinaryMask
from modmask_lens.masks.mask_set import MaskSet
from modmask_lens.masks.sampling import UniformNoise

MaskLike = MaskSet | BinaryMask | Mapping[str, object] | Callable[[], Mapping[str, Tensor]]


def masked_parameters(bridge: Bridge, masks: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Every parameter of the bridge, detached, under one path per (module, attribute); masked ones times their mask.

    Every parameter is detached, as in :func:`modmask_lens.core.functional.frozen_call`.

    Args:
        bridge: the model.
        masks: bridge parameter path -> mask broadcastable to that parameter.

    Returns:
        path -> tensor, for ``functional_call(..., tie_weights=False)``.
    """
    return _parameters_with(
        bridge,
        list(masks),
        lambda weights: {path: weights[path] * _like_weight(mask, weights[path]) for path, mask in masks.items()},
    )


def sampled_parameters(
    bridge: Bridge, mask_set: MaskSet, temperature: float = 1.0, noise: UniformNoise | None = None
) -> dict[str, Tensor]:
    """Like :func:`masked_parameters` with one fresh sample of ``mask_set`` (:meth:`MaskSet.sample_products`: the
    lean training path, equal to ``masked_parameters(bridge, mask_set.sample(temperature, noise))``)."""
    paths = [member.path for member in mask_set.members]
    return _parameters_with(bridge, paths, lambda weights: mask_set.sample_products(weights, temperature, noise))


def _parameters_with(
    bridge: Bridge, paths: list[str], products: Callable[[dict[str, Tensor]], Mapping[str, Tensor]]
) -> dict[str, Tensor]:
    """Every parameter detached, with ``products(weights of paths)`` in place of the weights at ``paths``; a tensor
    that a block shared across depths reads again through modules of its own at other depths
    (:func:`~modmask_lens.core.functional.depth_twins`: Zamba2's shared transformer block) gets the same product
    at each of them, unless ``paths`` masks that depth's slot itself: one mask per tensor, applied at each use."""
    slots = tensor_slots(bridge)
    values = {key: parameter.detach() for key, (_, parameter) in slots.items()}
    keys = {path: _parameter_slot(bridge, path, slots) for path in paths}
    twins = depth_twins(slots)
    masked_slots = set(keys.values())
    for path, product in products({path: values[key] for path, key in keys.items()}).items():
        values[keys[path]] = product
        for twin in twins.get(keys[path], ()):
            if twin not in masked_slots:
                values[twin] = product
    return {slots[key][0]: value for key, value in values.items()}


def _parameter_slot(bridge: Bridge, path: str, slots: Mapping[TensorKey, tuple[str, Tensor]]) -> TensorKey:
    """The slot of the parameter at ``path``, or a ``KeyError`` naming the paths masks take."""
    try:
        key = slot_of(bridge, path)
    except AttributeError:
        key = None
    if key not in slots:
        example = next(iter(slots.values()))[0]
        raise KeyError(
            f"{path!r} is not a parameter path of this bridge: masks are keyed by the paths of its parameters "
            f"(e.g. {example!r}), as BinaryMask.weight_masks() gives them; a state_dict key or a TransformerLens "
            "alias names no parameter here"
        )
    return key


def _like_weight(mask: Tensor, weight: Tensor) -> Tensor:
    """A mask on the weight's device (a mask loaded from a file sits on the CPU), a float mask in the weight's dtype
    (products in the model's dtype; the mask's gradient still reaches float32 logits through the cast)."""
    return mask.to(weight.device, weight.dtype) if mask.is_floating_point() else mask.to(weight.device)


def masked_call(bridge: Bridge, masks: Mapping[str, Tensor], method: Callable[..., Any], *args, **kwargs) -> Any:
    """Call ``method`` (a bound method of ``bridge``, e.g. ``bridge.run_with_cache``) with masked weights.

    Args:
        bridge: the model (left bit-exact).
        masks: bridge parameter path -> mask broadcastable to that parameter (see :meth:`MaskSet.sample` and
            :meth:`BinaryMask.weight_masks`).
        method: what to run; anything that ends up calling the bridge's modules.
    """
    return call_with_parameters(bridge, masked_parameters(bridge, masks), method, *args, **kwargs)


def _mask_values(mask: MaskLike) -> Callable[[], Mapping[str, Tensor]]:
    if isinstance(mask, MaskSet):
        mask = mask.binary()
    if isinstance(mask, BinaryMask):
        values = mask.weight_masks()
        return lambda: values
    if isinstance(mask, Mapping):
        named_masks = [name for name, value in mask.items() if isinstance(value, (MaskSet, BinaryMask))]
        if named_masks:
            raise ValueError(
                f"masked() applies one mask; got a dict of masks {named_masks}: enter one, e.g. "
                f"masked(bridge, masks[{named_masks[0]!r}]), or combine binary masks with & or | first"
            )
        fixed = dict(mask)
        return lambda: fixed
    if not callable(mask):
        raise TypeError(
            f"masked() takes a MaskSet, a BinaryMask, a dict of parameter path -> mask tensor, or a function "
            f"returning one; got {type(mask).__name__}"
        )
    return mask


@contextmanager
def masked(bridge: Bridge, mask: MaskLike, check_weights: bool = True) -> Iterator[nn.Module]:
    """Inside the block, the bridge's own entry points run with masked weights.

    ``bridge(tokens)``, ``bridge.run_with_cache``, ``bridge.run_with_hooks`` and ``bridge.generate`` all route
    through ``bridge.forward``, which this context replaces (on the instance only) by a call that goes through
    :func:`masked_call`. User hooks keep working. On exit, also after an exception, the instance is as before.

    Args:
        bridge: a TransformerBridge.
        mask: a :class:`BinaryMask`; a :class:`MaskSet` (its readout, :meth:`MaskSet.binary`: logit above its
            ``threshold``); a dict of parameter path ->
            mask tensor (as :func:`masked_call` takes); or a function returning one, called on every forward (e.g.
            ``lambda: mask_set.sample()``). A dict of several mask sets (``train_masks``' result) is refused with a
            message: enter one of them.
        check_weights: verify the weights hash of the mask's model (for MaskSet / BinaryMask).

    Example (a fresh mask set keeps every weight; its inverse keeps only the norm gains):
        >>> import torch
        >>> from modmask_lens.testing.tiny_models import tiny_bridge
        >>> bridge = tiny_bridge()
        >>> tokens = torch.tensor([[1, 2, 3, 4]])
        >>> mask = MaskSet.for_bridge(bridge, name="all").binary()
        >>> with masked(bridge, mask):
        ...     logits, cache = bridge.run_with_cache(tokens)
        >>> torch.equal(logits, bridge(tokens))
        True
        >>> with masked(bridge, ~mask):
        ...     inverse_logits = bridge(tokens)
        >>> torch.equal(inverse_logits, logits)
        False
    """
    if isinstance(mask, (MaskSet, BinaryMask)):
        mask.check_model(bridge, check_weights)
    if "forward" in bridge.__dict__:
        raise RuntimeError(
            "masked() contexts do not nest (the bridge's forward is already replaced); combine masks with & or | "
            "and enter one context"
        )
    values = _mask_values(mask)
    class_forward = type(bridge).forward.__get__(bridge)

    def forward(*args, **kwargs):
        return masked_call(bridge, values(), class_forward, *args, **kwargs)

    bridge.forward = forward
    try:
        yield bridge
    finally:
        del bridge.forward
