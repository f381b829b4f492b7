"""The ``modmask-lens`` command line.

Nothing heavy is imported at the top of this module: ``modmask-lens --help`` must not wait for torch and transformers,
so each command imports what it needs when it runs. Each command checks what is cheap to check (settings, names,
files, output folders) before a model loads.
"""

from __future__ import annotations

import dataclasses
import os
from importlib.metadata import entry_points
from pathlib import Path

import typer

from modmask_lens.cli_common import _options, _Typer, check_files, check_writable, file_to_write, names_folder

app = _Typer(
    help="Which weights of a transformer does a subtask use? Differentiable weight masks on "
    "TransformerLens 4.x bridges.",
    no_args_is_help=True,
    add_completion=False,
)


@app.callback()
def main_options(
    threads: int = typer.Option(1, min=1, help="torch CPU threads (1 is fastest on a busy 2-core machine)"),
    debug: bool = typer.Option(False, "--debug", help="show the full traceback of an error"),
):
    _options.update(threads=threads, debug=debug)


LABEL_HELP = (
    "label of the mask file at the same position (default: its subtask, plus the file name where two share one)"
)
PREPEND_BOS_HELP = (
    "start every --task pair with the tokenizer's BOS token, as TransformerLens's to_tokens does, for models "
    "pretrained with one (gpt2, pythia); the zoo models were trained without"
)


@app.command()
def report(
    model: str = typer.Option(..., help="the model the masks were trained on: zoo name, local folder or hub id"),
    masks: list[Path] = typer.Option(..., "--masks", help="mask file (.safetensors); repeat for several subtasks"),
    prompt: str = typer.Option(
        ...,
        help="text for the model's tokenizer, digits included (as TransformerLens's to_tokens reads a string); with "
        "--prompt-ids, space-separated token ids",
    ),
    prompt_ids: bool = typer.Option(
        False,
        "--prompt-ids",
        help="read --prompt as space-separated token ids ('3 7 10'), never as text; needed for a model without a "
        "tokenizer",
    ),
    out: str = typer.Option("report.html", help="the HTML file to write"),
    title: str = typer.Option("modmask-lens report", help="page title"),
    label: list[str] | None = typer.Option(None, "--label", help=LABEL_HELP),
    task: list[str] | None = typer.Option(
        None,
        "--task",
        help="score the masks on this subtask (as masks train takes it; FILE.jsonl:test for held-out rows): adds the "
        "accuracy table of the full model, each mask and its inverse; repeat for several",
    ),
    eval_limit: int | None = typer.Option(
        None, help="with --task: score on each subtask's first N examples (default 500)"
    ),
    prepend_bos: bool = typer.Option(False, "--prepend-bos", help=PREPEND_BOS_HELP),
):
    """Write one self-contained offline HTML report (circuits, overlap, attention, plots) for saved masks.

    Example: modmask-lens report --model scan --masks demo-output/masks-scan-jump.safetensors
    --masks demo-output/masks-scan-walk.safetensors --prompt "jump twice and walk" --task scan/jump --task scan/walk
    --out report.html
    """
    from modmask_lens.loading import check_model_name

    if not prompt.split():
        raise ValueError(
            "--prompt is empty; give text for the model's tokenizer, or token ids with --prompt-ids, e.g. --prompt "
            "'3 7 10' --prompt-ids"
        )
    from modmask_lens.loading import check_distinct_names, check_subtask_spec

    if eval_limit is not None and eval_limit < 1:
        raise ValueError(f"--eval-limit must be at least 1, got {eval_limit}")
    for option, given in (("--eval-limit", eval_limit is not None), ("--prepend-bos", prepend_bos)):
        if given and not task:
            raise typer.BadParameter("applies to --task only: name the subtasks to score on", param_hint=option)
    out_file = file_to_write(out, "--out", "HTML", "report.html")
    check_model_name(model)
    check_files(masks, "--masks")
    for spec in task or ():
        check_subtask_spec(spec)
    check_distinct_names(task or [])
    check_writable(out_file.parent, "--out")
    from modmask_lens.viz import report_from_files

    path = report_from_files(
        out_file,
        model,
        masks,
        prompt,
        title=title,
        labels=label or None,
        tasks=task or (),
        **({} if eval_limit is None else {"eval_limit": eval_limit}),
        prompt_ids=prompt_ids,
        prepend_bos=prepend_bos,
    )
    typer.echo(f"Report written to {path}")


