"""BIMT: swaps keep the function, swap costs equal brute-force recomputation, the optimiser state moves too."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import boot_gemma4_with_fewer_global_key_value_heads

from modmask_lens.adapters import model_shape
from modmask_lens.modularity import bridge_graph
from modmask_lens.modularity.bimt import BimtConfig, train_bimt
from modmask_lens.modularity.bridge_graph import UnsupportedForModularity, unit_graph_of
from modmask_lens.modularity.connection_cost import ConnectionCost, ConnectionCostConfig
from modmask_lens.modularity.mlp import BimtMLP
from modmask_lens.modularity.swaps import relocate_units, swap_cost_changes
from modmask_lens.modularity.unit_graph import UnitGraph, permute_units
from modmask_lens.testing.tiny_models import TINY_HF_SIZES, boot_tiny


def _swap(graph: UnitGraph, axis_name: str, first: int, second: int, optimizer=None) -> None:
    axis = graph.axis(axis_name)
    order = torch.arange(axis.n_units)
    order[[first, second]] = torch.tensor([second, first])
    permute_units(axis, order, optimizer)


def _mlps() -> list[BimtMLP]:
    return [BimtMLP((4, 6, 5, 3), seed=0), BimtMLP((5, 7, 11), vocab_size=11, n_tokens=2, seed=1)]


def _inputs(mlp: BimtMLP) -> torch.Tensor:
    generator = torch.Generator().manual_seed(2)
    if mlp.embedding is not None:
        return torch.randint(0, mlp.embedding.num_embeddings, (8, mlp.n_tokens), generator=generator)
    return torch.randn(8, mlp.widths[0], generator=generator)


@pytest.mark.parametrize("mlp", _mlps(), ids=["features", "embedded_tokens"])
def test_every_swap_of_every_mlp_axis_keeps_the_function(mlp):
    inputs = _inputs(mlp)
    expected = mlp(inputs).detach()
    graph = mlp.unit_graph()
    for axis in graph.axes:
        for first in range(axis.n_units):
            _swap(graph, axis.name, first, (first * 3 + 1) % axis.n_units)
            torch.testing.assert_close(mlp(inputs), expected, rtol=0, atol=1e-5)


def _permute_every_axis_keeping_the_logits(bridge, tokens) -> UnitGraph:
    """Permute each axis of the bridge's unit graph in turn, moving every unit (a random draw of two units is the
    identity half the time); the logits stay as they were."""
    bridge.eval()
    with torch.no_grad():
        expected = bridge(tokens)
    graph = unit_graph_of(bridge)
    for axis in graph.axes:
        permute_units(axis, torch.arange(axis.n_units).roll(1))
        with torch.no_grad():
            torch.testing.assert_close(bridge(tokens), expected, rtol=0, atol=1e-4, msg=axis.name)
    return graph


def _with_noise(bridge):
    """``bridge`` with seeded noise on every weight (a norm gain initialised to ones or zeros moves unseen)."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in bridge.original_model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.1)
    return bridge


def test_every_axis_permutation_of_a_bridge_keeps_the_logits(any_bridge, tokens):
    graph = _permute_every_axis_keeping_the_logits(any_bridge, tokens)
    assert [axis.kind for axis in graph.axes[:3]] == ["resid", "head_group", "neuron"]
    assert graph.axis("blocks.0.attn").n_units == model_shape(any_bridge).n_kv_heads


@pytest.mark.parametrize("family", ["Gemma2", "Qwen3", "Olmo2"])
def test_post_sub_layer_norms_and_query_key_norms_move_with_their_units(family, tmp_path, tokens):
    """Gemma 2's and OLMo 2's post-sub-layer norms (ln1_post / ln2_post, over the residual stream) and the query/key
    norms (Qwen3's one d_head gain every head shares, OLMo 2's one entry per query or key row) are mask targets since
    683039b; the unit graph refused every such model: UnsupportedForModularity 'not a known reader or writer of the
    residual stream'."""
    import transformers

    config = getattr(transformers, f"{family}Config")(num_key_value_heads=2, head_dim=8, **TINY_HF_SIZES)
    bridge = _with_noise(boot_tiny(getattr(transformers, f"{family}ForCausalLM")(config), tmp_path))
    _permute_every_axis_keeping_the_logits(bridge, tokens)


