"""Fully sharded mask training (FSDP-style) for models whose weights and masks do not fit one device.

Each of the N processes of a ``torchrun`` group keeps 1/N of every frozen weight, of every mask logit tensor and of
their Adam state on its device. A forward pass runs the model block by block (``bridge.embed``, each of
``bridge.blocks``, ``bridge.ln_final``, ...): just before a block runs, its weight shards and mask-logit shards are
all-gathered into full tensors, its mask sample is drawn, the block runs through ``torch.func.functional_call`` with
``weight * mask``, and the gathered tensors are dropped when it returns. Each block runs under activation
checkpointing, so the backward pass gathers the block again instead of keeping it; the gather of the logits is
differentiable and its backward reduce-scatters the mask gradients, summed over all processes' batch chunks, onto
the shards that own them.

The model itself is only read: its parameters are sliced once into the shards and never written (the bridge may live
in host memory while the shards live on an accelerator). Mask samples use the same noise as one process (unit i from
``noise.substream(i)``), so sharded training gives the same logits as one process up to float summation order.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist
from jaxtyping import Float, Int
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from modmask_lens.core.bridge import Bridge
from modmask_lens.core.functional import MethodEntry, TensorKey, depth_twins, slot_of, tensor_slots
from modmask_lens.core.world import world
from modmask_lens.masks.mask_set import MaskSet
from modmask_lens.masks.products import unit_products
from modmask_lens.masks.sampling import UniformNoise
from modmask_lens.masks.units import MaskUnit


def shard_bounds(numel: int, rank: int, world_size: int) -> tuple[int, int]:
    """[start, end) of ``rank``'s slice of a flat tensor of ``numel`` elements: equal slices of ceil(numel / N)
    elements, the last ones shorter (possibly empty)."""
    size = math.ceil(numel / world_size)
    return min(rank * size, numel), min((rank + 1) * size, numel)


def _gather(shard: Float[Tensor, " shard"], numel: int) -> Float[Tensor, " numel"]:
    """All processes' shards of a flat tensor of ``numel`` elements, concatenated (not differentiable)."""
    _, world_size = world()
    if world_size == 1:
        return shard
    size = math.ceil(numel / world_size)
    padded = torch.zeros(size, dtype=shard.dtype, device=shard.device)
    padded[: shard.numel()] = shard
    full = torch.empty(size * world_size, dtype=shard.dtype, device=shard.device)
    dist.all_gather_single(full, padded)
    return full[:numel]


class _DifferentiableGather(torch.autograd.Function):
    """Forward: :func:`_gather`. Backward: the full gradient summed over processes, sliced back to this shard."""

    @staticmethod
    def forward(ctx, shard: Tensor, numel: int) -> Tensor:
        ctx.numel, ctx.shard_numel = numel, shard.numel()
        return _gather(shard, numel)

    @staticmethod
    def backward(ctx, grad_full: Tensor) -> tuple[Tensor, None]:
        _, world_size = world()
        if world_size == 1:
            return grad_full, None
        size = math.ceil(ctx.numel / world_size)
        padded = torch.zeros(size * world_size, dtype=grad_full.dtype, device=grad_full.device)
        padded[: ctx.numel] = grad_full
        grad_shard = torch.empty(size, dtype=grad_full.dtype, device=grad_full.device)
        dist.reduce_scatter_single(grad_shard, padded)
        return grad_shard[: ctx.shard_numel], None


@dataclass
class _Block:
    """One top-level piece of the model that runs as a whole: its parameters' shards, one flat tensor per dtype (a
    block may mix dtypes, e.g. float32 norms in a bfloat16 model; one flat tensor would hold some processes' slices
    in one dtype and others' in another, which no gather can join)."""

    path: str
    module: nn.Module
    entries: list[tuple[TensorKey, str, torch.Size, torch.dtype]]  # slot, path in the block, shape, dtype; flat order
    weight_shards: dict[torch.dtype, Tensor]  # this process's slice of the block's parameters of each dtype
    numels: dict[torch.dtype, int]  # elements of each dtype in the block


