"""The suite end to end on one plant with a few mask steps: its tables, their ranges, its controls, its command, and
a model left bit-exact."""

from __future__ import annotations

import dataclasses
import warnings

import pandas as pd
import pytest
import torch
from transformers import BertConfig, BertForMaskedLM, RobertaConfig, RobertaForMaskedLM
from typer.testing import CliRunner

from modmask_lens import AnswerCrossEntropy, KLDivergence, MaskConfig, faithful_binary
from modmask_lens.cli import app
from modmask_lens.groundtruth import (
    FinderMethod,
    all_cases,
    load_plant,
    random_init_bridge,
    run_suite,
    shuffled_answers,
)
from modmask_lens.groundtruth.methods import NECESSITY, study_methods
from modmask_lens.groundtruth.metrics import measured_sharing, readout_scores, seed_agreement, unit_scores
from modmask_lens.groundtruth.tracr_cases import load_tracr_case
from modmask_lens.masks.config import TrainConfig
from modmask_lens.masks.training import PaddedReadout
from modmask_lens.testing.tiny_models import TINY_HF_SIZES, boot_tiny

# A 4-step mask keeps about every unit: a small readout search budget keeps the suite quick
TINY = FinderMethod(TrainConfig(steps=4, batch_size=8, n_samples=2, readout_evaluations=16))


@pytest.fixture(scope="module")
def case():
    return load_plant("disconnected-add-mul")


@pytest.fixture(scope="module")
def tables(case):
    before = {key: value.clone() for key, value in case.bridge.state_dict().items()}
    result = run_suite(
        {"tiny": TINY}, [case], granularities=["neuron"], controls=["none", "shuffled-answers"], method_seeds=(0, 1)
    )
    after = case.bridge.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[key], after[key]) for key in before), "the suite changed the model's weights"
    return result


def test_tables_have_their_columns_and_one_row_per_mask(tables):
    summary = tables["summary"]
    assert len(summary) == 8  # 2 subtasks x 2 controls x 2 seeds
    assert set(summary["seed"]) == {0, 1}
    assert set(summary["control"]) == {"none", "shuffled-answers"} and set(summary["method"]) == {"tiny"}
    for column in (
        "precision",
        "recall",
        "auroc",
        "faithfulness",
        "kl",
        "inverse_faithfulness",
        "cpr",
        "cmd",
        "inside_others",
        "seed_iou",
    ):
        assert column in summary
    curves = tables["curves"]
    assert set(curves["curve"]) == {"keep", "inverse"} and set(curves["sweep"]) == {"top-k", "threshold"}
    assert set(curves["ranking"]) == {"signed logits"}
    assert set(tables["faithfulness"]["condition"]) == {
        "mask",
        "inverse",
        "inverse-other",
        "inverse-intersection",
    }


def test_values_lie_in_their_ranges(tables):
    real = tables["summary"][tables["summary"]["control"] == "none"]
    for column in ("precision", "recall", "auroc", "kept_fraction"):
        assert real[column].between(0, 1).all(), column
    assert (tables["curves"]["kl"] >= -1e-6).all()
    assert tables["curves"]["density"].between(0, 1).all()
    keep = tables["areas"][tables["areas"]["curve"] == "keep"]
    assert ((keep["cpr"] >= 0) & (keep["cmd"] >= 0)).all()
    # On the real plant the full model is exact, so faithfulness is masked accuracy and at most 1.
    assert real["faithfulness"].between(0, 1).all()
    full_curve = tables["curves"][
        (tables["curves"]["k"] == 1.0) & (tables["curves"]["curve"] == "keep") & (tables["curves"]["control"] == "none")
    ]
    assert (full_curve["accuracy"] == 1.0).all() and (full_curve["kl"].abs() < 1e-6).all()


def test_neuron_truth_of_a_disconnected_plant_is_half_of_each_layer(tables):
    assert (tables["scores"]["true_fraction"] == 0.5).all()


def test_shuffled_answers_permute_answers_within_a_subtask(case):
    data = case.train["add"]
    shuffled = shuffled_answers(data, seed=0)
    assert torch.equal(shuffled.input_ids[:, :-1], data.input_ids[:, :-1])
    assert sorted(shuffled.labels[:, -1].tolist()) == sorted(data.labels[:, -1].tolist())
    assert not torch.equal(shuffled.labels, data.labels)
    assert torch.equal(shuffled.input_ids[:, -1], shuffled.labels[:, -1])


def test_random_init_control_has_the_shapes_but_not_the_weights(case):
    fresh = random_init_bridge(case.bridge, seed=0)
    trained, random = case.bridge.state_dict(), fresh.state_dict()
    assert {key: value.shape for key, value in trained.items()} == {key: value.shape for key, value in random.items()}
    assert not torch.equal(trained["blocks.0.mlp.in.weight"], random["blocks.0.mlp.in.weight"])


