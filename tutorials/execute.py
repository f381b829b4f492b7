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


def execute_in_place(path: Path) -> None:
    notebook = nbformat.read(path, as_version=4)
    NotebookClient(
        notebook, timeout=CELL_TIMEOUT_S, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    ).execute()
    nbformat.write(notebook, path)


if __name__ == "__main__":
    os.environ.pop("MODMASK_LENS_SMALL", None)  # full settings
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    for notebook_path in [Path(name) for name in sys.argv[1:]] or sorted(Path(__file__).parent.glob("*.ipynb")):
        execute_in_place(notebook_path)
        print(f"executed {notebook_path}", flush=True)
