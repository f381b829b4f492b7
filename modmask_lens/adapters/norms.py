"""How a model's norms act on the residual stream: where they sit relative to its readers, and whether a gain is read
as ``w`` or as ``1 + w``.

Both are facts about the model that a mask's analyses need without the model at hand (the circuit graph's edge
measure, docs/viz.md#edge-measure): adapters supply them (:meth:`~modmask_lens.adapters.Adapter.norm_layout`, and
:attr:`~modmask_lens.adapters.TensorSpec.gain_offset` per norm gain) and masks record them when they are made. So is
how a query/key norm's gain (bias) maps onto the heads whose features it scales (:class:`QueryKeyNorm`, per tensor:
:attr:`~modmask_lens.adapters.TensorSpec.query_key_norm`).
"""

from __future__ import annotations

import copy
import re
import weakref
from dataclasses import dataclass
from typing import Literal

import torch
from jaxtyping import Bool
from torch import Tensor, nn

NormPlacement = Literal["pre", "post"]
ReaderKind = Literal["head", "mlp", "unembed"]
WriterKind = Literal["embed", "head", "mlp"]

_WRAPPED = re.compile(r"(\._original_component)+$")
_OFFSET_GAINS: weakref.WeakKeyDictionary[nn.Module, bool] = weakref.WeakKeyDictionary()
"""Each norm module's probed reading (:func:`gain_is_offset`), so that the probe runs once per module."""


@dataclass(frozen=True)
class NormLayout:
    """Where the norm gains sit that the residual stream passes on its way to each reader.

    Attributes:
        placement: ``pre``: each block normalises what its attention and MLP read (GPT-2, Llama, NeoX); ``post``:
            each sub-layer's output is added to the residual stream, which is then normalised (BERT, RoBERTa, GPT-1).
        parallel_blocks: attention and MLP read the same norm, ``ln1`` (GPT-J, Phi).

    Example:
        >>> NormLayout("post").reader_norm("head", 1), NormLayout(parallel_blocks=True).reader_norm("mlp", 1)
        (('ln2.w', 0), ('ln1.w', 1))
    """

    placement: NormPlacement = "pre"
    parallel_blocks: bool = False

    def reader_norm(self, reader: ReaderKind, layer: int | None) -> tuple[str, int | None]:
        """(role, layer) of the norm gain on the residual stream in front of a reader of block ``layer``: the
        heads' (``W_Q``, ``W_K``, ``W_V``), the MLP's (``W_in``, ``W_gate``) or the unembedding's.

        Pre-norm: ``ln1`` before the heads, ``ln2`` before the MLP (``ln1`` in a parallel block), ``ln_final``
        before the unembedding. Post-norm: the heads read the previous block's ``ln2`` output (block 0:
        ``ln_embed``), the MLP reads ``ln1``'s, and the unembedding reads through the head's ``ln_final``.
        """
        if reader == "unembed":
            return "ln_final.w", None
        if reader == "mlp" and self.parallel_blocks:
            return "ln1.w", layer
        if self.placement == "pre":
            return ("ln1.w" if reader == "head" else "ln2.w"), layer
        if reader == "mlp":
            return "ln1.w", layer
        return ("ln2.w", layer - 1) if layer else ("ln_embed.w", None)

    @staticmethod
    def writer_norm(writer: WriterKind, layer: int | None) -> tuple[str, int | None] | None:
        """(role, layer) of the norm gain on a writer's output before it is added to the residual stream, in any
        placement: TransformerLens's post-sub-layer norms, ``ln1_post`` after the heads and ``ln2_post`` after the
        MLP (Gemma 2 to 4, OLMo 2, GLM-4); ``None`` for the embeddings, whose output no such norm scales.

        >>> NormLayout.writer_norm("head", 1), NormLayout.writer_norm("embed", None)
        (('ln1_post.w', 1), None)
        """
        if writer == "embed":
            return None
        return ("ln1_post.w" if writer == "head" else "ln2_post.w"), layer