class ShardedLogits:
    """This process's slices of one mask set's logits (leaf tensors for the optimiser) and their readouts.

    Args:
        masks: the full mask set: its logits are sliced once; :meth:`full` later puts the gathered logits back.
        device: where the shards live.
    """

    def __init__(self, masks: MaskSet, device: torch.device | str):
        self.masks = masks
        self.rank, self.world_size = world()
        self.shards: dict[str, Tensor] = {}
        for unit in masks.units:
            start, end = shard_bounds(unit.numel, self.rank, self.world_size)
            flat = masks.logits[unit.name].detach().reshape(-1)[start:end]
            self.shards[unit.name] = flat.to(device, copy=True).requires_grad_(True)

    def parameters(self) -> list[Tensor]:
        """The logit shards, for an optimiser (same order as :meth:`MaskSet.parameters`)."""
        return list(self.shards.values())

    def logit_sum(self) -> Tensor:
        """Sum of this process's logits (summed over processes, the mask set's :meth:`MaskSet.logit_sum`)."""
        return torch.stack([shard.sum() for shard in self.shards.values()]).sum()

    def full(self) -> MaskSet:
        """The mask set with the current logits gathered from all processes, on the CPU (a collective)."""
        self.masks.logits = {
            unit.name: _gather(self.shards[unit.name].detach(), unit.numel)
            .view(unit.shape)
            .cpu()
            .clone()
            .requires_grad_(True)
            for unit in self.masks.units
        }
        return self.masks

    def gathered_optimizer(self, optimizer: torch.optim.Adam) -> torch.optim.Adam:
        """An Adam over the full logits (:meth:`full`) holding ``optimizer``'s state gathered from all processes,
        for checkpoints that any number of processes can resume (a collective)."""
        full_logits = list(self.full().logits.values())
        state = optimizer.state_dict()
        full_state = {}
        for index, entries in state["state"].items():
            unit = self.masks.units[index]
            full_state[index] = {
                name: value if name == "step" else _gather(value, unit.numel).view(unit.shape).cpu().clone()
                for name, value in entries.items()
            }
        gathered = torch.optim.Adam(full_logits, lr=state["param_groups"][0]["lr"])
        gathered.load_state_dict({"state": full_state, "param_groups": state["param_groups"]})
        return gathered

    def load_optimizer_state(self, optimizer: torch.optim.Adam, full_optimizer: torch.optim.Adam) -> None:
        """Give ``optimizer`` (over :meth:`parameters`) this process's slices of ``full_optimizer``'s state."""
        state = full_optimizer.state_dict()
        sliced = {}
        for index, entries in state["state"].items():
            start, end = shard_bounds(self.masks.units[index].numel, self.rank, self.world_size)
            device = self.parameters()[index].device
            sliced[index] = {
                name: value if name == "step" else value.reshape(-1)[start:end].to(device, copy=True)
                for name, value in entries.items()
            }
        optimizer.load_state_dict({"state": sliced, "param_groups": state["param_groups"]})

    def clip_grad_norm_(self, max_norm: float) -> Tensor:
        """``torch.nn.utils.clip_grad_norm_`` over the full logits: the norm is summed over processes."""
        grads = [shard.grad for shard in self.shards.values() if shard.grad is not None]
        device = self.parameters()[0].device
        squared = sum(
            (grad.double().pow(2).sum() for grad in grads), torch.zeros((), dtype=torch.float64, device=device)
        )
        if self.world_size > 1:
            dist.all_reduce(squared)
        total_norm = squared.sqrt()
        scale = torch.clamp(max_norm / (total_norm + 1e-6), max=1.0).float()
        for grad in grads:
            grad.mul_(scale)
        return total_norm