def test_a_decoder_blocks_mlp_norms_move_with_the_residual_stream(tmp_path, tokens):
    """T5Gemma's decoder blocks normalise in front of their MLP (ln3, after self- and cross-attention) and its output
    before it is added (ln3_post); the unit graph refused the model with UnsupportedForModularity (role ln3.w: 'not
    a known reader or writer of the residual stream'), as it would have refused ln3_post.w next."""
    from transformers import T5GemmaConfig, T5GemmaForConditionalGeneration, T5GemmaModuleConfig

    stack = T5GemmaModuleConfig(num_key_value_heads=2, head_dim=8, **TINY_HF_SIZES)
    config = T5GemmaConfig(encoder=stack, decoder=stack, vocab_size=TINY_HF_SIZES["vocab_size"])
    bridge = _with_noise(boot_tiny(T5GemmaForConditionalGeneration(config), tmp_path))
    _permute_every_axis_keeping_the_logits(bridge, tokens)


def test_sub_layer_norm_gains_move_with_the_heads_and_neurons_they_scale(tmp_path, tokens):
    """BitNet normalises the heads' outputs before W_O (attn_sub_norm) and the neurons before W_out (ffn_sub_norm);
    the unit graph refused the model (UnsupportedForModularity on role attn_sub_norm.w), and its W_in / W_gate, which
    hold no neuron layout for masks, would have joined the head groups' axis."""
    from transformers import BitNetConfig, BitNetForCausalLM

    bridge = _with_noise(boot_tiny(BitNetForCausalLM(BitNetConfig(num_key_value_heads=2, **TINY_HF_SIZES)), tmp_path))
    graph = _permute_every_axis_keeping_the_logits(bridge, tokens)
    assert graph.axis("blocks.0.mlp").n_units == TINY_HF_SIZES["intermediate_size"]


def test_a_blocks_head_groups_are_its_own_key_value_heads(tmp_path, tokens):
    """Gemma 4's full-attention block 1 has one key head of 16 rows that all 4 query heads read (its sliding block 0
    two of 8); the unit graph gave every block the model-wide 2 head groups, so permuting block 1's 'two groups'
    swapped the halves of its key head and of each query head pair, and the logits moved."""
    bridge = _with_noise(boot_gemma4_with_fewer_global_key_value_heads(tmp_path, per_layer_inputs=False))
    graph = _permute_every_axis_keeping_the_logits(bridge, tokens)
    attention = [bridge.get_submodule(f"blocks.{layer}.attn._original_component") for layer in (0, 1)]
    assert [graph.axis(f"blocks.{layer}.attn").n_units for layer in (0, 1)] == [
        module.config.num_attention_heads // module.num_key_value_groups for module in attention
    ]


