"""The ``bernoulli`` sampler's local-expectation gradient, checked against head removals computed by hand."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import boot_native, state_snapshot

from modmask_lens import MaskConfig, MaskSet, SubtaskData, TrainConfig, train_masks
from modmask_lens.masks.local_expectation import heads_to_estimate, local_expectation_step
from modmask_lens.masks.objectives import AnswerCrossEntropy, HiddenState, model_outputs
from modmask_lens.masks.sampling import UniformNoise, sample_mask
from modmask_lens.testing.tiny_models import tiny_bridge


def answer_data(bridge, examples: int = 6) -> SubtaskData:
    """Random token sequences whose last three positions are the answer."""
    generator = torch.Generator().manual_seed(3)
    input_ids = torch.randint(0, bridge.cfg.d_vocab, (examples, 8), generator=generator)
    labels = torch.full_like(input_ids, -100)
    labels[:, -3:] = input_ids[:, -3:]
    return SubtaskData("answers", input_ids, labels)


def answer_loss_sum(bridge, data: SubtaskData, head_gates: torch.Tensor) -> float:
    """Answer-token cross-entropy summed over answer tokens, with ``hook_z`` of head [layer, head] times its gate:
    written out with hooks and ``F.cross_entropy``, not the library's masks or scoring (in float32, also on a
    half-precision bridge)."""
    hooks = [
        (f"blocks.{layer}.attn.hook_z", lambda z, hook, gate=gate: z * gate.to(z.dtype)[None, None, :, None])
        for layer, gate in enumerate(head_gates)
    ]
    with torch.no_grad():
        logits = bridge.run_with_hooks(data.input_ids, fwd_hooks=hooks).float()
    return float(F.cross_entropy(logits[:, :-1].flatten(0, 1), data.labels[:, 1:].flatten(), reduction="sum"))


@pytest.mark.parametrize(("estimated", "scale"), [(None, 1.0), ((1, 4), 3.0)])
def test_the_gradient_is_p_1_minus_p_times_each_heads_removal_cost_from_the_sample(any_bridge, estimated, scale):
    """Every head, or only the ``estimated`` ones (model order), scaled by ``scale``; on GPT-2, a native model and
    one with grouped-query attention."""
    bridge = any_bridge
    data = answer_data(bridge)
    mask = MaskSet.for_bridge(bridge, MaskConfig(granularity="head", sampler="bernoulli", init_logit=0.5))
    n_layers, n_heads = bridge.cfg.n_layers, bridge.cfg.n_heads
    mask.logits[f"blocks.{n_layers - 1}.attn"].data = torch.linspace(-1.0, 2.0, n_heads)
    noise = UniformNoise(7)
    drawn = torch.stack(  # the Gumbel-sigmoid's 0/1 samples, unit i from noise.substream(i) as MaskSet.sample
        [sample_mask(mask.logits[unit.name].detach(), "gumbel-sigmoid", 1.0, noise.substream(index))
         for index, unit in enumerate(mask.units)]
    )  # fmt: skip
    assert set(drawn.unique().tolist()) == {0.0, 1.0}  # both kept and removed heads are exercised
    weight = 0.25

    batch = data.examples(torch.arange(6))
    chosen = None if estimated is None else torch.tensor(estimated)
    score = local_expectation_step(bridge, mask, AnswerCrossEntropy(), batch, None, noise, weight, chosen, scale)

    assert score.loss_sum.item() == pytest.approx(answer_loss_sum(bridge, data, drawn), rel=1e-5)
    logits = torch.stack([mask.logits[unit.name] for unit in mask.units]).detach()
    expected = torch.zeros_like(logits)
    for layer in range(n_layers):
        for head in range(n_heads):
            on, off = drawn.clone(), drawn.clone()
            on[layer, head], off[layer, head] = 1.0, 0.0
            removal_cost = answer_loss_sum(bridge, data, off) - answer_loss_sum(bridge, data, on)
            keep = torch.sigmoid(logits[layer, head])
            chosen_here = estimated is None or layer * n_heads + head in estimated
            expected[layer, head] = -weight * scale * keep * (1 - keep) * removal_cost * chosen_here
    gradients = torch.stack([mask.logits[unit.name].grad for unit in mask.units])
    torch.testing.assert_close(gradients, expected, rtol=1e-4, atol=1e-6)


def test_training_with_bernoulli_head_masks_moves_logits_and_leaves_the_model_unchanged():
    bridge = tiny_bridge()
    data = answer_data(bridge, examples=8)
    before = state_snapshot(bridge)
    config = TrainConfig(steps=3, batch_size=8, n_samples=2, readout="zero")
    masks = train_masks(bridge, data, MaskConfig(granularity="head", sampler="bernoulli"), config, progress=False)
    logits = torch.cat([logit.detach() for logit in masks["answers"].logits.values()])
    assert not torch.equal(logits, torch.full_like(logits, masks["answers"].config.init_logit))
    after = state_snapshot(bridge)
    assert all(torch.equal(before[name], after[name]) for name in before)


@pytest.mark.parametrize(
    ("granularity", "roles"), [("weight", None), ("neuron", None), ("matrix", None), ("head", ("W_Q", "W_K"))]
)
def test_bernoulli_masks_are_refused_except_on_heads_w_o(granularity, roles):
    with pytest.raises(ValueError, match="trains head masks on W_O"):
        MaskConfig(granularity=granularity, sampler="bernoulli", roles=roles)


def test_a_shared_head_logit_gets_the_same_bernoulli_gradient_as_an_output_one():
    """A head whose W_O slice is zero writes nothing, whatever its W_Q, W_K and W_V: removal is removal."""
    bridge = tiny_bridge()
    batch = answer_data(bridge).examples(torch.arange(6))
    gradients = []
    for head_mask in ("qkvo", "output"):
        mask = MaskSet.for_bridge(bridge, MaskConfig(granularity="head", sampler="bernoulli", head_mask=head_mask))
        local_expectation_step(bridge, mask, AnswerCrossEntropy(), batch, None, UniformNoise(2), 1.0)
        gradients.append(torch.cat([logit.grad for logit in mask.logits.values()]))
    assert gradients[0].abs().sum() > 0
    torch.testing.assert_close(gradients[0], gradients[1])


@pytest.mark.parametrize("per_step", [None, 4, 50])
def test_the_trainer_deals_each_step_a_random_share_of_the_heads_to_its_chunks(monkeypatch, per_step):
    """Each step estimates ``min(per_step, heads)`` distinct heads, dealt to its chunks, each scaled by chunks *
    heads / drawn; the share differs from step to step."""
    from modmask_lens.masks import training

    calls = []

    def recording(*args):
        calls.append(args[-2:])  # (estimated, scale)
        return local_expectation_step(*args)

    monkeypatch.setattr(training, "local_expectation_step", recording)
    bridge = tiny_bridge()
    config = TrainConfig(
        steps=2, batch_size=6, n_samples=3, beta=0.0, max_loss_increase=None, readout="zero",
        heads_estimated_per_step=per_step,
    )  # fmt: skip
    train_masks(
        bridge, answer_data(bridge), MaskConfig(granularity="head", sampler="bernoulli"), config, progress=False
    )
    heads = bridge.cfg.n_layers * bridge.cfg.n_heads
    drawn = heads if per_step is None else min(per_step, heads)
    assert len(calls) == 6 and {scale for _, scale in calls} == {3 * heads / drawn}  # 3 chunks of 2 examples
    steps = [torch.cat([estimated for estimated, _ in calls[start : start + 3]]) for start in (0, 3)]
    for estimated in steps:
        assert len(estimated) == drawn and len(set(estimated.tolist())) == drawn and max(estimated) < heads
    if per_step == 4:
        assert not torch.equal(steps[0], steps[1])


@pytest.mark.parametrize(
    ("n_heads", "per_step", "chunk_sizes"),
    [(10, 3, [8, 8, 8, 8]), (6, 4, [5, 5, 5]), (2, None, [3, 3, 3, 3]), (6, 4, [3, 3, 2, 2]), (4, None, [3, 2, 2])],
)
def test_every_chunk_estimates_every_head_unbiasedly(n_heads, per_step, chunk_sizes):
    """Averaged over many draws, each (chunk, head)'s probability of being estimated times its factor times the
    chunk's share of the batch's examples is 1 / chunks: every chunk's estimate of every head is unbiased, also when
    the heads drawn are not a multiple of the chunks (a reviewer found chunk 3 never used with 10 heads, 3 per step
    and 4 chunks) and when the chunks differ in size (a batch not a multiple of the samples)."""
    generator = torch.Generator().manual_seed(0)
    n_chunks, draws = len(chunk_sizes), 20_000
    weight = torch.zeros(n_chunks, n_heads)
    for _ in range(draws):
        chunks, scales = heads_to_estimate(n_heads, per_step, chunk_sizes, generator)
        for chunk, heads in enumerate(chunks):
            weight[chunk, heads] += scales[chunk]
    # probability times factor is 1 for every (chunk, head): each chunk's loss sum counts once, whatever its size,
    # as in the pathwise step's loss, so the estimate is unbiased for this batch's gradient
    torch.testing.assert_close(weight / draws, torch.ones(n_chunks, n_heads), atol=0.02 * n_chunks, rtol=0)


def test_a_chunk_beyond_the_last_head_estimates_none_and_scores_its_sample():
    """More mask samples per step than heads (a compiled tracr program has one or two): the extra chunks only score."""
    bridge = tiny_bridge()
    mask = MaskSet.for_bridge(bridge, MaskConfig(granularity="head", sampler="bernoulli"))
    heads = sum(unit.numel for unit in mask.units)
    batch = answer_data(bridge).examples(torch.arange(6))
    chunks, scales = heads_to_estimate(heads, None, [1] * (heads + 2), torch.Generator().manual_seed(0))
    idle = next(chunk for chunk, estimated in enumerate(chunks) if estimated.numel() == 0)
    score = local_expectation_step(
        bridge, mask, AnswerCrossEntropy(), batch, None, UniformNoise(1), 1.0, chunks[idle], scales[idle]
    )
    assert all(torch.equal(logit.grad, torch.zeros_like(logit)) for logit in mask.logits.values())
    drawn = torch.stack(
        [sample_mask(mask.logits[unit.name].detach(), "gumbel-sigmoid", 1.0, UniformNoise(1).substream(index))
         for index, unit in enumerate(mask.units)]
    )  # fmt: skip
    assert score.loss_sum.item() == pytest.approx(answer_loss_sum(bridge, answer_data(bridge), drawn), rel=1e-5)


def test_an_objective_reading_a_gated_hook_z_is_refused():
    """The gates remove a head at its hook_z, where the mask as evaluated (on W_O) leaves hook_z unchanged: with
    HiddenState("blocks.0.attn.hook_z", distance="mse") the logits of layer 0's heads got -0.078, -0.045, -0.035,
    -0.027 (init logit 0.5, noise 5, 4 examples), where removing a head by its W_O changes nothing the objective
    reads (gradient 0). A hook after the attention output stays allowed."""
    bridge = tiny_bridge()
    batch = answer_data(bridge).examples(torch.arange(4))
    mask = MaskSet.for_bridge(bridge, MaskConfig(granularity="head", sampler="bernoulli"))
    for hook_name in ("blocks.0.attn.hook_z", "blocks.1.attn.hook_z", "blocks.0.attn.o.hook_in"):  # an alias too
        objective = HiddenState(hook_name, distance="mse")
        with torch.no_grad():
            reference = objective.reference(model_outputs(bridge, batch, objective.hook_names), batch)
        with pytest.raises(ValueError, match=f"reads {hook_name}, where sampler 'bernoulli' removes heads by zeroing"):
            local_expectation_step(bridge, mask, objective, batch, reference, UniformNoise(5), 1.0)
        assert all(logit.grad is None for logit in mask.logits.values())
    allowed = HiddenState("blocks.1.hook_resid_post", distance="mse")
    with torch.no_grad():
        reference = allowed.reference(model_outputs(bridge, batch, allowed.hook_names), batch)
    local_expectation_step(bridge, mask, allowed, batch, reference, UniformNoise(5), 1.0)
    assert any(logit.grad.abs().sum() > 0 for logit in mask.logits.values())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_bernoulli_head_masks_train_on_a_half_precision_bridge(dtype):
    """The gates were float32 and turned the half-precision hook_z into float32, which W_O's matmul refused
    ('mat1 and mat2 must have the same dtype, but got Float and BFloat16'): the default head mask could not train
    on an fp16 or bf16 model at all."""
    bridge = boot_native().to(dtype)
    snapshot = state_snapshot(bridge)
    data = answer_data(bridge)
    config = TrainConfig(steps=2, batch_size=6, n_samples=2, readout="zero")
    masks = train_masks(bridge, data, MaskConfig(granularity="head"), config, progress=False)["answers"]
    assert masks.config.sampler == "bernoulli"
    assert all(logit.dtype == torch.float32 and bool(logit.isfinite().all()) for logit in masks.logits.values())
    assert any(not torch.equal(logit, torch.full_like(logit, 0.01)) for logit in masks.logits.values())
    for name, tensor in state_snapshot(bridge).items():
        assert torch.equal(tensor, snapshot[name]), name


def test_on_a_bfloat16_bridge_the_removal_costs_are_not_rounded_to_the_loss_sums_precision():
    """Each removal cost is the difference of two loss sums; scored in the model's bf16, a sum of 384 (32 examples, 3
    answer tokens) is a multiple of 2, so every gradient was p (1 - p) times an even number: -0.47, 0.47, 0.94,
    -0.47, -0.47, 2.82, 0, 0.47, where the float32 removal costs give 0.424, -0.485, 1.011, -0.102, -0.335, 1.768,
    0.368, -0.196 (signs flipped, off by up to 1.05)."""
    bridge = tiny_bridge().to(torch.bfloat16)
    data = answer_data(bridge, examples=32)
    mask = MaskSet.for_bridge(bridge, MaskConfig(granularity="head", sampler="bernoulli", init_logit=0.5))
    noise = UniformNoise(5)
    drawn = torch.stack(
        [sample_mask(mask.logits[unit.name].detach(), "gumbel-sigmoid", 1.0, noise.substream(index))
         for index, unit in enumerate(mask.units)]
    )  # fmt: skip
    batch = data.examples(torch.arange(32))
    local_expectation_step(bridge, mask, AnswerCrossEntropy(), batch, None, noise, 1.0)
    keep = torch.sigmoid(torch.tensor(0.5))
    expected = torch.zeros_like(drawn)
    for layer, head in torch.cartesian_prod(torch.arange(drawn.shape[0]), torch.arange(drawn.shape[1])).tolist():
        on, off = drawn.clone(), drawn.clone()
        on[layer, head], off[layer, head] = 1.0, 0.0
        removal_cost = answer_loss_sum(bridge, data, off) - answer_loss_sum(bridge, data, on)
        expected[layer, head] = -keep * (1 - keep) * removal_cost
    gradients = torch.stack([mask.logits[unit.name].grad for unit in mask.units])
    torch.testing.assert_close(gradients, expected, rtol=1e-4, atol=1e-5)
