"""The layout keeps its promises: the library never imports the experiments, and nothing pickles."""

from __future__ import annotations

import re
from pathlib import Path

import modmask_lens

PACKAGE = Path(modmask_lens.__file__).parent


def library_sources() -> dict[str, str]:
    return {str(path.relative_to(PACKAGE)): path.read_text(encoding="utf-8") for path in PACKAGE.rglob("*.py")}


def test_the_library_never_imports_an_experiment():
    importers = sorted(
        name
        for name, text in library_sources().items()
        if re.search(r"^\s*(from|import) experiments\b", text, flags=re.MULTILINE)
    )
    assert importers == []


def test_architecture_knowledge_stays_in_the_adapters():
    family_names = re.compile(r"c_attn|q_proj|query_key_value|\.layout\b")
    leaks = sorted(
        name
        for name, text in library_sources().items()
        if not name.startswith("adapters/") and family_names.search(text)
    )
    assert leaks == []
