"""Adapters resolve exactly the tensors the forward pass reads, with their roles and unit layouts."""

from __future__ import annotations

import pytest
import torch
from conftest import (
    LINEAR_ATTENTION_SIZES,
    boot_gemma4_with_double_wide_mlp,
    boot_gemma4_with_fewer_global_key_value_heads,
    boot_jamba,
    boot_native,
)

from modmask_lens import MaskConfig, MaskSet, UnsupportedArchitecture, adapter_for, masked
from modmask_lens.adapters import DerivedAdapter, model_shape
from modmask_lens.testing.tiny_models import TINY_HF_SIZES, boot_tiny


def test_a_family_without_hand_written_adapter_gets_the_one_derived_from_transformer_lens(gpt2_bridge):
    adapter = adapter_for(gpt2_bridge)
    assert isinstance(adapter, DerivedAdapter) and adapter.name == "transformer_lens"
    for granularity in ("weight", "neuron", "head", "matrix"):
        assert MaskSet.for_bridge(gpt2_bridge, MaskConfig(granularity=granularity)).units


def test_head_granularity_refuses_clearly_where_no_unit_is_located(gpt2_bridge, monkeypatch):
    from modmask_lens.adapters import registry

    class NoLayouts(DerivedAdapter):
        name = "no_layouts"
        architectures = ("GPT2LMHeadModel",)

        def stored_layout(self, key, module):
            return "unknown"

    monkeypatch.setattr(registry, "_BUILT_IN", (NoLayouts,))
    assert MaskSet.for_bridge(gpt2_bridge, MaskConfig(granularity="matrix")).units
    for granularity in ("head", "neuron"):
        with pytest.raises(
            UnsupportedArchitecture,
            match=rf"GPT2LMHeadModel: no adapter that locates {granularity}s \(no_layouts adapter: .*CONTRIBUTING",
        ):
            MaskSet.for_bridge(gpt2_bridge, MaskConfig(granularity=granularity))


def test_something_that_is_not_a_bridge_is_refused():
    with pytest.raises(UnsupportedArchitecture, match="not a TransformerBridge"):
        adapter_for(torch.nn.Linear(2, 2))


def test_gpt2_fused_c_attn_is_not_a_target_and_layouts_follow_conv1d(gpt2_bridge):
    specs = {spec.key: spec for spec in adapter_for(gpt2_bridge).tensor_specs(gpt2_bridge)}
    assert not any("qkv" in key or "c_attn" in spec.path for key, spec in specs.items())
    assert "unembed.bias" not in specs  # synthetic zero bias of the bridge, not a parameter
    assert specs["blocks.0.mlp.in.weight"].shape == (32, 128) and specs["blocks.0.mlp.in.weight"].unit_axis == 1
    assert specs["blocks.0.mlp.out.weight"].unit_axis == 0
    assert specs["blocks.0.attn.o.weight"].unit_axis == 0 and specs["blocks.0.attn.q.weight"].unit_axis == 0
    assert specs["embed.weight"].role == "W_E" and specs["unembed.weight"].role == "W_U"
    assert specs["unembed.weight"].tied_to == "embed.weight" and specs["embed.weight"].tied_to is None
    assert specs["blocks.0.mlp.in.weight"].layout == "conv1d" and specs["blocks.0.attn.q.weight"].layout == "linear"
    assert specs["embed.weight"].layout == "embedding" and specs["blocks.0.ln1.weight"].layout == "vector"


def test_head_slices_match_transformer_lens_w_q(gpt2_bridge):
    """Head h of our W_Q layout is TransformerLens's W_Q[layer, h] (transposed [d_head, d_model] rows)."""
    spec = next(s for s in adapter_for(gpt2_bridge).tensor_specs(gpt2_bridge) if s.key == "blocks.1.attn.q.weight")
    weight = gpt2_bridge.get_parameter(spec.path)
    for head in range(gpt2_bridge.cfg.n_heads):
        rows = weight.narrow(spec.unit_axis, head * spec.unit_width, spec.unit_width)
        torch.testing.assert_close(rows.T, gpt2_bridge.W_Q[1, head])


def test_gqa_native_key_value_tensors_are_kv_head_units():
    bridge = boot_native(gqa=True)
    specs = {spec.key: spec for spec in adapter_for(bridge).tensor_specs(bridge)}
    assert specs["blocks.0.attn.k.weight"].unit == "kv_head" and specs["blocks.0.attn.k.weight"].shape == (16, 32)
    assert specs["blocks.0.mlp.gate.weight"].role == "W_gate" and specs["blocks.0.mlp.gate.weight"].unit == "neuron"


