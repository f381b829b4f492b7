"""``modmask-lens groundtruth``: run mask methods over the ground-truth suite and print or write its tables.

Outside the ``groundtruth`` package, whose import loads TransformerLens: ``modmask-lens --help`` imports this module."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from modmask_lens.cli_common import _Typer, check_writable, file_to_write

if TYPE_CHECKING:
    import pandas as pd

groundtruth_app = _Typer(help="Score mask methods on models whose subtasks' weights are known.", no_args_is_help=True)

SHOWN = {
    "summary": [
        "case",
        "subtask",
        "granularity",
        "method",
        "control",
        "seed",
        "precision",
        "recall",
        "auroc",
        "auroc_gain",
        "kept_fraction",
        "true_fraction",
        "inside_others",
        "seed_iou",
        "faithfulness",
        "kl",
        "inverse_faithfulness",
        "inverse_faithfulness_others",
        "cpr",
        "cmd",
    ],
    "sharing": ["case", "subtask", "granularity", "method", "control", "seed", "known_shared", "measured_shared"],
}


@groundtruth_app.command("run")
def run(
    case: Annotated[
        list[str] | None,
        typer.Option(
            "--case",
            help="case, family or pair (e.g. disconnected/add-mul, "
            "entangled-head, sub-max, tracr); repeat; default: all",
        ),
    ] = None,
    tracr_dir: Annotated[
        list[Path] | None,
        typer.Option(
            "--tracr-dir",
            help="score the compiled programs in this folder (the --out of python -m "
            "experiments.groundtruth.tracr_build); repeat; without --case, all of them and no shipped case; "
            "--case chooses among shipped and folder cases (e.g. tracr/NAME)",
        ),
    ] = None,
    plant_dir: Annotated[
        list[Path] | None,
        typer.Option(
            "--plant-dir",
            help="score the plant in this folder (the --out of python -m "
            "experiments.groundtruth.plant_training); repeat; without --case, these and no shipped case; "
            "--case chooses among shipped and folder cases",
        ),
    ] = None,
    granularity: Annotated[
        list[str] | None,
        typer.Option("--granularity", help="weight, neuron or head; repeat; default: every granularity a case answers"),
    ] = None,
    method: Annotated[
        list[str] | None,
        typer.Option(
            "--method",
            help="faithful (the library's defaults), csordas, csordas-transformer, target-density, or a study "
            "method (csordas+faithful-readout, gumbel+constraint, hard-concrete+constraint, faithful+kl, "
            "faithful+necessity, faithful+one-sample); repeat; "
            "default: the four baselines",
        ),
    ] = None,
    control: Annotated[
        list[str] | None,
        typer.Option("--control", help="none, random-init or shuffled-answers; repeat; default: all three"),
    ] = None,
    steps: Annotated[
        int | None, typer.Option(help="mask training steps per subtask (default: each method's own)")
    ] = None,
    seed: Annotated[
        list[int] | None,
        typer.Option("--seed", help="train each method once per seed; repeat (two or more add seed_iou); default: 0"),
    ] = None,
    neuron_mask: Annotated[
        str | None,
        typer.Option(
            help="neuron masks of every method: output (the default) or in-out (each neuron's W_in/W_gate column "
            "too; docs/finder-study.md compares them); the tables name the method METHOD+neuron-NEURON_MASK; "
            "refused where no run would train a neuron mask (a --granularity without neuron, or cases without a "
            "neuron answer key)"
        ),
    ] = None,
    fast: Annotated[
        bool, typer.Option("--fast", help="a smoke run: 50 steps, the library's defaults, no controls")
    ] = False,
    out: Annotated[
        Path | None, typer.Option(help="folder to write every table as CSV and the summary as Markdown")
    ] = None,
):
    """Train masks with each method on each case, granularity and control; print precision, recall, AUROC (of
    the logits, and auroc_gain: the units left out ranked by marginal gain), faithfulness, curve areas and
    sharing as tidy tables (docs/ground-truth.md, "The metrics").

    Example: modmask-lens groundtruth run --case disconnected/add-mul --granularity neuron --steps 300 --out gt

    Example: modmask-lens groundtruth run --tracr-dir my-programs --granularity head --control none
    """
    import pandas as pd

    from modmask_lens.core.atomic_files import write_text_atomically
    from modmask_lens.groundtruth.controls import CONTROLS
    from modmask_lens.groundtruth.methods import baseline_methods, study_methods
    from modmask_lens.groundtruth.plants import load_plant
    from modmask_lens.groundtruth.registry import all_cases
    from modmask_lens.groundtruth.suite import case_granularities, run_suite
    from modmask_lens.groundtruth.tracr_cases import tracr_cases
    from modmask_lens.masks.config import NEURON_MASKS

    if out is not None:
        check_writable(out, "--out")
    for folder, option in [(folder, "--tracr-dir") for folder in tracr_dir or []] + [
        (folder, "--plant-dir") for folder in plant_dir or []
    ]:
        if not folder.is_dir():
            raise typer.BadParameter(f"not a folder: {folder}", param_hint=option)
    if fast:
        steps, method, control = 50 if steps is None else steps, method or ["faithful"], control or ["none"]
    methods = baseline_methods(steps) | study_methods(steps)
    unknown = sorted(set(method or []) - set(methods))
    if unknown:
        raise typer.BadParameter(f"unknown method(s) {unknown}; choose from {list(methods)}")
    chosen = {name: methods[name] for name in (method or baseline_methods(steps))}
    if neuron_mask is not None:
        if neuron_mask not in NEURON_MASKS:
            raise typer.BadParameter(f"choose one of {list(NEURON_MASKS)}", param_hint="--neuron-mask")
        if granularity and "neuron" not in granularity:  # the tables would name a neuron mask no run trained
            raise typer.BadParameter(
                f"shapes neuron masks only, and --granularity asks for {', '.join(granularity)}: add --granularity "
                "neuron or drop --neuron-mask",
                param_hint="--neuron-mask",
            )
        chosen = {  # named apart, so that the tables of both kinds of neuron mask can sit in one folder
            f"{name}+neuron-{neuron_mask}": dataclasses.replace(
                finder, mask_settings=finder.mask_settings | {"neuron_mask": neuron_mask}
            )
            for name, finder in chosen.items()
        }
    started = time.perf_counter()
    loaded = [
        *(program for folder in tracr_dir or [] for program in tracr_cases(folder)),
        *(load_plant(folder.name, folder) for folder in plant_dir or []),
    ]
    cases = all_cases(case or None, loaded)
    if neuron_mask is not None:  # as above: the tables would name a neuron mask no run trained
        answered = {found.name: case_granularities(found) for found in cases}
        if not any("neuron" in granularities for granularities in answered.values()):
            raise typer.BadParameter(
                "shapes neuron masks only, and no case here has a neuron answer key ("
                + "; ".join(f"{name}: {', '.join(granularities)}" for name, granularities in answered.items())
                + "): choose a case with one or drop --neuron-mask",
                param_hint="--neuron-mask",
            )
    tables = run_suite(
        chosen,
        cases,
        granularity or None,
        control or CONTROLS,
        method_seeds=seed or (0,),
        log=lambda line: typer.echo(line, err=True),
    )
    wall_s = time.perf_counter() - started
    for row in tables["skipped"].itertuples():
        typer.echo(f"skipped {row.case} {row.granularity} control={row.control}: {row.reason}")
    if tables["summary"].empty:
        raise ValueError(
            "no mask was trained: every control of every case was skipped (reasons above); choose a --control that "
            "applies to these cases, e.g. --control none"
        )
    with pd.option_context(
        "display.width",
        250,
        "display.max_columns",
        40,
        "display.max_rows",
        500,
        "display.float_format",
        "{:.3f}".format,
    ):
        for table, columns in SHOWN.items():
            shown = shown_summary(tables["summary"]) if table == "summary" else tables[table][columns]
            typer.echo(f"\n{table}:\n{shown.to_string(index=False)}")
    typer.echo(f"\nwall time {wall_s:.0f} s")
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        for table, frame in tables.items():
            write_text_atomically(out / f"{table}.csv", frame.to_csv(index=False))
        write_text_atomically(out / "summary.md", markdown_table(shown_summary(tables["summary"])))
        typer.echo(f"wrote {len(tables)} tables to {out}")


@groundtruth_app.command("targets")
def targets(
    folder: Annotated[
        list[Path],
        typer.Argument(help="folders holding the tables of groundtruth run --out (searched recursively); repeat"),
    ],
    method: Annotated[str | None, typer.Option(help="check only this method's masks (default: every method's)")] = None,
    out: Annotated[str | None, typer.Option(help="also write the checks as Markdown to this file")] = None,
):
    """Check the mask finder's targets (issue #18: precision, AUROC, faithfulness, IoU, time, reported ambiguity,
    null controls beside every result) against the tables of one or more groundtruth runs, and print each check
    and a tally per target (docs/ground-truth.md, "Targets").

    Example: modmask-lens groundtruth targets gt-tables --method faithful --out targets.md
    """
    from modmask_lens.core.atomic_files import write_text_atomically
    from modmask_lens.groundtruth.targets import TARGETS, target_checks, target_tally

    for path in folder:
        if not path.is_dir():
            raise typer.BadParameter(f"not a folder: {path}", param_hint="FOLDER")
    out_file = None
    if out is not None:
        out_file = file_to_write(out, "--out", "Markdown", "targets.md")
        check_writable(out_file.parent, "--out")
    tables = read_tables(folder)
    if "summary" not in tables:
        raise typer.BadParameter(
            f"no summary.csv with rows under {[str(path) for path in folder]}: pass the --out folder of "
            "groundtruth run",
            param_hint="FOLDER",
        )
    try:
        checks = target_checks(tables, method)
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="FOLDER") from error
    if not checks["target"].isin(list(TARGETS)).any():
        raise typer.BadParameter(
            "no uncontrolled masks of a known family (disconnected, entangled-neuron, entangled-head, partly-shared, "
            "per-weight, tracr) in the tables",
            param_hint="FOLDER",
        )
    tally = target_tally(checks)
    shown = checks.assign(
        seed=checks["seed"].astype("string").fillna(""),
        met=checks["met"].map({1.0: "yes", 0.0: "no"}).fillna("undefined"),
    )
    report = f"{markdown_table(tally)}\n{markdown_table(shown)}"
    typer.echo(report)
    if out_file is not None:
        write_text_atomically(out_file, report)
        typer.echo(f"wrote {out_file}")


def shown_summary(summary: pd.DataFrame) -> pd.DataFrame:
    """The summary's shown columns as printed and written to ``summary.md``: ``auroc_gain`` reads ``not measured``
    where the gains were not measured (:func:`~modmask_lens.groundtruth.targets.gain_not_measured`), NaN only where
    it is undefined."""
    from modmask_lens.groundtruth.targets import gain_not_measured

    shown = summary[SHOWN["summary"]]
    gain = shown["auroc_gain"].map("{:.3f}".format).where(~gain_not_measured(summary), "not measured")
    return shown.assign(auroc_gain=gain)


def read_tables(folders: list[Path]) -> dict[str, pd.DataFrame]:
    """Table name -> every ``NAME.csv`` beside a ``summary.csv`` under ``folders``, concatenated."""
    import pandas as pd

    parts: dict[str, list[pd.DataFrame]] = {}
    for summary in sorted(summary for folder in folders for summary in folder.rglob("summary.csv")):
        for table in sorted(summary.parent.glob("*.csv")):
            try:
                parts.setdefault(table.stem, []).append(pd.read_csv(table))
            except pd.errors.EmptyDataError:  # a table with no rows (e.g. nothing skipped) is written empty
                pass
    return {name: pd.concat(frames, ignore_index=True) for name, frames in parts.items() if frames}


def markdown_table(frame: pd.DataFrame) -> str:
    """A Markdown table of ``frame``, floats to three decimals (pandas' own needs the optional tabulate)."""

    def cell(value) -> str:
        return f"{value:.3f}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(frame.columns) + " |", "|" + " --- |" * len(frame.columns)]
    lines += ["| " + " | ".join(cell(value) for value in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines) + "\n"
