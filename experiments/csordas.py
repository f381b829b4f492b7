"""Reproducing Csordás et al. (2021) on the shipped zoo: ``modmask-lens reproduce [NAME ...]``.

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
* ``scan_probe`` / ``math_probe``: a gated-module probe (Krishnamurthy & Watkins 2021) on the last residual stream
  of the SCAN / math model: routing of the primitives / modules to experts, mutual information, error attribution.
* ``scan_variants`` / ``math_variants``: the zoo model trained plain, with BIMT and with the clusterability loss:
  accuracy, clusterability, and how separate the subtask masks are (IoU, inverse-mask drops).
"""

from __future__ import annotations

import multiprocessing
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from functools import partial
from itertools import repeat
from pathlib import Path

import pandas as pd
import torch

from modmask_lens.analysis import mask_accuracy, output_row_removal, pairwise_overlap
from modmask_lens.core.atomic_files import write_text_atomically
from modmask_lens.core.data import SubtaskData
from modmask_lens.groundtruth.controls import random_init_bridge
from modmask_lens.masks.binary import BinaryMask
from modmask_lens.masks.config import CSORDAS_MASKS, CSORDAS_TRAINING, LossUnit, MaskConfig, TrainConfig
from modmask_lens.masks.evaluation import exact_match
from modmask_lens.masks.mask_set import MaskSet, binaries
from modmask_lens.masks.training import UnfaithfulReadout, train_masks
from modmask_lens.tasks import scan
from modmask_lens.tasks.views import subtask_view

QUESTION_ANSWER = ("question", "answer")


@dataclass(frozen=True)
class MaskMethod:
    """How an experiment's masks are found: which tensors and sampler, and how they are trained and read out."""

    mask_config: MaskConfig
    train_config: TrainConfig

    def with_steps(self, steps: int) -> MaskMethod:
        return MaskMethod(self.mask_config, replace(self.train_config, steps=steps))

    def with_constraint(self, max_loss_increase: float, loss_increase_per: LossUnit) -> MaskMethod:
        """The method with the loss constraint's bound and unit changed (a sweep of the default finder)."""
        return MaskMethod(
            self.mask_config,
            replace(self.train_config, max_loss_increase=max_loss_increase, loss_increase_per=loss_increase_per),
        )


METHODS = {
    "faithful": MaskMethod(MaskConfig(), TrainConfig(steps=800, batch_size=64)),
    "csordas": MaskMethod(CSORDAS_MASKS, replace(CSORDAS_TRAINING, steps=800, batch_size=64, lr=0.03)),
}
"""The reproductions' methods: the library's default finder, and Csordás et al.'s. The paper trains 20k-25k steps at
lr 1e-2; on 2 CPU cores within an hour for all experiments we train 800 steps, Csordás's method at lr 3e-2 (Adam moves
each logit at most about lr per step)."""
DEFAULT_METHOD = METHODS["faithful"]


def accuracy_table(accuracy: pd.DataFrame) -> pd.DataFrame:
    """:func:`~modmask_lens.analysis.mask_accuracy`'s rows as one row per condition and mask, one column per subtask;
    the full model's row (mask NA) is kept, with an empty mask name."""
    named = accuracy.assign(mask=accuracy["mask"].fillna(""))
    return named.pivot_table(index=["condition", "mask"], columns="subtask", values="accuracy").reset_index()


@dataclass
class ExperimentResult:
    """Tables of one experiment, its settings and how long it took."""

    name: str
    tables: dict[str, pd.DataFrame]
    settings: dict
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


def limited_subtask(name: str, dataset, tokenizer, limit: int | None = None) -> SubtaskData:
    if limit is not None and len(dataset) > limit:
        dataset = dataset.shuffle(seed=0).select(range(limit))
    return SubtaskData.from_pairs(name, dataset, tokenizer, fields=QUESTION_ANSWER)


