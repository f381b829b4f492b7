"""Every ground-truth case the suite knows: the shipped plants, and the compiled tracr programs when their module
(``modmask_lens.groundtruth.tracr_cases``, with jax and tracr installed) imports."""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Sequence

from modmask_lens.groundtruth.case import GroundTruthCase
from modmask_lens.groundtruth.plants import PLANTS, available_plants, load_plant


class CasesUnavailable(RuntimeError):
    """A family of cases cannot be built here (a module or dependency is missing); the message says what to do."""


def tracr_cases() -> list[GroundTruthCase]:
    """The compiled tracr cases (family ``tracr``).

    Raises:
        CasesUnavailable: when ``modmask_lens.groundtruth.tracr_cases`` or its dependencies do not import.
    """
    try:
        module = importlib.import_module("modmask_lens.groundtruth.tracr_cases")
    except ImportError as error:
        raise CasesUnavailable(
            f"tracr cases skipped: {error} (they need modmask_lens.groundtruth.tracr_cases and "
            "its dependencies, e.g. pip install tracr-pypi)"
        ) from error
    build = getattr(module, "tracr_cases", None)
    if build is None:
        raise CasesUnavailable(
            "tracr cases skipped: modmask_lens.groundtruth.tracr_cases has no function tracr_cases() "
            "returning the cases; add one"
        )
    return list(build())


def _matches(selector: str, name: str, family: str) -> bool:
    """A selector names a case (``family/pair`` or ``family-pair``), a family, or a subtask pair (``add-mul``)."""
    return selector in (name, family, name.replace("/", "-"), name.rpartition("/")[2])


def all_cases(selectors: Sequence[str] | None = None, include_tracr: bool = True) -> list[GroundTruthCase]:
    """The cases whose name (``disconnected/add-mul`` or ``disconnected-add-mul``), family or pair matches one of
    ``selectors`` (default: all). Missing tracr cases are skipped with a warning that says why.

    Example:
        >>> cases = all_cases(["entangled-neuron"])                                   # doctest: +SKIP
        >>> [case.name for case in cases]                                               # doctest: +SKIP
        ['entangled-neuron/add-mul', 'entangled-neuron/sub-max']
    """
    cases = [
        load_plant(name)
        for name in available_plants()
        if selectors is None
        or any(_matches(s, f"{PLANTS[name].family}/{PLANTS[name].pair}", PLANTS[name].family) for s in selectors)
    ]
    if include_tracr and (selectors is None or any(s == "tracr" or s.startswith("tracr/") for s in selectors)):
        try:
            cases += [
                case
                for case in tracr_cases()
                if selectors is None or any(_matches(s, case.name, case.family) for s in selectors)
            ]
        except CasesUnavailable as reason:
            warnings.warn(str(reason), stacklevel=2)
    if selectors and not cases:
        raise ValueError(
            f"no case matches {list(selectors)}; plants: {', '.join(available_plants())} (or their families), or tracr"
        )
    return cases