@pytest.mark.parametrize(
    "make_model",
    [
        lambda: BertForMaskedLM(BertConfig(**TINY_HF_SIZES)),
        lambda: RobertaForMaskedLM(RobertaConfig(**TINY_HF_SIZES)),
    ],
    ids=["bert", "roberta"],
)
def test_the_random_init_control_of_a_masked_lm_rebuilds_the_model_s_own_class(make_model, tmp_path):
    """The control built AutoModelForCausalLM's class: BertLMHeadModel for BERT (the same modules as
    BertForMaskedLM), and RobertaForCausalLM for RoBERTa, which TransformerLens cannot boot, so the control failed."""
    bridge = boot_tiny(make_model(), tmp_path)
    fresh = random_init_bridge(bridge, seed=0)
    assert type(fresh.original_model) is type(bridge.original_model)
    trained, random = bridge.state_dict(), fresh.state_dict()
    assert {key: value.shape for key, value in trained.items()} == {key: value.shape for key, value in random.items()}
    assert not torch.equal(trained["blocks.0.mlp.in.weight"], random["blocks.0.mlp.in.weight"])


def test_random_init_control_leaves_the_global_generator_as_it_was_and_depends_on_its_seed_alone(case):
    with torch.random.fork_rng(devices=[]):  # this test's own seed and draws do not reach the tests after it
        torch.manual_seed(12345)  # the caller's seed (not the control's, so that a reseed shows)
        state = torch.get_rng_state()
        first = random_init_bridge(case.bridge, seed=0).state_dict()
        assert torch.equal(torch.get_rng_state(), state), "building the control reseeded torch's global generator"
        torch.rand(7)  # the caller draws between two builds
        second = random_init_bridge(case.bridge, seed=0).state_dict()
    assert all(torch.equal(first[key], second[key]) for key in first)


def test_a_control_that_cannot_be_built_is_skipped_with_its_reason(case, monkeypatch):
    def no_random_init(case, control, seed):
        raise ValueError("this bridge wraps no Hugging Face model")

    monkeypatch.setattr("modmask_lens.groundtruth.suite.control_case", no_random_init)
    with pytest.warns(UserWarning, match="the random-init control is skipped: this bridge wraps no Hugging Face"):
        tables = run_suite({"tiny": TINY}, [case], granularities=["head"], controls=["random-init"])
    assert tables["summary"].empty
    assert tables["skipped"][["case", "granularity", "control"]].values.tolist() == [[case.name, "head", "random-init"]]
    assert "Hugging Face" in tables["skipped"]["reason"].iloc[0]


def test_command_where_every_control_is_skipped_names_the_reasons_and_fails_cleanly(monkeypatch):
    """Every control skipped left a summary without its metric columns: the command died on a KeyError listing
    them; it now prints each skip's reason and one error line."""

    def no_control(case, control, seed):
        raise ValueError("this bridge wraps no Hugging Face model")

    monkeypatch.setattr("modmask_lens.groundtruth.suite.control_case", no_control)
    arguments = ["groundtruth", "run", "--case", "disconnected/add-mul", "--granularity", "head", "--fast"]
    with pytest.warns(UserWarning, match="the random-init control is skipped"):
        result = CliRunner().invoke(app, [*arguments, "--steps", "2", "--control", "random-init"])
    assert result.exit_code == 1, result.output
    assert (
        "skipped disconnected/add-mul head control=random-init: this bridge wraps no Hugging Face model"
        in result.output
    )
    assert "error: no mask was trained: every control of every case was skipped" in result.output
    assert "not in index" not in result.output


def test_a_case_without_a_requested_granularity_gets_a_skipped_row_with_its_reason(case):
    """A case with no answer key at a requested granularity was dropped with no row anywhere."""
    neuron_only = dataclasses.replace(
        case, name="neuron-only", truth={subtask: {"neuron": keys["neuron"]} for subtask, keys in case.truth.items()}
    )
    with pytest.warns(UserWarning, match="'neuron-only': head skipped: no answer key at this granularity"):
        tables = run_suite({"tiny": TINY}, [case, neuron_only], granularities=["head"], controls=["none"])
    assert set(tables["summary"]["case"]) == {case.name}
    skipped = tables["skipped"]
    assert skipped[["case", "granularity", "control"]].values.tolist() == [["neuron-only", "head", "none"]]
    assert skipped["reason"].iloc[0] == "no answer key at this granularity (the case answers neuron)"


