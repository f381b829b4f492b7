"""Shared fixtures and helpers of every tier (tests/unit, tests/integration, tests/acceptance): tiny bridges of each
supported family, built offline in a second. Each test is marked with its tier."""

from __future__ import annotations

import os
import random
import zlib

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from transformer_lens.model_bridge import TransformerBridge
from transformers import (
    Gemma4ForCausalLM,
    Gemma4TextConfig,
    Glm4MoeConfig,
    Glm4MoeForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    GptOssConfig,
    GptOssForCausalLM,
    JambaConfig,
    JambaForCausalLM,
    Llama4ForCausalLM,
    Llama4TextConfig,
    MixtralConfig,
    MixtralForCausalLM,
    NemotronHConfig,
    NemotronHForCausalLM,
    OlmoeConfig,
    OlmoeForCausalLM,
    Qwen2MoeConfig,
    Qwen2MoeForCausalLM,
    SwitchTransformersConfig,
    SwitchTransformersForConditionalGeneration,
    Zamba2Config,
    Zamba2ForCausalLM,
)

from modmask_lens.core.random import step_generator
from modmask_lens.testing.tiny_models import TINY_HF_SIZES, TINY_NATIVE_CONFIG, boot_tiny, save_tiny

torch.set_num_threads(1)

VOCAB = TINY_NATIVE_CONFIG["d_vocab"]


def boot_gpt2(directory, seed: int = 0, n_layer: int = 2) -> TransformerBridge:
    """A tiny GPT-2 saved to ``directory`` and booted through ``boot_transformers`` (the real HF path)."""
    torch.manual_seed(seed)
    config = GPT2Config(
        n_layer=n_layer,
        n_embd=32,
        n_head=4,
        vocab_size=VOCAB,
        n_positions=16,
        resid_pdrop=0.1,
        embd_pdrop=0.1,
        attn_pdrop=0.1,
    )
    model = GPT2LMHeadModel(config)
    with torch.no_grad():  # GPT-2 initialises biases and norm biases to constants; randomise so every tensor matters
        for name, parameter in model.named_parameters():
            if name.endswith("bias") or ".ln_" in name:
                parameter.add_(torch.randn_like(parameter) * 0.1)
    model.save_pretrained(directory)
    return TransformerBridge.boot_transformers(str(directory), device="cpu")


def boot_native(gqa: bool = False, seed: int = 0) -> TransformerBridge:
    """A tiny TL-native bridge: LayerNorm + learned positions, or RMSNorm + rotary + gated MLP + GQA; its weights
    depend on ``seed`` alone (the initialisation and the noise added to it draw from generators seeded by it, never
    from torch's global one, so the model is the same whichever tests ran before)."""
    config = TINY_NATIVE_CONFIG | {"seed": seed}
    if gqa:
        config |= {
            "normalization_type": "RMS",
            "positional_embedding_type": "rotary",
            "gated_mlp": True,
            "n_key_value_heads": 2,
            "act_fn": "silu",
        }
    else:
        config |= {"normalization_type": "LN", "act_fn": "gelu"}
    bridge = TransformerBridge.boot_native(config)
    generator = step_generator(seed, 0, "boot_native noise")
    with torch.no_grad():
        for parameter in bridge.original_model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.05)
    return bridge


def boot_jamba(directory) -> TransformerBridge:
    """Layer 0: attention (4 heads) and a dense MLP; layer 1: a Mamba mixer and experts (as the released Jamba)."""
    torch.manual_seed(0)
    config = JambaConfig(
        **TINY_HF_SIZES,
        num_key_value_heads=2,
        attn_layer_period=2,
        attn_layer_offset=0,
        expert_layer_period=2,
        expert_layer_offset=1,
        num_experts=4,
    )
    return boot_tiny(JambaForCausalLM(config), directory)


