"""Known-broken release combinations are named in one line with the fix; the locked set is not one of them."""

from __future__ import annotations

import subprocess
import sys

import pytest

from modmask_lens import versions


def _installed(transformers: str, transformer_lens: str) -> dict[str, str | None]:
    return {"torch": "2.13.0", "transformers": transformers, "transformer-lens": transformer_lens}


@pytest.mark.parametrize(
    ("transformers", "transformer_lens", "broken"),
    [
        ("5.23.0", "4.3.0", False),
        ("5.24.0", "4.3.0", True),
        ("5.25.0", "4.3.0", True),
        ("5.24.0", "4.4.0", False),
        ("5.24.0", "4.2.0", True),
        ("4.57.6", "4.3.0", False),
    ],
)
def test_the_kv_cache_break_applies_to_transformers_5_24_with_transformer_lens_4_3(
    transformers, transformer_lens, broken
):
    messages = versions.known_breaks(_installed(transformers, transformer_lens))
    assert bool(messages) == broken
    if broken:
        (message,) = messages
        assert f"transformers {transformers} with transformer-lens {transformer_lens}" in message
        assert 'pip install "transformers<5.24"' in message
        assert "\n" not in message


def test_a_missing_package_is_no_break():
    assert versions.known_breaks({"transformers": "5.25.0", "transformer-lens": None}) == []


def test_importing_warns_once_under_a_known_break(monkeypatch):
    monkeypatch.setattr(versions, "installed_versions", lambda: _installed("5.24.0", "4.3.0"))
    with pytest.warns(versions.KnownBreakWarning, match=r"transformers 5\.24\.0 with transformer-lens 4\.3\.0"):
        versions.warn_about_known_breaks()


def test_importing_the_locked_set_warns_nothing():
    # The suite runs on requirements.lock (make test); `make test-latest` runs it on the newest releases, where
    # this test fails exactly when the newest releases are a known break.
    completed = subprocess.run(
        [sys.executable, "-W", "error::UserWarning", "-c", "import modmask_lens"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