def test_a_runs_warnings_come_between_its_log_lines_and_keep_their_message(case):
    events = []

    def warning_finder(bridge, data, mask_config, seed):
        warnings.warn(f"subtask {data.name!r}: padded", PaddedReadout, stacklevel=2)
        return TINY(bridge, data, mask_config, seed)

    def record(message, category, *args, **kwargs):
        events.append(f"{category.__name__}: {message}")

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = record
        run_suite({"warns": warning_finder}, [case], ["head"], ["none"], method_seeds=(3,), log=events.append)
    run = f"{case.name} head warns control=none seed=3"
    start, end = events.index(f"{run}: training"), next(i for i, e in enumerate(events) if e.endswith(" s"))
    assert start == 0 and end == len(events) - 1
    assert [e for e in events[start:end] if e.endswith(": padded")] == [
        f"PaddedReadout: subtask '{name}': padded" for name in case.train
    ]  # the method's own message, whole, so that users' message filters still match it


def test_the_suite_scores_the_mask_the_method_reads_out():
    case = load_tracr_case("reverse")
    data = case.train["reverse"]
    mask = TINY(case.bridge, data, MaskConfig(granularity="head"), 0)
    scores = readout_scores(mask)
    assert all(torch.equal(scores[name] > 0, kept) for name, kept in mask.kept_above(mask.threshold).items())
    assert all(
        torch.equal(mask.binary().kept[key], kept)
        for key, kept in faithful_binary(case.bridge, mask, data).kept.items()
    )


def test_seed_agreement_is_the_mean_pairwise_iou_of_the_seeds_masks(tables, case):
    stability = tables["stability"]
    assert set(stability["seeds"]) == {2} and stability["seed_iou"].between(0, 1).all()
    retrained = {seed: TINY(case.bridge, case.train["add"], MaskConfig(granularity="neuron"), seed) for seed in (0, 1)}
    scored = case.truth["add"]["neuron"]  # over the scored units, as every other measure
    kept = [
        torch.cat([k.flatten() for name, k in mask.kept_above(mask.threshold).items() if name in scored])
        for mask in retrained.values()
    ]
    expected = float((kept[0] & kept[1]).sum() / (kept[0] | kept[1]).sum())
    real = stability[(stability["control"] == "none") & (stability["subtask"] == "add")]
    assert real["seed_iou"].iloc[0] == pytest.approx(expected)
    assert seed_agreement({0: {"u": torch.tensor([1.0, -1.0])}, 1: {"u": torch.tensor([1.0, 1.0])}}) == 0.5


def test_inside_others_counts_kept_units_only_another_subtask_uses(case):
    truth = case.truth
    names = list(truth)
    own, other = names
    scores = {
        name: {unit: torch.where(used, 1.0, -1.0) for unit, used in truth[other]["neuron"].items()} for name in names
    }
    table = unit_scores(case, scores, "neuron").set_index("subtask")
    assert table.loc[own, "inside_others"] == 1.0 and table.loc[own, "precision"] == 0.0
    assert table.loc[other, "inside_others"] == 0.0 and table.loc[other, "precision"] == 1.0


def test_study_methods_differ_from_each_other_by_one_setting():
    methods = study_methods(steps=10)
    assert list(methods) == [
        "csordas",
        "csordas+faithful-readout",
        "gumbel+constraint",
        "hard-concrete+constraint",
        "faithful",
        "faithful+kl",
        "faithful+necessity",
        "faithful+one-sample",
    ]
    faithful = dataclasses.replace(TrainConfig(), steps=10, density_warmup_steps=2)  # the warm-up capped at steps / 4
    assert methods["faithful"].train_config == faithful and methods["faithful"].mask_settings == {}
    assert methods["faithful"].objective == AnswerCrossEntropy()
    assert methods["faithful+kl"].train_config == faithful and methods["faithful+kl"].objective == KLDivergence()
    necessity = methods["faithful+necessity"].train_config
    assert necessity == dataclasses.replace(faithful, complement_loss_fraction=NECESSITY)
    assert methods["faithful+one-sample"].train_config == dataclasses.replace(faithful, n_samples=1)
    assert methods["hard-concrete+constraint"].train_config.readout == "zero"
    assert methods["gumbel+constraint"].mask_settings == {"sampler": "gumbel-sigmoid"}
    assert methods["csordas+faithful-readout"].train_config.readout == "faithful"
    assert methods["csordas"].mask_settings == {"sampler": "gumbel-sigmoid", "init_logit": 2.0}
    assert all(method.train_config.steps == 10 for method in methods.values())


