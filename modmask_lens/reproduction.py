"""Reproducing Csordás et al. (2021) on the shipped zoo: ``python -m modmask_lens.reproduction [NAME ...]``.

Each experiment trains masks on a zoo model (one run, one mask per subtask plus a control mask on the model's full
training data), evaluates every mask and its inverse on every evaluation set, measures overlaps, and returns tidy
tables; :func:`write_results` renders them as markdown. Settings are scaled for a CPU budget (stated with the
results); they are not tuned toward the paper's numbers.

* ``scan``: masks on the full problem (the simple split's train set) and on the train sets of addprim_jump, length
  and addprim_turn_left; accuracy on every split's test set (the paper's Fig. 4a) and the share of each output
  token's unembedding row that the jump mask removes (Fig. 4b).
* ``addmul``: masks for addition and multiplication; sizes, IoU per layer and role, and the inverse-mask table.
* ``double_add``: masks for each pair of the double addition, scored on its own output slot.
* ``math``: masks per math module (sharing matrix), and a control mask against an easy-only mask on harder questions.
* ``scan_probe``: a gated-module probe (Krishnamurthy & Watkins 2021) on the SCAN model's last residual stream:
  routing of the primitives to experts, mutual information, error attribution.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import pandas as pd
import torch

from modmask_lens.analysis import mask_accuracy, output_row_removal, pairwise_overlap
from modmask_lens.masks.config import MaskConfig, TrainConfig
from modmask_lens.masks.data import SubtaskData
from modmask_lens.masks.training import train_masks
from modmask_lens.tasks import scan
from modmask_lens.tasks.views import subtask_view

QUESTION_ANSWER = ("question", "answer")
CPU_SETTINGS = TrainConfig(steps=800, batch_size=64, lr=0.03, beta=1e-4)
"""Mask training for the reproductions: the paper trains 20k-25k steps at lr 1e-2; on 2 CPU cores within an hour
for all experiments we train 800 steps at lr 3e-2 (Adam moves each logit at most about lr per step)."""


@dataclass
class ExperimentResult:
    """Tables of one experiment, its settings and how long it took."""

    name: str
    tables: dict[str, pd.DataFrame]
    settings: dict
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


def _subtask(name: str, dataset, tokenizer, limit: int | None = None) -> SubtaskData:
    if limit is not None and len(dataset) > limit:
        dataset = dataset.shuffle(seed=0).select(range(limit))
    return SubtaskData.from_pairs(name, dataset, tokenizer, fields=QUESTION_ANSWER)


def scan_experiment(train_config: TrainConfig = CPU_SETTINGS, eval_limit: int | None = 2000) -> ExperimentResult:
    """SCAN (Fig. 4): full-problem vs split masks on the zoo ``scan`` model."""
    from modmask_lens import zoo

    model = zoo.load("scan")
    splits = {"simple": "simple", "jump": "addprim_jump", "length": "length", "turn_left": "addprim_turn_left"}
    data = {name: scan.scan_task(split) for name, split in splits.items()}
    training = [_subtask(name, data[name]["train"], model.tokenizer) for name in splits]
    masks = train_masks(model.bridge, training, MaskConfig(), train_config, progress=False)
    binaries = {name: mask.binary() for name, mask in masks.items()}
    evaluation = {name: _subtask(name, data[name]["test"], model.tokenizer, eval_limit) for name in splits}
    accuracy = mask_accuracy(model.bridge, binaries, evaluation)
    fig4a = accuracy[accuracy.condition != "inverse"].pivot_table(
        index=["condition", "mask"], columns="evaluated_on", values="accuracy").reset_index()
    removal = output_row_removal(binaries["jump"], binaries["simple"], model.tokenizer)
    action_rows = removal[removal["token"].str.startswith("I_")]
    sizes = pd.concat([binary.kept_fraction(by="all") for binary in binaries.values()], ignore_index=True)
    return ExperimentResult("scan", {"mask sizes": sizes, "accuracy on each split's test set (Fig. 4a)": fig4a,
                                     "output rows removed by the jump mask (Fig. 4b)": action_rows},
                            {"train": train_config.to_dict(), "eval_examples_per_split": eval_limit})


def addmul_experiment(train_config: TrainConfig = CPU_SETTINGS, eval_limit: int | None = 2000) -> ExperimentResult:
    """Addition / multiplication: mask sizes, IoU per layer and role, and the inverse-mask table."""
    from modmask_lens import zoo

    model = zoo.load("addmul")
    data = model.task.build(0)
    operations = ("add", "mul")
    training = [_subtask(name, subtask_view(data["train"], "operation", name), model.tokenizer) for name in operations]
    control = SubtaskData.concatenate("control", training)
    evaluation = {name: _subtask(name, subtask_view(data["test"], "operation", name), model.tokenizer, eval_limit)
                  for name in operations}
    tables = _control_and_subtask_masks(model.bridge, control, training, evaluation, train_config)
    return ExperimentResult("addmul", tables, {"train": train_config.to_dict(), "eval_examples_per_operation": eval_limit})


def _control_and_subtask_masks(bridge, control: SubtaskData, training: list[SubtaskData],
                               evaluation: dict[str, SubtaskData], train_config: TrainConfig) -> dict[str, pd.DataFrame]:
    """Masks for a control task and each subtask in one run; their sizes, the subtasks' accuracy under each mask and
    its inverse, and the subtasks' IoU per layer and role."""
    masks = train_masks(bridge, [control, *training], MaskConfig(), train_config, progress=False)
    binaries = {name: mask.binary() for name, mask in masks.items()}
    subtask_masks = {data.name: binaries[data.name] for data in training}
    accuracy = mask_accuracy(bridge, subtask_masks, evaluation)
    return {
        "mask sizes": pd.concat([binary.kept_fraction(by="all") for binary in binaries.values()], ignore_index=True),
        "accuracy (full / mask / inverse mask)": accuracy.pivot_table(
            index=["condition", "mask"], columns="evaluated_on", values="accuracy").reset_index(),
        "IoU of the subtask masks per layer and role": pairwise_overlap(subtask_masks, by="layer_role"),
    }


