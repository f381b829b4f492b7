"""The modmask-lens command line: data statistics and export, zoo listing, help with examples."""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from modmask_lens.cli import app
from modmask_lens.core.pairs import load_pairs

runner = CliRunner()


def _unboxed(output: str) -> str:
    """A command's output without rich's error-panel borders and line wrapping, so that a message reads whole."""
    return " ".join(re.sub("[│╭╮╰╯─]", " ", output).split())


def test_data_stats_print_the_published_split_sizes():
    result = runner.invoke(app, ["data", "scan", "--split", "addprim_jump", "--stats"])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == ["train: 14670", "test: 7706"]


def test_data_export_keeps_train_and_test_apart_and_loads_as_a_custom_subtask(tmp_path):
    result = runner.invoke(app, ["data", "modadd", "--export", str(tmp_path / "modadd.jsonl")])
    assert result.exit_code == 0, result.output
    parts = {
        part: [json.loads(line) for line in (tmp_path / f"modadd.{part}.jsonl").read_text().splitlines()]
        for part in ("train", "test")
    }
    assert {record["part"] for record in parts["train"]} == {"train"}
    assert {record["part"] for record in parts["test"]} == {"test"}
    assert len(parts["train"]) + len(parts["test"]) == 59 * 59
    prompts = {part: load_pairs(tmp_path / f"modadd.{part}.jsonl")[0] for part in parts}
    assert prompts["train"] == [record["prompt"] for record in parts["train"]]
    assert not set(prompts["train"]) & set(prompts["test"])  # modadd's prompts are all distinct
    inside = runner.invoke(app, ["data", "scan", "--split", "length", "--export", str(tmp_path)])
    assert inside.exit_code == 0, inside.output  # a folder gets the files inside it, named after task and split
    assert (tmp_path / "scan-length.train.jsonl").exists() and (tmp_path / "scan-length.test.jsonl").exists()


def test_data_export_to_a_path_ending_in_a_slash_writes_inside_that_new_folder(tmp_path):
    """``--export newdir/`` wrote newdir.train.jsonl beside the folder it named (pathlib drops the trailing slash);
    a trailing slash names a folder, as an existing folder does."""
    result = runner.invoke(app, ["data", "modadd", "--export", f"{tmp_path / 'newdir'}/"])
    assert result.exit_code == 0, result.output
    assert sorted(path.relative_to(tmp_path).as_posix() for path in tmp_path.rglob("*")) == [
        "newdir",
        "newdir/modadd.test.jsonl",
        "newdir/modadd.train.jsonl",
    ]


def test_data_refuses_a_seed_that_a_fixed_scan_split_ignores(tmp_path):
    """SCAN's splits other than simple are fixed rules (the published files): --seed was accepted and every seed
    wrote the same rows. Only simple, a random 80/20, takes it."""
    refused = runner.invoke(app, ["data", "scan", "--split", "length", "--seed", "3", "--stats"])
    assert refused.exit_code == 2, refused.output
    said = _unboxed(refused.output)
    assert (
        "Invalid value for --seed: SCAN's length split is a fixed rule (the published split), the same under every "
        "seed; only simple is drawn at random: drop --seed"
    ) in said, said
    exports = {}
    for seed in ("0", "3"):
        result = runner.invoke(app, ["data", "scan", "--seed", seed, "--export", str(tmp_path / f"seed{seed}.jsonl")])
        assert result.exit_code == 0, result.output
        exports[seed] = (tmp_path / f"seed{seed}.test.jsonl").read_text()
    assert exports["0"] != exports["3"]  # the simple split, which the seed draws


def test_a_jsonl_of_several_parts_trains_on_its_train_rows_unless_a_part_is_named(tmp_path):
    rows = [("1+1", "2", "train"), ("2+2", "4", "test"), ("3+3", "6", "train"), ("4+4", "8", "test")]
    path = tmp_path / "mixed.jsonl"
    path.write_text("".join(json.dumps({"prompt": p, "completion": c, "part": part}) + "\n" for p, c, part in rows))
    assert load_pairs(path) == (["1+1", "3+3"], ["2", "6"])
    assert load_pairs(path, part="test") == (["2+2", "4+4"], ["4", "8"])
    with pytest.raises(ValueError, match="has no rows of part 'valid'"):
        load_pairs(path, part="valid")


