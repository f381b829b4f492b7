"""The memory estimate printed before mask training, against counts made by hand from the tiny model's tensors."""

from __future__ import annotations

import pytest
import torch
from conftest import boot_gemma4_with_double_wide_mlp

from modmask_lens import MaskConfig, SubtaskData, TrainConfig, train_masks
from modmask_lens.masks.head_outputs import resolved_config
from modmask_lens.masks.mask_set import units_for
from modmask_lens.masks.memory import estimate_memory
from modmask_lens.masks.sharding import ShardedBridge
from modmask_lens.testing.tiny_models import tiny_bridge


def masked_elements(bridge, config: MaskConfig) -> int:
    return sum(member.numel for unit in units_for(bridge, config) for member in unit.members)


def test_weight_granularity_counts_logits_adam_and_one_samples_tensors():
    bridge = tiny_bridge()
    n_masked = masked_elements(bridge, MaskConfig())
    estimate = estimate_memory(bridge, MaskConfig(), TrainConfig(batch_size=8), positions=6, n_tasks=2)
    assert estimate.weights == 4 * sum(parameter.numel() for parameter in bridge.parameters())
    assert estimate.logits == estimate.gradients == 2 * 4 * n_masked  # two tasks, one float32 logit per element
    assert estimate.optimiser == 2 * estimate.logits
    assert estimate.samples == 4 * n_masked + 4 * n_masked  # product + weighted derivative, for one sample at a time
    assert estimate.total == sum(
        getattr(estimate, part) for part in ("weights", "logits", "gradients", "optimiser", "samples", "activations")
    )


def test_bfloat16_products_and_neuron_logits():
    bridge = tiny_bridge().to(torch.bfloat16)
    config = MaskConfig(granularity="neuron", neuron_mask="in-out")
    estimate = estimate_memory(bridge, config, TrainConfig(batch_size=8), positions=6)
    n_logits = sum(unit.numel for unit in units_for(bridge, config))
    assert estimate.logits == 4 * n_logits == 4 * 2 * 64  # two layers' MLP neurons
    assert estimate.samples == 2 * masked_elements(bridge, config)  # bf16 products, no per-element weighted derivatives


def test_neurons_gated_in_one_pass_keep_no_products_and_the_whole_batchs_activations():
    bridge = tiny_bridge()
    train_config = TrainConfig(batch_size=8, n_samples=4)
    gated = estimate_memory(bridge, MaskConfig(granularity="neuron"), train_config, positions=6)
    in_out = estimate_memory(bridge, MaskConfig(granularity="neuron", neuron_mask="in-out"), train_config, positions=6)
    assert gated.logits == in_out.logits == 4 * 2 * 64
    assert gated.samples == 0 and in_out.samples > 0
    # 8 examples in one pass against 2 per sample, each gated activation kept once more (d_mlp 64, d_model 32)
    per_token = {name: 16 * 32 + mlp * 64 + 3 * 4 * 6 for name, mlp in (("gated", 3), ("in_out", 2))}
    unembed = 3 * 40  # d_vocab 40
    assert gated.activations == 4 * 8 * 6 * (2 * per_token["gated"] + unembed)
    assert in_out.activations == 4 * 2 * 6 * (2 * per_token["in_out"] + unembed)
    split = estimate_memory(bridge, MaskConfig(granularity="neuron"), train_config, positions=6, processes=2)
    assert split.activations == gated.activations // 2  # each of 2 processes runs its own 2 of the 4 samples


def test_fully_sharded_divides_the_state():
    bridge = tiny_bridge()
    whole = estimate_memory(bridge, MaskConfig(), TrainConfig(batch_size=8), positions=6)
    sharded = estimate_memory(bridge, MaskConfig(), TrainConfig(batch_size=8), positions=6, shards=4)
    assert sharded.logits == whole.logits // 4 and sharded.optimiser == whole.optimiser // 4
    assert sharded.samples < whole.samples and sharded.devices == 4