def mask_sizes(binary_masks: dict[str, BinaryMask]) -> pd.DataFrame:
    """One row per mask: its kept fraction over every masked tensor (``BinaryMask.kept_fraction(by="all")``)."""
    return pd.concat([binary.kept_fraction(by="all") for binary in binary_masks.values()], ignore_index=True)


def scan_experiment(method: MaskMethod = DEFAULT_METHOD, eval_limit: int | None = 2000) -> ExperimentResult:
    """SCAN (Fig. 4): full-problem vs split masks on the zoo ``scan`` model."""
    from modmask_lens import zoo

    model = zoo.load("scan")
    splits = {"simple": "simple", "jump": "addprim_jump", "length": "length", "turn_left": "addprim_turn_left"}
    data = {name: scan.scan_task(split, model.card.seed) for name, split in splits.items()}
    training = [limited_subtask(name, data[name]["train"], model.tokenizer) for name in splits]
    masks = train_masks(model.bridge, training, method.mask_config, method.train_config, progress=False)
    binary_masks = binaries(masks)
    evaluation = {name: limited_subtask(name, data[name]["test"], model.tokenizer, eval_limit) for name in splits}
    accuracy = mask_accuracy(model.bridge, binary_masks, evaluation)
    fig4a = accuracy_table(accuracy[accuracy.condition != "inverse"])
    control = random_init_control(model.bridge, training[0], evaluation["simple"], method)
    removal = output_row_removal(binary_masks["jump"], binary_masks["simple"], model.tokenizer)
    action_rows = removal[removal["token"].str.startswith("I_")]
    sizes = mask_sizes(binary_masks)
    return ExperimentResult(
        "scan",
        {
            "mask sizes": sizes,
            "accuracy on each split's test set (Fig. 4a)": fig4a,
            "output rows removed by the jump mask (Fig. 4b)": action_rows,
            "null control: the simple mask on a randomly initialised model": control,
        },
        _settings(method, masks, eval_examples_per_split=eval_limit),
    )


def _settings(method: MaskMethod, masks: dict[str, MaskSet], **extra) -> dict:
    """The settings an experiment ran under: the masks' as training resolved them (sampler and initial logit,
    which ``MaskConfig()`` leaves to the model), the training's with the loss constraint's unit in effect (``auto``
    resolved by the masks' granularity), and ``extra``."""
    resolved = next(iter(masks.values())).config
    train = method.train_config
    return {
        "masks": resolved.to_dict(),
        "train": train.to_dict() | {"loss_increase_per": train.loss_unit(resolved.granularity)},
        **extra,
    }


def random_init_control(bridge, training: SubtaskData, evaluation: SubtaskData, method: MaskMethod) -> pd.DataFrame:
    """The null control beside a mask: the same method trained on the same data on a randomly initialised model of
    the same configuration (a mask can create behaviour out of random weights). Returns one row per model
    (``trained``, ``random-init``): full and mask accuracy on ``evaluation`` and the mask's kept fraction, as read
    out and as trained (``logit > 0``; the two differ where the readout padded the mask or its removal search
    shrank it)."""
    rows = []
    for model_name, model_bridge in (("trained", bridge), ("random-init", random_init_bridge(bridge, seed=0))):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UnfaithfulReadout)  # random weights solve nothing: read out at 0
            mask = train_masks(model_bridge, training, method.mask_config, method.train_config, progress=False)
        binary = mask[training.name].binary()
        as_trained = mask[training.name].binary_from(mask[training.name].kept_above(0.0))
        rows.append(
            {
                "model": model_name,
                "subtask": training.name,
                "full accuracy": exact_match(model_bridge, evaluation),
                "mask accuracy": exact_match(model_bridge, evaluation, binary),
                "mask kept": binary.count / binary.total,
                "as trained accuracy": exact_match(model_bridge, evaluation, as_trained),
                "as trained kept": as_trained.count / as_trained.total,
            }
        )
    return pd.DataFrame(rows)