def double_add_experiment(train_config: TrainConfig = CPU_SETTINGS, eval_limit: int | None = 2000) -> ExperimentResult:
    """Double addition (the paper's +/+): masks for pair 1 and pair 2, each scored on its own output slot only; do
    the two pairs use separate weights (low IoU in the blocks) and does removing one pair's mask spare the other?"""
    from modmask_lens import zoo
    from modmask_lens.tasks.encoding import encode_pairs, restrict_labels

    model = zoo.load("double-add")
    data = model.task.build(0)
    slots = {"pair1": (0, 1), "pair2": (3, 4)}  # completion "ss,tt": characters 0-1 and 3-4

    def pair_subtasks(split, limit: int | None) -> dict[str, SubtaskData]:
        rows = split if limit is None or len(split) <= limit else split.shuffle(seed=0).select(range(limit))
        examples = encode_pairs(model.tokenizer, rows["question"], rows["answer"])
        subtasks = {}
        for name, offsets in slots.items():
            scored = restrict_labels(examples, offsets)
            subtasks[name] = SubtaskData(name, scored.input_ids, scored.labels)
        return subtasks

    training = pair_subtasks(data["train"], None)
    control = _subtask("control", data["train"], model.tokenizer)
    tables = _control_and_subtask_masks(model.bridge, control, list(training.values()),
                                        pair_subtasks(data["test"], eval_limit), train_config)
    return ExperimentResult("double addition", tables, {"train": train_config.to_dict(), "eval_examples": eval_limit})


def math_experiment(train_config: TrainConfig = CPU_SETTINGS, eval_limit: int | None = 1000) -> ExperimentResult:
    """Math modules: how much the modules' masks share (pairwise IoU over all weights), and the paper's DM-math test:
    a control mask (all training difficulties) against a mask trained on ``train_easy`` only, both evaluated on the
    interpolate and the harder extrapolate questions."""
    from modmask_lens import zoo

    model = zoo.load("math")
    data = model.task.build(0)
    modules = sorted(set(data["train"]["module"]))
    training = [_subtask(name, subtask_view(data["train"], "module", name), model.tokenizer) for name in modules]
    control = _subtask("control", data["train"], model.tokenizer)
    easy = _subtask("easy_only", data["train_easy"], model.tokenizer)
    masks = train_masks(model.bridge, [control, easy, *training], MaskConfig(), train_config, progress=False)
    binaries = {name: mask.binary() for name, mask in masks.items()}
    sharing = pairwise_overlap({name: binaries[name] for name in modules}, by="all")
    matrix = sharing.pivot(index="task_a", columns="task_b", values="iou").reset_index()
    evaluation = {split: _subtask(split, data[split], model.tokenizer, eval_limit) for split in ("interpolate", "extrapolate")}
    accuracy = mask_accuracy(model.bridge, {"control": binaries["control"], "easy_only": binaries["easy_only"]}, evaluation)
    difficulty = accuracy[accuracy.condition != "inverse"].pivot_table(
        index=["condition", "mask"], columns="evaluated_on", values="accuracy").reset_index()
    sizes = pd.concat([binary.kept_fraction(by="all") for binary in binaries.values()], ignore_index=True)
    return ExperimentResult("math modules", {"mask sizes": sizes, "IoU between the modules' masks": matrix,
                                             "control vs easy-only mask": difficulty},
                            {"train": train_config.to_dict(), "eval_examples": eval_limit, "modules": modules})


