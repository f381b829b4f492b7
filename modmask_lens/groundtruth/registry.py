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


def all_cases(selectors: Sequence[str] | None = None, loaded: Sequence[GroundTruthCase] = ()) -> list[GroundTruthCase]:
    """The cases, shipped or ``loaded`` (from folders: ``load_plant(name, DIR)``, ``tracr_cases(DIR)``), whose name
    (``disconnected/add-mul`` or ``disconnected-add-mul``), family or pair matches one of ``selectors``; without
    selectors, the loaded cases, or every shipped case where none is loaded.

    Raises:
        ValueError: when a selector matches no case (naming it and the plants), or two chosen cases share a name
            (the tables could not tell them apart).

    Example:
        >>> cases = all_cases(["entangled-neuron"])                                   # doctest: +SKIP
        >>> [case.name for case in cases]                                               # doctest: +SKIP
        ['entangled-neuron/add-mul', 'entangled-neuron/sub-max']
    """
    if selectors is None:
        return _distinctly_named(list(loaded) or [*(load_plant(name) for name in available_plants()), *tracr_cases()])

    def chosen(name: str, family: str) -> bool:
        return any(_matches(selector, name, family) for selector in selectors)

    cases = [
        load_plant(name)
        for name in available_plants()
        if chosen(f"{PLANTS[name].family}/{PLANTS[name].pair}", PLANTS[name].family)
    ]
    if any(s == "tracr" or s.startswith("tracr/") for s in selectors):
        cases += [case for case in tracr_cases() if chosen(case.name, case.family)]
    cases += [case for case in loaded if chosen(case.name, case.family)]
    unmatched = [s for s in selectors if not any(_matches(s, case.name, case.family) for case in cases)]
    if unmatched:  # one misspelt selector beside others would otherwise drop its cases from the run unsaid
        loaded_names = f"; loaded: {', '.join(case.name for case in loaded)}" if loaded else ""
        raise ValueError(
            f"no case matches {unmatched}; plants: {', '.join(available_plants())} (or their families), or tracr"
            + loaded_names
        )
    return _distinctly_named(cases)


def _distinctly_named(cases: list[GroundTruthCase]) -> list[GroundTruthCase]:
    """``cases``, checked to have one name each: the tables could not tell two of a name apart."""
    names = [case.name for case in cases]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(
            f"two cases are named {repeated}, so the tables could not tell them apart (a shipped case and a folder's "
            "copy of it, or two folders' programs of one name): narrow --case, or leave one folder out"
        )
    return cases