def test_gemma4_per_layer_inputs_move_with_the_residual_stream(tmp_path, tokens):
    """Gemma 4's per-layer inputs read the residual stream (each block's per_layer_input_gate, and the
    per_layer_model_projection of the embeddings) and write it (per_layer_projection, normalised by
    post_per_layer_input_norm); the unit graph refused such a Gemma 4 with UnsupportedForModularity 'role other:
    not a known reader or writer of the residual stream'."""
    bridge = _with_noise(boot_gemma4_with_fewer_global_key_value_heads(tmp_path))
    graph = _permute_every_axis_keeping_the_logits(bridge, tokens)
    per_layer_edges = {edge.key: (edge.in_axis, edge.out_axis) for edge in graph.edges if "per_layer" in edge.key}
    assert per_layer_edges == {
        **{f"blocks.{layer}.per_layer_input_gate.weight": ("resid", None) for layer in (0, 1)},
        **{f"blocks.{layer}.per_layer_projection.weight": (None, "resid") for layer in (0, 1)},
        "model.per_layer_model_projection.weight": ("resid", None),
    }


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_vectorised_swap_cost_equals_brute_force_recomputation(any_bridge, reduction):
    graph = unit_graph_of(any_bridge.to(torch.float64))  # so the brute-force difference of totals is exact enough
    cost = ConnectionCost(graph, ConnectionCostConfig(weight_factor=2.0, hop_length=0.5, reduction=reduction))
    for axis in graph.axes:
        changes = swap_cost_changes(cost.slot_costs(axis), 0)
        for other in (1, axis.n_units - 1):
            with torch.no_grad():
                before = cost()
                _swap(graph, axis.name, 0, other)
                after = cost()
                _swap(graph, axis.name, 0, other)
            assert changes[other].item() == pytest.approx((after - before).item(), rel=1e-5, abs=1e-9)
        assert changes[0].item() == 0


def test_vectorised_swap_cost_handles_folded_embedding_inputs():
    mlp = BimtMLP((5, 7, 11), vocab_size=11, n_tokens=2, seed=1).double()
    graph = mlp.unit_graph()
    cost = ConnectionCost(graph)
    for axis in graph.axes:
        changes = swap_cost_changes(cost.slot_costs(axis), 1)
        with torch.no_grad():
            before = cost()
            _swap(graph, axis.name, 1, 3)
            after = cost()
        assert changes[3].item() == pytest.approx((after - before).item(), rel=1e-5, abs=1e-9)


def test_optimiser_moments_are_permuted_with_the_weights():
    mlp = BimtMLP((4, 6, 3), seed=0)
    optimizer = torch.optim.AdamW(mlp.parameters(), lr=1e-2, weight_decay=0.0)
    mlp(torch.randn(5, 4)).pow(2).mean().backward()
    optimizer.step()
    hidden_in, hidden_out = mlp.linears[0].weight, mlp.linears[1].weight
    moments_before = {
        name: (optimizer.state[hidden_in][name].clone(), optimizer.state[hidden_out][name].clone())
        for name in ("exp_avg", "exp_avg_sq")
    }
    _swap(mlp.unit_graph(), "hidden.0", 1, 4, optimizer)
    for name, (incoming, outgoing) in moments_before.items():
        torch.testing.assert_close(optimizer.state[hidden_in][name][[4, 1]], incoming[[1, 4]])
        torch.testing.assert_close(optimizer.state[hidden_out][name][:, [4, 1]], outgoing[:, [1, 4]])
        torch.testing.assert_close(optimizer.state[hidden_in][name][0], incoming[0])


def test_permuting_a_bridge_mid_training_changes_nothing_later(any_bridge, tokens):
    """Swaps between two AdamW steps leave the next step's result unchanged: the moments moved with the weights.
    Trains the model the bridge wraps, as the zoo trainer does; in a wrapped GPT-2 the forward reads the bridge's
    W_Q, W_K, W_V parameters (views into c_attn), so those carry the moments."""
    model = getattr(any_bridge, "original_model", any_bridge)
    parameters = list(model.parameters())
    optimizer = torch.optim.AdamW(parameters, lr=1e-2, weight_decay=0.01)

    def step() -> None:
        optimizer.zero_grad()
        output = model(tokens)
        logits = output.logits if hasattr(output, "logits") else output
        torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten()).backward()
        optimizer.step()

    step()
    weights, moments = [parameter.detach().clone() for parameter in parameters], copy.deepcopy(optimizer.state_dict())
    step()
    with torch.no_grad():
        unpermuted = any_bridge(tokens)
        for parameter, weight in zip(parameters, weights):
            parameter.copy_(weight)
    optimizer.load_state_dict(moments)
    generator = torch.Generator().manual_seed(0)
    for axis in unit_graph_of(any_bridge).axes:
        permute_units(axis, torch.randperm(axis.n_units, generator=generator), optimizer)
    step()
    with torch.no_grad():
        torch.testing.assert_close(any_bridge(tokens), unpermuted, rtol=0, atol=1e-4)