def test_command_prints_and_writes_the_tables(tmp_path):
    result = CliRunner().invoke(
        app,
        [
            "groundtruth",
            "run",
            "--case",
            "disconnected/add-mul",
            "--granularity",
            "head",
            "--fast",
            "--steps",
            "2",
            "--out",
            str(tmp_path),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "summary:" in result.output and "auroc" in result.output
    summary = pd.read_csv(tmp_path / "summary.csv")
    assert len(summary) == 2 and set(summary["granularity"]) == {"head"}
    assert (tmp_path / "summary.md").read_text().startswith("| case |")


def test_command_scores_programs_and_plants_built_elsewhere(tmp_path):
    import shutil

    from modmask_lens.groundtruth.plants import PLANTS_DIR
    from modmask_lens.groundtruth.tracr_cases import TRACR_DIR

    shutil.copytree(TRACR_DIR / "hist", tmp_path / "programs" / "mine")
    shutil.copytree(PLANTS_DIR / "disconnected-sub-max", tmp_path / "my-plant")
    arguments = ["groundtruth", "run", "--granularity", "head", "--fast", "--steps", "2", "--out", str(tmp_path / "t")]
    folders = ["--tracr-dir", str(tmp_path / "programs"), "--plant-dir", str(tmp_path / "my-plant")]
    result = CliRunner().invoke(app, [*arguments, *folders])
    assert result.exit_code == 0, result.output
    summary = pd.read_csv(tmp_path / "t" / "summary.csv")
    assert sorted(set(summary["case"])) == ["disconnected/sub-max", "tracr/mine"]  # only the folders' cases
    chosen = CliRunner().invoke(app, [*arguments, *folders, "--case", "tracr/mine", "--case", "disconnected/add-mul"])
    assert chosen.exit_code == 0, chosen.output
    summary = pd.read_csv(tmp_path / "t" / "summary.csv")
    assert sorted(set(summary["case"])) == ["disconnected/add-mul", "tracr/mine"]  # --case chooses among both
    twice = CliRunner().invoke(app, [*arguments, *folders, "--case", "disconnected/sub-max"])
    assert twice.exit_code == 1 and "two cases are named ['disconnected/sub-max']" in twice.output
    missing = CliRunner().invoke(app, ["groundtruth", "run", "--fast", "--tracr-dir", str(tmp_path / "absent")])
    assert missing.exit_code != 0 and "not a folder" in missing.output


def test_command_rejects_an_unknown_case():
    result = CliRunner().invoke(app, ["groundtruth", "run", "--case", "no-such-case", "--fast"])
    assert result.exit_code == 1 and "no case matches" in result.output


@pytest.mark.parametrize("typo", ["entangeld-head", "tracr/revers"])
def test_command_rejects_a_misspelt_case_beside_a_known_one(typo, monkeypatch):
    """A selector that matches nothing is refused, not dropped: the run would score only the other cases."""
    monkeypatch.setattr("modmask_lens.groundtruth.suite.run_suite", lambda *arguments, **options: pytest.fail("ran"))
    result = CliRunner().invoke(app, ["groundtruth", "run", "--case", "disconnected/add-mul", "--case", typo, "--fast"])
    assert result.exit_code == 1 and f"no case matches ['{typo}']" in result.output
    assert [case.name for case in all_cases(["disconnected/add-mul", "tracr/reverse"])] == [
        "disconnected/add-mul",
        "tracr/reverse",
    ]


def test_sharing_lines_up_units_whatever_order_each_key_lists_them_in(case):
    """Masks that keep exactly their own planted heads share nothing on the disconnected plant, also when one
    subtask's key lists its units in another order (a reviewer found 0.5 shared), and a subtask keyed on other
    units has no sharing to measure (NaN) instead of a crash after training."""
    truth = case.truth
    logits = {
        subtask: {unit: torch.where(truth[subtask]["head"][unit], 1.0, -1.0) for unit in truth[subtask]["head"]}
        for subtask in truth
    }
    reordered = dict(reversed(list(truth["mul"]["head"].items())))
    shuffled = dataclasses.replace(case, truth={**truth, "mul": {**truth["mul"], "head": reordered}})
    for variant in (case, shuffled):
        sharing = measured_sharing(variant, logits, "head").set_index("subtask")
        assert sharing["measured_shared"].tolist() == [0.0, 0.0] and sharing["known_shared"].tolist() == [0.0, 0.0]
        assert unit_scores(variant, logits, "head")["inside_others"].tolist() == [0.0, 0.0]
    first = next(iter(truth["mul"]["head"]))
    narrower = dataclasses.replace(case, truth={**truth, "mul": {**truth["mul"], "head": {first: reordered[first]}}})
    assert measured_sharing(narrower, logits, "head")["measured_shared"].isna().all()
