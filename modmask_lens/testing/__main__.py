"""``python -m modmask_lens.testing PATH``: run the conformance kit on a local Hugging Face model folder; exits 1
when a check fails (a check that does not apply to the model, printed N/A, is no failure)."""

from __future__ import annotations

import argparse
import os
import sys

import torch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m modmask_lens.testing", description=__doc__)
    parser.add_argument("path", help="a local Hugging Face model folder (config, weights and tokenizer)")
    arguments = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(1)
    from modmask_lens.core.booting import boot_transformers
    from modmask_lens.testing.conformance import run_conformance

    bridge = boot_transformers(arguments.path, device="cpu")
    results = run_conformance(bridge)
    for result in results:
        print(result)
    return 0 if all(result.passed or not result.applies for result in results) else 1


if __name__ == "__main__":
    sys.exit(main())
