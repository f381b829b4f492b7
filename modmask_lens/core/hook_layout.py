"""Where a hook point's activation keeps its examples and positions, and the activation laid out position-major.

Most TransformerLens hook points are laid out ``[batch, pos, ...]``; attention patterns and scores are ``[batch,
head, query_pos, key_pos]``, and some components declare another position axis (``HookPoint.pos_dim``: a qk-norm on
``[batch, head, pos, d_head]``, a Mamba convolution's ``[batch, channels, pos]``). Some hooks carry no per-example,
per-position activation at all: a router's ``[batch * pos, experts]``, a rotary table's ``[1, pos, d]``, a pooler's
``[batch, d]``. Everything that reads activations per example and position (probes, hook-reading objectives) moves
the position axis to 1 here, and refuses the rest, rather than read positions off another axis.
"""

from __future__ import annotations

from jaxtyping import Shaped
from torch import Tensor

from modmask_lens.core.bridge import Bridge

QUERY_AXIS_HOOKS = ("hook_pattern", "hook_attn_scores")
"""Hook points laid out ``[batch, head, query_pos, key_pos]``, read at the query position (every head's row of
attention from it)."""

SUPPORTED_HOOKS = (
    "hook points laid out [batch, pos, ...] (e.g. blocks.{l}.hook_resid_post, blocks.{l}.attn.hook_z, "
    "blocks.{l}.mlp.hook_post), attention patterns and scores (blocks.{l}.attn.hook_pattern, [batch, head, "
    "query_pos, key_pos], read at the query position), or hooks that declare their position axis (HookPoint.pos_dim)"
)
"""What :func:`position_major` reads, as its error names it."""


def position_axis(bridge: Bridge, hook_name: str) -> int:
    """The axis of ``hook_name``'s activation that holds the positions, by TransformerLens's own rule (the one its
    ``run_with_cache(pos_slice=...)`` slices by): the hook point's declared ``pos_dim``, else the query axis (-2) of
    an attention pattern or score (:data:`QUERY_AXIS_HOOKS`), else 1.

    >>> from modmask_lens.testing.tiny_models import tiny_bridge
    >>> bridge = tiny_bridge()
    >>> position_axis(bridge, "blocks.0.hook_resid_post"), position_axis(bridge, "blocks.0.attn.hook_pattern")
    (1, -2)
    """
    declared = getattr(bridge.hook_dict[hook_name], "pos_dim", None)
    if declared is not None:
        return declared
    return -2 if hook_name.endswith(QUERY_AXIS_HOOKS) else 1


def position_major(
    bridge: Bridge, hook_name: str, activation: Tensor, batch: int, positions: int
) -> Shaped[Tensor, "batch pos ..."]:
    """``activation`` (of ``hook_name`` on ``batch`` examples of ``positions`` tokens) with its position axis
    (:func:`position_axis`) moved to 1: ``[batch, pos, ...]``, an attention pattern ``[batch, query_pos, head,
    key_pos]``. A view: gradients flow through it.

    Raises:
        ValueError: the activation has not the examples on axis 0 and the positions on its position axis (a
            router's ``[batch * pos, experts]``, a rotary table's ``[1, pos, d]``, a pooler's ``[batch, d]``),
            naming the hooks that can be read (:data:`SUPPORTED_HOOKS`).
    """
    axis = position_axis(bridge, hook_name)
    dims = activation.dim()
    laid_out = (
        -dims <= axis < dims
        and axis % dims != 0
        and activation.shape[0] == batch
        and activation.shape[axis] == positions
    )
    if not laid_out:
        raise ValueError(
            f"{hook_name} has shape {tuple(activation.shape)} on {batch} example(s) of {positions} positions, not "
            f"the examples on axis 0 and the positions on axis {axis}: it holds no activation per example and "
            f"position to read. Read {SUPPORTED_HOOKS}"
        )
    return activation.movedim(axis, 1)