def test_a_registered_adapter_takes_precedence_in_this_process(gpt2_bridge, monkeypatch):
    from modmask_lens.adapters import Adapter, register_adapter, registry

    monkeypatch.setattr(registry, "_REGISTERED", {})

    @register_adapter
    class MyGpt2(type(adapter_for(gpt2_bridge))):
        name = "my_gpt2"
        architectures = ("GPT2LMHeadModel",)

    assert adapter_for(gpt2_bridge).name == "my_gpt2" and "my_gpt2" in registry.installed_adapters()
    with pytest.raises(TypeError, match="not a subclass|Type-check"):  # beartype checks it first in tests
        register_adapter(dict)
    assert issubclass(MyGpt2, Adapter)


def test_the_norm_in_front_of_a_reader_follows_the_blocks_norm_placement():
    from modmask_lens.adapters.bert import BertAdapter

    pre, post = DerivedAdapter(), BertAdapter()
    assert [pre.reader_norm(kind, 1) for kind in ("head", "mlp", "unembed")] == [
        ("ln1.w", 1),
        ("ln2.w", 1),
        ("ln_final.w", None),
    ]
    assert [post.reader_norm(kind, 1) for kind in ("head", "mlp", "unembed")] == [
        ("ln2.w", 0),
        ("ln1.w", 1),
        ("ln_final.w", None),
    ]
    assert post.reader_norm("head", 0) == ("ln_embed.w", None)


def test_key_value_heads_follow_each_blocks_own_count_where_blocks_differ(tmp_path):
    """Block 1's one key head of 16 rows was read as two heads of 8 (the config's majority count), so a qkvo head
    mask that turned off query heads 2 and 3 cut half of the key head that heads 0 and 1 read (their hook_z moved by
    2.4)."""
    bridge = boot_gemma4_with_fewer_global_key_value_heads(tmp_path)
    for spec in adapter_for(bridge).tensor_specs(bridge):
        if spec.unit == "kv_head":
            attention = bridge.get_submodule(f"blocks.{spec.layer}.attn._original_component")
            heads = attention.config.num_attention_heads // attention.num_key_value_groups
            assert (spec.unit_count, spec.unit_width) == (heads, attention.head_dim), spec.key
    mask = MaskSet.for_bridge(bridge, MaskConfig(granularity="head", head_mask="qkvo"))
    gates = {name: torch.ones(logits.shape) for name, logits in mask.logits.items()}
    gates["blocks.1.attn"] = torch.tensor([1.0, 1.0, 0.0, 0.0])
    samples = {member.path: unit.expand(gates[unit.name], member) for unit in mask.units for member in unit.members}
    tokens = torch.tensor([[5, 6, 7, 8, 9, 10]])
    _, reference = bridge.run_with_cache(tokens, names_filter="blocks.1.attn.hook_z")
    with masked(bridge, lambda: samples):
        _, cut = bridge.run_with_cache(tokens, names_filter="blocks.1.attn.hook_z")
    kept_heads = slice(0, 2)
    assert torch.equal(
        cut["blocks.1.attn.hook_z"][:, :, kept_heads], reference["blocks.1.attn.hook_z"][:, :, kept_heads]
    )


def test_a_blocks_mlp_width_is_its_own_where_blocks_differ(tmp_path):
    """Gemma 4's key/value-sharing block 2 runs an MLP of 128 neurons (use_double_wide_mlp) where cfg.d_mlp says
    64; ModelShape.at_layer(2).d_mlp said 64, so plans sized by it gave that block half its neurons."""
    bridge = boot_gemma4_with_double_wide_mlp(tmp_path)
    dims = model_shape(bridge)
    widths = [layer.mlp.intermediate_size for layer in bridge.original_model.model.layers]
    assert widths == [64, 64, 128]
    assert [dims.at_layer(layer).d_mlp for layer in range(dims.n_layers)] == widths
    neurons = {spec.layer: spec.unit_count for spec in adapter_for(bridge).tensor_specs(bridge) if spec.role == "W_out"}
    assert [neurons[layer] for layer in range(dims.n_layers)] == widths
    assert dims.d_mlp == 64 and dims.at_layer(None).d_mlp == 64


