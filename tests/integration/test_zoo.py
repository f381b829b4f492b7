"""Every shipped zoo model boots offline as a TransformerBridge and re-measures, on a sample, the accuracy its
card claims; the bridge and the plain Hugging Face model agree example by example."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from experiments.zoo.recipes import RECIPES
from modmask_lens import zoo
from modmask_lens.core.encoding import encode_pairs
from modmask_lens.tasks.evaluation import exact_match_correct, next_token_logits, step_with_cache
from modmask_lens.versions import describe_installed

torch.set_num_threads(1)
SAMPLE_SIZE = 400  # test examples re-measured per model: enough to catch a broken model, fast on one core
ZOO_SIZE_LIMIT_BYTES = 25 * 2**20  # the shipped models stay under 25 MB together


def test_every_shipped_model_has_a_training_recipe():
    assert zoo.available_models()
    assert set(zoo.available_models()) <= set(RECIPES)


def test_zoo_fits_in_the_size_budget():
    total = sum(path.stat().st_size for path in zoo.MODELS_DIR.rglob("*") if path.is_file())
    assert total < ZOO_SIZE_LIMIT_BYTES


@pytest.mark.parametrize("name", zoo.available_models())
def test_shipped_model_reproduces_its_card_accuracy_on_a_sample(name):
    bridge, tokenizer, task, card = zoo.load(name)
    test_split = task.build(card.seed)[task.test_split]
    sample = test_split.shuffle(seed=0).select(range(min(SAMPLE_SIZE, test_split.num_rows)))
    examples = encode_pairs(tokenizer, list(sample["question"]), list(sample["answer"]))
    bridge_correct = exact_match_correct(bridge, examples, "greedy")
    claimed = card.accuracies[f"{task.test_split}/all"]
    # The sample mean lies within four binomial standard errors of the full-split accuracy (plus one example).
    tolerance = 4 * math.sqrt(claimed * (1 - claimed) / len(sample)) + 1 / len(sample)
    assert abs(bridge_correct.float().mean().item() - claimed) <= tolerance
    hugging_face_model = AutoModelForCausalLM.from_pretrained(zoo.model_dir(name)).eval()
    assert torch.equal(exact_match_correct(hugging_face_model, examples, "teacher_forcing"), bridge_correct)


@pytest.mark.parametrize("name", ["scan", "math"])  # the zoo's two families: GPT-2 and Llama with GQA
@pytest.mark.parametrize("model_kind", ["bridge", "hugging_face"])
def test_kv_cache_steps_give_the_logits_of_an_uncached_forward(name, model_kind):
    # Fails on any release where incremental decoding through the cache is wrong (transformers 5.24+ with
    # TransformerLens 4.3.0's bridge): greedy decoding then falls back to the uncached path, see docs/versions.md.
    bridge, tokenizer, task, card = zoo.load(name)
    model = bridge if model_kind == "bridge" else AutoModelForCausalLM.from_pretrained(zoo.model_dir(name)).eval()
    sample = task.build(card.seed)[task.test_split].select(range(8))
    examples = encode_pairs(tokenizer, list(sample["question"]), list(sample["answer"]))
    width = int(examples.prompt_lengths.min()) + 4
    input_ids = examples.input_ids[:, :width]
    prefix = width - 4
    with torch.inference_mode():
        expected = next_token_logits(model, input_ids)
        logits, cache = step_with_cache(model, input_ids[:, :prefix], None)
        steps = [logits[:, -1]]
        for position in range(prefix, width - 1):
            logits, cache = step_with_cache(model, input_ids[:, position : position + 1], cache)
            steps.append(logits[:, -1])
    cached = torch.stack(steps, dim=1)
    assert torch.allclose(cached, expected[:, prefix - 1 : width - 1], atol=1e-4), (
        f"cached and uncached decoding disagree under {describe_installed()}"
    )


def test_list_models_has_one_row_per_card_accuracy():
    frame = zoo.list_models()
    for name in zoo.available_models():
        card = zoo.read_card(zoo.model_dir(name))
        assert len(frame[frame.model == name]) == len(card.accuracies)


def test_unknown_model_names_the_shipped_ones():
    with pytest.raises(KeyError, match="shipped"):
        zoo.model_dir("gpt-5")
