"""Head and neuron masks gated on their writers' inputs in one pass (masks/output_gates.py) against the per-chunk
weight products they replace: the same loss and the same logit gradients, on a plain MLP and attention (GPT-2
through Hugging Face, Conv1D weights), a gated MLP and grouped-query attention (Llama), an MLP that flattens positions
into the examples' axis (OPT) and TransformerLens's native blocks; and where gating does not apply."""

from __future__ import annotations

import pytest
import torch
from conftest import boot_gpt2
from transformers import LlamaConfig, LlamaForCausalLM, OPTConfig, OPTForCausalLM

from modmask_lens.core.data import Batch, SubtaskData
from modmask_lens.core.functional import call_with_parameters, frozen_call
from modmask_lens.masks import training
from modmask_lens.masks.apply import sampled_parameters
from modmask_lens.masks.config import MaskConfig, TrainConfig
from modmask_lens.masks.mask_set import MaskSet
from modmask_lens.masks.objectives import model_outputs
from modmask_lens.masks.output_gates import chunk_samples, gated, output_gates
from modmask_lens.masks.sampling import UniformNoise
from modmask_lens.masks.training import train_masks
from modmask_lens.testing.tiny_models import TINY_HF_SIZES, boot_tiny, tiny_bridge


def _bridge(family: str, tmp_path):
    if family == "gpt2":
        return boot_gpt2(tmp_path / "gpt2")
    if family == "llama":
        return boot_tiny(LlamaForCausalLM(LlamaConfig(num_key_value_heads=2, **TINY_HF_SIZES)), tmp_path / "llama")
    if family == "opt":  # its MLP reads the positions flattened into the examples' axis
        sizes = {key: value for key, value in TINY_HF_SIZES.items() if key != "intermediate_size"}
        return boot_tiny(OPTForCausalLM(OPTConfig(ffn_dim=64, word_embed_proj_dim=32, **sizes)), tmp_path / "opt")
    return tiny_bridge()


def _loss(logits: torch.Tensor, batch: Batch) -> torch.Tensor:
    """Next-token cross-entropy summed over every position: an objective independent of the library's."""
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(), batch.input_ids[:, 1:].flatten(), reduction="sum"
    )


@pytest.mark.parametrize("family", ["gpt2", "llama", "opt", "native"])
@pytest.mark.parametrize("sampler", ["hard-concrete", "gumbel-sigmoid"])
@pytest.mark.parametrize(("granularity", "writer"), [("neuron", "W_out"), ("head", "W_O")])
def test_one_gated_pass_equals_a_weight_product_per_chunk(family, sampler, granularity, writer, tmp_path):
    bridge = _bridge(family, tmp_path)
    masks = MaskSet.for_bridge(bridge, MaskConfig(granularity=granularity, sampler=sampler))
    assert {member.role for member in masks.members} == {writer}
    gates = output_gates(bridge, masks.config, masks.units)
    assert gates is not None and len(gates) == bridge.cfg.n_layers
    generator = torch.Generator().manual_seed(0)
    for logits in masks.logits.values():  # soft hard-concrete samples and both kept and dropped units
        logits.data.uniform_(-2.0, 3.0, generator=generator)
    vocab = min(bridge.cfg.d_vocab, 40)
    batch = Batch(torch.randint(vocab, (6, 7), generator=generator), torch.zeros(6, 7, dtype=torch.long))
    chunks, noises = batch.split(3), [UniformNoise(seed) for seed in (11, 12, 13)]

    product_loss = torch.zeros(())
    for chunk, noise in zip(chunks, noises, strict=True):
        weights = sampled_parameters(bridge, masks, temperature=0.7, noise=noise)
        outputs = call_with_parameters(bridge, weights, model_outputs, bridge, chunk)
        product_loss = product_loss + _loss(outputs.logits, chunk)
    product_loss.backward()
    product_grads = {name: logit.grad.clone() for name, logit in masks.logits.items()}
    for logit in masks.logits.values():
        logit.grad = None

    samples = chunk_samples(masks, 0.7, noises)
    with gated(bridge, gates, samples, [len(chunk) for chunk in chunks]):
        outputs = frozen_call(bridge, model_outputs, bridge, batch)
    gated_loss = _loss(outputs.logits, batch)
    gated_loss.backward()

    torch.testing.assert_close(gated_loss, product_loss.detach(), rtol=1e-5, atol=1e-4)
    for name, logit in masks.logits.items():
        assert product_grads[name].abs().sum() > 0
        torch.testing.assert_close(logit.grad, product_grads[name], rtol=1e-4, atol=1e-5)
    assert all(parameter.grad is None for parameter in bridge.parameters())  # the weights got no gradient
    unhooked = bridge(batch.input_ids)  # the hooks are gone
    with torch.no_grad():
        torch.testing.assert_close(unhooked, frozen_call(bridge, model_outputs, bridge, batch).logits)


