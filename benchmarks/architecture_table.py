"""Which of TransformerLens's supported architectures boot offline from a tiny random config, and which pass the
conformance kit at each mask granularity; writes the table of docs/architectures.md.

For every entry of TransformerLens's ``SUPPORTED_ARCHITECTURES`` that names a ``transformers`` model class, a tiny
config (2 layers, d_model 32, 4 heads, 2 key/value heads where the family has them and its real checkpoints use
them (:data:`TINY_OVERRIDES`), vocabulary 64) is built from the class's own config class, the model is saved with a
word-level tokenizer and booted with ``TransformerBridge.boot_transformers`` (through
:func:`modmask_lens.core.booting.boot_transformers`, which refuses TransformerLens's on-the-fly torchvision install)
(``modmask_lens.testing.tiny_models.save_tiny``, :func:`boot_tiny_row`). A granularity passes when
every check of the kit that concerns it passes (:data:`GRANULARITY_CHECKS`); a check that has no meaning for the model
(compatibility mode where TransformerLens refuses it or fails without a mask) is shown in the note as N/A and
neither passes nor fails it.
Audio encoders run on a waveform long enough for their feature extractor, vision encoders on an image and the Audio
Spectrogram Transformer on a spectrogram of the shape their config fixes
(:func:`modmask_lens.testing.conformance.conformance_inputs`); a model without a vocabulary is saved without a
tokenizer.

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
from transformer_lens.model_bridge import TransformerBridge
from transformers.integrations.heterogeneity.configuration_utils import AmbiguousGlobalPerLayerAttributeError

from modmask_lens.adapters import GranularityNotApplicable, adapter_for
from modmask_lens.core.booting import boot_transformers
from modmask_lens.masks.config import MaskConfig
from modmask_lens.masks.mask_set import MaskSet
from modmask_lens.testing import run_conformance
from modmask_lens.testing.conformance import applicable_checks, check_gradients, conformance_inputs
from modmask_lens.testing.tiny_models import save_tiny

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
    "depth": 2,
    "num_heads": 4,
    "embed_dim": 32,
    "out_hidden_size": 32,
    "projection_dim": 32,
    "attention_window": 4,
    "decoder_start_token_id": 2,
    "pad_token_id": 0,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "conv_dim": (32,) * 7,
}
"""Config fields set where the family's config has them (aliases such as GPT-2's ``n_embd`` follow
``attribute_map``; ``conv_dim``: the channels of an audio encoder's 7 feature-extractor convolutions, 512 each by
default)."""

_LATENT_ATTENTION_SIZES = {
    "num_key_value_heads": 4,
    "head_dim": 4,
    "kv_lora_rank": 16,
    "q_lora_rank": 24,
    "qk_nope_head_dim": 8,
    "qk_rope_head_dim": 4,
    "v_head_dim": 8,
    "n_routed_experts": 4,
    "n_shared_experts": 1,
    "num_experts_per_tok": 2,
    "moe_intermediate_size": 16,
    "first_k_dense_replace": 1,
    "n_group": 2,
    "topk_group": 1,
    "index_n_heads": 2,
    "index_head_dim": 8,
    "index_topk": 4,
}
"""Multi-head latent attention (DeepSeek V2/V3 and the families built on it): one key/value head per query head, as
in every released checkpoint (the generic 2 key/value heads break its attention), ``head_dim`` equal to
``qk_rope_head_dim`` as transformers derives it (DeepSeek V3 and Youtu keep a ``head_dim`` passed in, and their
rotary tables then mismatch the rotary half of each query), small latent ranks, 4 routed
experts with 2 per token (DeepSeek V2's default of ``None`` per token cannot run), layer 0 dense and layer 1 routed,
and a sparse-attention indexer that keeps 4 of the 8 tokens."""

_HYBRID_SIZES = {
    "layer_types": ["linear_attention", "full_attention"],
    "linear_key_head_dim": 8,
    "linear_value_head_dim": 8,
    "linear_num_key_heads": 2,
    "linear_num_value_heads": 4,
    "num_experts": 4,
    "num_experts_per_tok": 2,
    "moe_intermediate_size": 16,
    "shared_expert_intermediate_size": 16,
}
"""Qwen3-Next and Qwen3.5: one linear-attention layer, then one full-attention layer (their default puts attention
in every 4th layer, so two layers had none)."""

_TINY_IMAGE = {"image_size": 32, "patch_size": 16}
"""ViT and DeiT: 32 by 32 pixels in patches of 16, 4 patches (default 224 pixels: 196 patches)."""

TINY_OVERRIDES: dict[str, dict[str, object]] = {
    "DeepseekV2ForCausalLM": _LATENT_ATTENTION_SIZES,
    "DeepseekV3ForCausalLM": _LATENT_ATTENTION_SIZES,
    "GlmMoeDsaForCausalLM": _LATENT_ATTENTION_SIZES,
    "Glm4MoeLiteForCausalLM": _LATENT_ATTENTION_SIZES,
    "YoutuForCausalLM": _LATENT_ATTENTION_SIZES,
    "Qwen3NextForCausalLM": _HYBRID_SIZES,
    "Qwen3_5ForCausalLM": _HYBRID_SIZES,
    "Qwen3_5MoeForCausalLM": _HYBRID_SIZES,
    "JambaForCausalLM": {
        "attn_layer_period": 2,
        "attn_layer_offset": 0,
        "expert_layer_period": 2,
        "expert_layer_offset": 1,
        "num_experts": 4,
    },
    "RecurrentGemmaForCausalLM": {"block_types": ["recurrent", "attention"]},
    "Mamba2ForCausalLM": {"num_heads": 8, "n_groups": 1, "state_size": 16, "chunk_size": 16},
    "BambaForCausalLM": {
        "attn_layer_indices": [1],
        "mamba_n_heads": 8,
        "mamba_d_head": 8,
        "mamba_d_state": 16,
        "mamba_chunk_size": 16,
    },
    "GraniteMoeHybridForCausalLM": {
        "layer_types": ["linear_attention", "full_attention"],
        "mamba_n_heads": 8,
        "mamba_d_state": 16,
        "mamba_chunk_size": 16,
        "shared_intermediate_size": 64,
        "position_embedding_type": "nope",
    },
    "Lfm2MoeForCausalLM": {
        "layer_types": ["conv", "full_attention"],
        "num_dense_layers": 1,
        "num_experts": 4,
        "num_experts_per_tok": 2,
        "moe_intermediate_size": 16,
    },
    "DeiTModel": _TINY_IMAGE,
    "DeiTForImageClassification": _TINY_IMAGE,
    "ViTModel": _TINY_IMAGE,
    "ViTForImageClassification": _TINY_IMAGE,
    "ASTForAudioClassification": {"max_length": 36, "num_mel_bins": 26},
    "Zamba2ForCausalLM": {
        "num_hidden_layers": 3,
        "layers_block_type": ["linear_attention", "hybrid", "hybrid"],
        "use_shared_attention_adapter": True,
        "adapter_rank": 8,
        "head_dim": 16,
        "num_key_value_heads": 4,
        "mamba_d_state": 16,
        "chunk_size": 16,
    },
    "SwitchTransformersForConditionalGeneration": {
        "d_ff": 64,
        "d_kv": 8,
        "num_decoder_layers": 2,
        "num_experts": 4,
        "num_sparse_encoder_layers": 1,
        "num_sparse_decoder_layers": 1,
    },
    "Gemma4ForCausalLM": {"vocab_size_per_layer_input": 64, "hidden_size_per_layer_input": 8},
    "Emu3ForConditionalGeneration": {
        "vocabulary_map": {"<image>": 63, "<|extra_200|>": 62}
        | {f"<|visual token {index:06d}|>": 46 + index for index in range(16)},
        "vq_config": {"codebook_size": 16, "base_channels": 32, "channel_multiplier": [1, 1, 1, 1]},
    },
    "Florence2ForConditionalGeneration": {
        "image_token_id": 63,
        "vision_config": {
            "depths": [1, 1, 1, 1],
            "embed_dim": [8, 8, 16, 32],
            "num_heads": [1, 1, 2, 4],
            "num_groups": [1, 1, 2, 4],
            "window_size": 2,
        },
    },
    "GPTNeoForCausalLM": {"attention_types": [[["global", "local"], 1]], "window_size": 4},
    "PhiForCausalLM": {"num_key_value_heads": None},
    "FalconH1ForCausalLM": {
        "mamba_n_heads": 4,
        "mamba_d_head": 8,
        "mamba_d_ssm": 32,
        "mamba_d_state": 16,
        "mamba_chunk_size": 16,
    },
}
"""Per-architecture fields over :data:`TINY_SIZES` (set where the config has them) for families whose released
models interleave layer kinds or tie sizes together that the generic sizes break: without them the tiny model
failed in its own forward pass. Jamba's default puts attention in layer 4 of every 8 and RecurrentGemma's in layer
2 of every 3 (from 0), so layers 0 and 1 held none and ``transformers`` cannot start their cache; here layer 0 is
Jamba's attention layer (dense MLP) and layer 1 its Mamba layer (experts), as in the released Jamba. ``None``
stands for the family's default:

- Phi (phi-1, phi-1.5, phi-2) has no grouped-query attention (as many key/value heads as query heads); with 2
  key/value heads, TransformerLens's Phi weight conversions, which split k and v into ``n_heads`` heads, fail in
  compatibility mode, on a layout no real checkpoint has.
- Falcon-H1's default Mamba-2 mixer is not tiny (128 heads, state 256, chunks of 256 positions: 64 MiB intermediates
  per forward on the 8-token inputs), and under :data:`MEMORY_LIMIT_BYTES` its head and neuron checks failed with
  "can't allocate memory"; 4 heads of 8, state 16, chunks of 16 (``mamba_d_ssm`` = heads x head size, as its
  checkpoints have it).
