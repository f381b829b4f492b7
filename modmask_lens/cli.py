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
    typer.echo(f"Summary written to {summary}")


def main() -> None:
    app()
