"""How much memory mask training needs on each device, estimated before it starts.

Mask training holds, per device: the frozen weights; per task, float32 logits, their gradient and Adam's two moments
(16 bytes per logit); for the mask sample being back-propagated, the products ``weight * mask`` the matmuls keep
and, for per-element logits, the weight times the sample's derivative (float32, :mod:`modmask_lens.masks.products`);
and the activations of one batch slice (``batch_size / n_samples`` examples). Samples run one after another, so
only one sample's tensors are alive at a time. A head or neuron mask gated on its outputs
(:mod:`modmask_lens.masks.output_gates`) keeps no product, and the whole batch's activations, as it runs every
sample in one pass (unless fully sharded). A Bernoulli head mask (:mod:`modmask_lens.masks.local_expectation`) runs
forwards without a backward: no products, and one block's activations at a time, for its chunk's copies (the sample
and each head it estimates flipped). Fully sharded training divides weights, logits, gradients and Adam
state by the number of processes and holds one gathered block (its weights, products and weighted derivatives)
at a time.

The activation term is a rough count (the tensors a GPT-style block keeps for its backward, each block sized by its
own head geometry and MLP width); the rest is exact up to allocator overhead. ``benchmarks/bench_scaling.py``
measures the real peak.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from modmask_lens.adapters import ModelShape, model_shape
from modmask_lens.core.bridge import Bridge
from modmask_lens.core.functional import tensor_slots
from modmask_lens.masks.config import MaskConfig, TrainConfig
from modmask_lens.masks.head_outputs import resolved_config
from modmask_lens.masks.local_expectation import VARIANT_EXAMPLES
from modmask_lens.masks.mask_set import units_for
from modmask_lens.masks.output_gates import output_gates
from modmask_lens.masks.sharding import top_level_blocks

LOGIT_BYTES = 4  # logits, their gradient and Adam's moments are float32
ADAM_MOMENTS = 2


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per device, by part.

    Attributes:
        weights: the frozen model's parameters (1/N of them plus one gathered block when fully sharded).
        logits: mask logits of every task.
        gradients: their gradients.
        optimiser: Adam's two moments per logit.
        samples: what one mask sample keeps for its backward (products in the model's dtype, float32 weighted
            derivatives).
        activations: what one batch slice's forward keeps for the backward (rough).
        devices: processes the state is spread over (1 unless fully sharded).
    """

    weights: int
    logits: int
    gradients: int
    optimiser: int
    samples: int
    activations: int
    devices: int = 1

    @property
    def total(self) -> int:
        return self.weights + self.logits + self.gradients + self.optimiser + self.samples + self.activations

    def __str__(self) -> str:
        parts = ("weights", "logits", "gradients", "optimiser", "samples", "activations")
        terms = " + ".join(f"{part} {_gib(getattr(self, part))}" for part in parts)
        where = f"each of {self.devices} devices" if self.devices > 1 else "the device"
        return f"mask training needs about {_gib(self.total)} on {where}: {terms}"


def _block_features(block: ModelShape, positions: int) -> int:
    """Activations one token keeps in a block for its backward (rough): twelve of residual width (norms' inputs and
    outputs, the attention's and MLP's outputs, the sums), the block's queries and head outputs (``n_heads * d_head``
    each) and the keys and values its attention reads (``n_kv_heads * d_head`` each), the MLP's pre- and
    post-activations (``d_mlp`` each) and three rows of the attention pattern (``n_heads * positions``: scores,
    pattern, its dropout). ``block`` is the block's own shape (:meth:`ModelShape.at_layer`): Gemma 4's blocks differ
    in key/value heads, ``d_head`` and MLP width. A block that reads an earlier block's keys and values (Gemma 4's
    key/value-sharing blocks) counts them as well, on the high side."""
    attention = 2 * block.n_heads * block.d_head + 2 * block.n_kv_heads * block.d_head
    mlp = 2 * (block.d_mlp or 4 * block.d_model)
    return 12 * block.d_model + attention + mlp + 3 * block.n_heads * positions


def _gib(n_bytes: int) -> str:
    return f"{n_bytes / 2**30:.2f} GiB"