- GPT-Neo's config rejects an ``attention_types`` that does not expand to ``num_layers`` (default: 24 layers); one
  global then one local layer, as the released models alternate, with a local window of 4 (256 in the released
  models) so the 8-token inputs reach past it.
- Mamba-2, Bamba and Zamba2 tie the Mamba heads to ``expand * hidden_size`` (64 channels: 8 heads of 8) and take
  one entry per layer in their layer list: a Mamba layer, then an attention (Zamba2: shared-attention hybrid) layer,
  as their released models interleave them; state 16 and chunks of 16 keep the mixer tiny, as for Falcon-H1.
  Zamba2's attention heads are ``2 * hidden_size / num_attention_heads`` wide (16), as its config derives them,
  over the doubled width its shared block reads, with no grouping, as released. Zamba2 has a third layer, a second
  hybrid one, so that its shared transformer block runs at two depths (as in every released model, which reuses it
  every few layers) and the check that one mask applies at each use means something; its per-layer adapters on the
  shared attention are on (``use_shared_attention_adapter``) with rank 8 (default 128, wider than the tiny model).
- Granite 4.0 hybrid (GraniteMoeHybrid) ties its Mamba heads to ``mamba_expand * hidden_size`` as Bamba does
  (default 128 heads against 64 channels: "mamba_n_heads must divide mamba_expand * hidden_size"), and its default
  ``layer_types`` makes every layer Mamba; here a Mamba layer then an attention layer, state 16, chunks of 16, and a
  shared MLP of 64 (default 1024). Its position embedding is ``"nope"``, as in the released Granite 4.0-H models:
  at the config's default ``None`` transformers builds no rotary embedding while TransformerLens, which reads a
  missing value as ``"rope"``, maps one, and the bridge failed on its first forward pass.