def addmul_experiment(method: MaskMethod = DEFAULT_METHOD, eval_limit: int | None = 2000) -> ExperimentResult:
    """Addition / multiplication: mask sizes, IoU per layer and role, and the inverse-mask table."""
    from modmask_lens import zoo

    model = zoo.load("addmul")
    data = model.task.build(model.card.seed)
    operations = ("add", "mul")
    training = [
        limited_subtask(name, subtask_view(data["train"], "operation", name), model.tokenizer) for name in operations
    ]
    control = SubtaskData.concatenate("control", training)
    evaluation = {
        name: limited_subtask(name, subtask_view(data["test"], "operation", name), model.tokenizer, eval_limit)
        for name in operations
    }
    tables, masks = _control_and_subtask_masks(model.bridge, control, training, evaluation, method)
    tables["null control: the add mask on a randomly initialised model"] = random_init_control(
        model.bridge, training[0], evaluation["add"], method
    )
    return ExperimentResult(
        "addmul",
        tables,
        _settings(method, masks, eval_examples_per_operation=eval_limit),
    )


def _control_and_subtask_masks(
    bridge,
    control: SubtaskData,
    training: list[SubtaskData],
    evaluation: dict[str, SubtaskData],
    method: MaskMethod,
) -> tuple[dict[str, pd.DataFrame], dict[str, MaskSet]]:
    """Masks for a control task and each subtask in one run; their sizes, the subtasks' accuracy under each mask and
    its inverse, and the subtasks' IoU per layer and role (tables by title), and the masks by task name."""
    masks = train_masks(bridge, [control, *training], method.mask_config, method.train_config, progress=False)
    binary_masks = binaries(masks)
    subtask_masks = {data.name: binary_masks[data.name] for data in training}
    accuracy = mask_accuracy(bridge, subtask_masks, evaluation)
    tables = {
        "mask sizes": mask_sizes(binary_masks),
        "accuracy (full / mask / inverse mask)": accuracy_table(accuracy),
        "IoU of the subtask masks per layer and role": pairwise_overlap(subtask_masks, by="layer_role"),
    }
    return tables, masks


def double_add_experiment(method: MaskMethod = DEFAULT_METHOD, eval_limit: int | None = 2000) -> ExperimentResult:
    """Double addition (the paper's +/+): masks for pair 1 and pair 2, each scored on its own output slot only; do
    the two pairs use separate weights (low IoU in the blocks) and does removing one pair's mask spare the other?"""
    from modmask_lens import zoo
    from modmask_lens.core.encoding import encode_pairs, restrict_labels
    from modmask_lens.tasks.arithmetic import DOUBLE_ADD_PAIR_OFFSETS

    model = zoo.load("double-add")
    data = model.task.build(model.card.seed)

    def pair_subtasks(split, limit: int | None) -> dict[str, SubtaskData]:
        rows = split if limit is None or len(split) <= limit else split.shuffle(seed=0).select(range(limit))
        examples = encode_pairs(model.tokenizer, rows["question"], rows["answer"])
        subtasks = {}
        for name, offsets in DOUBLE_ADD_PAIR_OFFSETS.items():
            scored = restrict_labels(examples, offsets)
            subtasks[name] = SubtaskData(name, scored.input_ids, scored.labels)
        return subtasks

    training = pair_subtasks(data["train"], None)
    control = limited_subtask("control", data["train"], model.tokenizer)
    tables, masks = _control_and_subtask_masks(
        model.bridge, control, list(training.values()), pair_subtasks(data["test"], eval_limit), method
    )
    return ExperimentResult(
        "double addition",
        tables,
        _settings(method, masks, eval_examples=eval_limit),
    )


