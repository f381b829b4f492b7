"""The experiments' commands of the ``modmask-lens`` command line (registered as ``modmask_lens.commands`` entry
points; each imports its experiment only when it runs)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import typer


def demo(
    out: Path = typer.Option(Path("demo-output"), help="folder for the masks, tables, summary and report"),
    mask_steps: int = typer.Option(200, help="mask training steps per subtask"),
    restart: bool = typer.Option(False, "--restart", help="ignore a checkpoint in OUT/checkpoints and start over"),
):
    """Find the jump and walk subnetworks of the zoo's SCAN model; write masks, tables and an offline HTML report.

    Example: modmask-lens demo --out demo-output
    """
    from experiments.demo import DEMO_TRAINING, run_demo
    from modmask_lens.cli_common import check_writable

    _check_positive(mask_steps=mask_steps)
    check_writable(out, "--out")
    summary = run_demo(out, dataclasses.replace(DEMO_TRAINING, steps=mask_steps), restart=restart)
    typer.echo(summary.read_text())
    typer.echo(f"Summary written to {summary}; report written to {summary.parent / 'report.html'}")


def reproduce(
    names: list[str] = typer.Argument(
        None,
        help="experiments to run (default: every Csordás experiment): scan, "
        "addmul, double_add, math, scan_probe, math_probe, scan_variants, math_variants; "
        "or one BIMT task: independence, modular_addition",
    ),
    out: str | None = typer.Option(
        None,
        help="Csordás experiments: the markdown file (default results.md; docs/results.md is curated, not written); "
        "a BIMT task: the folder for result.json, history.csv and connectome.svg",
    ),
    steps: int | None = typer.Option(
        None,
        help="mask training steps (default 800; the probe experiments train no mask); BIMT optimiser steps (20000)",
    ),
    method: str | None = typer.Option(
        None,
        help="Csordás experiments: faithful (the library's default finder, the default) or csordas (the paper's)",
    ),
    eval_limit: int | None = typer.Option(None, help="Csordás experiments: evaluation examples per set (2000)"),
    jobs: int | None = typer.Option(
        None, help="Csordás experiments run in parallel, one process (one thread) each (default 1)"
    ),
    seed: int | None = typer.Option(None, help="BIMT tasks: initialisation and data seed (default 0)"),
    frames: bool = typer.Option(False, "--frames", help="BIMT tasks: also write a connectome per logged step"),
):
    """Reproduce the papers' experiments: Csordás et al. (2021) on the zoo, or BIMT's MLP tasks.

    Example: modmask-lens reproduce scan addmul --steps 800 --eval-limit 2000 --out results.md
    """
    from experiments import bimt, csordas
    from modmask_lens.cli_common import check_writable, file_to_write

    _check_positive(steps=steps, eval_limit=eval_limit, jobs=jobs)
    names = names or list(csordas.EXPERIMENTS)
    unknown = [name for name in names if name not in csordas.EXPERIMENTS and name not in bimt.TASKS]
    if unknown:
        raise typer.BadParameter(f"no experiment {unknown}; choose from {[*csordas.EXPERIMENTS, *bimt.TASKS]}")
    if any(name in bimt.TASKS for name in names):
        if len(names) != 1 or out is None:
            raise typer.BadParameter("a BIMT task runs alone and needs --out DIR")
        _refuse_given("a BIMT task", method=method, eval_limit=eval_limit, jobs=jobs)
        check_writable(Path(out), "--out")
        result = bimt.run_task(names[0], Path(out), 20_000 if steps is None else steps, seed or 0, frames)
        typer.echo(
            json.dumps({key: value for key, value in result.items() if key != "embedding_column_norms"}, indent=2)
        )
        return
    _refuse_given("the Csordás experiments", seed=seed, frames=frames or None)
    if set(names) <= set(csordas.PROBE_EXPERIMENTS):  # their probes train 1500 steps of their own
        _refuse_given("the probe experiments, which train no mask", steps=steps, method=method)
    out_file = file_to_write(out or "results.md", "--out", "Markdown", "results.md")
    method = method or "faithful"
    if method not in csordas.METHODS:
        raise typer.BadParameter(
            f"unknown method {method!r}; choose from {list(csordas.METHODS)}", param_hint="--method"
        )
    check_writable(out_file.parent, "--out")
    if out_file.is_file() and not out_file.read_text().startswith(csordas.RESULTS_TITLE):
        raise typer.BadParameter(
            f"{out_file} exists and was not written by reproduce (a curated document); give another --out",
            param_hint="--out",
        )
    steps = csordas.DEFAULT_METHOD.train_config.steps if steps is None else steps
    csordas.run_and_write(names, out_file, steps, 2000 if eval_limit is None else eval_limit, jobs or 1, method)
    typer.echo(f"wrote {out_file}")


def zoo_train(
    name: str = typer.Argument(..., help="zoo model to reproduce, e.g. scan"),
    out: Path | None = typer.Option(None, help="output folder (default: zoo-models/NAME in the current folder)"),
    in_place: bool = typer.Option(
        False, "--in-place", help="overwrite the zoo model inside the installed package (instead of --out)"
    ),
    checkpoint_dir: Path | None = typer.Option(
        None, help="where to keep the resumable checkpoint (default ~/.cache/modmask-lens/zoo-checkpoints/NAME)"
    ),
    restart: bool = typer.Option(
        False, "--restart", help="ignore the checkpoint (also a finished run's) and train from step 0"
    ),
):
    """Reproduce a zoo model from scratch (minutes to tens of minutes on one CPU core; resumable).

    Writes into the installed package only with --in-place.

    Example: modmask-lens zoo train scan --out my-scan
    """
    from experiments.zoo.recipes import recipe
    from experiments.zoo.train import train_named
    from modmask_lens.cli_common import check_writable

    recipe(name)  # an unknown name is refused before any folder is made
    folder = zoo_output_folder(name, out, in_place)
    if folder is not None:
        check_writable(folder, "--out")
    if checkpoint_dir is not None:
        check_writable(checkpoint_dir, "--checkpoint-dir")
    train_named(name, folder, checkpoint_dir, restart)


def zoo_output_folder(name: str, out: Path | None, in_place: bool) -> Path | None:
    """Where ``zoo train`` writes: ``out``; the installed package's zoo (``None``) only with ``in_place``; else
    ``zoo-models/NAME`` in the current folder."""
    if in_place and out is not None:
        raise typer.BadParameter("give --out or --in-place, not both")
    if in_place:
        return None
    return out if out is not None else Path("zoo-models") / name


def _check_positive(**options: int | None) -> None:
    """Refuse an option below 1 (``None``: its default), naming it as the command line spells it."""
    for name, value in options.items():
        if value is not None and value < 1:
            raise typer.BadParameter(f"must be at least 1, got {value}", param_hint=f"--{name.replace('_', '-')}")


def _refuse_given(runs: str, **options: object) -> None:
    """Refuse an option that ``runs`` would ignore (``None``: not given): a result made without it would be
    recorded as if it had been used."""
    for name, value in options.items():
        if value is not None:
            option = f"--{name.replace('_', '-')}"
            raise typer.BadParameter(f"{option} does not apply to {runs}", param_hint=option)