masks_app = _Typer(help="Train weight masks for subtasks of a model.", no_args_is_help=True)
app.add_typer(masks_app, name="masks")


@masks_app.command("train")
def masks_train(
    model: str = typer.Option(..., help="zoo model name, local Hugging Face folder, or hub id (online only)"),
    task: list[str] = typer.Option(
        ..., "--task", help="TASK, TASK/SUBTASK or a .jsonl file (FILE.jsonl:PART for one part); repeat for several"
    ),
    out: Path = typer.Option(Path("masks-output"), help="folder for the masks and the resumable checkpoint"),
    steps: int = typer.Option(2000, help="steps per subtask"),
    batch_size: int = typer.Option(128, help="examples per step"),
    method: str = typer.Option(
        "faithful",
        help="faithful: the fewest units that keep the subtask (the library's default, docs/finder-study.md); "
        "csordas: Csordás et al. 2021's masks and regulariser",
    ),
    beta: float | None = typer.Option(None, help="csordas only: weight of the logit-sum regulariser (default 1e-4)"),
    max_loss_increase: float | None = typer.Option(
        None, help="faithful only: task loss the mask may add, nats per --loss-increase-per (default 0.02)"
    ),
    loss_increase_per: str | None = typer.Option(
        None,
        help="faithful only: auto (default: example for head and neuron masks, token for weight masks), token "
        "(the mean answer token) or example (each example's whole answer)",
    ),
    lr: float | None = typer.Option(
        None, help="Adam learning rate of the logits (default: faithful 0.05, csordas 1e-2)"
    ),
    granularity: str = typer.Option("weight", help="weight, neuron, head or matrix"),
    sampler: str | None = typer.Option(
        None,
        help="faithful only: auto (default: bernoulli for head masks where every head has a hook_z, else "
        "hard-concrete; docs/concepts.md#head-masks), hard-concrete, gumbel-sigmoid or bernoulli (head masks only)",
    ),
    init_logit: float | None = typer.Option(
        None,
        help="initial logit of every mask unit (default: faithful 0.01 for bernoulli head masks, 3.0 otherwise; "
        "csordas 2.0; docs/concepts.md#head-masks); name 3.0 to resume a head run started before session 11",
    ),
    neuron_mask: str | None = typer.Option(
        None,
        help="neuron masks: output (default: each neuron's W_out row, trained as a gate on its activation in one "
        "pass) or in-out (its W_in/W_gate column too, one weight product per sample; runs started before session "
        "12); docs/concepts.md#neuron-masks",
    ),
    objective: str = typer.Option(
        "answer-ce",
        help="what the mask keeps: answer-ce (exact match), kl or kl:all (the full model's next-token "
        "distributions), logit-diff (JSONL rows with a 'foil'), hidden-state:HOOK[:cosine|mse] (docs/objectives.md)",
    ),
    seed: int = typer.Option(0, help="seed of data order and mask noise"),
    n_samples: int = typer.Option(4, help="mask samples per batch (each on its own slice of the batch)"),
    heads_per_step: int | None = typer.Option(
        None,
        help="bernoulli head masks: heads given a local-expectation gradient per step, at random, unbiased "
        "(default 8; 0: every head every step, at 1 + heads / n-samples forwards per step); refused where "
        "--sampler auto picks hard-concrete (heads without a hook_z)",
    ),
    prepend_bos: bool = typer.Option(False, "--prepend-bos", help=PREPEND_BOS_HELP),
    checkpoint_every: int = typer.Option(200, help="steps between checkpoints in OUT/checkpoints"),
    restart: bool = typer.Option(
        False, "--restart", help="ignore a checkpoint in OUT/checkpoints and start from step 0"
    ),
    fully_shard: bool = typer.Option(
        False,
        "--fully-shard",
        help="under torchrun, shard weights, masks and Adam "
        "state over the processes (for models that do not fit one device)",
    ),
):
    """Train one mask per subtask on a frozen model; rerunning with the same --out resumes from the checkpoint.

    A resume checks that the model, the data and every setting that decides the result are the checkpoint's, and
    names the first that is not (--restart starts over). Ctrl-C finishes the step, saves a checkpoint and says how
    to resume.

    Under torchrun the batch's mask samples are shared out among the processes and the mask gradients summed
    (gloo on CPU, NCCL on GPUs): ``torchrun --nproc_per_node 2 $(which modmask-lens) masks train ...``. With
    --fully-shard each process holds 1/N of the weights, mask logits and Adam state on its GPU (the model itself
    stays in host memory) and gathers one block at a time.

    Example: modmask-lens masks train --model scan --task scan/jump --task scan/walk --steps 500 --out masks
    """
    from modmask_lens.loading import check_distinct_names, check_model_name, check_subtask_spec
    from modmask_lens.masks.config import (
        AUTO_SAMPLER,
        CSORDAS_MASKS,
        CSORDAS_TRAINING,
        LOSS_UNITS,
        SAMPLERS,
        MaskConfig,
        TrainConfig,
    )
    from modmask_lens.masks.objectives import AnswerCrossEntropy, objective_from_spec

    methods = {"faithful": (MaskConfig(), TrainConfig()), "csordas": (CSORDAS_MASKS, CSORDAS_TRAINING)}
    if method not in methods:
        raise typer.BadParameter(f"unknown method {method!r}; choose from {list(methods)}", param_hint="--method")
    wrong = {
        "faithful": [("--beta", beta)],
        "csordas": [
            ("--max-loss-increase", max_loss_increase),
            ("--loss-increase-per", loss_increase_per),
            ("--sampler", sampler),
        ],
    }[method]
    for option, value in wrong:
        if value is not None:
            raise typer.BadParameter(f"{option} does not apply to --method {method}", param_hint=option)
    if loss_increase_per not in (None, *LOSS_UNITS):
        raise typer.BadParameter(f"choose one of {list(LOSS_UNITS)}", param_hint="--loss-increase-per")
    if sampler not in (None, AUTO_SAMPLER, *SAMPLERS):
        raise typer.BadParameter(f"choose one of {[AUTO_SAMPLER, *SAMPLERS]}", param_hint="--sampler")
    if neuron_mask is not None and granularity != "neuron":
        raise typer.BadParameter(
            f"--neuron-mask applies to --granularity neuron, not {granularity}", param_hint="--neuron-mask"
        )
    if heads_per_step is not None and (
        method != "faithful" or granularity != "head" or sampler not in (None, AUTO_SAMPLER, "bernoulli")
    ):
        raise typer.BadParameter(
            "--heads-per-step applies to bernoulli head masks (--granularity head, --method faithful, --sampler auto "
            f"or bernoulli), not --granularity {granularity} --method {method} --sampler {sampler or AUTO_SAMPLER}",
            param_hint="--heads-per-step",
        )
    base_masks, base_training = methods[method]
    try:
        named = {"sampler": sampler, "init_logit": init_logit, "neuron_mask": neuron_mask}
        mask_config = dataclasses.replace(
            base_masks, granularity=granularity, **{key: value for key, value in named.items() if value is not None}
        )
    except ValueError as error:
        hint = next(
            (f"--{name.replace('_', '-')}" for name in ("init_logit", "neuron_mask") if name in str(error)),
            "--sampler" if sampler else "--granularity",
        )
        raise typer.BadParameter(str(error), param_hint=hint) from error
    settings = {
        "beta": beta,
        "max_loss_increase": max_loss_increase,
        "loss_increase_per": loss_increase_per,
        "lr": lr,
    }
    train_config = dataclasses.replace(
        base_training,
        steps=steps,
        batch_size=batch_size,
        seed=seed,
        n_samples=n_samples,
        checkpoint_every=checkpoint_every,
        **{key: value for key, value in settings.items() if value is not None},
        **({} if heads_per_step is None else {"heads_estimated_per_step": heads_per_step or None}),
    )
    try:
        trained_objective = objective_from_spec(objective)
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--objective") from error
    if fully_shard and (method != "csordas" or not isinstance(trained_objective, AnswerCrossEntropy)):
        raise typer.BadParameter(
            "fully sharded training runs Csordás's method on the answer-ce objective only; add --method csordas and "
            f"--objective answer-ce (got --method {method} --objective {objective}), or train without --fully-shard",
            param_hint="--fully-shard",
        )
    check_model_name(model)
    for spec in task:
        check_subtask_spec(spec)
    check_distinct_names(task)
    check_writable(out / "checkpoints", "--out")

    import torch

    from modmask_lens.core.world import launched_by_torchrun, world
    from modmask_lens.loading import load_bridge, load_subtask
    from modmask_lens.masks.io import save_masks
    from modmask_lens.masks.training import train_masks

    distributed = launched_by_torchrun()
    if distributed:
        torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    # Each process of a GPU run works on its own GPU; a fully sharded one keeps the model itself in host memory.
    device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}" if torch.cuda.is_available() else "cpu"
    bridge, tokenizer = load_bridge(model, device="cpu" if fully_shard else device)
    if heads_per_step is not None:
        check_heads_per_step_applies(bridge, mask_config)
    subtasks = [load_subtask(spec, tokenizer, prepend_bos=prepend_bos) for spec in task]
    check_batch_memory(train_config, bridge.cfg.d_vocab, max(subtask.input_ids.shape[1] for subtask in subtasks))
    if not fully_shard:  # the data go where the model runs
        subtasks = [subtask.to(device) for subtask in subtasks]
    masks = train_masks(
        bridge,
        subtasks,
        mask_config,
        train_config,
        out / "checkpoints",
        progress=world()[0] == 0,
        fully_shard=fully_shard,
        device=device if fully_shard else None,
        restart=restart,
        objective=trained_objective,
    )
    if world()[0] == 0:
        for name, mask in masks.items():
            binary = mask.binary()
            path = save_masks(mask, out / f"masks-{name}.safetensors")
            kept = f"{binary.count:,} of {binary.total:,} weights"
            granularity = mask.config.granularity
            if granularity != "weight":  # the units the mask chose first, then the weights they hold
                units = mask.kept_above(mask.threshold).values()
                chosen, total = sum(int(unit.sum()) for unit in units), sum(unit.numel() for unit in units)
                kept = f"{chosen:,} of {total:,} {granularity} units ({kept})"
            typer.echo(f"{name}: keeps {kept} -> {path}")
    if distributed:
        torch.distributed.barrier()  # let rank 0 finish writing before any process tears the group down
        torch.distributed.destroy_process_group()