@pytest.mark.parametrize("family", ["Gemma2", "Qwen3"])
def test_every_norm_gain_the_model_holds_is_in_a_default_weight_mask(family, tmp_path):
    """Gemma 2's post-attention and post-MLP norms (TransformerLens's ln1_post / ln2_post) and Qwen3's query/key norms
    (attn.q_norm / attn.k_norm) had the role ``other``, which no MaskConfig.kinds selects: the default weight mask
    (kinds linear and norm) left them whole (128 and 32 of the tiny models' parameters)."""
    import transformers

    config_class = getattr(transformers, f"{family}Config")
    model = getattr(transformers, f"{family}ForCausalLM")(
        config_class(num_key_value_heads=2, head_dim=8, **TINY_HF_SIZES)
    )
    bridge = boot_tiny(model, tmp_path)
    gains = {
        id(module.weight)
        for module in bridge.original_model.modules()
        if type(module).__name__.endswith("RMSNorm") and isinstance(getattr(module, "weight", None), torch.nn.Parameter)
    }
    mask = MaskSet.for_bridge(bridge, MaskConfig(granularity="weight"))
    masked_parameters = {id(bridge.get_parameter(member.path)) for member in mask.members}
    assert len(gains) > 2 * bridge.cfg.n_layers + 1  # more than each block's ln1/ln2 and the final norm
    assert gains <= masked_parameters


def _masked_parameter_ids(bridge, config: MaskConfig) -> set[int]:
    return {id(bridge.get_parameter(member.path)) for member in MaskSet.for_bridge(bridge, config).members}


def test_the_embedding_norm_token_types_and_mlm_transform_are_targets_in_every_family(tmp_path):
    """TransformerLens's embed_ln, token_type_embed and mlm_head had roles only in the BERT adapter; BLOOM's and
    RoBERTa's (derived adapter) had the role ``other``, which no mask selects: the default weight mask left BLOOM's
    word-embedding LayerNorm and RoBERTa's embedding LayerNorm, token-type embedding and MLM dense whole."""
    from transformers import BloomConfig, BloomForCausalLM, RobertaConfig, RobertaForMaskedLM

    bloom = boot_tiny(BloomForCausalLM(BloomConfig(hidden_size=32, n_layer=2, n_head=4, vocab_size=40)), tmp_path / "b")
    embedding_norm = bloom.original_model.transformer.word_embeddings_layernorm
    expected = {id(embedding_norm.weight), id(embedding_norm.bias)}
    assert expected <= _masked_parameter_ids(bloom, MaskConfig(granularity="weight", kinds=("norm", "bias")))

    roberta = boot_tiny(RobertaForMaskedLM(RobertaConfig(**TINY_HF_SIZES)), tmp_path / "r")
    model = roberta.original_model
    expected = {
        id(parameter)
        for module in (model.roberta.embeddings.LayerNorm, model.roberta.embeddings.token_type_embeddings)
        for parameter in module.parameters()
    } | {id(model.lm_head.dense.weight)}
    assert expected <= _masked_parameter_ids(
        roberta, MaskConfig(granularity="weight", kinds=("linear", "norm", "embedding", "bias"))
    )


def test_gemma4_per_layer_inputs_are_targets_of_their_own_blocks(tmp_path):
    """Gemma 4's per-layer inputs (each block's per_layer_input_gate, per_layer_projection and
    post_per_layer_input_norm; the model's embed_tokens_per_layer, per_layer_model_projection and
    per_layer_projection_norm) had the role ``other`` and no layer: no mask selected them (2,632 of the tiny model's
    24,216 parameters), and MaskConfig(layers=...) could not reach a block's."""
    bridge = boot_gemma4_with_fewer_global_key_value_heads(tmp_path)
    specs = adapter_for(bridge).tensor_specs(bridge)
    assert [spec.key for spec in specs if spec.kind == "other"] == []
    for spec in specs:
        if ".per_layer_" in spec.key or ".post_per_layer_" in spec.key:
            block = spec.key.split(".")[1] if spec.key.startswith("blocks.") else None
            assert spec.layer == (None if block is None else int(block)), spec.key
    language_model = bridge.original_model.model
    expected = {id(parameter) for name, parameter in language_model.named_parameters() if "per_layer" in name}
    assert len(expected) == 3 + 3 * bridge.cfg.n_layers
    everything = MaskConfig(granularity="weight", kinds=("linear", "norm", "embedding", "bias"))
    assert expected <= _masked_parameter_ids(bridge, everything)


