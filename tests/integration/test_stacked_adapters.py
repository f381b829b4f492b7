"""Encoder-decoders and state-space models through the adapter derived from TransformerLens's map: the conformance
kit passes at every granularity that applies, layers are numbered encoder blocks then decoder blocks, a decoder
block's cross-attention heads follow its self-attention heads, and a model without attention or MLPs refuses head
or neuron masks with one line saying why."""

from __future__ import annotations

import pytest
import torch
import transformers
from conftest import assert_local_expectation_is_removal_cost

from modmask_lens import MaskConfig, MaskSet
from modmask_lens.adapters import GranularityNotApplicable, adapter_for, model_shape
from modmask_lens.masks.apply import masked
from modmask_lens.testing import check_head_mask, run_conformance
from modmask_lens.testing.__main__ import main
from modmask_lens.testing.tiny_models import boot_tiny

BART_STYLE = {
    "vocab_size": 40,
    "d_model": 32,
    "encoder_layers": 2,
    "decoder_layers": 2,
    "encoder_attention_heads": 4,
    "decoder_attention_heads": 4,
    "encoder_ffn_dim": 64,
    "decoder_ffn_dim": 64,
    "max_position_embeddings": 32,
}
T5_STYLE = {"vocab_size": 40, "d_model": 32, "d_kv": 8, "d_ff": 64, "num_layers": 2, "num_heads": 4}
HRM_STYLE = {
    "vocab_size": 40,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_attention_heads": 4,
    "head_dim": 8,
    "num_layers_per_stack": 2,
    "H_cycles": 1,
    "L_cycles": 1,
    "max_position_embeddings": 32,
}
MAMBA_STYLE = {"vocab_size": 40, "hidden_size": 32, "num_hidden_layers": 2, "state_size": 4, "intermediate_size": 64}
LFM2_STYLE = {  # a short-convolution layer, then an attention layer, as LFM2 interleaves them
    "vocab_size": 40,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "max_position_embeddings": 32,
    "layer_types": ["conv", "full_attention"],
    "block_auto_adjust_ff_dim": False,
}
FAMILIES = {
    "BartForConditionalGeneration": ("BartConfig", BART_STYLE),
    "MBartForConditionalGeneration": ("MBartConfig", BART_STYLE),
    "BlenderbotForConditionalGeneration": ("BlenderbotConfig", BART_STYLE),
    "PegasusForConditionalGeneration": ("PegasusConfig", BART_STYLE),
    "M2M100ForConditionalGeneration": ("M2M100Config", BART_STYLE),
    "MarianMTModel": ("MarianConfig", {**BART_STYLE, "pad_token_id": 1, "decoder_start_token_id": 1}),
    "LEDForConditionalGeneration": ("LEDConfig", {**BART_STYLE, "attention_window": 4}),
    "T5ForConditionalGeneration": ("T5Config", T5_STYLE),
    "MT5ForConditionalGeneration": ("MT5Config", T5_STYLE),
    "LongT5ForConditionalGeneration": ("LongT5Config", T5_STYLE),
    "HrmTextForCausalLM": ("HrmTextConfig", HRM_STYLE),
    "MambaForCausalLM": ("MambaConfig", MAMBA_STYLE),
    "FalconMambaForCausalLM": ("FalconMambaConfig", MAMBA_STYLE),
    "Lfm2ForCausalLM": ("Lfm2Config", LFM2_STYLE),
}
"""Tiny random models (2 layers per stack, d_model 32, 4 heads) of each family this adapter enables; HRM-Text has
two decoder stacks (``L_blocks``, ``H_blocks``) with a gate inside each attention; Marian's position tables are fixed
sinusoids that its checkpoint does not store; LFM2 has a gated short-convolution block in place of attention in
some layers."""
STATE_SPACE = {"MambaForCausalLM", "FalconMambaForCausalLM"}


def tiny(architecture: str, tmp_path) -> torch.nn.Module:
    torch.manual_seed(0)
    config_name, sizes = FAMILIES[architecture]
    model = getattr(transformers, architecture)(getattr(transformers, config_name)(**sizes))
    return boot_tiny(model, tmp_path)


@pytest.mark.parametrize("architecture", sorted(FAMILIES))
def test_every_applicable_check_passes(architecture, tmp_path):
    bridge = tiny(architecture, tmp_path)
    results = run_conformance(bridge)
    failed = [str(result) for result in results if result.applies and not result.passed]
    assert not failed, failed
    not_applicable = {result.name for result in results if not result.applies}
    expected = {
        "head_off_equals_zeroed_hook_z",
        "neuron_off_equals_zeroed_hook_post",
        "unit_slices_equal_tl_views",
        "output_gates_equal_weight_products",
    }
    assert not_applicable == (expected if architecture in STATE_SPACE else set())