def estimate_memory(
    bridge: Bridge,
    mask_config: MaskConfig,
    train_config: TrainConfig,
    positions: int,
    n_tasks: int = 1,
    shards: int = 1,
    processes: int = 1,
) -> MemoryEstimate:
    """Estimate the peak memory of mask training per device (see the module docstring for what is counted).

    Args:
        bridge: the model.
        mask_config, train_config: the training settings.
        positions: tokens per example (the longest subtask's).
        n_tasks: subtasks trained in one run (each has its own logits and Adam state).
        shards: processes of a fully sharded run (1: every process holds everything).
        processes: processes that share out each batch's mask samples (``torchrun``, data-parallel or fully
            sharded): a head or neuron mask gated in one pass runs only its own samples' examples.

    Example:
        >>> from modmask_lens.testing.tiny_models import tiny_bridge
        >>> estimate = estimate_memory(tiny_bridge(), MaskConfig(), TrainConfig(batch_size=8), positions=6)
        >>> estimate.logits == 4 * sum(unit.numel for unit in units_for(tiny_bridge(), MaskConfig()))
        True
        >>> print(estimate)  # doctest: +ELLIPSIS
        mask training needs about 0.00 GiB on the device: weights 0.00 GiB + logits ...
    """
    units = units_for(bridge, mask_config)
    resolved = resolved_config(bridge, mask_config, units)
    # Fully sharded training multiplies gathered weights block by block, never gates.
    gates = output_gates(bridge, resolved, units) if shards == 1 else None
    gated_in_one_pass = gates is not None
    parameters = {id(parameter): parameter for parameter in bridge.parameters()}.values()
    weight_bytes = sum(parameter.numel() * parameter.element_size() for parameter in parameters)
    model_dtype = next(iter(parameters)).dtype
    dtype_bytes = torch.empty((), dtype=model_dtype).element_size()
    n_logits = sum(unit.numel for unit in units)

    # One sample's products (every masked element, model dtype) and weighted derivatives (per-element units,
    # float32), by unit.
    bernoulli = resolved.sampler == "bernoulli"
    sample_bytes: dict[str, int] = {}
    for unit in units:
        per_element = unit.numel > 1 and unit.per_element
        unit_bytes = sum(member.numel for member in unit.members) * dtype_bytes + per_element * unit.numel * LOGIT_BYTES
        sample_bytes[unit.name] = 0 if gated_in_one_pass or bernoulli else unit_bytes
    dims = model_shape(bridge)
    chunk = -(-train_config.batch_size // train_config.n_samples)
    # A gated pass runs every sample this process owns at once, and keeps each gated activation once more.
    owned_samples = -(-train_config.n_samples // processes)
    tokens = (chunk * owned_samples if gated_in_one_pass else chunk) * positions
    gated_features = 0 if gates is None else sum(gate.features for gate in gates)  # every layer's
    block_features = [_block_features(dims.at_layer(layer), positions) for layer in range(dims.n_layers)]
    activations = tokens * (sum(block_features) + gated_features + 3 * dims.d_vocab) * dtype_bytes
    if bernoulli:  # forwards without a backward: one block's tensors alive at a time, for every copy of the chunk
        per_step = train_config.heads_estimated_per_step
        estimated = n_logits if per_step is None else min(per_step, n_logits)  # a head mask's logits are its heads
        copies = min(1 + -(-estimated // train_config.n_samples), max(1, VARIANT_EXAMPLES // chunk))
        tokens = copies * chunk * positions
        activations = tokens * (max(block_features) + 3 * dims.d_vocab) * dtype_bytes

    if shards > 1:
        # Each block is cut into slices on its own, one flat slice per dtype (a tensor tied across blocks is held by
        # each); while a block runs, all of its weights are gathered (masked or not) and its units' products made.
        held, gathered, block_samples = 0, 0, 0
        for path, module in top_level_blocks(bridge):
            tensors = [tensor for _, tensor in tensor_slots(module).values()]
            for dtype in {tensor.dtype for tensor in tensors}:
                numel = sum(tensor.numel() for tensor in tensors if tensor.dtype == dtype)
                held += -(-numel // shards) * tensors[0].new_empty((), dtype=dtype).element_size()
            gathered = max(gathered, sum(tensor.numel() * tensor.element_size() for tensor in tensors))
            inside = [unit for unit in units if unit.members[0].path.startswith(f"{path}.")]
            block_samples = max(block_samples, sum(sample_bytes[unit.name] for unit in inside))
        return MemoryEstimate(
            weights=held + gathered,
            logits=n_tasks * n_logits * LOGIT_BYTES // shards,
            gradients=n_tasks * n_logits * LOGIT_BYTES // shards,
            optimiser=n_tasks * ADAM_MOMENTS * n_logits * LOGIT_BYTES // shards,
            samples=block_samples,
            activations=activations,
            devices=shards,
        )
    return MemoryEstimate(
        weights=weight_bytes,
        logits=n_tasks * n_logits * LOGIT_BYTES,
        gradients=n_tasks * n_logits * LOGIT_BYTES,
        optimiser=n_tasks * ADAM_MOMENTS * n_logits * LOGIT_BYTES,
        samples=sum(sample_bytes.values()),
        activations=activations,
    )