def test_split_is_refused_for_tasks_other_than_scan():
    result = runner.invoke(app, ["data", "modadd", "--split", "length"])
    assert result.exit_code != 0 and "only applies to scan" in result.output


def test_a_subtask_name_with_a_space_may_be_written_with_an_underscore_or_a_hyphen():
    from modmask_lens.loading import load_subtask
    from modmask_lens.tasks.catalog import task_spec

    tokenizer = task_spec("scan").make_tokenizer()
    quoted = load_subtask("scan/turn left", tokenizer)
    for spelling in ("scan/turn_left", "scan/turn-left"):
        data = load_subtask(spelling, tokenizer)
        assert data.name == spelling.replace("/", "-") and data.input_ids.equal(quoted.input_ids)
    with pytest.raises(ValueError, match="no subtask 'turnleft'.*a space may be written _ or -"):
        load_subtask("scan/turnleft", tokenizer)


def test_load_subtask_names_the_splits_of_a_task_that_lacks_the_one_asked_for():
    from modmask_lens.loading import load_subtask
    from modmask_lens.tasks.catalog import task_spec

    tokenizer = task_spec("modadd").make_tokenizer()
    with pytest.raises(ValueError, match="task 'modadd' has no split 'interpolate'; its splits: train, test"):
        load_subtask("modadd", tokenizer, split="interpolate")


def test_load_subtask_reads_the_part_of_a_jsonl_file_that_split_names(tmp_path):
    from modmask_lens.loading import load_subtask
    from modmask_lens.tasks.catalog import task_spec

    tokenizer = task_spec("modadd").make_tokenizer()
    rows = [("1+1", "2", "train"), ("2+2", "4", "test"), ("3+3", "6", "train"), ("4+4", "8", "test")]
    path = tmp_path / "mixed.jsonl"
    path.write_text("".join(json.dumps({"prompt": p, "completion": c, "part": part}) + "\n" for p, c, part in rows))
    test_rows = load_subtask(str(path), tokenizer, split="test")
    assert torch.equal(test_rows.input_ids, load_subtask(f"{path}:test", tokenizer).input_ids)
    assert not torch.equal(test_rows.input_ids, load_subtask(str(path), tokenizer).input_ids)  # the train rows
    with pytest.raises(ValueError, match="names the part 'train' but split is 'test'"):
        load_subtask(f"{path}:train", tokenizer, split="test")


def test_every_command_has_help_with_an_example():
    for command in (
        ["demo"],
        ["data"],
        ["report"],
        ["analyze"],
        ["masks", "train"],
        ["zoo", "list"],
        ["zoo", "train"],
        ["reproduce"],
    ):
        result = runner.invoke(app, [*command, "--help"])
        assert result.exit_code == 0 and "Example: modmask-lens" in result.output, command


@pytest.mark.parametrize("module", ["modmask_lens", "modmask_lens.cli"])
def test_python_dash_m_runs_the_command(module):
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", module, "groundtruth", "--help"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0 and "Score mask methods" in result.stdout, result.stderr