def boot_gemma4_with_fewer_global_key_value_heads(directory, per_layer_inputs: bool = True) -> TransformerBridge:
    """A tiny Gemma 4 whose full-attention layer (block 1) has one key/value head of 16 dims while its sliding layer
    (block 0) has two of 8, as the released 31B has 4 against 16: TransformerLens keeps the majority in
    ``cfg.n_key_value_heads`` and the per-block truth in ``cfg.per_layer_num_key_value_heads``. Without
    ``per_layer_inputs`` it lacks Gemma 4's per-layer token embeddings (``hidden_size_per_layer_input=0``)."""
    config = Gemma4TextConfig(
        num_key_value_heads=2,
        head_dim=8,
        global_head_dim=16,
        num_global_key_value_heads=1,
        attention_k_eq_v=True,
        vocab_size_per_layer_input=64,
        hidden_size_per_layer_input=8 if per_layer_inputs else 0,
        layer_types=["sliding_attention", "full_attention"],
        **TINY_HF_SIZES,
    )
    return boot_tiny(Gemma4ForCausalLM(config), directory)


def boot_gemma4_with_double_wide_mlp(directory) -> TransformerBridge:
    """A tiny Gemma 4 whose last block reuses an earlier block's keys and values (``num_kv_shared_layers=1``) and so,
    with ``use_double_wide_mlp`` as in the released E2B, runs an MLP of 128 neurons where blocks 0 and 1 run 64:
    TransformerLens's ``cfg.d_mlp`` says 64 for all three."""
    config = Gemma4TextConfig(
        num_key_value_heads=2,
        head_dim=8,
        global_head_dim=16,
        hidden_size_per_layer_input=0,
        num_kv_shared_layers=1,
        use_double_wide_mlp=True,
        layer_types=["sliding_attention", "full_attention", "full_attention"],
        **(TINY_HF_SIZES | {"num_hidden_layers": 3}),
    )
    return boot_tiny(Gemma4ForCausalLM(config), directory)


LINEAR_ATTENTION_SIZES = dict(
    **TINY_HF_SIZES,
    num_key_value_heads=2,
    head_dim=8,
    layer_types=["linear_attention", "full_attention"],
    linear_key_head_dim=8,
    linear_value_head_dim=8,
    linear_num_key_heads=2,
    linear_num_value_heads=4,
    num_experts=4,
    num_experts_per_tok=2,
    moe_intermediate_size=16,
    shared_expert_intermediate_size=16,
)
"""A tiny Qwen3-Next / Qwen3.5: a gated delta-rule linear-attention layer, then full attention; experts in both."""


N_EXPERTS, D_EXPERT, D_SHARED = 4, 64, 48
MOE = {
    "mixtral": lambda: MixtralForCausalLM(
        MixtralConfig(num_key_value_heads=2, num_local_experts=N_EXPERTS, num_experts_per_tok=2, **TINY_HF_SIZES)
    ),
    "olmoe": lambda: OlmoeForCausalLM(
        OlmoeConfig(num_experts=N_EXPERTS, num_experts_per_tok=2, **TINY_HF_SIZES)  # intermediate_size per expert
    ),
    # gate and up rows interleaved, stacks stored [n_experts, in, out]
    "gpt_oss": lambda: GptOssForCausalLM(
        GptOssConfig(
            num_key_value_heads=2,
            num_local_experts=N_EXPERTS,
            num_experts_per_tok=2,
            head_dim=8,
            layer_types=["full_attention", "full_attention"],
            **TINY_HF_SIZES,
        )
    ),
    # a shared expert beside the routed ones, wrapped by TransformerLens (blocks.{i}.mlp.shared_expert)
    "qwen2_moe": lambda: Qwen2MoeForCausalLM(
        Qwen2MoeConfig(
            num_key_value_heads=2,
            num_experts=N_EXPERTS,
            num_experts_per_tok=2,
            moe_intermediate_size=D_EXPERT,
            shared_expert_intermediate_size=D_SHARED,
            **TINY_HF_SIZES,
        )
    ),
    # experts stored [n_experts, in, out] without transformers' layout flags, an nn.Linear router, a shared expert
    "llama4": lambda: Llama4ForCausalLM(
        Llama4TextConfig(
            num_key_value_heads=2,
            num_local_experts=N_EXPERTS,
            num_experts_per_tok=1,
            head_dim=8,
            intermediate_size_mlp=D_EXPERT,
            interleave_moe_layer_step=1,
            **TINY_HF_SIZES,
        )
    ),
    # layer 0 dense (dense_in/dense_gate/dense_out), layer 1 routed experts plus an unwrapped shared expert
    "glm4_moe": lambda: Glm4MoeForCausalLM(
        Glm4MoeConfig(
            num_key_value_heads=2,
            n_routed_experts=N_EXPERTS,
            num_experts_per_tok=2,
            moe_intermediate_size=D_EXPERT,
            n_shared_experts=1,
            first_k_dense_replace=1,
            **TINY_HF_SIZES,
        )
    ),
}
"""Tiny mixture-of-experts models of six families, each a factory (``boot_tiny(MOE["mixtral"](), path)``): fused
and interleaved gate/up stacks, a shared expert beside the routed ones, a dense layer before a sparse one."""