def scan_probe_experiment(train_config: TrainConfig = CPU_SETTINGS, eval_limit: int | None = 2000,
                          probe_steps: int = 1500) -> ExperimentResult:
    """Gated-module probe on the zoo ``scan`` model: does the gate split the SCAN primitives, and whose are the
    errors? Subtasks: commands with exactly one of jump / walk / run / look; target: the first action token; input:
    the last block's residual stream at the last command token. ``train_config`` is unused (probes have their own)."""
    from modmask_lens import zoo
    from modmask_lens.probes import (ProbeConfig, ProbeData, ProbeTrainer, error_attribution, evaluate_probe,
                                     routing_information, routing_table)

    model = zoo.load("scan")
    data = scan.scan_task("simple")
    primitives = ("jump", "walk", "run", "look")

    def single_primitive(split: str, primitive: str, limit: int | None) -> SubtaskData:
        rows = data[split].filter(lambda names: list(names) == [primitive], input_columns="primitives")
        return _subtask(primitive, rows, model.tokenizer, limit)

    train = ProbeData.from_subtasks([single_primitive("train", name, None) for name in primitives], "answer",
                                    model.bridge.cfg.d_vocab)
    test = ProbeData.from_subtasks([single_primitive("test", name, eval_limit) for name in primitives], "answer",
                                   model.bridge.cfg.d_vocab)
    hooks = [f"blocks.{model.bridge.cfg.n_layers - 1}.hook_resid_post"]
    config = ProbeConfig(n_experts=len(primitives), steps=probe_steps, batch_size=64, lr=3e-3)
    probe = ProbeTrainer(model.bridge, hooks, train, config, progress=False).train()
    evaluation = evaluate_probe(probe, model.bridge, hooks, test)
    table = routing_table(evaluation).pivot(index="subtask", columns="expert", values="count").reset_index()
    return ExperimentResult("scan probe", {"routing information (bits)": routing_information(evaluation),
                                           "primitive x expert (examples routed by argmax gate)": table,
                                           "error attribution": error_attribution(evaluation)},
                            {"probe": config.to_dict(), "hooks": hooks, "train_examples": len(train),
                             "test_examples": len(test)})


EXPERIMENTS: dict[str, Callable[..., ExperimentResult]] = {
    "scan": scan_experiment, "addmul": addmul_experiment, "double_add": double_add_experiment, "math": math_experiment,
    "scan_probe": scan_probe_experiment,
}


def run(names: list[str], train_config: TrainConfig = CPU_SETTINGS, eval_limit: int | None = 2000) -> list[ExperimentResult]:
    """Run the named experiments one after another, timing each."""
    results = []
    for name in names:
        start = time.perf_counter()
        result = EXPERIMENTS[name](train_config, eval_limit)
        result.seconds = time.perf_counter() - start
        results.append(result)
    return results


def write_results(results: list[ExperimentResult], path: Path, command: str) -> None:
    """Render experiments as markdown tables with their settings, timing and the command that regenerates them."""
    lines = ["# Reproduction of Csordás et al. (2021) on the zoo", "",
             f"Regenerate with `{command}` (1 torch thread).", ""]
    for result in results:
        lines += [f"## {result.name}", "", f"Wall time: {result.seconds:.0f} s. Settings: `{result.settings}`.", ""]
        lines += [f"- {note}" for note in result.notes] + ([""] if result.notes else [])
        for title, table in result.tables.items():
            lines += [f"### {title}", "", "```", table.to_string(index=False, float_format=lambda v: f"{v:.3f}"),
                      "```", ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m modmask_lens.reproduction", description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", default=list(EXPERIMENTS), choices=list(EXPERIMENTS))
    parser.add_argument("--out", type=Path, default=Path("docs/results.md"))
    parser.add_argument("--steps", type=int, default=CPU_SETTINGS.steps)
    parser.add_argument("--eval-limit", type=int, default=2000)
    arguments = parser.parse_args(argv)
    torch.set_num_threads(1)
    config = replace(CPU_SETTINGS, steps=arguments.steps)
    results = run(arguments.names, config, arguments.eval_limit)
    command = "python -m modmask_lens.reproduction " + " ".join(arguments.names) + f" --steps {arguments.steps}"
    write_results(results, arguments.out, command)
    print(f"wrote {arguments.out}")


if __name__ == "__main__":
    main()