@pytest.mark.parametrize("roles", [None, ("W_Q",)], ids=["every-role", "W_Q-only"])
def test_fully_sharded_weights_are_one_process_slices_plus_the_largest_block_gathered(monkeypatch, roles):
    """Counted from the shards ShardedBridge cuts for process 0 of 4. The estimate once took the largest layer's
    products (masked elements only, plus float32 derivatives) as the gathered block: 86,272 bytes against the 54,400
    held with every role masked, 28,416 with W_Q alone (a block's unmasked weights are gathered too)."""
    bridge = tiny_bridge()
    config = MaskConfig(roles=roles)
    monkeypatch.setattr("modmask_lens.masks.sharding.world", lambda: (0, 4))
    blocks = ShardedBridge(bridge).blocks
    held = sum(shard.numel() * shard.element_size() for block in blocks for shard in block.weight_shards.values())
    gathered = max(4 * sum(block.numels.values()) for block in blocks)  # float32
    estimate = estimate_memory(bridge, config, TrainConfig(batch_size=8), positions=6, shards=4)
    assert estimate.weights == held + gathered
    layer_zero = [unit for unit in units_for(bridge, config) if unit.members[0].layer == 0]
    assert estimate.samples == sum(4 * unit.numel + 4 * unit.numel for unit in layer_zero)  # product + derivative


def test_train_masks_prints_the_estimate_first(capsys):
    input_ids = torch.randint(0, 40, (8, 6), generator=torch.Generator().manual_seed(0))
    train_masks(
        tiny_bridge(), SubtaskData("t", input_ids, input_ids.clone()), train_config=TrainConfig(steps=1, batch_size=4)
    )
    assert "mask training needs about" in capsys.readouterr().err


