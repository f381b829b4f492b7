"""The ``modmask-lens`` command line."""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path

import pandas as pd
import torch
import typer

KNOWN_ERRORS: tuple[type[BaseException], ...] = (ValueError, LookupError, FloatingPointError, OSError)
"""What bad input raises (ModelMismatch, MaskFileError, UnsupportedArchitecture, NonFiniteLoss, a missing file, an
unknown hook name ...): reported as one ``error: ...`` line and exit code 1; anything else is a bug and keeps its
traceback."""

_show_tracebacks = {"debug": False}  # set from --debug by main_options at the start of every invocation


class _Typer(typer.Typer):
    """A Typer whose commands report :data:`KNOWN_ERRORS` as one line (a traceback with ``--debug``)."""

    def command(self, *args, **kwargs) -> Callable:
        register = super().command(*args, **kwargs)
        return lambda function: register(_reporting_known_errors(function))


def _reporting_known_errors(function: Callable) -> Callable:
    @functools.wraps(function)
    def run(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except KNOWN_ERRORS as error:
            if _show_tracebacks["debug"]:
                raise
            # KeyError's str() is the repr of its message; print the message itself
            message = error.args[0] if isinstance(error, KeyError) and error.args else error
            typer.echo(f"error: {message}", err=True)
            raise typer.Exit(1) from error

    return run


app = _Typer(
    help="Which weights of a transformer does a subtask use? Differentiable weight masks on "
    "TransformerLens 4.x bridges.",
    no_args_is_help=True,
    add_completion=False,
)


@app.callback()
def main_options(
    threads: int = typer.Option(1, help="torch CPU threads (1 is fastest on a busy 2-core machine)"),
    debug: bool = typer.Option(False, "--debug", help="show the full traceback of an error"),
):
    torch.set_num_threads(threads)
    _show_tracebacks["debug"] = debug


@app.command()
def report(
    model: Path = typer.Option(..., help="local Hugging Face model folder the masks were trained on"),
    masks: list[Path] = typer.Option(..., "--masks", help="mask file (.safetensors); repeat for several subtasks"),
    prompt: str = typer.Option(..., help="space-separated token ids, or text for the model's tokenizer"),
    out: Path = typer.Option(Path("report.html"), help="the HTML file to write"),
    title: str = typer.Option("modmask-lens report", help="page title"),
):
    """Write one self-contained offline HTML report (circuits, overlap, attention, plots) for saved masks.

    Example: modmask-lens report --model path/to/scan-model --masks demo-output/masks-scan-jump.safetensors
    --masks demo-output/masks-scan-walk.safetensors --prompt "jump twice and walk" --out report.html
    """
    from modmask_lens.viz import report_from_files

    typer.echo(f"Report written to {report_from_files(out, model, masks, prompt, title=title)}")


masks_app = _Typer(help="Train weight masks for subtasks of a model.", no_args_is_help=True)
app.add_typer(masks_app, name="masks")


@masks_app.command("train")
def masks_train(
    model: str = typer.Option(..., help="zoo model name, local Hugging Face folder, or hub id (online only)"),
    task: list[str] = typer.Option(..., "--task", help="TASK, TASK/SUBTASK or a .jsonl file; repeat for several"),
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
        None, help="faithful only: task loss the mask may add, nats per answer token (default 0.02)"
    ),
    lr: float | None = typer.Option(
        None, help="Adam learning rate of the logits (default: faithful 0.05, csordas 1e-2)"
    ),
    granularity: str = typer.Option("weight", help="weight, neuron, head or matrix"),
    seed: int = typer.Option(0, help="seed of data order and mask noise"),
    n_samples: int = typer.Option(4, help="mask samples per batch (each on its own slice of the batch)"),
    fully_shard: bool = typer.Option(
        False,
        "--fully-shard",
        help="under torchrun, shard weights, masks and Adam "
        "state over the processes (for models that do not fit one device)",
    ),
):
    """Train one mask per subtask on a frozen model; rerunning with the same --out resumes from the checkpoint.

    Under torchrun the batch's mask samples are shared out among the processes and the mask gradients summed
    (gloo on CPU, NCCL on GPUs): ``torchrun --nproc_per_node 2 $(which modmask-lens) masks train ...``. With
    --fully-shard each process holds 1/N of the weights, mask logits and Adam state on its GPU (the model itself
    stays in host memory) and gathers one block at a time.

    Example: modmask-lens masks train --model scan --task scan/jump --task scan/walk --steps 500 --out masks
    """
    from modmask_lens.core.data import SubtaskData
    from modmask_lens.core.world import launched_by_torchrun, world
    from modmask_lens.loading import load_bridge, load_subtask
    from modmask_lens.masks.config import CSORDAS_MASKS, CSORDAS_TRAINING, MaskConfig, TrainConfig
    from modmask_lens.masks.io import save_masks
    from modmask_lens.masks.training import train_masks

    methods = {"faithful": (MaskConfig(), TrainConfig()), "csordas": (CSORDAS_MASKS, CSORDAS_TRAINING)}
    if method not in methods:
        raise typer.BadParameter(f"unknown method {method!r}; choose from {list(methods)}", param_hint="--method")
    wrong = {"faithful": ("--beta", beta), "csordas": ("--max-loss-increase", max_loss_increase)}[method]
    if wrong[1] is not None:
        raise typer.BadParameter(f"{wrong[0]} does not apply to --method {method}", param_hint=wrong[0])
    base_masks, base_training = methods[method]
    settings = {"beta": beta, "max_loss_increase": max_loss_increase, "lr": lr}
    train_config = dataclasses.replace(
        base_training,
        steps=steps,
        batch_size=batch_size,
        seed=seed,
        n_samples=n_samples,
        **{key: value for key, value in settings.items() if value is not None},
    )
    distributed = launched_by_torchrun()
    if distributed:
        torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    # Each process of a GPU run works on its own GPU; a fully sharded one keeps the model itself in host memory.
    device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}" if torch.cuda.is_available() else "cpu"
    bridge, tokenizer = load_bridge(model, device="cpu" if fully_shard else device)
    subtasks = [load_subtask(spec, tokenizer) for spec in task]
    if not fully_shard:  # the data go where the model runs
        subtasks = [SubtaskData(s.name, s.input_ids.to(device), s.labels.to(device)) for s in subtasks]
    masks = train_masks(
        bridge,
        subtasks,
        dataclasses.replace(base_masks, granularity=granularity),
        train_config,
        out / "checkpoints",
        progress=world()[0] == 0,
        fully_shard=fully_shard,
        device=device,
    )
    if world()[0] == 0:
        for name, mask in masks.items():
            binary = mask.binary()
            path = save_masks(mask, out / f"masks-{name}.safetensors")
            typer.echo(f"{name}: keeps {binary.count:,} of {binary.total:,} weights -> {path}")
    if distributed:
        torch.distributed.barrier()  # let rank 0 finish writing before any process tears the group down
        torch.distributed.destroy_process_group()


