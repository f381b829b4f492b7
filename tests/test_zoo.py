"""Every shipped zoo model boots offline as a TransformerBridge and re-measures, on a sample, the accuracy its
card claims; the bridge and the plain Hugging Face model agree example by example."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from modmask_lens import zoo
from modmask_lens.tasks.encoding import encode_pairs
from modmask_lens.tasks.evaluation import exact_match_correct
from modmask_lens.zoo.recipes import RECIPES

torch.set_num_threads(1)
SAMPLE_SIZE = 400  # test examples re-measured per model: enough to catch a broken model, fast on one core
ZOO_SIZE_LIMIT_BYTES = 25 * 2**20  # issue 3: together the models stay under 25 MB


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


def test_list_models_has_one_row_per_card_accuracy():
    frame = zoo.list_models()
    for name in zoo.available_models():
        card = zoo.read_card(zoo.model_dir(name))
        assert len(frame[frame.model == name]) == len(card.accuracies)


def test_unknown_model_names_the_shipped_ones():
    with pytest.raises(KeyError, match="shipped"):
        zoo.model_dir("gpt-5")
