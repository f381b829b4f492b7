"""Conformance kit: proves that an adapter resolves a model's tensors right (importable by plugin authors).

    >>> from modmask_lens.testing import run_conformance                    # doctest: +SKIP
    >>> for result in run_conformance(bridge): print(result)                 # doctest: +SKIP

From the command line, on a local Hugging Face model folder: ``python -m modmask_lens.testing PATH``.
"""

from modmask_lens.testing.conformance import (
    CHECKS,
    CheckResult,
    Passed,
    applicable_checks,
    check_head_mask,
    conformance_inputs,
    run_conformance,
)

__all__ = [
    "CHECKS",
    "CheckResult",
    "Passed",
    "applicable_checks",
    "check_head_mask",
    "conformance_inputs",
    "run_conformance",
]