def math_experiment(method: MaskMethod = DEFAULT_METHOD, eval_limit: int | None = 1000) -> ExperimentResult:
    """Math modules: how much the modules' masks share (pairwise IoU over all weights), and the paper's DM-math test:
    a control mask (all training difficulties) against a mask trained on ``train_easy`` only, both evaluated on the
    interpolate and the harder extrapolate questions."""
    from modmask_lens import zoo

    model = zoo.load("math")
    data = model.task.build(model.card.seed)
    modules = sorted(set(data["train"]["module"]))
    training = [limited_subtask(name, subtask_view(data["train"], "module", name), model.tokenizer) for name in modules]
    control = limited_subtask("control", data["train"], model.tokenizer)
    easy = limited_subtask("easy_only", data["train_easy"], model.tokenizer)
    masks = train_masks(
        model.bridge, [control, easy, *training], method.mask_config, method.train_config, progress=False
    )
    binary_masks = binaries(masks)
    sharing = pairwise_overlap({name: binary_masks[name] for name in modules}, by="all")
    matrix = sharing.pivot(index="mask_a", columns="mask_b", values="iou").reset_index()
    evaluation = {
        split: limited_subtask(split, data[split], model.tokenizer, eval_limit)
        for split in ("interpolate", "extrapolate")
    }
    accuracy = mask_accuracy(
        model.bridge, {"control": binary_masks["control"], "easy_only": binary_masks["easy_only"]}, evaluation
    )
    difficulty = accuracy_table(accuracy[accuracy.condition != "inverse"])
    sizes = mask_sizes(binary_masks)
    return ExperimentResult(
        "math modules",
        {"mask sizes": sizes, "IoU between the modules' masks": matrix, "control vs easy-only mask": difficulty},
        _settings(method, masks, eval_examples=eval_limit, modules=modules),
    )


def _probe_experiment(
    name: str, model, train: list[SubtaskData], test: list[SubtaskData], probe_steps: int
) -> ExperimentResult:
    """Gated-module probe on the last block's residual stream at the last question token, one expert per subtask,
    target the first answer token: how the gate splits the subtasks, and whose the errors are."""
    from modmask_lens.probes import (
        ProbeConfig,
        ProbeData,
        ProbeTrainer,
        error_attribution,
        evaluate_probe,
        routing_information,
        routing_table,
    )

    d_vocab = model.bridge.cfg.d_vocab
    train_data, test_data = (ProbeData.from_subtasks(subtasks, "answer", d_vocab) for subtasks in (train, test))
    hooks = [f"blocks.{model.bridge.cfg.n_layers - 1}.hook_resid_post"]
    config = ProbeConfig(n_experts=len(train), steps=probe_steps, batch_size=64, lr=3e-3)
    probe = ProbeTrainer(model.bridge, hooks, train_data, config, progress=False).train()
    evaluation = evaluate_probe(probe, model.bridge, hooks, test_data)
    table = routing_table(evaluation).pivot(index="subtask", columns="expert", values="count").reset_index()
    return ExperimentResult(
        name,
        {
            "routing information (bits)": routing_information(evaluation),
            "subtask x expert (examples routed by argmax gate)": table,
            "error attribution": error_attribution(evaluation),
        },
        {"probe": config.to_dict(), "hooks": hooks, "train_examples": len(train_data), "test_examples": len(test_data)},
    )


def _scan_primitive_subtasks(model, split: str, limit: int | None) -> list[SubtaskData]:
    """Commands of the SCAN simple split whose one primitive is jump, walk, run or look, one subtask per primitive:
    commands that also turn (``jump and turn left``, primitives ``["jump", "turn left"]``) are left out."""
    data = model.task.build(model.card.seed)[split]  # the simple split of the model's seed, as it was trained

    def single_primitive(primitive: str) -> SubtaskData:
        rows = data.filter(lambda names: list(names) == [primitive], input_columns="primitives")
        return limited_subtask(primitive, rows, model.tokenizer, limit)

    return [single_primitive(name) for name in ("jump", "walk", "run", "look")]