def _tiny_model_and_tasks(tmp_path):
    """A tiny GPT-2 folder and two JSONL subtasks (sums of even and of odd parity) whose rows carry a foil."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from modmask_lens.testing.tiny_models import boot_tiny

    folder = tmp_path / "model"
    boot_tiny(GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=40, n_positions=16)), folder)
    for name, offset in (("evens", 0), ("odds", 1)):
        rows = [
            {"prompt": f"w{a} w{b}", "completion": f"w{(a + b) % 20 + 5}", "foil": f"w{(a + b + 1) % 20 + 5}"}
            for a in range(5, 15)
            for b in range(5, 9)
            if (a + b) % 2 == offset
        ]
        (tmp_path / f"{name}.jsonl").write_text("\n".join(json.dumps(row) for row in rows))
    return folder


def test_masks_train_resumes_and_analyze_writes_tables(tmp_path):
    folder = _tiny_model_and_tasks(tmp_path)
    arguments = [
        "masks",
        "train",
        "--model",
        str(folder),
        "--task",
        str(tmp_path / "evens.jsonl"),
        "--task",
        str(tmp_path / "odds.jsonl"),
        "--steps",
        "4",
        "--batch-size",
        "8",
        "--out",
        str(tmp_path / "m"),
    ]
    first = runner.invoke(app, arguments)
    assert first.exit_code == 0, first.output
    saved = (tmp_path / "m" / "masks-evens.safetensors").read_bytes()
    again = runner.invoke(app, arguments)  # resumes from the finished checkpoint: same masks
    assert again.exit_code == 0 and (tmp_path / "m" / "masks-evens.safetensors").read_bytes() == saved
    result = runner.invoke(
        app,
        [
            "analyze",
            "--model",
            str(folder),
            "--masks",
            str(tmp_path / "m" / "masks-evens.safetensors"),
            "--masks",
            str(tmp_path / "m" / "masks-odds.safetensors"),
            "--out",
            str(tmp_path / "a"),
        ],
    )
    assert result.exit_code == 0, result.output
    overlap = pd.read_csv(tmp_path / "a" / "overlap.csv")
    assert set(overlap.mask_a) == {"evens"} and overlap.iou.between(0, 1).all()
    assert (tmp_path / "a" / "kept_fraction.csv").exists() and (tmp_path / "a" / "head_importance.csv").exists()
    typo = runner.invoke(
        app,
        ["analyze", "--model", str(folder), "--masks", str(tmp_path / "m" / "masks-evens.safetensors"), "--by", "x"],
    )
    assert typo.exit_code != 0 and "choose one of ['all', 'tensor'" in typo.output


def test_masks_train_takes_an_objective_and_records_it_in_the_mask_file(tmp_path):
    from modmask_lens.loading import load_bridge, load_subtask
    from modmask_lens.masks.io import load_masks

    folder = _tiny_model_and_tasks(tmp_path)
    bridge, tokenizer = load_bridge(str(folder))
    evens = load_subtask(str(tmp_path / "evens.jsonl"), tokenizer)
    # The foil sits where the answer's first token is scored: "w5 w5" -> answer w15, foil w16.
    answer_position = int((evens.labels[0] != -100).nonzero()[0])
    assert tokenizer.decode(evens.foils[0, answer_position]) == "w16"
    assert tokenizer.decode(evens.labels[0, answer_position]) == "w15"
    for spec, recorded in (
        ("logit-diff", {"name": "logit_difference"}),
        ("hidden-state:blocks.1.hook_resid_post", {"name": "hidden_state", "hook_name": "blocks.1.hook_resid_post"}),
    ):
        out = tmp_path / spec.split(":")[0]
        result = runner.invoke(
            app,
            ["masks", "train", "--model", str(folder), "--task", str(tmp_path / "evens.jsonl"), "--steps", "2"]
            + ["--batch-size", "8", "--objective", spec, "--out", str(out)],
        )
        assert result.exit_code == 0, result.output
        mask = load_masks(out / "masks-evens.safetensors", bridge)
        assert recorded.items() <= mask.objective.items()


def test_masks_train_with_prepend_bos_trains_on_pairs_that_start_with_bos(tmp_path):
    from modmask_lens.loading import load_bridge, load_subtask
    from modmask_lens.masks.io import load_masks

    folder = _tiny_model_and_tasks(tmp_path)
    bridge, tokenizer = load_bridge(str(folder))
    plain = load_subtask(str(tmp_path / "evens.jsonl"), tokenizer)
    with_bos = load_subtask(str(tmp_path / "evens.jsonl"), tokenizer, prepend_bos=True)
    assert (with_bos.input_ids[:, 0] == tokenizer.bos_token_id).all()
    assert with_bos.input_ids[:, 1:].equal(plain.input_ids) and with_bos.labels[:, 1:].equal(plain.labels)
    result = runner.invoke(
        app,
        ["masks", "train", "--model", str(folder), "--task", str(tmp_path / "evens.jsonl"), "--steps", "1"]
        + ["--batch-size", "8", "--prepend-bos", "--out", str(tmp_path / "m")],
    )
    assert result.exit_code == 0, result.output
    recorded = load_masks(tmp_path / "m" / "masks-evens.safetensors", bridge).fingerprint["data"]
    assert recorded == with_bos.fingerprint() != plain.fingerprint()


@pytest.mark.parametrize(("options", "recorded"), [([], 0.01), (["--init-logit", "3.0"], 3.0)])
def test_masks_train_starts_head_masks_at_the_named_or_the_samplers_initial_logit(tmp_path, options, recorded):
    """The default head mask starts at 0.01; --init-logit 3.0 starts it where head runs started before session 11,
    so their checkpoints resume from the command line."""
    from modmask_lens.loading import load_bridge
    from modmask_lens.masks.io import load_masks

    folder = _tiny_model_and_tasks(tmp_path)
    out = tmp_path / "heads"
    result = runner.invoke(
        app,
        ["masks", "train", "--model", str(folder), "--task", str(tmp_path / "evens.jsonl"), "--steps", "1"]
        + ["--batch-size", "8", "--granularity", "head", "--out", str(out), *options],
    )
    assert result.exit_code == 0, result.output
    mask = load_masks(out / "masks-evens.safetensors", load_bridge(str(folder))[0])
    assert (mask.config.sampler, mask.config.init_logit) == ("bernoulli", recorded)
    heads = sum(logit.numel() for logit in mask.logits.values())
    kept = int(sum((logit > mask.threshold).sum() for logit in mask.logits.values()))
    binary = mask.binary()
    assert f"keeps {kept} of {heads} head units ({binary.count:,} of {binary.total:,} weights)" in result.output


@pytest.mark.parametrize(
    "options, message",
    [
        (["--objective", "nonsense"], "unknown objective 'nonsense'; choose one of answer-ce"),
        (["--objective", "kl:some"], "unknown objective 'kl:some'"),
        (["--objective", "hidden-state"], "unknown objective 'hidden-state'"),
        (
            ["--objective", "hidden-state:blocks.7.hook_resid_post"],
            "does not have; valid names are bridge.hook_dict's keys",
        ),
        (["--loss-increase-per", "batch"], "choose one of ['auto', 'token', 'example']"),
        (
            ["--method", "csordas", "--loss-increase-per", "token"],
            "--loss-increase-per does not apply to --method csordas",
        ),
        (["--method", "csordas", "--sampler", "bernoulli"], "--sampler does not apply to --method csordas"),
        (["--sampler", "bogus"], "choose one of ['auto', 'gumbel-sigmoid', 'hard-concrete', 'bernoulli']"),
        (["--sampler", "bernoulli", "--granularity", "neuron"], "trains head masks on W_O"),
        (["--init-logit", "nan"], "init_logit nan must be a finite number"),
        (["--granularity", "head", "--neuron-mask", "in-out"], "--neuron-mask applies to --granularity neuron"),
        (["--task", "{evens}:test"], "all name their subtask 'evens'"),
        (
            ["--heads-per-step", "4", "--steps", "1"],
            (
                "--heads-per-step applies to bernoulli head masks (--granularity head, --method faithful, --sampler "
                "auto or bernoulli), not --granularity weight --method faithful --sampler auto"
            ),
        ),
        (
            ["--heads-per-step", "0", "--granularity", "head", "--sampler", "hard-concrete", "--steps", "1"],
            "not --granularity head --method faithful --sampler hard-concrete",
        ),
        (
            ["--heads-per-step", "4", "--granularity", "head", "--method", "csordas", "--steps", "1"],
            "not --granularity head --method csordas --sampler auto",
        ),
        (
            ["--fully-shard", "--steps", "1"],
            (
                "fully sharded training runs Csordás's method on the answer-ce objective only; add --method csordas "
                "and --objective answer-ce (got --method faithful --objective answer-ce)"
            ),
        ),
        (
            ["--fully-shard", "--method", "csordas", "--objective", "kl", "--steps", "1"],
            "(got --method csordas --objective kl), or train without --fully-shard",
        ),
    ],
)
def test_a_bad_training_option_is_refused_before_training(tmp_path, options, message):
    folder = _tiny_model_and_tasks(tmp_path)
    result = runner.invoke(
        app,
        ["masks", "train", "--model", str(folder), "--task", str(tmp_path / "evens.jsonl")]
        + [option.format(evens=tmp_path / "evens.jsonl") for option in options]
        + ["--out", str(tmp_path / "m")],
    )
    assert result.exit_code != 0
    assert message in _unboxed(result.output), result.output
    assert not list((tmp_path / "m").glob("**/*.safetensors"))


@pytest.mark.parametrize("sampler", [[], ["--sampler", "auto"]])
def test_heads_per_step_is_refused_where_auto_trains_the_heads_with_hard_concrete(tmp_path, monkeypatch, sampler):
    """On heads without a hook_z --sampler auto picks hard-concrete, which never reads --heads-per-step: the run
    trained without it and said nothing. The refusal comes once the model is loaded, before any data or training."""
    import modmask_lens.loading
    import modmask_lens.masks.training

    folder = _tiny_model_and_tasks(tmp_path)
    load_bridge = modmask_lens.loading.load_bridge

    def without_hook_z(*arguments, **options):
        bridge, tokenizer = load_bridge(*arguments, **options)
        hooks = {name: hook for name, hook in bridge.hook_dict.items() if not name.endswith("hook_z")}
        monkeypatch.setattr(type(bridge), "hook_dict", property(lambda self: hooks))  # a family without hook_z
        return bridge, tokenizer

    def never(*arguments, **options):
        pytest.fail("the command went on to the data or training before refusing --heads-per-step")

    monkeypatch.setattr(modmask_lens.loading, "load_bridge", without_hook_z)
    monkeypatch.setattr(modmask_lens.loading, "load_subtask", never)
    monkeypatch.setattr(modmask_lens.masks.training, "train_masks", never)
    result = runner.invoke(
        app,
        ["masks", "train", "--model", str(folder), "--task", str(tmp_path / "evens.jsonl"), "--granularity", "head"]
        + ["--heads-per-step", "4", *sampler, "--out", str(tmp_path / "m")],
    )
    assert result.exit_code == 2, result.output
    said = _unboxed(result.output)
    assert (
        "Invalid value for --heads-per-step: --sampler auto trains this model's head masks with hard-concrete (its "
        "heads have no hook_z; docs/concepts.md#head-masks), which does not read --heads-per-step; drop "
        "--heads-per-step"
    ) in said, said


@pytest.mark.parametrize(
    ("command", "message"),
    [
        (["reproduce", "scan", "--steps", "0"], "Invalid value for --steps: must be at least 1, got 0"),
        (["reproduce", "scan", "--eval-limit", "-1"], "Invalid value for --eval-limit: must be at least 1, got -1"),
        (["reproduce", "scan", "--jobs", "0"], "Invalid value for --jobs: must be at least 1, got 0"),
        (["reproduce", "scan", "--out", "{file}/results.md"], "choose another --out"),
        (["reproduce", "independence", "--out", "{file}"], "choose another --out"),
        (["zoo", "train", "scan", "--out", "{file}"], "choose another --out"),
        (["zoo", "train", "scan", "--checkpoint-dir", "{file}/checkpoints"], "choose another --checkpoint-dir"),
        (["reproduce", "scan", "--out", "{file}"], "exists and was not written by reproduce"),
        (["reproduce", "scan", "--seed", "3"], "--seed does not apply to the Csordás experiments"),
        (["reproduce", "scan", "--frames"], "--frames does not apply to the Csordás experiments"),
        (["reproduce", "scan_probe", "--steps", "5"], "--steps does not apply to the probe experiments"),
        (["reproduce", "scan_probe", "math_probe", "--method", "csordas"], "--method does not apply to the probe"),
        (["reproduce", "independence", "--out", "{file}-runs", "--jobs", "2"], "--jobs does not apply to a BIMT task"),
        (
            ["reproduce", "modular_addition", "--out", "{file}-runs", "--method", "csordas"],
            "--method does not apply to a BIMT task",
        ),
        (["demo", "--out", "{file}"], "choose another --out"),
        (["demo", "--mask-steps", "0"], "Invalid value for --mask-steps: must be at least 1, got 0"),
    ],
)
def test_experiment_commands_refuse_bad_options_before_any_work(tmp_path, monkeypatch, command, message):
    import experiments.bimt
    import experiments.csordas
    import experiments.demo
    import experiments.zoo.train

    def never(*arguments, **options):
        pytest.fail("the command started its work before refusing the option")

    for module, name in (
        (experiments.csordas, "run_and_write"),
        (experiments.bimt, "run_task"),
        (experiments.demo, "run_demo"),
        (experiments.zoo.train, "train_named"),
    ):
        monkeypatch.setattr(module, name, never)
    occupied = tmp_path / "a-file"
    occupied.write_text("")
    result = runner.invoke(app, [part.format(file=occupied) for part in command])
    assert result.exit_code != 0
    assert message in _unboxed(result.output), result.output


def test_foils_must_be_in_every_row_once_one_row_has_one(tmp_path):
    from modmask_lens.core.pairs import load_foils

    path = tmp_path / "partial.jsonl"
    rows = [{"prompt": "1+1", "completion": "2", "foil": "3"}, {"prompt": "2+2", "completion": "4"}]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    with pytest.raises(ValueError, match="line 2: 'foil' must be a non-empty string in every row"):
        load_foils(path)
    path.write_text("".join(json.dumps({k: v for k, v in row.items() if k != "foil"}) + "\n" for row in rows))
    assert load_foils(path) is None


@pytest.fixture
def no_model_load(monkeypatch):
    """Fail the test if the command loads a model: what it refuses, it refuses before that slow step."""
    import modmask_lens.loading

    def never(*arguments, **options):
        pytest.fail("the command loaded the model before refusing its input")

    monkeypatch.setattr(modmask_lens.loading, "load_bridge", never)


@pytest.mark.parametrize("command", ["analyze", "report"])
def test_a_mask_file_given_twice_is_refused_before_the_model_loads(tmp_path, monkeypatch, no_model_load, command):
    """The same file under two labels (or two spellings of its path) was read as two masks: analyze wrote an overlap
    table of IoU 1.0 in every row, a mask against itself."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "masks-evens.safetensors").write_text("")
    for spellings, labels in (
        (["masks-evens.safetensors", "masks-evens.safetensors"], ["--label", "x", "--label", "y"]),
        (["masks-evens.safetensors", str(tmp_path / "masks-evens.safetensors")], []),
    ):
        masks = [part for spelling in spellings for part in ("--masks", spelling)]
        prompt = ["--prompt", "w1 w2"] if command == "report" else []
        result = runner.invoke(app, [command, "--model", "scan", *masks, *labels, *prompt])
        assert result.exit_code == 1, result.output
        said = " ".join(result.output.split())
        assert f"--masks {spellings[1]} is the file masks-evens.safetensors given again; pass each file once" in said


