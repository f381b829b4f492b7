"""Every ground-truth case the suite knows: the shipped plants and the compiled tracr programs (loading them needs
neither jax nor tracr)."""

from __future__ import annotations

from collections.abc import Sequence

from modmask_lens.groundtruth.case import GroundTruthCase
from modmask_lens.groundtruth.plants import PLANTS, available_plants, load_plant
from modmask_lens.groundtruth.tracr_cases import tracr_cases


def _matches(selector: str, name: str, family: str) -> bool:
    """A selector names a case (``family/pair`` or ``family-pair``), a family, or a subtask pair (``add-mul``)."""
    return selector in (name, family, name.replace("/", "-"), name.rpartition("/")[2])


def all_cases(selectors: Sequence[str] | None = None, include_tracr: bool = True) -> list[GroundTruthCase]:
    """The cases whose name (``disconnected/add-mul`` or ``disconnected-add-mul``), family or pair matches one of
    ``selectors`` (default: all).

    Raises:
        ValueError: when a selector matches no case (naming it and the plants).

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
        cases += [
            case
            for case in tracr_cases()
            if selectors is None or any(_matches(s, case.name, case.family) for s in selectors)
        ]
    unmatched = [s for s in selectors or () if not any(_matches(s, case.name, case.family) for case in cases)]
    if unmatched:  # one misspelt selector beside others would otherwise drop its cases from the run unsaid
        raise ValueError(
            f"no case matches {unmatched}; plants: {', '.join(available_plants())} (or their families), or tracr"
        )
    return cases