def check_heads_per_step_applies(bridge, mask_config) -> None:
    """Raise ``typer.BadParameter`` if ``mask_config`` (head masks, the sampler ``auto`` or ``bernoulli``) does not
    train Bernoulli head masks on ``bridge``, the only masks that read --heads-per-step. Whether ``auto`` picks
    ``bernoulli`` depends on whether every head has a ``hook_z``, which only the loaded model tells."""
    from modmask_lens.masks.head_outputs import resolved_config
    from modmask_lens.masks.mask_set import units_for

    # an explicit bernoulli on heads without a hook_z raises here, with the library's own message
    resolved = resolved_config(bridge, mask_config, units_for(bridge, mask_config))
    if resolved.sampler != "bernoulli":
        raise typer.BadParameter(
            f"--sampler auto trains this model's head masks with {resolved.sampler} (its heads have no hook_z; "
            "docs/concepts.md#head-masks), which does not read --heads-per-step; drop --heads-per-step",
            param_hint="--heads-per-step",
        )


LOGIT_COPIES = 3  # float32 copies of a chunk's logits alive at once: the logits, the log-softmax and its gradient


def check_batch_memory(train_config, d_vocab: int, positions: int) -> None:
    """Raise ``ValueError`` if one slice of the batch's logits alone (``batch_size / n_samples`` examples x
    ``positions`` x ``d_vocab`` floats, :data:`LOGIT_COPIES` copies) exceeds this machine's memory; a lower bound on
    what a step needs, so a batch that passes may still fail, but an absurd one fails here and not inside torch."""
    chunk = -(-train_config.batch_size // train_config.n_samples)
    needed = chunk * positions * d_vocab * 4 * LOGIT_COPIES
    available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if needed > available:
        raise ValueError(
            f"--batch-size {train_config.batch_size:,} with --n-samples {train_config.n_samples} needs at least "
            f"{needed / 2**30:,.1f} GiB for one slice's logits ({chunk:,} examples x {positions} positions x "
            f"{d_vocab:,} tokens); this machine has {available / 2**30:,.1f} GiB: lower --batch-size"
        )


@app.command()
def analyze(
    model: str = typer.Option(..., help="the model the masks were trained on (zoo name, local folder or hub id)"),
    masks: list[Path] = typer.Option(..., "--masks", help="mask file; repeat for several subtasks"),
    out: Path = typer.Option(Path("analysis"), help="folder for the CSV tables"),
    by: str = typer.Option("layer_role", help="grouping: all, tensor, layer, role, layer_role, head, neuron"),
    label: list[str] | None = typer.Option(None, "--label", help=LABEL_HELP),
):
    """Write tidy CSV tables for saved masks: kept fractions, pairwise IoU / IoMin, shared fractions, head ranking.

    Two masks of one subtask (two seeds or granularities) stay apart: each is labelled by its subtask and file name,
    or by --label.

    Example: modmask-lens analyze --model scan --masks masks/masks-scan-jump.safetensors
    --masks masks/masks-scan-walk.safetensors
    """
    from modmask_lens.loading import check_model_name
    from modmask_lens.masks.binary import GROUPINGS
    from modmask_lens.masks.io import check_labels

    if by not in GROUPINGS:
        raise typer.BadParameter(f"choose one of {list(GROUPINGS)}", param_hint="--by")
    check_model_name(model)
    check_files(masks, "--masks")
    check_labels(label, masks)
    check_writable(out, "--out")

    import pandas as pd

    from modmask_lens.analysis import pairwise_overlap, shared_fraction, unit_importance
    from modmask_lens.core.atomic_files import write_text_atomically
    from modmask_lens.loading import load_bridge
    from modmask_lens.masks.io import load_labelled_masks

    bridge, _ = load_bridge(model)
    binaries = {key: mask.binary() for key, mask in load_labelled_masks(masks, bridge, label or None).items()}
    kept = [binary.kept_fraction(by=by) for binary in binaries.values()]
    if all(frame.empty for frame in kept):
        raise typer.BadParameter(
            f"the masks mask no {by} units; group by layer_role, layer, role or tensor", param_hint="--by"
        )
    tables = {"kept_fraction": pd.concat(kept)}
    if len(binaries) > 1:
        tables |= {"overlap": pairwise_overlap(binaries, by=by), "shared": shared_fraction(binaries, by=by)}
    if bridge.cfg.n_heads and any(spec.unit == "head" for binary in binaries.values() for spec in binary.specs):
        tables["head_importance"] = pd.concat([unit_importance(binary, "head") for binary in binaries.values()])
    for name, table in tables.items():
        write_text_atomically(out / f"{name}.csv", table.to_csv(index=False))
        typer.echo(f"wrote {out / f'{name}.csv'} ({len(table)} rows)")


zoo_app = _Typer(help="The shipped zoo of small trained transformers.", no_args_is_help=True)
app.add_typer(zoo_app, name="zoo")


@zoo_app.command("list")
def zoo_list():
    """List the shipped models with the accuracies on their cards.

    Example: modmask-lens zoo list
    """
    from modmask_lens import zoo

    typer.echo(zoo.describe_models() or "no zoo model is shipped")


from modmask_lens.cli_groundtruth import groundtruth_app

app.add_typer(groundtruth_app, name="groundtruth")


@app.command()
def data(
    name: str = typer.Argument(..., help="task: scan, addmul, double_add (or double-add), modadd or math"),
    split: str | None = typer.Option(
        None, help="SCAN split (simple, addprim_jump, length, template_around_right, ...)"
    ),
    stats: bool = typer.Option(False, "--stats", help="print the number of examples of each part"),
    export: str | None = typer.Option(
        None,
        help="write each part as JSONL (prompt, completion, part) to its own file: --export DIR/scan.jsonl writes "
        "DIR/scan.train.jsonl, DIR/scan.test.jsonl, ...; a folder DIR (existing, or written DIR/) writes "
        "DIR/NAME.train.jsonl, ...",
    ),
    seed: int | None = typer.Option(
        None,
        help="seed of the random parts (default 0): SCAN's simple split, the arithmetic splits, the math samples; "
        "refused for SCAN's fixed splits (addprim_jump, length, template_*)",
    ),
):
    """Generate a task offline; print its sizes or export it as JSONL, one file per part (train and test apart).

    Example: modmask-lens data scan --split addprim_jump --stats
    """
    import json

    from modmask_lens.core.atomic_files import write_text_atomically
    from modmask_lens.tasks import scan
    from modmask_lens.tasks.catalog import task_spec

    spec = task_spec(name)
    if split is not None and spec.name != "scan":
        raise typer.BadParameter("--split only applies to scan")
    if seed is not None and split in scan.SPLITS and split not in scan.SEEDED_SPLITS:
        raise typer.BadParameter(
            f"SCAN's {split} split is a fixed rule (the published split), the same under every seed; only "
            f"{', '.join(scan.SEEDED_SPLITS)} is drawn at random: drop --seed",
            param_hint="--seed",
        )
    export_file = None
    if export is not None:  # a folder gets the files inside it, named after the task (and split)
        named = f"{spec.name}{f'-{split}' if split else ''}.jsonl"
        export_file = Path(export) / named if names_folder(export) else Path(export)
        check_writable(export_file.parent, "--export")
    seed = seed or 0
    dataset = scan.scan_task(split or "simple", seed) if spec.name == "scan" else spec.build(seed)
    if stats or export_file is None:
        for part, rows in dataset.items():
            typer.echo(f"{part}: {rows.num_rows}")
    if export_file is not None:
        for part, rows in dataset.items():
            path = export_file.with_name(f"{export_file.stem}.{part}{export_file.suffix or '.jsonl'}")
            records = ({"prompt": row["question"], "completion": row["answer"], "part": part} for row in rows)
            write_text_atomically(path, "".join(json.dumps(record) + "\n" for record in records))
            typer.echo(f"wrote {path} ({rows.num_rows} rows)")


COMMAND_ENTRY_POINTS = "modmask_lens.commands"
"""Entry-point group through which other packages add commands (``NAME`` for a top-level command, ``GROUP.NAME``
for one in a group such as ``zoo``); the repository's ``experiments`` package adds ``demo``, ``reproduce`` and
``zoo.train`` this way, so the library never imports it. An entry point's module should import its heavy
dependencies inside the command, so that ``--help`` stays fast."""

_GROUPS = {"zoo": zoo_app, "masks": masks_app}


def _add_entry_point_commands() -> None:
    for entry in entry_points(group=COMMAND_ENTRY_POINTS):
        group, _, name = entry.name.rpartition(".")
        (_GROUPS[group] if group else app).command(name)(entry.load())


_add_entry_point_commands()


def main() -> None:
    app()


if __name__ == "__main__":  # python -m modmask_lens.cli
    main()