@pytest.mark.parametrize("command", ["analyze", "report"])
@pytest.mark.parametrize("labels", [["x"], ["x", "x"], ["x", "y", "z"]], ids=["too-few", "repeated", "too-many"])
def test_labels_that_are_not_one_distinct_label_per_mask_file_are_refused_before_the_model_loads(
    tmp_path, no_model_load, command, labels
):
    masks = []
    for name in ("evens", "odds"):
        (tmp_path / f"masks-{name}.safetensors").write_text("")
        masks += ["--masks", str(tmp_path / f"masks-{name}.safetensors")]
    prompt = ["--prompt", "w1 w2", "--out", str(tmp_path / "report.html")] if command == "report" else []
    out = ["--out", str(tmp_path / "analysis")] if command == "analyze" else []
    options = [part for label in labels for part in ("--label", label)]
    result = runner.invoke(app, [command, "--model", "scan", *masks, *options, *prompt, *out])
    assert result.exit_code == 1, result.output
    assert f"give one distinct --label per mask file: 2 files, labels {labels}" in result.output, result.output


def test_report_refuses_prompt_ids_that_are_not_integers_before_the_model_loads(tmp_path, no_model_load):
    (tmp_path / "masks-evens.safetensors").write_text("")
    result = runner.invoke(
        app,
        ["report", "--model", "scan", "--masks", str(tmp_path / "masks-evens.safetensors"), "--prompt", "3 jump 7"]
        + ["--prompt-ids", "--out", str(tmp_path / "report.html")],
    )
    assert result.exit_code == 1, result.output
    assert "error: --prompt-ids reads the prompt as space-separated token ids, but ['jump'] are not integers" in (
        " ".join(result.output.split())
    )


