"""Every tutorial notebook runs top to bottom, offline, with small settings."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

TUTORIALS = sorted((Path(__file__).resolve().parents[2] / "tutorials").glob("*.ipynb"))


@pytest.mark.parametrize("notebook_path", TUTORIALS, ids=[path.stem for path in TUTORIALS])
def test_tutorial_runs_without_error(notebook_path, monkeypatch):
    monkeypatch.setenv("MODMASK_LENS_SMALL", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    notebook = nbformat.read(notebook_path, as_version=4)
    needs = notebook.metadata.get("modmask_lens", {})
    for module in needs.get("requires", []):
        if importlib.util.find_spec(module) is None:
            pytest.skip(
                f"{notebook_path.name} needs {module}: pip install 'modmask-lens[{needs.get('extra', module)}]'"
            )
    NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(notebook_path.parent)}}
    ).execute()
    assert any(output for cell in notebook.cells if cell.cell_type == "code" for output in cell.get("outputs", []))


def test_there_is_a_tutorial():
    assert TUTORIALS, "tutorials/ holds no notebook"
