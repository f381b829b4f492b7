"""The sampler the default head mask resolves to on every architecture the architecture table boots, and the
conformance kit's head-granularity gradient check under it (two training steps: every logit gets a gradient, no
weight one, the model bit-exact). With ``--hard-concrete`` the same check names ``sampler="hard-concrete"``, to tell
a failure of the sampler from one of the family. One torch thread; about two minutes.

Run: ``HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 python benchmarks/head_sampler_architectures.py [--hard-concrete]``
(figures in docs/concepts.md#head-masks).
"""

from __future__ import annotations

import argparse
import functools
import logging
import tempfile
import warnings

import torch
from architecture_table import SUPPORTED_ARCHITECTURES, _tokens, tiny_model

from modmask_lens import MaskConfig, MaskSet
from modmask_lens.adapters import GranularityNotApplicable
from modmask_lens.testing import conformance
from modmask_lens.testing.tiny_models import boot_tiny


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--hard-concrete", action="store_true", help="check under sampler='hard-concrete' instead")
    arguments = parser.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    if arguments.hard_concrete:
        conformance.MaskConfig = functools.partial(MaskConfig, sampler="hard-concrete")
    for architecture in sorted(SUPPORTED_ARCHITECTURES):
        try:
            bridge = boot_tiny(tiny_model(architecture), tempfile.mkdtemp())
        except Exception as error:  # noqa: BLE001 (the architecture table reports why a family does not boot)
            print(f"{architecture}\t-\tdoes not boot ({type(error).__name__})", flush=True)
            continue
        try:
            sampler = MaskSet.for_bridge(bridge, conformance.MaskConfig(granularity="head")).config.sampler
            failure = conformance.check_gradients(bridge, _tokens(bridge), "head")
            result = "PASS" if failure is None else f"FAIL {failure}"
        except GranularityNotApplicable as reason:
            sampler, result = "n/a", str(reason)
        except Exception as error:  # noqa: BLE001 (a family that fails in its own forward is a row, not a stop)
            sampler, result = "-", f"{type(error).__name__}: {' '.join(str(error).split())}"
        print(f"{architecture}\t{sampler}\t{result[:160]}", flush=True)


if __name__ == "__main__":
    main()