def test_report_refuses_to_write_over_a_task_file_it_reads(tmp_path, no_model_load):
    """``--task evens.jsonl --out evens.jsonl`` loaded the model, read the task and wrote the HTML report over it."""
    (tmp_path / "masks-evens.safetensors").write_text("")
    task = tmp_path / "evens.jsonl"
    task.write_text(json.dumps({"prompt": "w5 w6", "completion": "w11"}) + "\n")
    for spec in (str(task), f"{task}:test"):
        result = runner.invoke(
            app,
            ["report", "--model", "scan", "--masks", str(tmp_path / "masks-evens.safetensors"), "--prompt", "w5"]
            + ["--task", spec, "--out", str(task)],
        )
        assert result.exit_code == 1, result.output
        said = " ".join(result.output.split())
        assert f"the report's file {task} is the task file {task}: writing it would replace the task file" in said


def test_groundtruth_run_refuses_a_neuron_mask_without_neuron_masks(monkeypatch):
    """``--neuron-mask in-out --granularity head`` trained the same head masks as without it, under the method name
    ``faithful+neuron-in-out``: tables that read as an in-out neuron run which trained no neuron mask."""
    import modmask_lens.groundtruth.registry
    import modmask_lens.groundtruth.suite

    def never(*arguments, **options):
        pytest.fail("the suite loaded its cases or trained before refusing --neuron-mask")

    monkeypatch.setattr(modmask_lens.groundtruth.registry, "all_cases", never)
    monkeypatch.setattr(modmask_lens.groundtruth.suite, "run_suite", never)
    result = runner.invoke(
        app,
        ["groundtruth", "run", "--case", "disconnected/add-mul", "--granularity", "head", "--granularity", "weight"]
        + ["--neuron-mask", "in-out", "--fast"],
    )
    assert result.exit_code == 2, result.output
    said = _unboxed(result.output)
    assert (
        "Invalid value for --neuron-mask: shapes neuron masks only, and --granularity asks for head, weight: add "
        "--granularity neuron or drop --neuron-mask"
    ) in said, said
    monkeypatch.undo()
    monkeypatch.setattr(modmask_lens.groundtruth.suite, "run_suite", never)
    result = runner.invoke(app, ["groundtruth", "run", "--case", "entangled-head", "--neuron-mask", "in-out", "--fast"])
    assert result.exit_code == 2, result.output
    said = _unboxed(result.output)
    assert (
        "Invalid value for --neuron-mask: shapes neuron masks only, and no case here has a neuron answer key "
        "(entangled-head/add-mul: weight, head; entangled-head/sub-max: weight, head): choose a case with one or "
        "drop --neuron-mask"
    ) in said, said


