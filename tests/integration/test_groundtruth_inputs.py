"""The ground-truth suite on cases users build: masked-LM data scored with its label shift and attention mask, a
case of one subtask, and the plans and answer keys refused before any training."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from transformers import BertConfig, BertForMaskedLM
from typer.testing import CliRunner

from modmask_lens.cli import app
from modmask_lens.core.data import SubtaskData
from modmask_lens.core.scoring import score_answers
from modmask_lens.groundtruth import FinderMethod, GroundTruthCase, load_plant, run_suite, shuffled_answers
from modmask_lens.groundtruth.evaluation import answer_log_probs, exact_match, masked_logits
from modmask_lens.masks.config import TrainConfig
from modmask_lens.testing.tiny_models import TINY_HF_SIZES, boot_tiny, placeholder_bert_tokenizer

TINY = FinderMethod(TrainConfig(steps=4, batch_size=8, n_samples=2))


def untrainable(*arguments):
    pytest.fail("the suite trained before refusing its plan")


@pytest.fixture(scope="module")
def masked_lm(tmp_path_factory):
    tokenizer = placeholder_bert_tokenizer(40)
    bridge = boot_tiny(
        BertForMaskedLM(BertConfig(**TINY_HF_SIZES)), tmp_path_factory.mktemp("bert"), tokenizer=tokenizer
    )
    sentences = [("w5 w6 [MASK] w7", "w8"), ("w9 [MASK] w7 w6 w6 w6 w6", "w10"), ("w11 [MASK]", "w12")]
    data = SubtaskData.from_masked_sentences("fill", sentences, tokenizer)
    return bridge, data


def test_masked_lm_cases_are_scored_with_their_label_shift_and_attention_mask(masked_lm):
    bridge, data = masked_lm
    with torch.no_grad():
        logits = bridge(data.input_ids, attention_mask=data.attention_mask)
    # answers = the model's own predictions at the masks: exact match 1 when scored where BERT predicts them
    labels = torch.where(data.labels != -100, logits.argmax(dim=-1), data.labels)
    own = dataclasses.replace(data, labels=labels)
    torch.testing.assert_close(masked_logits(bridge, own), logits, rtol=0, atol=0)
    assert exact_match(masked_logits(bridge, own), own) == 1.0
    assert exact_match(logits, own) == score_answers(logits, labels, label_shift=0).n_correct / len(own)
    rows = answer_log_probs(logits, own)
    assert rows.shape[0] == int((labels != -100).sum())
    torch.testing.assert_close(rows, logits[labels != -100].log_softmax(dim=-1))


def test_shuffled_answers_keep_the_label_shift_and_attention_mask(masked_lm):
    _, data = masked_lm
    layout = SubtaskData(  # one answer position for every example, as the control needs
        "fill", data.input_ids, torch.where(data.labels != -100, data.labels, -100), data.attention_mask, label_shift=0
    )
    same_layout = dataclasses.replace(
        layout,
        input_ids=layout.input_ids[[0, 0, 0]],
        labels=torch.stack([layout.labels[0]] * 3).index_put_(
            (torch.arange(3), torch.full((3,), 3)), torch.tensor([20, 21, 22])
        ),
        attention_mask=layout.attention_mask[[0, 0, 0]],
    )
    shuffled = shuffled_answers(same_layout, seed=1)
    assert shuffled.label_shift == 0 and torch.equal(shuffled.attention_mask, same_layout.attention_mask)
    assert sorted(shuffled.labels[:, 3].tolist()) == [20, 21, 22]


def test_a_case_of_one_subtask_removes_the_whole_mask_in_its_inverse():
    case = load_plant("entangled-head-add-mul")
    single = dataclasses.replace(
        case,
        name="one-subtask",
        train={"add": case.train["add"]},
        test={"add": case.test["add"]},
        truth={"add": case.truth["add"]},
    )
    tables = run_suite({"tiny": TINY}, [single], granularities=["head"], controls=["none"])
    faithfulness = tables["faithfulness"].set_index("condition")
    for control in ("inverse-other", "inverse-intersection"):
        assert faithfulness.loc[control, "density"] == faithfulness.loc["inverse", "density"]
        assert faithfulness.loc[control, "accuracy"] == faithfulness.loc["inverse", "accuracy"]
    assert math.isnan(tables["sharing"]["known_shared"].iloc[0])
    assert math.isnan(tables["sharing"]["measured_shared"].iloc[0])


def test_bad_plans_and_answer_keys_are_refused_before_training():
    case = load_plant("entangled-head-add-mul")
    for plan, message in (
        ({"controls": ["none", "none"]}, "controls .* repeat"),
        ({"method_seeds": (0, 0)}, "seeds .* repeat"),
        ({"granularities": ["heads"]}, "unknown granularities \\['heads'\\]"),
        (
            {"granularities": ["neuron"]},
            "no case answers granularities \\['neuron'\\]; .*entangled-head/add-mul: weight, head",
        ),
    ):
        with pytest.raises(ValueError, match=message):
            run_suite({"never": untrainable}, [case], **({"granularities": ["head"]} | plan))
    unit = next(iter(case.truth["add"]["head"]))
    cut = dataclasses.replace(
        case, truth=case.truth | {"add": {"head": case.truth["add"]["head"] | {unit: torch.ones(4, dtype=torch.bool)}}}
    )
    with pytest.raises(ValueError, match=f"truth of 'add' for '{unit}' is torch.bool \\(4,\\); .*shape \\(8,\\)"):
        run_suite({"never": untrainable}, [cut], granularities=["head"], controls=["none"])
    unknown = dataclasses.replace(case, truth=case.truth | {"add": {"head": {"blocks.9.attn": torch.ones(8) > 0}}})
    with pytest.raises(ValueError, match="names 'blocks.9.attn', which no method's masks have"):
        run_suite({"never": untrainable}, [unknown], granularities=["head"], controls=["none"])


def test_answer_keys_the_suite_cannot_score_are_refused_before_training():
    case = load_plant("entangled-head-add-mul")
    add, mul = case.truth["add"], case.truth["mul"]
    for truth, message in (
        ({"add": add}, "subtasks \\['mul'\\] have data but no answer key"),  # it failed after training
        ({"add": add, "mul": {"heads": mul["head"]}}, "truth of 'mul' has granularities \\['heads'\\]"),
        ({"add": add, "mul": mul | {"neuron": {}}}, "the neuron truth of 'mul' names no unit"),
        (  # each subtask keyed, at no shared granularity: the suite trained nothing and returned empty tables
            {"add": {"head": add["head"]}, "mul": {"weight": mul["weight"]}},
            "no granularity has an answer key for every subtask",
        ),
    ):
        with pytest.raises(ValueError, match=message):
            run_suite({"never": untrainable}, [dataclasses.replace(case, truth=truth)], controls=["none"])


def test_an_answer_key_that_does_not_do_its_subtask_is_warned_about_before_training():
    case = load_plant("entangled-head-add-mul")
    alone = masked_logits(case.bridge, case.test["add"], _head_masks(case, case.truth["mul"]["head"]))
    assert exact_match(alone, case.test["add"]) < 0.5  # add with only mul's heads: the plant's "removed" accuracy
    swapped = dataclasses.replace(case, truth={"add": case.truth["mul"], "mul": case.truth["add"]})
    with (
        pytest.warns(UserWarning, match="only the head answer key of 'add' scores 0.[0-4]"),
        pytest.raises(pytest.fail.Exception, match="trained before refusing"),
    ):
        run_suite({"never": untrainable}, [swapped], granularities=["head"], controls=["none"])


def _head_masks(case, head_key):
    from modmask_lens.groundtruth.metrics import unit_weight_masks
    from modmask_lens.masks.config import MaskConfig
    from modmask_lens.masks.mask_set import MaskSet

    return unit_weight_masks(MaskSet.for_bridge(case.bridge, MaskConfig(granularity="head")), head_key)


def test_command_checks_its_output_folder_first(tmp_path, monkeypatch):
    monkeypatch.setattr("modmask_lens.groundtruth.suite.run_suite", untrainable)
    occupied = tmp_path / "a-file"
    occupied.write_text("")
    result = CliRunner().invoke(
        app, ["groundtruth", "run", "--fast", "--case", "entangled-head/add-mul", "--out", str(occupied)]
    )
    assert result.exit_code == 1 and "choose another --out" in result.output


def test_an_answer_key_may_name_units_that_a_method_s_own_mask_settings_add():
    from modmask_lens.masks.config import MaskConfig
    from modmask_lens.masks.mask_set import units_for
    from modmask_lens.testing.tiny_models import tiny_bridge

    bridge = tiny_bridge()
    input_ids = torch.randint(1, 10, (16, 6), generator=torch.Generator().manual_seed(0))
    data = SubtaskData("copy", input_ids, torch.where(torch.arange(6) >= 3, input_ids, -100))
    kinds = {"kinds": ("linear", "norm", "embedding")}
    truth = {
        unit.name: torch.zeros(unit.shape, dtype=torch.bool)
        for unit in units_for(bridge, MaskConfig(granularity="weight", **kinds))
    }
    truth["embed.weight"][:5] = True  # masked only with the embedding kind
    case = GroundTruthCase(
        "mine/copy", "mine", bridge, {"copy": data}, {"copy": data}, {"copy": {"weight": truth}}, False
    )
    with pytest.raises(ValueError, match="names 'embed.weight', which no method's masks have"):
        run_suite({"never": untrainable}, [case], controls=["none"])
    method = FinderMethod(TrainConfig(steps=2, batch_size=8, n_samples=2), mask_settings=kinds)
    scores = run_suite({"embedding": method}, [case], controls=["none"])["scores"]
    assert len(scores) == 1 and scores["true_fraction"].iloc[0] > 0


def test_a_plant_trained_elsewhere_takes_its_seed_and_answer_key_from_its_card(tmp_path):
    import json
    import shutil

    from modmask_lens.groundtruth.plants import PLANTS_DIR, PlantSpec, plant_plan, plant_truth

    folder = tmp_path / "disconnected-add-mul-seed1"
    shutil.copytree(PLANTS_DIR / "disconnected-add-mul", folder)
    card = json.loads((folder / "card.json").read_text())
    (folder / "card.json").write_text(json.dumps(card | {"seed": 1}))
    case = load_plant("disconnected-add-mul", folder)
    expected = plant_truth(case.bridge, plant_plan(PlantSpec("disconnected", "add-mul", 1), case.bridge))
    shipped = load_plant("disconnected-add-mul")
    assert case.name == "disconnected/add-mul@seed1"
    for subtask, by_granularity in expected.items():
        for granularity, truth in by_granularity.items():
            assert all(torch.equal(case.truth[subtask][granularity][unit], truth[unit]) for unit in truth)
    heads, shipped_heads = case.truth["add"]["head"], shipped.truth["add"]["head"]
    assert any(not torch.equal(heads[unit], shipped_heads[unit]) for unit in heads)  # seed 1 drew another plan
    with pytest.raises(ValueError, match="cases \\['disconnected/add-mul'\\] repeat"):
        run_suite({"never": untrainable}, [shipped, shipped], granularities=["head"], controls=["none"])