def test_layers_number_encoder_blocks_then_decoder_blocks_and_cross_attention_heads_follow_self_attention(tmp_path):
    bridge = tiny("BartForConditionalGeneration", tmp_path)
    specs = {spec.key: spec for spec in adapter_for(bridge).tensor_specs(bridge)}
    assert specs["encoder_blocks.1.attn.q.weight"].layer == 1
    assert specs["decoder_blocks.0.self_attn.q.weight"].layer == 2
    assert specs["decoder_blocks.1.mlp.in.weight"].layer == 3
    assert specs["decoder_blocks.0.cross_attn.o.weight"].unit_offset == 4
    assert specs["decoder_blocks.0.ln3.weight"].role == "ln3.w"
    assert model_shape(bridge).n_layers == 4
    every_parameter = {id(parameter) for parameter in bridge.original_model.parameters()}
    assert every_parameter == {id(bridge.get_parameter(spec.path)) for spec in specs.values()}

    mask = MaskSet.for_bridge(bridge, MaskConfig(granularity="head"))
    assert {unit.name: unit.shape for unit in mask.units} == {
        "blocks.0.attn": (4,),
        "blocks.1.attn": (4,),
        "blocks.2.attn": (8,),
        "blocks.3.attn": (8,),
    }
    tokens = torch.randint(5, 40, (2, 6), generator=torch.Generator().manual_seed(1))
    for head, (component, local) in {1: ("self_attn", 1), 6: ("cross_attn", 2)}.items():

        def zero(z, hook, local=local):
            z[:, :, local] = 0.0
            return z

        expected = bridge.run_with_hooks(tokens, fwd_hooks=[(f"decoder_blocks.1.{component}.hook_z", zero)])
        for logits in mask.logits.values():
            logits.data.fill_(1.0)
        mask.logits["blocks.3.attn"].data[head] = -1.0
        with masked(bridge, mask):
            actual = bridge(tokens)
        assert torch.allclose(actual, expected, atol=1e-6), (head, (actual - expected).abs().max())
    for logits in mask.logits.values():
        logits.data.fill_(1.0)
    mask.logits["blocks.2.attn"].data[[0, 5]] = -1.0  # decoder block 0: self-attention head 0, cross-attention head 1
    mask.logits["blocks.3.attn"].data[7] = -1.0
    assert check_head_mask(bridge, mask, tokens) is None


def test_t5_masks_its_embedding_where_the_forward_pass_reads_it(tmp_path):
    bridge = tiny("T5ForConditionalGeneration", tmp_path)
    keys = {spec.key: spec for spec in adapter_for(bridge).tensor_specs(bridge) if spec.role == "W_E"}
    assert set(keys) == {"encoder.embed_tokens.weight", "decoder.embed_tokens.weight"}
    tokens = torch.randint(5, 40, (2, 6), generator=torch.Generator().manual_seed(1))
    reference = bridge(tokens)
    mask = MaskSet.for_bridge(bridge, MaskConfig(granularity="matrix", kinds=("embedding",), roles=("W_E",)))
    for name, logits in mask.logits.items():
        logits.data.fill_(-10.0 if name == "encoder.embed_tokens.weight" else 10.0)
    with masked(bridge, mask.binary()):
        encoder_embedding_off = bridge(tokens)
    assert not torch.allclose(encoder_embedding_off, reference)


def test_marian_masks_no_position_table_its_checkpoint_does_not_store_and_mbart_masks_its_learned_one(tmp_path):
    """Marian rebuilds its sinusoidal position tables at every load (``_keys_to_ignore_on_save``): a mask on them
    could not be exported, so they are no mask targets; every other parameter is. MBart's positions are learned."""
    marian = tiny("MarianMTModel", tmp_path / "marian")
    specs = adapter_for(marian).tensor_specs(marian)
    targets = {id(marian.get_parameter(spec.path)) for spec in specs}
    original = marian.original_model
    tables = {id(original.get_parameter(f"model.{side}.embed_positions.weight")) for side in ("encoder", "decoder")}
    assert {id(parameter) for parameter in original.parameters()} - targets == tables
    assert not any(spec.role == "W_pos" for spec in specs)
    mbart = tiny("MBartForConditionalGeneration", tmp_path / "mbart")
    assert sum(spec.role == "W_pos" for spec in adapter_for(mbart).tensor_specs(mbart)) == 2


@pytest.mark.parametrize("granularity", ["head", "neuron"])
def test_a_state_space_model_refuses_heads_and_neurons_in_one_line_saying_why(granularity, tmp_path):
    bridge = tiny("MambaForCausalLM", tmp_path)
    with pytest.raises(GranularityNotApplicable) as refusal:
        MaskSet.for_bridge(bridge, MaskConfig(granularity=granularity))
    message = str(refusal.value)
    assert "\n" not in message
    assert f"{granularity} granularity does not apply" in message
    assert ("attention" if granularity == "head" else "MLP") in message
    assert "W_ssm_in" in message
    MaskSet.for_bridge(bridge, MaskConfig(granularity="weight"))  # weight and matrix masks still work


def test_the_command_line_kit_exits_0_when_its_only_non_passes_are_checks_that_do_not_apply(tmp_path, capsys):
    tiny("MambaForCausalLM", tmp_path)  # saved with its tokenizer in tmp_path; heads and neurons N/A
    assert main([str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "N/A" in printed and "FAIL" not in printed


def test_bernoulli_head_masks_remove_each_head_at_the_attention_that_writes_it(tmp_path):
    """The default head sampler (``bernoulli`` here: every head has a ``hook_z``) removes a decoder block's
    cross-attention heads at its ``cross_attn``."""
    bridge = tiny("BartForConditionalGeneration", tmp_path)
    assert_local_expectation_is_removal_cost(bridge, "blocks.3.attn", (1, 6))  # self head 1, cross head 2


def test_a_short_convolution_block_is_masked_whole(tmp_path):
    """LFM2's short convolution (input projection, depthwise kernel, output projection) has roles, so weight masks
    cover it: before, it had none and no mask could say anything about it."""
    bridge = tiny("Lfm2ForCausalLM", tmp_path)
    specs = adapter_for(bridge).tensor_specs(bridge)
    conv = {spec.role: tuple(spec.shape) for spec in specs if spec.layer == 0 and spec.role.startswith("W_conv")}
    assert conv == {"W_conv_in": (3 * 32, 32), "W_conv": (32, 1, 3), "W_conv_out": (32, 32)}
    masked = {id(bridge.get_parameter(spec.path)) for spec in specs}
    conv_parameters = [parameter for name, parameter in bridge.named_parameters() if ".conv." in name]
    assert len(conv_parameters) == 3 and all(id(parameter) in masked for parameter in conv_parameters)