def _gates(bridge, config: MaskConfig):
    masks = MaskSet.for_bridge(bridge, config)
    return output_gates(bridge, masks.config, masks.units)


def test_gating_applies_only_to_pathwise_masks_of_the_units_outputs():
    bridge = tiny_bridge()
    applies = {
        "in-out neurons": MaskConfig(granularity="neuron", neuron_mask="in-out"),
        "W_in only": MaskConfig(granularity="neuron", roles=("W_in",)),
        "weights": MaskConfig(granularity="weight", roles=("W_out",)),
        "qkvo heads": MaskConfig(granularity="head", sampler="hard-concrete", head_mask="qkvo"),
        "bernoulli heads": MaskConfig(granularity="head"),  # gated at hook_z without a backward instead
        "hard-concrete heads": MaskConfig(granularity="head", sampler="hard-concrete"),
        "W_out only": MaskConfig(granularity="neuron", roles=("W_out",)),
    }
    assert {name: _gates(bridge, config) is not None for name, config in applies.items()} == {
        "in-out neurons": False,
        "W_in only": False,
        "weights": False,
        "qkvo heads": False,
        "bernoulli heads": False,
        "hard-concrete heads": True,
        "W_out only": True,
    }


def test_a_gated_module_reading_another_batch_names_the_fix():
    bridge = tiny_bridge()
    masks = MaskSet.for_bridge(bridge, MaskConfig(granularity="neuron"))
    gates = output_gates(bridge, masks.config, masks.units)
    samples = chunk_samples(masks, 1.0, [UniformNoise(0)])
    hooks_before = sum(len(module._forward_pre_hooks) for module in bridge.modules())
    with (
        pytest.raises(ValueError, match="read an input of shape .*neuron_mask='in-out'"),
        gated(bridge, gates, samples, [2]),
    ):
        bridge(torch.zeros(3, 4, dtype=torch.long))
    assert sum(len(module._forward_pre_hooks) for module in bridge.modules()) == hooks_before  # removed after it


@pytest.mark.parametrize("n_samples", [4, 3])
@pytest.mark.parametrize(
    "mask_config",
    [MaskConfig(granularity="neuron"), MaskConfig(granularity="head", sampler="hard-concrete")],
    ids=["neurons", "hard-concrete heads"],
)
def test_training_through_gates_equals_training_through_weight_products(n_samples, mask_config, monkeypatch):
    bridge = tiny_bridge()
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(40, (32, 6), generator=generator)
    labels = torch.full_like(input_ids, -100)
    labels[:, -2:] = input_ids[:, -2:]
    data = SubtaskData("copy", input_ids, labels)
    config = TrainConfig(steps=3, batch_size=10, n_samples=n_samples, readout="zero")

    def trained() -> dict[str, torch.Tensor]:
        masks = train_masks(bridge, data, mask_config, config, progress=False)["copy"]
        return {name: logit.detach() for name, logit in masks.logits.items()}

    gated_logits = trained()
    monkeypatch.setattr(training, "output_gates", lambda bridge, config, units: None)  # the per-chunk products
    product_logits = trained()
    for name, logit in gated_logits.items():
        assert not torch.equal(logit, torch.full_like(logit, 3.0))  # trained
        torch.testing.assert_close(logit, product_logits[name], rtol=0, atol=1e-5)


def test_a_gated_module_that_never_runs_is_named():
    """A model that read its W_out without calling the module (F.linear on the weight) would train no neuron."""
    bridge = tiny_bridge()
    masks = MaskSet.for_bridge(bridge, MaskConfig(granularity="neuron"))
    gates = output_gates(bridge, masks.config, masks.units)
    samples = chunk_samples(masks, 1.0, [UniformNoise(0)])
    with pytest.raises(ValueError, match=r"never ran their forward"), gated(bridge, gates, samples, [1]):
        pass  # no forward at all