class ShardedBridge:
    """A frozen bridge whose weights are sharded over the processes of the default group, run with sharded masks.

    Args:
        bridge: the model; read once to cut the shards, never modified.
        device: where shards and computation live (default: the device of the bridge's first parameter).

    Raises:
        ValueError: the bridge holds parameters outside its top-level blocks, or a tensor that several blocks read
            (:func:`~modmask_lens.core.functional.depth_twins`).

    Example:
        >>> sharded = ShardedBridge(bridge, device="cuda")                              # doctest: +SKIP
        >>> logits = sharded(ShardedLogits(masks, "cuda"), 1.0, UniformNoise(0), tokens)  # doctest: +SKIP
    """

    def __init__(self, bridge: Bridge, device: torch.device | str | None = None):
        self.bridge = bridge
        self.device = torch.device(device) if device is not None else next(bridge.parameters()).device
        self.rank, self.world_size = world()
        self.blocks = [self._shard(path, module) for path, module in top_level_blocks(bridge)]
        self._block_of_slot = {entry[0]: block for block in self.blocks for entry in block.entries}
        self._unit_plans: dict[str, tuple[_Block, list[TensorKey]]] = {}  # unit name -> its block, its members' slots
        slots = tensor_slots(bridge)
        outside = [path for key, (path, _) in slots.items() if key not in self._block_of_slot]
        if outside:
            raise ValueError(
                f"parameters {outside[:3]} lie outside the model's blocks, which sharding runs one at a "
                "time; train this model without fully_shard"
            )
        shared = sorted(slots[key][0] for key in depth_twins(slots))
        if shared:
            raise ValueError(
                f"parameters {shared[:2]} are one tensor read at several depths (a block shared across layers), "
                "whose one mask applies at each; sharding runs one block at a time and would mask one depth only; "
                "train this model without fully_shard"
            )
        self.buffers = {
            f"bridge.{path}": buffer.to(self.device) for path, buffer in tensor_slots(bridge, "_buffers").values()
        }

    def _shard(self, path: str, module: nn.Module) -> _Block:
        slots = tensor_slots(module)
        shards, numels = {}, {}
        for dtype in dict.fromkeys(parameter.dtype for _, parameter in slots.values()):
            parameters = [parameter for _, parameter in slots.values() if parameter.dtype == dtype]
            numels[dtype] = sum(parameter.numel() for parameter in parameters)
            start, end = shard_bounds(numels[dtype], self.rank, self.world_size)
            # Slice parameter by parameter, so no flat copy of the whole block is ever made.
            pieces, offset = [], 0
            for parameter in parameters:
                low, high = max(start - offset, 0), min(end - offset, parameter.numel())
                if low < high:
                    pieces.append(parameter.detach().reshape(-1)[low:high].to(self.device, copy=True))
                offset += parameter.numel()
            shards[dtype] = torch.cat(pieces) if pieces else torch.empty(0, dtype=dtype, device=self.device)
        entries = [(key, name, parameter.shape, parameter.dtype) for key, (name, parameter) in slots.items()]
        return _Block(path, module, entries, shards, numels)

    def __call__(
        self,
        logits: ShardedLogits,
        temperature: float,
        noise: UniformNoise,
        input_ids: Int[Tensor, "batch pos"],
        **kwargs,
    ) -> Tensor:
        """The bridge's forward on ``input_ids`` with every masked weight times a mask sample.

        The sample equals :meth:`MaskSet.sample` with the same ``noise``: each block gathers its units' logits and
        draws their samples from ``noise.substream(unit index)``; gradients reach ``logits``'s shards.

        Args:
            logits: this process's logit shards.
            temperature: Gumbel-sigmoid temperature (the masks' config names the sampler).
            noise: this sample's noise (the same on every process that runs this batch chunk).
            input_ids: ``[batch, pos]`` token ids.

        Returns:
            The bridge's output (``[batch, pos, d_vocab]`` logits).
        """
        with self._blocks_replaced(logits, temperature, noise):
            method = type(self.bridge).forward.__get__(self.bridge)
            return torch.func.functional_call(
                MethodEntry(self.bridge),
                self.buffers,
                (method, input_ids.to(self.device)),
                {"use_cache": False, **kwargs},
                tie_weights=False,
                strict=False,
            )

    @contextmanager
    def _blocks_replaced(self, logits: ShardedLogits, temperature: float, noise: UniformNoise) -> Iterator[None]:
        """Each block's instance ``forward`` runs it from its shards (removed again on exit, also after errors)."""
        by_block: dict[str, list[tuple[int, MaskUnit]]] = {block.path: [] for block in self.blocks}
        for index, unit in enumerate(logits.masks.units):
            by_block[self._unit_plan(unit)[0].path].append((index, unit))
        replaced = []
        try:
            for block in self.blocks:
                sampler = _BlockSampler(by_block[block.path], logits.masks.config.sampler, temperature, noise)
                # Through __dict__: bridge components forward attribute writes to the module they wrap.
                block.module.__dict__["forward"] = self._runner(block, sampler, logits)
                replaced.append(block.module)
            yield
        finally:
            for module in replaced:
                del module.__dict__["forward"]

    def _unit_plan(self, unit: MaskUnit) -> tuple[_Block, list[TensorKey]]:
        """The block that holds every tensor ``unit`` masks, and those tensors' slots (worked out once per unit)."""
        if unit.name not in self._unit_plans:
            slots = [slot_of(self.bridge, member.path) for member in unit.members]
            owners = {self._block_of_slot[slot].path for slot in slots if slot in self._block_of_slot}
            if len(owners) != 1:
                raise ValueError(
                    f"mask unit {unit.name!r} masks tensors of {sorted(owners) or 'no'} block(s); "
                    "sharded training needs each unit inside one block"
                )
            self._unit_plans[unit.name] = (self._block_of_slot[slots[0]], slots)
        return self._unit_plans[unit.name]

    def _runner(self, block: _Block, sampler: _BlockSampler, logits: ShardedLogits) -> Callable[..., object]:
        shards = [logits.shards[unit.name] for _, unit in sampler.units]

        def run(*args, **kwargs):
            # Checkpointed: the gathered weights and masks are dropped after the forward and gathered again for the
            # backward; the logit shards are inputs so that their gradients flow.
            return checkpoint(
                self._run_block, block, sampler, len(shards), *shards, *args, use_reentrant=False, **kwargs
            )

        return run

    def _run_block(self, block: _Block, sampler: _BlockSampler, n_shards: int, *args, **kwargs) -> object:
        logit_shards, args = args[:n_shards], args[n_shards:]
        flats = {dtype: _gather(shard, block.numels[dtype]) for dtype, shard in block.weight_shards.items()}
        values, offsets = {}, dict.fromkeys(flats, 0)
        for key, _, shape, dtype in block.entries:
            values[key] = flats[dtype][offsets[dtype] : offsets[dtype] + shape.numel()].view(shape)
            offsets[dtype] += shape.numel()
        for (index, unit), shard in zip(sampler.units, logit_shards):
            unit_logits = _DifferentiableGather.apply(shard, unit.numel).view(unit.shape)
            keys = dict(zip((member.path for member in unit.members), self._unit_plan(unit)[1]))
            weights = {path: values[key] for path, key in keys.items()}
            noise = sampler.noise.substream(index)
            for path, product in unit_products(
                unit, unit_logits, weights, sampler.sampler_name, sampler.temperature, noise
            ).items():
                values[keys[path]] = product
        parameters = {f"bridge.{name}": values[key] for key, name, _, _ in block.entries}
        method = type(block.module).forward.__get__(block.module)
        return torch.func.functional_call(
            MethodEntry(block.module), parameters, (method, *args), kwargs, tie_weights=False, strict=False
        )


@dataclass(frozen=True)
class _BlockSampler:
    """The mask units one block samples (with their index in the mask set) and the sample's settings."""

    units: list[tuple[int, MaskUnit]]
    sampler_name: str  # the masks' config's: gumbel-sigmoid or hard-concrete
    temperature: float
    noise: UniformNoise


def top_level_blocks(bridge: Bridge) -> list[tuple[str, nn.Module]]:
    """The children of the bridge that hold parameters, with module lists (``blocks``) split into their items."""
    blocks = []
    for name, child in bridge.named_children():
        items = child.named_children() if isinstance(child, nn.ModuleList) else [("", child)]
        for index, item in items:
            if any(True for _ in item.parameters()):
                blocks.append((f"{name}.{index}" if index else name, item))
    return blocks