TIERS = ("unit", "integration", "acceptance")


def pytest_collection_modifyitems(items):
    for item in items:
        tier = next((part for part in item.path.parts if part in TIERS), None)
        if tier is not None:
            item.add_marker(tier)


@pytest.fixture(autouse=True)
def _same_type_check_draws_every_run(request):
    """Seeds Python's ``random`` from the test's id. The runtime type checks (beartype, through jaxtyping) check one
    randomly drawn item of each container they are given, from ``random``; unseeded, a test that passed here could
    draw another item in CI and fail there."""
    random.seed(zlib.crc32(request.node.nodeid.encode()))


@pytest.fixture
def gpt2_bridge(tmp_path):
    return boot_gpt2(tmp_path / "gpt2")


@pytest.fixture(params=["gpt2", "native", "native_gqa"])
def any_bridge(request, tmp_path):
    if request.param == "gpt2":
        return boot_gpt2(tmp_path / "gpt2")
    return boot_native(gqa=request.param == "native_gqa")


@pytest.fixture
def tokens():
    return torch.randint(0, VOCAB, (3, 10), generator=torch.Generator().manual_seed(1))


def state_snapshot(bridge) -> dict[str, torch.Tensor]:
    """Clones of every parameter and buffer, by every module path (catches a swapped tensor under any alias)."""
    snapshot = {name: tensor.detach().clone() for name, tensor in bridge.named_parameters(remove_duplicate=False)}
    snapshot |= {f"state_dict/{name}": tensor.detach().clone() for name, tensor in bridge.state_dict().items()}
    return snapshot


def assert_unchanged(bridge, snapshot) -> None:
    now = state_snapshot(bridge)
    assert now.keys() == snapshot.keys()
    for name, tensor in snapshot.items():
        assert torch.equal(now[name], tensor), name
    assert "forward" not in bridge.__dict__
    assert all(
        not isinstance(p, torch.Tensor) or isinstance(p, torch.nn.Parameter)
        for _, module in bridge.named_modules()
        for p in module._parameters.values()
        if p is not None
    )


def assert_local_expectation_is_removal_cost(bridge, unit_name: str, heads: tuple[int, ...]) -> None:
    """The default head sampler resolves to ``bernoulli`` on ``bridge`` and its local-expectation gradient on each of
    ``heads`` of the logit unit ``unit_name`` equals ``-p (1 - p)`` times the loss change of removing the head from the
    step's sample, measured with the binary mask on the weights (the kit checks that equals zeroing the head's output)
    instead of the sampler's own ``hook_z`` gates."""
    from modmask_lens import MaskConfig, MaskSet, SubtaskData
    from modmask_lens.masks.apply import masked
    from modmask_lens.masks.local_expectation import local_expectation_step
    from modmask_lens.masks.objectives import AnswerCrossEntropy, Outputs
    from modmask_lens.masks.sampling import UniformNoise, sample_mask

    mask = MaskSet.for_bridge(bridge, MaskConfig(granularity="head", init_logit=0.5))
    assert mask.config.sampler == "bernoulli"
    vocab = bridge.cfg.d_vocab
    input_ids = torch.randint(5, min(vocab, 40), (4, 6), generator=torch.Generator().manual_seed(2))
    labels = torch.full_like(input_ids, -100)
    labels[:, -2:] = input_ids[:, -2:]
    batch = SubtaskData("answers", input_ids, labels).examples(torch.arange(4))
    noise = UniformNoise(5)
    drawn = {
        unit.name: sample_mask(mask.logits[unit.name].detach(), "gumbel-sigmoid", 1.0, noise.substream(index)) > 0
        for index, unit in enumerate(mask.units)
    }
    local_expectation_step(bridge, mask, AnswerCrossEntropy(), batch, None, noise, 1.0)

    def loss_sum(kept: dict[str, torch.Tensor]) -> float:
        with masked(bridge, mask.binary_from(kept)), torch.no_grad():
            return AnswerCrossEntropy().score(Outputs(bridge(batch.input_ids)), None, batch).loss_sum.item()

    keep = torch.sigmoid(torch.tensor(0.5)).item()
    for head in heads:
        on, off = ({**drawn, unit_name: drawn[unit_name].clone()} for _ in range(2))
        on[unit_name][head], off[unit_name][head] = True, False
        expected = -keep * (1 - keep) * (loss_sum(off) - loss_sum(on))
        assert abs(expected) > 1e-6  # the head matters on these examples, so the comparison says something
        assert mask.logits[unit_name].grad[head].item() == pytest.approx(expected, rel=1e-4, abs=1e-6)


