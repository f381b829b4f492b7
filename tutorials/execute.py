"""Run every tutorial (or those named) top to bottom at full settings and keep the outputs in the notebook, so a
reader sees the results without running it (``make tutorials``; the test suite runs them again at small settings).

Usage: python tutorials/execute.py [NOTEBOOK ...]
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

CELL_TIMEOUT_S = 3600
NOISE = ("TqdmWarning", "from .autonotebook import")  # tqdm's note that Jupyter widgets are not installed


def execute_in_place(path: Path) -> None:
    notebook = nbformat.read(path, as_version=4)
    NotebookClient(
        notebook, timeout=CELL_TIMEOUT_S, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    ).execute()
    for cell in notebook.cells:
        if cell.cell_type == "code":
            cell.outputs = settled_streams(cell.outputs)
    nbformat.write(notebook, path)


def settled_streams(outputs: list) -> list:
    """``outputs`` with each run of stdout / stderr pieces joined and progress-bar redraws (``\\r``) settled to
    their last state, as a terminal would show them: a bar is one line in the notebook, not a thousand."""
    settled: list = []
    for output in outputs:
        previous = settled[-1] if settled else None
        joins = previous is not None and output.output_type == previous.output_type == "stream"
        if joins and previous.name == output.name:
            previous.text += output.text
            continue
        settled.append(output)
    for output in settled:
        if output.output_type == "stream":
            lines = [line.rsplit("\r", 1)[-1] for line in output.text.split("\n")]
            output.text = "\n".join(line for line in lines if not any(noise in line for noise in NOISE))
    return [output for output in settled if output.output_type != "stream" or output.text.strip()]


if __name__ == "__main__":
    os.environ.pop("MODMASK_LENS_SMALL", None)  # full settings
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # transformers' bars; the library's own stay
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")  # datasets' Filter / Map bars
    for notebook_path in [Path(name) for name in sys.argv[1:]] or sorted(Path(__file__).parent.glob("*.ipynb")):
        execute_in_place(notebook_path)
        print(f"executed {notebook_path}", flush=True)
