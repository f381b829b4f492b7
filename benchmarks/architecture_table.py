"""Which of TransformerLens's supported architectures boot offline from a tiny random config, and which pass the
conformance kit at each mask granularity; writes the table of docs/architectures.md.

For every entry of TransformerLens's ``SUPPORTED_ARCHITECTURES`` that names a ``transformers`` model class, a tiny
config (2 layers, d_model 32, 4 heads, 2 key/value heads where the family has them, vocabulary 64) is built from the
class's own config class, the model is saved with a word-level tokenizer and booted with
``TransformerBridge.boot_transformers`` (``modmask_lens.testing.tiny_models.boot_tiny``). A granularity passes when
every check of the kit that concerns it passes (:data:`GRANULARITY_CHECKS`).

Run: ``HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 python benchmarks/architecture_table.py --write docs/architectures.md``
(about 10 minutes on one thread); ``--only GPTJForCausalLM PhiForCausalLM`` checks a few.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import signal
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import transformers
from transformer_lens.factories.architecture_adapter_factory import SUPPORTED_ARCHITECTURES

from modmask_lens.adapters import adapter_for
from modmask_lens.testing import run_conformance
from modmask_lens.testing.conformance import applicable_checks, check_gradients
from modmask_lens.testing.tiny_models import boot_tiny

TINY_SIZES = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 8,
    "vocab_size": 64,
    "max_position_embeddings": 64,
    "ffn_dim": 64,
    "n_inner": 64,
    "rotary_dim": 4,
    "word_embed_proj_dim": 32,
    "encoder_layers": 2,
    "decoder_layers": 2,
    "encoder_attention_heads": 4,
    "decoder_attention_heads": 4,
    "encoder_ffn_dim": 64,
    "decoder_ffn_dim": 64,
    "num_layers": 2,
    "n_ctx": 64,
    "pad_token_id": 0,
    "bos_token_id": 1,
    "eos_token_id": 2,
}
"""Config fields set where the family's config has them (aliases such as GPT-2's ``n_embd`` follow
``attribute_map``)."""

GRANULARITY_CHECKS = {
    "weight": (
        "all_ones_bit_identical",
        "all_zeros_changes_logits",
        "every_target_matters",
        "compat_mode_bit_exact",
        "hf_export_reloads",
    ),
    "neuron": ("neuron_off_equals_zeroed_hook_post", "unit_slices_equal_tl_views"),
    "head": ("head_off_equals_zeroed_hook_z", "unit_slices_equal_tl_views"),
    "matrix": (),
}
"""The kit's checks that concern each granularity; every granularity also runs :func:`check_gradients`."""

SECONDS_PER_ARCHITECTURE = 120
MEMORY_LIMIT_BYTES = 6 * 2**30
"""Address-space limit of the run: families whose default config builds a huge model (vision towers) fail to boot
with a MemoryError instead of taking the machine."""


def tiny_model(architecture: str) -> torch.nn.Module:
    """A randomly initialised tiny model of ``architecture``, from its config class's defaults and
    :data:`TINY_SIZES`."""
    model_class = getattr(transformers, architecture, None)
    if model_class is None:
        raise LookupError("no transformers class of this name (remote code or another library)")
    defaults = model_class.config_class()
    settable = {name for name in TINY_SIZES if hasattr(defaults, name)}
    read_only = {name for name in settable if isinstance(getattr(type(defaults), name, None), property)}
    sizes = {name: TINY_SIZES[name] for name in settable - read_only}  # e.g. Falcon derives head_dim
    return model_class(model_class.config_class(**sizes))


def row(architecture: str) -> dict[str, str]:
    """One table row: whether the family boots, its adapter, and PASS/FAIL per granularity with the first failure."""
    try:
        bridge = boot_tiny(tiny_model(architecture), tempfile.mkdtemp())
    except Exception as error:  # noqa: BLE001 (any failure to build or boot is what the table reports)
        return {"boots": "no", "note": f"{type(error).__name__}: {' '.join(str(error).split())[:140]}"}
    present = [name for name in applicable_checks(bridge) if name != "gradients_reach_only_mask_logits"]
    results = {result.name: result for result in run_conformance(bridge, checks=present)}
    cells = {"boots": "yes", "adapter": adapter_for(bridge).name}
    failures = []
    for granularity, names in GRANULARITY_CHECKS.items():
        failed = [str(results[name]) for name in names if name in present and not results[name].passed]
        gradient_failure = _guarded(
            lambda granularity=granularity: check_gradients(bridge, _tokens(bridge), granularity)
        )
        if gradient_failure:
            failed.append(f"FAIL {architecture} gradients: {gradient_failure}")
        cells[granularity] = "FAIL" if failed else "PASS"
        failures.extend(failed)
    cells["note"] = failures[0][:200] if failures else ""
    return cells