def tiny_nemotron_h(folder, vocab_size: int = 40, d_mlp: int = 64, d_expert: int = 16) -> TransformerBridge:
    """A tiny NemotronH, one layer of each kind (Mamba-2, mixture of experts with a shared expert, attention, MLP);
    ``d_mlp`` is the MLP layer's hidden width, ``d_expert`` each expert's and the shared expert's."""
    config = NemotronHConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        layers_block_type=["linear_attention", "moe", "full_attention", "mlp"],
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        intermediate_size=d_mlp,
        ssm_state_size=4,
        mamba_num_heads=4,
        mamba_head_dim=8,
        n_groups=1,
        chunk_size=8,
        n_routed_experts=4,
        moe_intermediate_size=d_expert,
        moe_shared_expert_intermediate_size=d_expert,
        max_position_embeddings=32,
        use_mamba_kernels=False,
    )
    return boot_tiny(NemotronHForCausalLM(config), folder)


SWITCH_EXPERTS, SWITCH_D_FF = 4, 64
"""Experts per sparse layer and hidden units per expert (and per dense MLP) of :func:`tiny_switch`."""


def tiny_switch(folder) -> TransformerBridge:
    """A tiny Switch Transformer (seeded): 2 encoder and 2 decoder layers, each stack a dense MLP layer then a sparse
    one of :data:`SWITCH_EXPERTS` experts (as switch-base-8 alternates them), saved as ``pytorch_model.bin``, the only
    checkpoint TransformerLens's Switch adapter loads (the test writes the pickle, the package never does)."""
    config = SwitchTransformersConfig(
        vocab_size=40,
        d_model=32,
        d_ff=SWITCH_D_FF,
        d_kv=8,
        num_heads=4,
        num_layers=2,
        num_decoder_layers=2,
        num_experts=SWITCH_EXPERTS,
        num_sparse_encoder_layers=1,
        num_sparse_decoder_layers=1,
        decoder_start_token_id=2,
        pad_token_id=0,
        eos_token_id=2,
    )
    torch.manual_seed(0)
    model = SwitchTransformersForConditionalGeneration(config)
    save_tiny(model, folder)
    torch.save(model.state_dict(), f"{folder}/pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    return TransformerBridge.boot_transformers(str(folder), device="cpu")


def tiny_zamba2(folder, attention_adapters: bool = False) -> TransformerBridge:
    """A tiny Zamba2 (seeded): a Mamba layer, then two hybrid layers that run one shared transformer block (so the
    block runs at two depths), optionally with its per-layer attention adapters (rank 8)."""
    adapters = {"use_shared_attention_adapter": True, "adapter_rank": 8} if attention_adapters else {}
    config = Zamba2Config(
        **(TINY_HF_SIZES | {"num_hidden_layers": 3}),
        layers_block_type=["mamba", "hybrid", "hybrid"],
        num_key_value_heads=4,
        mamba_d_state=16,
        mamba_headdim=8,
        chunk_size=16,
        **adapters,
    )
    torch.manual_seed(0)
    return boot_tiny(Zamba2ForCausalLM(config), folder)