@pytest.mark.parametrize(
    ("command", "kind", "example"),
    [
        (["report", "--model", "scan", "--masks", "{masks}", "--prompt", "jump"], "HTML", "report.html"),
        (["groundtruth", "targets", "{tmp}"], "Markdown", "targets.md"),
        (["reproduce", "scan"], "Markdown", "results.md"),
    ],
)
def test_an_out_file_written_as_a_folder_is_refused_before_any_work(
    tmp_path, monkeypatch, no_model_load, command, kind, example
):
    """``--out newdir/`` (a folder not made yet) wrote the file ``newdir``: pathlib drops the trailing slash. A
    trailing slash names a folder, refused as an existing folder is, with a file in it to name instead."""
    import experiments.csordas

    monkeypatch.setattr(experiments.csordas, "run_and_write", lambda *arguments: pytest.fail("reproduce ran"))
    (tmp_path / "masks-evens.safetensors").write_text("")
    masks, folder = tmp_path / "masks-evens.safetensors", tmp_path / "newdir"
    for out in (f"{folder}/", str(tmp_path)):
        result = runner.invoke(app, [*(part.format(masks=masks, tmp=tmp_path) for part in command), "--out", out])
        assert result.exit_code == 1, result.output
        said = " ".join(result.output.split())
        expected = f"error: --out {out} is a folder; name the {kind} file to write, e.g. {out.rstrip('/')}/{example}"
        assert expected in said, said
    assert not folder.exists()


@pytest.mark.parametrize("option", [["--eval-limit", "40"], ["--prepend-bos"]])
def test_report_refuses_task_options_without_a_task(tmp_path, no_model_load, option):
    """--eval-limit and --prepend-bos only shape the --task scoring: without a task the report ran and the option
    did nothing."""
    (tmp_path / "masks-evens.safetensors").write_text("")
    result = runner.invoke(
        app,
        ["report", "--model", "scan", "--masks", str(tmp_path / "masks-evens.safetensors"), "--prompt", "jump"]
        + [*option, "--out", str(tmp_path / "report.html")],
    )
    assert result.exit_code == 2, result.output
    said = _unboxed(result.output)
    assert f"Invalid value for {option[0]}: applies to --task only: name the subtasks to score on" in said, said