def test_an_attention_output_gate_is_a_linear_target(tmp_path):
    """AFMoE's attention scales its heads' outputs by sigmoid(gate_proj(x)), which TransformerLens maps as attn.gate;
    role_of gave it the role ``other`` (the stacked adapter's W_attn_gate was never reached), so the default weight
    mask left both layers' gates whole (2,048 of the tiny model's 26,560 parameters)."""
    from transformers import AfmoeConfig, AfmoeForCausalLM

    config = AfmoeConfig(
        num_key_value_heads=2,
        head_dim=8,
        num_experts=4,
        num_experts_per_tok=2,
        moe_intermediate_size=16,
        num_dense_layers=1,
        **TINY_HF_SIZES,
    )
    bridge = boot_tiny(AfmoeForCausalLM(config), tmp_path)
    gates = {id(layer.self_attn.gate_proj.weight) for layer in bridge.original_model.model.layers}
    assert len(gates) == 2
    assert gates <= _masked_parameter_ids(bridge, MaskConfig(granularity="weight", kinds=("linear",)))


def test_blocks_without_pre_norms_are_not_read_as_parallel(tmp_path):
    """OLMo 2 normalises each sub-layer's output (ln1_post, ln2_post) and has no ln1 or ln2; 'no ln2 in the block
    mapping' read it as parallel, so its masks' norm reading said "pre-norm parallel blocks" for sequential blocks.
    Phi, whose attention and MLP both read ln1, stays parallel."""
    from transformers import Olmo2Config, Olmo2ForCausalLM, PhiConfig, PhiForCausalLM

    from modmask_lens.analysis.circuit_graph import norm_reading

    olmo2 = boot_tiny(Olmo2ForCausalLM(Olmo2Config(num_key_value_heads=2, **TINY_HF_SIZES)), tmp_path / "olmo2")
    assert not adapter_for(olmo2).parallel_blocks
    assert norm_reading(MaskSet.for_bridge(olmo2).binary()).startswith("pre-norm blocks;")
    phi = boot_tiny(PhiForCausalLM(PhiConfig(**TINY_HF_SIZES)), tmp_path / "phi")
    assert adapter_for(phi).parallel_blocks


def test_modernbert_decoders_prediction_head_is_a_target(tmp_path):
    """ModernBERT-decoder's logits read its lm_head (TransformerLens's prediction_head: a dense layer and a norm after
    the final norm); both had the role ``other``, so the default weight mask left them whole (1,056 of the tiny
    model's 25,856 parameters)."""
    from transformers import ModernBertDecoderConfig, ModernBertDecoderForCausalLM

    config = ModernBertDecoderConfig(
        pad_token_id=1, bos_token_id=3, eos_token_id=2, cls_token_id=3, sep_token_id=2, **TINY_HF_SIZES
    )
    bridge = boot_tiny(ModernBertDecoderForCausalLM(config), tmp_path)
    head = bridge.original_model.lm_head
    expected = {id(parameter) for parameter in head.parameters()}
    assert len(expected) == 2  # dense.weight, norm.weight (no biases in this config)
    assert expected <= _masked_parameter_ids(bridge, MaskConfig(granularity="weight"))


def test_jambas_mixer_norms_are_norm_targets(tmp_path):
    """Jamba's Mamba mixer normalises its time step, B and C (dt_layernorm, b_layernorm, c_layernorm); they had the
    role ``other``, so the default weight mask left them whole (34 of the tiny model's 48,130 parameters)."""
    bridge = boot_jamba(tmp_path)
    mixer = bridge.original_model.model.layers[1].mamba
    expected = {id(getattr(mixer, f"{name}_layernorm").weight) for name in ("dt", "b", "c")}
    assert expected <= _masked_parameter_ids(bridge, MaskConfig(granularity="weight", kinds=("norm",)))


def test_falcon_h1s_mamba_mixer_is_masked_like_mambas(tmp_path):
    """Falcon-H1 runs a Mamba-2 mixer beside attention, which TransformerLens maps as ``mamba`` (not ``mixer``): its
    projections had the role ``other`` and its A_log, D and dt_bias were no target at all, so every mask left the
    mixer whole (9,088 of the tiny model's 31,776 parameters, besides those three)."""
    from transformers import FalconH1Config, FalconH1ForCausalLM

    config = FalconH1Config(
        num_key_value_heads=2,
        head_dim=8,
        mamba_n_heads=4,
        mamba_d_head=8,
        mamba_d_ssm=32,
        mamba_d_state=16,
        mamba_chunk_size=16,
        **TINY_HF_SIZES,
    )
    bridge = boot_tiny(FalconH1ForCausalLM(config), tmp_path)
    mixers = [layer.mamba for layer in bridge.original_model.model.layers]
    expected = {id(parameter) for mixer in mixers for parameter in mixer.parameters()}
    everything = MaskConfig(granularity="weight", kinds=("linear", "norm", "bias"))
    assert expected <= _masked_parameter_ids(bridge, everything)