def test_bernoulli_heads_keep_no_products_and_one_blocks_activations_for_the_chunks_copies():
    bridge = tiny_bridge()  # 2 layers x 4 heads, d_model 32, d_mlp 64, vocabulary 40
    config = MaskConfig(granularity="head")
    assert resolved_config(bridge, config, units_for(bridge, config)).sampler == "bernoulli"
    per_token = 16 * 32 + 2 * 64 + 3 * 4 * 6 + 3 * 40  # one block's tensors and the unembedding's, 6 positions
    for per_step, copies in ((8, 1 + 8 // 4), (4, 1 + 4 // 4), (None, 1 + 8 // 4)):  # the sample, then its flips
        train_config = TrainConfig(batch_size=8, n_samples=4, heads_estimated_per_step=per_step)
        estimate = estimate_memory(bridge, config, train_config, positions=6)
        assert estimate.samples == 0
        assert estimate.activations == 4 * copies * 2 * 6 * per_token  # float32, copies of a chunk of 2 examples
    pathwise = estimate_memory(bridge, MaskConfig(granularity="head", sampler="hard-concrete"), train_config, 6)
    assert pathwise.activations > estimate.activations  # a backward keeps every block's activations


def projection_width(hf_parameters: dict[str, torch.Tensor], layer: int, projection: str, axis: int) -> int | None:
    """``axis`` of block ``layer``'s ``projection`` weight (``q_proj``, ...); None where the block has none."""
    found = [
        parameter.shape[axis]
        for name, parameter in hf_parameters.items()
        if f"layers.{layer}." in name and f".{projection}." in name
    ]
    return found[0] if found else None


def gemma4_block_features(hf_parameters: dict[str, torch.Tensor], positions: int) -> list[int]:
    """Per token and block of the tiny Gemma 4 (d_model 32, 4 heads), read off the Hugging Face model's projections:
    12 residual-wide tensors, queries and head outputs (q_proj's rows, o_proj's columns), keys and values (k_proj's
    and v_proj's rows; the key/value-sharing last block has none and reads block 1's), the MLP's two (down_proj's
    columns) and three pattern rows."""
    features = []
    for layer in range(3):
        keys_from = layer if projection_width(hf_parameters, layer, "k_proj", 0) is not None else 1
        attention = projection_width(hf_parameters, layer, "q_proj", 0) + projection_width(
            hf_parameters, layer, "o_proj", 1
        )
        attention += projection_width(hf_parameters, keys_from, "k_proj", 0)
        attention += projection_width(hf_parameters, keys_from, "v_proj", 0)
        mlp = 2 * projection_width(hf_parameters, layer, "down_proj", 1)
        features.append(12 * 32 + attention + mlp + 3 * 4 * positions)
    return features


def test_each_block_is_sized_by_its_own_head_geometry(tmp_path):
    """The same tiny Gemma 4: block 0 attends with 2 key/value heads of d_head 8 (queries 32 wide), blocks 1 and 2 with
    2 of d_head 16 (queries 64 wide). The activations once sized every block's attention as 4 residual-wide tensors
    (16 * d_model in all, with one n_heads): 114,432 bytes for the in-out neuron mask where its blocks hold 119,040."""
    bridge = boot_gemma4_with_double_wide_mlp(tmp_path)
    hf_parameters = dict(bridge.original_model.named_parameters())
    rows = {
        projection: [projection_width(hf_parameters, layer, projection, 0) for layer in range(3)]
        for projection in ("q_proj", "k_proj", "v_proj")
    }
    assert rows == {"q_proj": [32, 64, 64], "k_proj": [16, 32, None], "v_proj": [16, 32, None]}
    block_features = gemma4_block_features(hf_parameters, positions=6)
    assert block_features == [680, 776, 904]  # d_head 8, then 16 (block 2 also twice the neurons)
    train_config = TrainConfig(batch_size=8, n_samples=4)
    in_out = estimate_memory(bridge, MaskConfig(granularity="neuron", neuron_mask="in-out"), train_config, 6)
    assert in_out.activations == 4 * 2 * 6 * (sum(block_features) + 3 * 40) == 119_040  # 2 examples per sample


def test_each_block_is_sized_by_its_own_mlp_width(tmp_path):
    """A tiny Gemma 4 whose last block runs a double-wide MLP (128 neurons, blocks 0 and 1 run 64; cfg.d_mlp says 64),
    against counts read off the Hugging Face model's own tensors. The activations once sized every block by cfg.d_mlp
    (and each gated block by the mean gated width): for the in-out mask, 6,144 bytes short of what its blocks hold (the
    two activations of block 2's 64 more neurons, 12 tokens, float32)."""
    bridge = boot_gemma4_with_double_wide_mlp(tmp_path)
    hf_parameters = dict(bridge.original_model.named_parameters())
    widths = [parameter.shape[1] for name, parameter in hf_parameters.items() if ".down_proj." in name]
    assert widths == [64, 64, 128]
    train_config = TrainConfig(batch_size=8, n_samples=4)
    every_weight = estimate_memory(bridge, MaskConfig(), train_config, positions=6)
    assert every_weight.weights == 4 * sum(parameter.numel() for parameter in hf_parameters.values())
    assert every_weight.logits == 4 * sum(parameter.numel() for parameter in hf_parameters.values())

    block_features = gemma4_block_features(hf_parameters, positions=6)
    unembed = 3 * 40  # d_vocab 40
    in_out = estimate_memory(bridge, MaskConfig(granularity="neuron", neuron_mask="in-out"), train_config, 6)
    assert in_out.logits == 4 * sum(widths)  # one float32 logit per neuron
    assert in_out.activations == 4 * 2 * 6 * (sum(block_features) + unembed) == 119_040  # 2 examples per sample
    gated = estimate_memory(bridge, MaskConfig(granularity="neuron"), train_config, 6)
    assert gated.activations == 4 * 8 * 6 * (sum(block_features) + sum(widths) + unembed)  # each neuron once more
    bernoulli_heads = estimate_memory(bridge, MaskConfig(granularity="head"), train_config, 6)
    copies = 1 + 8 // 4  # the sample, then 8 of its heads flipped (the default), 4 samples a step
    assert bernoulli_heads.activations == 4 * copies * 2 * 6 * (max(block_features) + unembed)  # the widest block