@app.command()
def analyze(
    model: str = typer.Option(..., help="the model the masks were trained on (zoo name or local folder)"),
    masks: list[Path] = typer.Option(..., "--masks", help="mask file; repeat for several subtasks"),
    out: Path = typer.Option(Path("analysis"), help="folder for the CSV tables"),
    by: str = typer.Option("layer_role", help="grouping: all, tensor, layer, role, layer_role, head, neuron"),
):
    """Write tidy CSV tables for saved masks: kept fractions, pairwise IoU / IoMin, shared fractions, head ranking.

    Example: modmask-lens analyze --model scan --masks masks/masks-scan-jump.safetensors
    --masks masks/masks-scan-walk.safetensors
    """
    from modmask_lens.analysis import pairwise_overlap, shared_fraction, unit_importance
    from modmask_lens.loading import load_bridge
    from modmask_lens.masks.io import load_masks

    bridge, _ = load_bridge(model)
    binaries = {mask.name: mask.binary() for mask in (load_masks(path, bridge) for path in masks)}
    out.mkdir(parents=True, exist_ok=True)
    tables = {"kept_fraction": pd.concat([binary.kept_fraction(by=by) for binary in binaries.values()])}
    if len(binaries) > 1:
        tables |= {"overlap": pairwise_overlap(binaries, by=by), "shared": shared_fraction(binaries, by=by)}
    if bridge.cfg.n_heads and any(spec.unit == "head" for binary in binaries.values() for spec in binary.specs):
        tables["head_importance"] = pd.concat([unit_importance(binary, "head") for binary in binaries.values()])
    for name, table in tables.items():
        table.to_csv(out / f"{name}.csv", index=False)
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


from modmask_lens.groundtruth.commands import groundtruth_app

app.add_typer(groundtruth_app, name="groundtruth")


@app.command()
def data(
    name: str = typer.Argument(..., help="task: scan, addmul, double_add, modadd or math"),
    split: str | None = typer.Option(
        None, help="SCAN split (simple, addprim_jump, length, template_around_right, ...)"
    ),
    stats: bool = typer.Option(False, "--stats", help="print the number of examples of each part"),
    export: Path | None = typer.Option(None, help="write every part as JSONL (prompt, completion, part) to this file"),
    seed: int = typer.Option(0, help="seed of the random parts (SCAN simple, arithmetic splits, math samples)"),
):
    """Generate a task offline; print its sizes or export it as JSONL.

    Example: modmask-lens data scan --split addprim_jump --stats
    """
    import json

    from modmask_lens.tasks import scan
    from modmask_lens.tasks.catalog import task_spec

    if split is not None and name != "scan":
        raise typer.BadParameter("--split only applies to scan")
    dataset = scan.scan_task(split or "simple", seed) if name == "scan" else task_spec(name).build(seed)
    if stats or export is None:
        for part, rows in dataset.items():
            typer.echo(f"{part}: {rows.num_rows}")
    if export is not None:
        with export.open("w", encoding="utf-8") as handle:
            for part, rows in dataset.items():
                for row in rows:
                    record = {"prompt": row["question"], "completion": row["answer"], "part": part}
                    handle.write(json.dumps(record) + "\n")
        typer.echo(f"wrote {export}")


COMMAND_ENTRY_POINTS = "modmask_lens.commands"
"""Entry-point group through which other packages add commands (``NAME`` for a top-level command, ``GROUP.NAME``
for one in a group such as ``zoo``); the repository's ``experiments`` package adds ``demo``, ``reproduce`` and
``zoo.train`` this way, so the library never imports it."""

_GROUPS = {"zoo": zoo_app, "masks": masks_app}


def _add_entry_point_commands() -> None:
    for entry in entry_points(group=COMMAND_ENTRY_POINTS):
        group, _, name = entry.name.rpartition(".")
        (_GROUPS[group] if group else app).command(name)(entry.load())


_add_entry_point_commands()


def main() -> None:
    app()