@dataclass(frozen=True)
class QueryKeyNorm:
    """How a query (key) norm's gain or bias in one block maps onto the rows of the ``W_Q`` (``W_K``) whose features
    it scales.

    Attributes:
        shared_by_heads: one vector of ``d_head`` entries that every head (key/value group) applies to its own
            features (Qwen3, Gemma 3 and 4 normalise each head's query on its own); ``False`` for one entry per row
            of the projection (OLMo 2 normalises all heads' queries at once; Cohere each head's on its own with a
            gain of its own, stored ``[n_heads, d_head]``, which maps onto the rows alike).
        head_rows: the projection's rows per head (key/value group) in this block: its ``d_head``, which Gemma 4
            changes from block to block, or twice that for a gated query projection, whose gate rows follow each
            head's query rows and which no norm scales.

    Example (a shared 8-entry gain in front of two heads of 8 rows, entry 1 dropped):
        >>> gain = torch.ones(8, dtype=torch.bool)
        >>> gain[1] = False
        >>> QueryKeyNorm(shared_by_heads=True, head_rows=8).kept_rows(gain, 2).nonzero().flatten().tolist()
        [0, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 14, 15]
    """

    shared_by_heads: bool
    head_rows: int

    def kept_rows(self, gain: Bool[Tensor, "*entries"], n_units: int) -> Bool[Tensor, " rows"]:
        """The rows of a projection of ``n_units`` heads (key/value groups) whose feature ``gain`` keeps: a per-row
        gain's own entries in row order (its size already says how many units), or the shared gain on each unit's
        first rows and every gate row kept."""
        if not self.shared_by_heads:
            return gain.flatten()
        per_head = torch.ones(self.head_rows, dtype=torch.bool)
        per_head[: gain.numel()] = gain
        return per_head.repeat(n_units)


def gain_is_offset(bridge: nn.Module, path: str) -> bool:
    """Does the forward pass scale by ``1 + w`` for the norm gain ``w`` at parameter ``path`` (Gemma's RMSNorm,
    Qwen3-Next's and Qwen3.5's, Nemotron's ``LayerNorm1P``), rather than by ``w``?

    A mask multiplies the stored ``w``, so a dropped entry of such a gain leaves its dimension at scale 1 instead of
    cutting it. Read from what the model computes, not from a flag: the module the bridge calls for this norm (the
    outermost component wrapping the gain's module) runs once on a random input with all its parameters zero, which
    gives 0 where the gain multiplies and the normalised input where it is an offset from 1. TransformerLens's
    ``cfg.rmsnorm_uses_offset`` says the same for most families, but not everywhere: it is set for Gemma 3n, whose
    ``Gemma3nRMSNorm`` multiplies by ``w`` (the bridge runs that module as it is), and unset for MuseGlimmer, whose
    block norms scale by ``1 + w`` and whose final norm by ``w``; one flag per model cannot say that. A norm that
    cannot run on the residual stream alone (a gated norm that also takes its gate) reads as multiplying, the plain
    convention. The probe runs a copy of the module without hooks (:func:`_unhooked_copy`): the model itself, its
    parameters, buffers and hooks are left as they were, and no hook of the user's fires or sways the reading. Probed
    once per module, then remembered while it lives.
    """
    module = bridge.get_submodule(_WRAPPED.sub("", path.rpartition(".")[0]))
    if module not in _OFFSET_GAINS:
        _OFFSET_GAINS[module] = _probe_offset(module, bridge.get_parameter(path))
    return _OFFSET_GAINS[module]


def _probe_offset(module: nn.Module, gain: nn.Parameter) -> bool:
    probe = _unhooked_copy(module)
    with torch.no_grad():
        for parameter in probe.parameters():
            parameter.zero_()
    residual = torch.randn((1, 2, gain.shape[-1]), generator=torch.Generator().manual_seed(0)).to(gain)
    try:
        with torch.no_grad():
            output = probe(residual)
    except Exception:  # noqa: BLE001 (a module that needs more than the residual stream: the plain reading)
        return False
    return isinstance(output, torch.Tensor) and bool(output.abs().amax() > 0)


_HOOK_DICTS = (
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_backward_hooks",
    "_backward_pre_hooks",
)
_HOOK_POINT_LISTS = ("fwd_hooks", "bwd_hooks")
"""Where a module keeps its hooks: torch's dictionaries, and the handles a TransformerLens ``HookPoint`` lists."""


def _unhooked_copy(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` (one norm: cheap) with no hooks on it or any submodule: neither a user's hook on the
    live model (a steering hook on ``ln1.hook_out``) nor one that raises on a probe's input changes what the probe
    reads, and none of them fires. The hooks are left out of the copy, not copied and removed, so that nothing a hook
    holds (a tensor, the model) is copied; the live module is never touched."""
    memo: dict[int, object] = {}
    for submodule in module.modules():
        for name in _HOOK_DICTS + _HOOK_POINT_LISTS:
            hooks = getattr(submodule, name, None)
            if isinstance(hooks, (dict, list)):
                memo[id(hooks)] = type(hooks)()
    return copy.deepcopy(module, memo)