def test_swap_pass_lowers_the_cost_and_keeps_the_function(any_bridge, tokens):
    any_bridge.eval()
    with torch.no_grad():
        expected = any_bridge(tokens)
    graph = unit_graph_of(any_bridge)
    cost = ConnectionCost(graph, ConnectionCostConfig(weight_factor=2.0, reduction="mean"))
    with torch.no_grad():
        before = cost().item()
    assert relocate_units(graph, cost, top_k=8) > 0
    with torch.no_grad():
        assert cost().item() < before
        torch.testing.assert_close(any_bridge(tokens), expected, rtol=0, atol=1e-4)


def test_lambda_schedule_multiplies_at_the_given_fractions():
    config = BimtConfig(steps=100)
    assert [config.lambda_at(step) for step in (0, 24, 25, 74, 75, 99)] == pytest.approx(
        [1e-3, 1e-3, 1e-2, 1e-2, 1e-3, 1e-3]
    )


def test_train_bimt_fits_and_swaps_on_a_tiny_regression():
    generator = torch.Generator().manual_seed(0)
    inputs = torch.rand(64, 2, generator=generator) * 2 - 1
    targets = inputs[:, :1] ** 2
    mlp = BimtMLP((2, 8, 1), seed=0)
    history = train_bimt(
        mlp, lambda: ((mlp(inputs) - targets) ** 2).mean(), BimtConfig(steps=300, swap_every=50, log_every=50)
    )
    assert list(history.columns) == ["step", "task_loss", "connection_cost", "lambda", "swaps"]
    assert history["task_loss"].iloc[-1] < history["task_loss"].iloc[0] / 3
    assert history["swaps"].sum() > 0


def test_bridge_with_a_tensor_of_unknown_role_is_refused(gpt2_bridge, monkeypatch):
    monkeypatch.setattr(
        bridge_graph, "_RESIDUAL_VECTORS", tuple(role for role in bridge_graph._RESIDUAL_VECTORS if role != "ln1.w")
    )
    with pytest.raises(UnsupportedForModularity, match="ln1.w"):
        unit_graph_of(gpt2_bridge)


def test_train_bimt_on_a_bridge_swaps_heads_neurons_and_the_residual(gpt2_bridge, tokens):
    gpt2_bridge.eval()  # no dropout: the loss is a deterministic function of the weights

    def next_token_loss() -> torch.Tensor:
        logits = gpt2_bridge(tokens)
        return torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten())

    before = next_token_loss().item()
    history = train_bimt(
        gpt2_bridge,
        next_token_loss,
        BimtConfig(steps=6, swap_every=3, log_every=1, top_k=4, cost=ConnectionCostConfig(reduction="mean")),
    )
    assert history["swaps"].sum() > 0
    assert next_token_loss().item() < before


@pytest.mark.parametrize("bad", [{"swap_every": 0}, {"log_every": 0}, {"steps": 0}, {"top_k": -1}, {"lr": 0.0}])
def test_bimt_settings_that_would_fail_mid_training_are_refused_up_front(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        BimtConfig(**bad)


def test_mlp_refuses_inputs_that_are_not_batch_by_input_features():
    mlp = BimtMLP((4, 6, 3), seed=0)
    # 6 columns were read as the first 4, silently dropping two features; [batch, pos, 4] came back [batch, 3, 3]
    # (the tests' runtime type checks refuse a 3-D input before forward runs, so that case calls forward itself)
    unchecked_forward = BimtMLP.forward.__wrapped__
    for shape in ((2, 3), (2, 6), (2, 4, 4)):
        with pytest.raises(ValueError, match=r"shape \(.*\[batch, 4\]"):
            unchecked_forward(mlp, torch.zeros(shape))