- LFM2-MoE's config leaves ``layer_types`` at ``None`` (``'NoneType' object is not subscriptable``: its model reads
  one entry per layer); here a short-convolution layer then an attention layer, as the released LFM2-8B-A1B
  interleaves them, layer 0 dense and layer 1 routed (default: the first 2 dense, so the tiny model had no experts),
  and 4 experts of 16 with 2 per token (default 32 of 1792 with 4).
- ViT and DeiT read an image of the size their position table fixes (:data:`_TINY_IMAGE`), and the Audio
  Spectrogram Transformer a spectrogram of ``max_length`` frames by ``num_mel_bins`` in patches of 16 every 10
  (default 1,024 by 128: 1,212 patches); 36 by 26 here, 3 by 2 patches.
- Gemma 4's per-layer input embeddings default to 262,144 tokens by 256 (134 million parameters); 64 by 8 here.
- Emu3's model reads the tokenizer's ``vocabulary_map`` when built (default ``None`` fails): 16 visual tokens and its
  end-of-line and image tokens; its VQ-VAE (a nested config, whose overrides are a dict under its field name) has 16
  codes and 32 channels at every level (243 million parameters at the defaults).
- Florence-2's DaViT vision tower takes its sizes per stage (lists; the generic scalars are refused): 4 stages of one
  block, widths 8 to 32; its image token must lie in the 64-token vocabulary."""

TINY_INIT_ARGUMENTS: dict[str, dict[str, object]] = {"Gemma4TextConfig": {"global_head_dim": 16}}
"""Per config class, constructor arguments that the config consumes without keeping them as a field (so
:func:`tiny_config` cannot find them on the defaults): Gemma 4's full-attention layers take ``global_head_dim``
(default 512, twice the sliding layers' 256 in the released models; here 16, twice the tiny 8)."""

PYTORCH_BIN_CHECKPOINTS = {"SwitchTransformersForConditionalGeneration"}
"""Families saved as ``pytorch_model.bin``: the released google/switch-base-* repositories ship only that file, so
TransformerLens's Switch Transformers adapter loads with ``use_safetensors=False`` and found no weights in a
checkpoint saved as ``model.safetensors`` (the row's "Error no file named ... pytorch_model.bin")."""

GRANULARITY_CHECKS = {
    "weight": (
        "all_ones_bit_identical",
        "all_zeros_changes_logits",
        "every_target_matters",
        "compat_mode_bit_exact",
        "hf_export_reloads",
    ),
    "neuron": (
        "neuron_off_equals_zeroed_hook_post",
        "unit_slices_equal_tl_views",
        "output_gates_equal_weight_products",
    ),
    "head": ("head_off_equals_zeroed_hook_z", "unit_slices_equal_tl_views", "output_gates_equal_weight_products"),
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
    model = model_class(tiny_config(model_class.config_class, TINY_OVERRIDES.get(architecture, {})))
    _fill_hash_routing_tables(model)
    return model


def _fill_hash_routing_tables(model: torch.nn.Module) -> None:
    """Give every hash router (DeepSeek V4's first MoE layers) a table of distinct experts per token, as a released
    checkpoint stores it. A freshly built model's ``tid2eid`` buffer is all zeros: every token goes to expert 0 in
    each of its ``top_k`` slots, the normalised routing weights are then ``1 / top_k`` whatever the router computes,
    and the router's weight is never read (the kit's ``every_target_matters`` rightly failed on it)."""
    generator = torch.Generator().manual_seed(0)
    for module in model.modules():
        table = getattr(module, "tid2eid", None)
        if isinstance(table, torch.Tensor):
            n_tokens, top_k = table.shape
            experts = torch.rand(n_tokens, module.num_experts, generator=generator).argsort(dim=1)[:, :top_k]
            table.copy_(experts)


def tiny_config(
    config_class: type[transformers.PretrainedConfig], overrides: dict[str, object] | None = None
) -> transformers.PretrainedConfig:
    """``config_class``'s defaults with :data:`TINY_SIZES`, then ``overrides``, where it has the field, and the same
    for each nested config (a multimodal model's ``text_config`` and ``vision_config``): without that, their default
    sizes make a multimodal model billions of parameters, which the run's memory limit refuses."""
    defaults = config_class()
    wanted = TINY_SIZES | (overrides or {})
    settable = {name for name in wanted if _has_field(defaults, name)}
    read_only = {name for name in settable if isinstance(getattr(type(defaults), name, None), property)}
    sizes: dict[str, object] = {name: wanted[name] for name in settable - read_only}  # Falcon derives head_dim
    for name, value in vars(defaults).items():
        if isinstance(value, transformers.PretrainedConfig):
            sizes[name] = tiny_config(type(value), (overrides or {}).get(name)).to_dict()
    return config_class(**sizes, **TINY_INIT_ARGUMENTS.get(config_class.__name__, {}))


def _has_field(config: transformers.PretrainedConfig, name: str) -> bool:
    """Whether ``config`` has the field ``name`` (an alias of ``attribute_map`` counts). A heterogeneous config
    (Gemma 4) refuses to read a per-layer field such as ``head_dim`` globally, which still means it has it."""
    try:
        getattr(config, name)
    except AmbiguousGlobalPerLayerAttributeError:
        return True
    except AttributeError:
        return False
    return True


def boot_tiny_row(architecture: str, directory: str) -> TransformerBridge:
    """The tiny model of ``architecture`` saved to ``directory`` and booted; a family of
    :data:`PYTORCH_BIN_CHECKPOINTS` gets its weights as ``pytorch_model.bin`` (a pickle, written here and never by
    the package, which reads and writes none)."""
    model = tiny_model(architecture)
    save_tiny(model, directory)
    if architecture in PYTORCH_BIN_CHECKPOINTS:
        torch.save(model.state_dict(), Path(directory) / "pytorch_model.bin")
        (Path(directory) / "model.safetensors").unlink()
    return boot_transformers(directory, device="cpu")  # never pip-installs torchvision (modmask_lens.core.booting)


def row(architecture: str) -> dict[str, str]:
    """One table row: whether the family boots, its adapter, and PASS/FAIL per granularity with the first failure."""
    try:
        bridge = boot_tiny_row(architecture, tempfile.mkdtemp())
    except Exception as error:  # noqa: BLE001 (any failure to build or boot is what the table reports)
        return {"boots": "no", "note": f"{type(error).__name__}: {' '.join(str(error).split())[:140]}"}
    present = [name for name in applicable_checks(bridge) if name != "gradients_reach_only_mask_logits"]
    results = {result.name: result for result in run_conformance(bridge, checks=present)}
    cells = {"boots": "yes", "adapter": adapter_for(bridge).name}
    failures, inapplicable = [], []
    for granularity, names in GRANULARITY_CHECKS.items():
        reason = _inapplicable(bridge, granularity)
        if reason is not None:
            cells[granularity] = "n/a"
            inapplicable.append(reason)
            continue
        checked = [results[name] for name in names if name in present]
        failed = [str(result) for result in checked if result.applies and not result.passed]
        inapplicable.extend(str(result) for result in checked if not result.applies)
        gradient_failure = _guarded(
            lambda granularity=granularity: check_gradients(bridge, conformance_inputs(bridge), granularity)
        )
        if gradient_failure:
            failed.append(f"FAIL {architecture} gradients: {gradient_failure}")
        cells[granularity] = "FAIL" if failed else "PASS"
        failures.extend(failed)
    cells["note"] = failures[0][:200] if failures else inapplicable[0][:200] if inapplicable else ""
    cells["checks_not_applicable"] = ", ".join(sorted({name for name in present if not results[name].applies}))
    return cells


def _inapplicable(bridge, granularity: str) -> str | None:
    """The adapter's reason why ``granularity`` has no meaning for this model, or ``None``."""
    try:
        MaskSet.for_bridge(bridge, MaskConfig(granularity=granularity))
    except GranularityNotApplicable as error:
        return f"n/a {granularity}: {' '.join(str(error).split())}"
    except Exception:  # noqa: BLE001 (any other refusal is a failure, which the checks report)
        return None
    return None


def _guarded(check: Callable[[], str | None]) -> str | None:
    try:
        return check()
    except Exception as error:  # noqa: BLE001 (a crash is a failed check)
        return f"raised {type(error).__name__}: {' '.join(str(error).split())[:140]}"


class _TimedOut(BaseException):
    """A row over its time; a ``BaseException``, so that the kit's ``except Exception`` (which reports a raising check
    as that check's failure and goes on) lets it through to :func:`main`."""


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
    applicable = [cells for cells in booted if all(cells[g] in ("PASS", "n/a") for g in GRANULARITY_CHECKS)]
    with_checks_not_applicable = [cells for cells in passing if cells.get("checks_not_applicable")]
    summary = (
        f"{len(rows)} architectures in TransformerLens's list; {len(booted)} boot offline from a tiny config; "
        f"{len(passing)} of those pass the kit at all four granularities ({len(with_checks_not_applicable)} of them "
        "on every check that applies to them: a check shown N/A in the note, compatibility mode that TransformerLens "
        f"refuses or fails unmasked, is not counted), and {len(applicable) - len(passing)} more at every granularity "
        "that applies to them (n/a: the model has no attention or no MLP)."
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