@pytest.mark.parametrize(
    ("family", "config_class"), [("Qwen3Next", "Qwen3NextConfig"), ("Qwen3_5", "Qwen3_5TextConfig")]
)
def test_a_linear_attention_layer_is_masked_like_a_state_space_mixer(family, config_class, tmp_path):
    """Qwen3-Next's and Qwen3.5's gated delta-rule layers (TransformerLens's linear_attn) had every projection,
    convolution and norm as role ``other`` and their A_log and dt_bias as no target at all, so every mask left the
    linear-attention layer whole (4,616 of the tiny Qwen3-Next's 28,664 parameters, besides those two; 3 of 4 layers
    in the released models)."""
    import transformers

    config = getattr(transformers, config_class)(**LINEAR_ATTENTION_SIZES)
    bridge = boot_tiny(getattr(transformers, f"{family}ForCausalLM")(config), tmp_path)
    linear_attention = bridge.original_model.model.layers[0].linear_attn
    expected = {id(parameter) for parameter in linear_attention.parameters()}
    everything = MaskConfig(granularity="weight", kinds=("linear", "norm", "bias"))
    assert expected <= _masked_parameter_ids(bridge, everything)


def test_the_kit_passes_where_a_layer_has_its_own_key_value_heads(tmp_path):
    """TransformerLens's W_K / W_V views split every layer by the config's key/value head count: block 1's one key head
    of 16 rows reads as bridge.W_K[1] of 2 heads by 8 (its per-layer guard passes, 16 / 2 being d_head), so
    the kit's unit_slices_equal_tl_views failed for the adapter's single head; that layer has no view to check."""
    from modmask_lens.testing import run_conformance

    bridge = boot_gemma4_with_fewer_global_key_value_heads(tmp_path)
    checks = ["unit_slices_equal_tl_views", "head_off_equals_zeroed_hook_z"]
    assert [(result.name, result.passed) for result in run_conformance(bridge, checks=checks)] == [
        (name, True) for name in checks
    ]


def test_the_kit_passes_where_a_block_has_its_own_mlp_width(tmp_path):
    """TransformerLens's bridge.W_in stacks every block's W_in, which fails where Gemma 4's block 2 runs 128 neurons
    and the others 64 ("stack expects each tensor to be equal size"), so the kit's unit_slices_equal_tl_views failed
    on a model whose neuron slices are right; a block of its own width is compared with its own component's view."""
    from modmask_lens.testing import run_conformance

    bridge = boot_gemma4_with_double_wide_mlp(tmp_path)
    checks = ["unit_slices_equal_tl_views", "neuron_off_equals_zeroed_hook_post"]
    assert [(result.name, result.passed) for result in run_conformance(bridge, checks=checks)] == [
        (name, True) for name in checks
    ]


@pytest.mark.parametrize("architecture", ["HubertModel", "Wav2Vec2Model"])
def test_an_audio_encoders_norm_placement_is_probed_on_a_waveform(architecture, tmp_path):
    """HuBERT and Wav2Vec2 base (do_stable_layer_norm=False) normalise after each sub-layer, but the norm placement
    was probed with token ids, which an audio encoder cannot read; the failed probe read as pre-norm, so their masks'
    norm layout (and the circuit graph's edge measure) took the wrong norm in front of each reader."""
    import transformers

    from modmask_lens.adapters import feature_shape

    family = architecture.removesuffix("Model")
    config = getattr(transformers, f"{family}Config")(**TINY_HF_SIZES, conv_dim=(8,) * 7, num_conv_pos_embeddings=16)
    bridge = boot_tiny(getattr(transformers, architecture)(config), tmp_path)
    entered = []
    handles = [
        getattr(bridge.blocks[0], name).register_forward_pre_hook(lambda module, args, name=name: entered.append(name))
        for name in ("ln1", "attn")
    ]
    with torch.no_grad():
        bridge(torch.randn((1, *feature_shape(bridge, 4))))
    for handle in handles:
        handle.remove()
    assert entered[0] == "attn"  # the independent reading: block 0 runs attention before ln1
    assert adapter_for(bridge).norm_placement == "post"