def _math_module_subtasks(model, split: str, limit: int | None) -> list[SubtaskData]:
    """One subtask per module of the math model's task (``split``: a train split, ``interpolate`` or
    ``extrapolate``)."""
    data = model.task.build(model.card.seed)[split]
    return [
        limited_subtask(name, subtask_view(data, "module", name), model.tokenizer, limit)
        for name in sorted(set(data["module"]))
    ]


def scan_probe_experiment(
    method: MaskMethod = DEFAULT_METHOD, eval_limit: int | None = 2000, probe_steps: int = 1500
) -> ExperimentResult:
    """Gated-module probe on the zoo ``scan`` model. Subtasks: commands whose one primitive is jump, walk, run or
    look (none that also turns left or right).
    ``method`` is unused (probes have their own)."""
    from modmask_lens import zoo

    model = zoo.load("scan")
    return _probe_experiment(
        "scan probe",
        model,
        _scan_primitive_subtasks(model, "train", None),
        _scan_primitive_subtasks(model, "test", eval_limit),
        probe_steps,
    )


def math_probe_experiment(
    method: MaskMethod = DEFAULT_METHOD,
    eval_limit: int | None = 1000,
    probe_steps: int = 1500,
    train_limit: int = 10_000,
) -> ExperimentResult:
    """Gated-module probe on the zoo ``math`` model. Subtasks: its modules (train: ``train_limit`` questions each;
    test: the interpolate split). ``method`` is unused (probes have their own)."""
    from modmask_lens import zoo

    model = zoo.load("math")
    return _probe_experiment(
        "math probe",
        model,
        _math_module_subtasks(model, "train", train_limit),
        _math_module_subtasks(model, "interpolate", eval_limit),
        probe_steps,
    )


VARIANT_SUBTASKS = {"scan": (_scan_primitive_subtasks, "test"), "math": (_math_module_subtasks, "interpolate")}


def modular_training_experiment(
    method: MaskMethod = DEFAULT_METHOD,
    eval_limit: int | None = 1000,
    base: str = "scan",
    train_limit: int | None = 5000,
) -> ExperimentResult:
    """Zoo model ``base`` trained plain, with BIMT and with the clusterability loss (same recipe and budget): its
    accuracy, clusterability (k = 4, mean over the MLP matrices, next to random weights), and how separate its
    subtasks' weight masks are: mean pairwise IoU, and the inverse-mask accuracy drops on a mask's own subtask and
    on the other subtasks (full accuracy minus accuracy under ``~mask``)."""
    from modmask_lens import zoo
    from modmask_lens.modularity import clusterability

    subtasks, test_split = VARIANT_SUBTASKS[base]
    rows = []
    for variant in (base, f"{base}-bimt", f"{base}-clusterability"):
        model = zoo.load(variant)
        training = subtasks(model, model.task.train_split, train_limit)
        evaluation = {data.name: data for data in subtasks(model, test_split, eval_limit)}
        masks = train_masks(model.bridge, training, method.mask_config, method.train_config, progress=False)
        binary_masks = binaries(masks)
        accuracy = mask_accuracy(model.bridge, binary_masks, evaluation)
        full = accuracy[accuracy.condition == "full"].set_index("subtask")["accuracy"]
        inverse = accuracy[accuracy.condition == "inverse"]
        drop = full.loc[inverse["subtask"]].to_numpy() - inverse["accuracy"].to_numpy()
        own = inverse["mask"].to_numpy() == inverse["subtask"].to_numpy()
        measured = clusterability(model.bridge, k=4)
        mean_clusterability = measured.groupby("method")["clusterability"].mean()
        rows.append(
            {
                "model": variant,
                "test accuracy": model.card.accuracies[f"{test_split}/all"],
                "clusterability (blocks)": mean_clusterability["blocks"],
                "clusterability (spectral)": mean_clusterability["spectral"],
                "random (spectral)": float(measured[measured.method == "spectral"]["random"].mean()),
                "mask kept": float(pd.Series([binary.count / binary.total for binary in binary_masks.values()]).mean()),
                "mask IoU": float(pairwise_overlap(binary_masks, by="all")["iou"].mean()),
                "inverse drop, own subtask": float(drop[own].mean()),
                "inverse drop, other subtasks": float(drop[~own].mean()),
            }
        )
    return ExperimentResult(
        f"modular training ({base})",
        {"plain vs BIMT vs clusterability loss": pd.DataFrame(rows)},
        _settings(
            method,
            masks,
            eval_examples_per_subtask=eval_limit,
            train_examples_per_subtask=train_limit,
            subtasks=[data.name for data in training],
        ),
    )