def _tokens(bridge) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, bridge.cfg.d_vocab, (2, min(8, bridge.cfg.n_ctx)), generator=generator)


def _guarded(check: Callable[[], str | None]) -> str | None:
    try:
        return check()
    except Exception as error:  # noqa: BLE001 (a crash is a failed check)
        return f"raised {type(error).__name__}: {' '.join(str(error).split())[:140]}"


class _TimedOut(Exception):
    pass


def _on_alarm(signum, frame):
    raise _TimedOut(f"took over {SECONDS_PER_ARCHITECTURE} s")


def markdown(rows: dict[str, dict[str, str]]) -> str:
    header = "| architecture | boots offline | adapter | weight | neuron | head | matrix | first failure or reason |"
    lines = [header, "|---|---|---|---|---|---|---|---|"]
    for architecture, cells in rows.items():
        note = cells.get("note", "").replace("|", "/")
        lines.append(
            f"| `{architecture}` | {cells['boots']} | {cells.get('adapter', '')} | "
            + " | ".join(cells.get(granularity, "") for granularity in GRANULARITY_CHECKS)
            + f" | {note} |"
        )
    booted = [cells for cells in rows.values() if cells["boots"] == "yes"]
    passing = [cells for cells in booted if all(cells[g] == "PASS" for g in GRANULARITY_CHECKS)]
    summary = (
        f"{len(rows)} architectures in TransformerLens's list; {len(booted)} boot offline from a tiny config; "
        f"{len(passing)} of those pass the kit at all four granularities."
    )
    return summary + "\n\n" + "\n".join(lines) + "\n"


def _append(path: Path | None, architecture: str, cells: dict[str, str]) -> None:
    if path is not None:
        with path.open("a", encoding="utf-8") as file:
            file.write(json.dumps({architecture: cells}) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="*", help="architectures to check (default: all of TransformerLens's list)")
    parser.add_argument("--write", type=Path, help="replace the table between the markers of this markdown file")
    parser.add_argument(
        "--rows",
        type=Path,
        help="a JSONL file: one row per architecture, appended as it is checked and reused by a rerun with the same "
        "file (a run killed by a model too large for this machine resumes after it)",
    )
    arguments = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    transformers.utils.logging.disable_progress_bar()
    signal.signal(signal.SIGALRM, _on_alarm)
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT_BYTES, MEMORY_LIMIT_BYTES))  # MemoryError, not the OOM killer
    done = {}
    if arguments.rows and arguments.rows.exists():
        for line in arguments.rows.read_text(encoding="utf-8").splitlines():
            done.update(json.loads(line))
    rows = {}
    for architecture in arguments.only or sorted(SUPPORTED_ARCHITECTURES):
        if architecture in done:
            rows[architecture] = done[architecture]
            continue
        _append(arguments.rows, architecture, {"boots": "no", "note": "crashed the process"})  # replaced if it ends
        signal.alarm(SECONDS_PER_ARCHITECTURE)
        try:
            rows[architecture] = row(architecture)
        except (_TimedOut, MemoryError) as error:
            rows[architecture] = {"boots": "no", "note": f"{type(error).__name__}: {error}"}
        finally:
            signal.alarm(0)
        cells = rows[architecture]
        _append(arguments.rows, architecture, cells)
        print(
            architecture, *(cells.get(key, "") for key in ("boots", "adapter", *GRANULARITY_CHECKS, "note")), flush=True
        )
    table = markdown(rows)
    print(table)
    if arguments.write:
        text = arguments.write.read_text(encoding="utf-8")
        start, end = "<!-- table: benchmarks/architecture_table.py -->", "<!-- end of table -->"
        before, _, rest = text.partition(start)
        _, _, after = rest.partition(end)
        arguments.write.write_text(f"{before}{start}\n{table}{end}{after}", encoding="utf-8")


if __name__ == "__main__":
    main()
