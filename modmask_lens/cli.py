"""The ``modmask-lens`` command line."""

from __future__ import annotations

from pathlib import Path

import torch
import typer

app = typer.Typer(help="Which weights of a transformer does a subtask use? Differentiable weight masks on "
                       "TransformerLens 4.x bridges.", no_args_is_help=True, add_completion=False)


@app.callback()
def main_options(threads: int = typer.Option(1, help="torch CPU threads (1 is fastest on a busy 2-core machine)")):
    torch.set_num_threads(threads)


@app.command()
def demo(
    out: Path = typer.Option(Path("demo-output"), help="folder for the model, masks and summary"),
    mask_steps: int = typer.Option(300, help="mask training steps per subtask"),
):
    """Train per-weight masks for two subtasks of a small model and write masks and a summary.

    Example: modmask-lens demo --out demo-output
    """
    from modmask_lens.demo import run_demo

    summary = run_demo(out, mask_steps=mask_steps)
    typer.echo(summary.read_text())
    typer.echo(f"Summary written to {summary}; report written to {summary.parent / 'report.html'}")


@app.command()
def report(
    model: Path = typer.Option(..., help="local Hugging Face model folder the masks were trained on"),
    masks: list[Path] = typer.Option(..., "--masks", help="mask file (.safetensors); repeat for several subtasks"),
    prompt: str = typer.Option(..., help="space-separated token ids, or text for the model's tokenizer"),
    out: Path = typer.Option(Path("report.html"), help="the HTML file to write"),
    title: str = typer.Option("modmask-lens report", help="page title"),
):
    """Write one self-contained offline HTML report (circuits, overlap, attention, plots) for saved masks.

    Example: modmask-lens report --model demo-output/model --masks demo-output/masks-copy_first.safetensors
    --masks demo-output/masks-copy_second.safetensors --prompt "3 7 10 3 12" --out report.html
    """
    from modmask_lens.viz import report_from_files

    typer.echo(f"Report written to {report_from_files(out, model, masks, prompt, title=title)}")


zoo_app = typer.Typer(help="The shipped zoo of small trained transformers.", no_args_is_help=True)
app.add_typer(zoo_app, name="zoo")


@zoo_app.command("list")
def zoo_list():
    """List the shipped models with the accuracies on their cards.

    Example: modmask-lens zoo list
    """
    from modmask_lens import zoo

    typer.echo(zoo.describe_models() or "no zoo model is shipped")


@zoo_app.command("train")
def zoo_train(name: str = typer.Argument(..., help="zoo model to reproduce, e.g. scan"),
              out: Path | None = typer.Option(None, help="output folder (default: the package's zoo)")):
    """Reproduce a zoo model from scratch (minutes to tens of minutes on one CPU core; resumable).

    Example: modmask-lens zoo train scan --out my-scan
    """
    from modmask_lens.zoo.train import main as train_main

    train_main([name] + (["--out", str(out)] if out else []))


@app.command()
def data(
    name: str = typer.Argument(..., help="task: scan, addmul, double_add, modadd or math"),
    split: str | None = typer.Option(None, help="SCAN split (simple, addprim_jump, length, template_around_right, ...)"),
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


def main() -> None:
    app()