EXPERIMENTS: dict[str, Callable[..., ExperimentResult]] = {
    "scan": scan_experiment,
    "addmul": addmul_experiment,
    "double_add": double_add_experiment,
    "math": math_experiment,
    "scan_probe": scan_probe_experiment,
    "math_probe": math_probe_experiment,
    "scan_variants": partial(modular_training_experiment, base="scan"),
    "math_variants": partial(modular_training_experiment, base="math"),
}


PROBE_EXPERIMENTS = ("scan_probe", "math_probe")
"""The experiments that train gated-module probes of their own settings: a mask method and its steps go unused."""


def _timed(name: str, method: MaskMethod, eval_limit: int | None) -> ExperimentResult:
    torch.set_num_threads(1)
    start = time.perf_counter()
    result = EXPERIMENTS[name](method, eval_limit)
    result.seconds = time.perf_counter() - start
    return result


def run(
    names: list[str], method: MaskMethod = DEFAULT_METHOD, eval_limit: int | None = 2000, jobs: int = 1
) -> list[ExperimentResult]:
    """Run the named experiments, timing each; ``jobs`` > 1 runs them in that many processes (one torch thread
    each), taking the next name whenever a process is free, so put the longest first."""
    if jobs == 1:
        return [_timed(name, method, eval_limit) for name in names]
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(pool.map(_timed, names, repeat(method), repeat(eval_limit)))


RESULTS_TITLE = "# Reproduction of Csordás et al. (2021) on the zoo"


def write_results(
    results: list[ExperimentResult], path: Path, command: str, total_seconds: float | None = None
) -> None:
    """Render experiments as markdown tables with their settings, timing and the command that regenerates them."""
    lines = [
        RESULTS_TITLE,
        "",
        f"Regenerate with `{command}` (1 torch thread per process).",
        "",
    ]
    if total_seconds is not None:
        lines += [f"Total wall time: {total_seconds:.0f} s.", ""]
    for result in results:
        lines += [f"## {result.name}", "", f"Wall time: {result.seconds:.0f} s. Settings: `{result.settings}`.", ""]
        lines += [f"- {note}" for note in result.notes] + ([""] if result.notes else [])
        for title, table in result.tables.items():
            lines += [
                f"### {title}",
                "",
                "```",
                table.to_string(index=False, float_format=lambda v: f"{v:.3f}"),
                "```",
                "",
            ]
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomically(path, "\n".join(lines))


def run_and_write(
    names: list[str],
    out: Path,
    steps: int = DEFAULT_METHOD.train_config.steps,
    eval_limit: int | None = 2000,
    jobs: int = 1,
    method: str = "faithful",
) -> None:
    """Run the named experiments with one of :data:`METHODS` and write them to ``out`` with the command that
    regenerates them."""
    start = time.perf_counter()
    results = run(names, METHODS[method].with_steps(steps), eval_limit, jobs)
    command = (
        f"modmask-lens reproduce {' '.join(names)} --method {method} --steps {steps} --eval-limit {eval_limit} "
        f"--jobs {jobs} --out {out}"
    )
    write_results(results, out, command, time.perf_counter() - start)
