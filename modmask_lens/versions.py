"""Installed versions of the libraries modmask-lens stands on, and the combinations known to give wrong numbers.

A release we do not control can break TransformerLens's bridge silently (transformers 5.24 did, see
``docs/versions.md``). Importing modmask-lens warns in one line when the installed set is a known-broken one,
naming the versions and the fix; the test suite pins what a new release could break next.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version

from packaging.version import Version

WATCHED_PACKAGES = ("torch", "transformers", "transformer-lens")


@dataclass(frozen=True)
class KnownBreak:
    """A combination of releases under which something modmask-lens relies on gives wrong results.

    It applies when ``package`` is at ``broken_from`` or newer while ``partner`` is at ``partner_up_to`` or older
    (a partner release after that may carry the fix; the suite's cache-agreement test then tells).
    """

    package: str
    broken_from: str
    partner: str
    partner_up_to: str
    consequence: str
    fix: str

    def applies(self, installed: dict[str, str | None]) -> bool:
        package_version, partner_version = installed.get(self.package), installed.get(self.partner)
        if package_version is None or partner_version is None:
            return False
        return Version(package_version) >= Version(self.broken_from) and Version(partner_version) <= Version(
            self.partner_up_to
        )

    def message(self, installed: dict[str, str | None]) -> str:
        return (
            f"{self.package} {installed[self.package]} with {self.partner} {installed[self.partner]} is a known "
            f"break: {self.consequence}. Fix: {self.fix}"
        )


KNOWN_BREAKS = (
    KnownBreak(
        package="transformers",
        broken_from="5.24.0",
        partner="transformer-lens",
        partner_up_to="4.3.0",
        consequence=(
            "the bridge's KV cache is ignored (transformers renamed past_key_values to cache), so "
            "TransformerBridge.generate(use_past_kv_cache=True) returns wrong tokens; modmask-lens "
            "decodes without the cache, about 10x slower"
        ),
        fix='pip install "transformers<5.24" (or `make install`, which installs requirements.lock)',
    ),
)


def installed_versions() -> dict[str, str | None]:
    """Package name -> installed version (``None`` if absent), for :data:`WATCHED_PACKAGES`."""
    versions: dict[str, str | None] = {}
    for package in WATCHED_PACKAGES:
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = None
    return versions


def describe_installed() -> str:
    """One line naming the installed versions, e.g. ``torch 2.13.0, transformers 5.23.0, transformer-lens 4.3.0``."""
    return ", ".join(f"{package} {found or 'absent'}" for package, found in installed_versions().items())


def known_breaks(installed: dict[str, str | None] | None = None) -> list[str]:
    """Messages of the :data:`KNOWN_BREAKS` that apply to ``installed`` (default: this environment)."""
    installed = installed_versions() if installed is None else installed
    return [known.message(installed) for known in KNOWN_BREAKS if known.applies(installed)]


class KnownBreakWarning(UserWarning):
    """The installed releases are a combination known to give wrong results somewhere."""


def warn_about_known_breaks() -> None:
    """Warn once, in one line per break, if this environment is a known-broken combination."""
    for message in known_breaks():
        warnings.warn(message, KnownBreakWarning, stacklevel=2)
