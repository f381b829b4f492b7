"""Compile the tracr ground-truth programs and convert each one into TransformerLens-native weights.

Run it in a venv that has tracr (``pip install -e ".[tracr]"``); the package never imports this module::

    .venv-tracr/bin/python -m experiments.groundtruth.tracr_build [--out DIR] [--programs reverse hist]
    .venv-tracr/bin/python -m experiments.groundtruth.tracr_build --out DIR --program NAME=MODULE:FUNCTION \
        --vocab a b c --max-seq-len 5 [--distinct-tokens]

For each program it compiles the RASP program (Weiss et al. 2021) with tracr (Lindner et al. 2023), copies the
weights into a ``TransformerBridge.boot_native`` config, checks that the bridge reproduces tracr's outputs on every
input, reads the used heads, MLPs and neurons off the compiled weights, checks them by ablation, and writes the
folder that :mod:`modmask_lens.groundtruth.tracr_cases` loads.

The conversion is exact, with one addition:

- Residual stream: one ``d_model`` dimension per tracr basis label, in tracr's order. No norms (tracr has none).
- Block ``l`` is tracr layer ``l``: its attention, then its MLP (tracr leaves the half it does not use zero). Heads
  keep tracr's order; ReLU MLPs; ``W = w.T`` for every ``hk.Linear`` weight ``w``; every bias is zero, as in tracr.
- Embeddings: ``W_E`` rows are tracr's token rows (token and ``one`` directions), ``W_pos`` rows tracr's position rows
  (position 0, the BOS, has none). Unembedding: the projection onto the output space, one logit per output value;
  tracr's argmax over it is the output.
- Attention: tracr scales scores by ``1 / sqrt(key_size)`` and bakes its softmax coldness into ``W_QK``; the bridge
  uses ``attn_scale = sqrt(key_size)`` and bidirectional attention, as tracr compiles by default.
- The addition: ``d_head = key_size + 1``. In the extra dimension of every used head the query reads the ``one``
  direction and the key reads ``-PAD_SCORE * attn_scale`` from the ``tokens:PAD`` direction, so every query scores a PAD
  key at ``-PAD_SCORE``: softmax gives it weight exactly 0. That lets an input end in PAD, which the next-token
  scoring of ``SubtaskData`` needs to score the last real position; on every other key the extra term is 0.
"""

from __future__ import annotations

import argparse
import importlib
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import torch
from torch import Tensor, nn
from tracr.compiler import compiling, lib
from tracr.craft import bases
from tracr.rasp import rasp

from modmask_lens.core.data import SubtaskData
from modmask_lens.core.encoding import IGNORE_INDEX
from modmask_lens.groundtruth.tracr_cases import (
    TRACR_DIR,
    boot_tracr_bridge,
    check_defined_outputs,
    subtask_data,
    truth_mask,
    truth_units,
    write_tracr_program,
)
from modmask_lens.masks.apply import masked
from modmask_lens.masks.evaluation import exact_match

PAD, BOS = "PAD", "BOS"
PAD_ID, BOS_ID = 0, 1
"""Input ids of the special tokens; program tokens follow from id 2 in sorted order."""
PAD_SCORE = 1e4
"""Attention score every query gives a PAD key, negated: exp(-1e4) is 0 in float32."""
RESIDUAL_TOLERANCE = 1e-3
"""Largest difference allowed between tracr's and the bridge's final residual stream (both float32)."""


@dataclass(frozen=True)
class TracrProgram:
    """A RASP program and the inputs it is compiled for.

    Attributes:
        name: folder and subtask name.
        description: what the program computes, for the card.
        make: builds the RASP output SOp (called after tracr is imported).
        vocab: input tokens.
        max_seq_len: longest input (without BOS).
        distinct_tokens: only inputs without repeated tokens (``sort_unique`` needs unique keys).
    """

    name: str
    description: str
    make: Callable[[], rasp.SOp]
    vocab: tuple
    max_seq_len: int
    distinct_tokens: bool = False

    def inputs(self) -> list[tuple]:
        """Every input of length 1 .. max_seq_len, shortest first."""
        inputs = []
        for length in range(1, self.max_seq_len + 1):
            if self.distinct_tokens:
                inputs += list(itertools.permutations(self.vocab, length))
            else:
                inputs += list(itertools.product(self.vocab, repeat=length))
        return inputs


PROGRAMS = {
    program.name: program
    for program in [
        TracrProgram(
            "reverse",
            "reverse the input: out[i] = tokens[length - 1 - i] (tracr lib.make_reverse)",
            lambda: lib.make_reverse(rasp.tokens).named("reverse"),
            ("a", "b", "c"),
            5,
        ),
        TracrProgram(
            "hist",
            "histogram: out[i] = number of positions holding tokens[i] (tracr lib.make_hist)",
            lambda: lib.make_hist().named("hist"),
            ("a", "b", "c"),
            5,
        ),
        TracrProgram(
            "sort_unique",
            "sort distinct tokens ascending (tracr lib.make_sort_unique(tokens, tokens))",
            lambda: lib.make_sort_unique(rasp.tokens, rasp.tokens).named("sort_unique"),
            (1, 2, 3, 4, 5),
            5,
            distinct_tokens=True,
        ),
        TracrProgram(
            "reverse_hist",
            "the histogram, reversed: out[i] = hist[length - 1 - i] "
            "(lib.make_reverse(lib.make_hist())); two heads in layer 0, one used head of two in layer 3",
            lambda: lib.make_reverse(lib.make_hist()).named("reverse_hist"),
            ("a", "b", "c"),
            5,
        ),
    ]
}


@dataclass
class Conversion:
    """A compiled program as bridge weights.

    Attributes:
        tl_config: ``boot_native`` config.
        weights: ``bridge.state_dict()`` key -> tensor, every tensor the bridge reads.
        input_tokens: input id -> token.
        output_tokens: output id -> value.
        residual_labels: ``d_model`` index -> tracr basis label.
        truth: ``heads`` ([layer, head] pairs), ``mlp_layers`` and ``neurons`` (layer -> indices) with nonzero weights.
    """

    tl_config: dict
    weights: dict[str, Tensor]
    input_tokens: list
    output_tokens: list
    residual_labels: list[str]
    truth: dict


def convert(assembled, program: TracrProgram, output_label: str) -> Conversion:
    """Copy a tracr ``AssembledTransformerModel`` into bridge weights (see the module docstring)."""
    config = assembled.model_config
    params = {
        name: {key: np.asarray(value, dtype=np.float32) for key, value in group.items()}
        for name, group in assembled.params.items()
    }
    nonzero_biases = [f"{name}/b" for name, group in params.items() if "b" in group and np.any(group["b"])]
    if nonzero_biases:
        raise NotImplementedError(
            f"{program.name}: tracr biases {nonzero_biases} are nonzero; the converter assumes tracr's zero biases"
        )
    labels = list(assembled.residual_labels)
    if not hasattr(assembled.output_encoder, "encoding_map"):
        raise NotImplementedError(
            f"{program.name}: the program's output is numerical ({type(assembled.output_encoder).__name__}); only "
            "categorical outputs, scored by exact match, convert: end the program in a categorical rasp.Map"
        )
    d_model, n_heads, key_size = len(labels), config.num_heads, config.key_size
    d_head, attn_scale = key_size + 1, math.sqrt(key_size)
    input_tokens = [PAD, BOS, *sorted(program.vocab)]
    output_tokens = sorted(assembled.output_encoder.encoding_map, key=assembled.output_encoder.encoding_map.get)
    tl_config = {
        "n_layers": config.num_layers,
        "d_model": d_model,
        "n_heads": n_heads,
        "d_head": d_head,
        "d_mlp": config.mlp_hidden_size,
        "n_ctx": program.max_seq_len + 2,
        "d_vocab": len(input_tokens),
        "d_vocab_out": len(output_tokens),
        "act_fn": "relu",
        "normalization_type": None,
        "attention_dir": "bidirectional",
        "positional_embedding_type": "standard",
        # tracr divides by sqrt(key_size); at key_size 1 that is no scaling, which TransformerLens takes only as
        # use_attn_scale=False (it refuses attn_scale=1 with d_head > 1)
        "use_attn_scale": key_size > 1,
        "attn_scale": attn_scale if key_size > 1 else -1.0,
        "seed": 0,
    }

    token_rows = [assembled.input_encoder.encoding_map[token] for token in input_tokens]
    position_rows = params["pos_embed"]["embeddings"]
    weights = {
        "embed.weight": params["token_embed"]["embeddings"][token_rows],
        "pos_embed.weight": np.concatenate([position_rows, np.zeros((1, d_model), np.float32)]),
    }
    truth = {"heads": [], "mlp_layers": [], "neurons": {}}
    for layer in range(config.num_layers):
        attention = {
            role: params[f"transformer/layer_{layer}/attn/{name}"]["w"]
            for role, name in (("q", "query"), ("k", "key"), ("v", "value"), ("o", "linear"))
        }
        per_head = {
            role: attention[role].reshape(d_model, n_heads, key_size).transpose(1, 2, 0) for role in ("q", "k", "v")
        }  # [head, key_size, d_model] each
        per_head["o"] = attention["o"].reshape(n_heads, key_size, d_model).transpose(2, 0, 1)  # [d_model, head, k]
        used_heads = [
            head
            for head in range(n_heads)
            if any(np.any(per_head[role][head]) for role in ("q", "k", "v")) or np.any(per_head["o"][:, head])
        ]
        padded = {role: np.zeros((n_heads, d_head, d_model), np.float32) for role in ("q", "k", "v")}
        for role in ("q", "k", "v"):
            padded[role][:, :key_size] = per_head[role]
        padded_o = np.zeros((d_model, n_heads, d_head), np.float32)
        padded_o[:, :, :key_size] = per_head["o"]
        if used_heads:
            _check_pad_directions(labels, program)
        for head in used_heads:
            padded["q"][head, key_size, labels.index("one")] = 1.0
            padded["k"][head, key_size, labels.index(f"tokens:{PAD}")] = -PAD_SCORE * attn_scale
        for role in ("q", "k", "v"):
            weights[f"blocks.{layer}.attn.{role}.weight"] = padded[role].reshape(n_heads * d_head, d_model)
            weights[f"blocks.{layer}.attn.{role}.bias"] = np.zeros(n_heads * d_head, np.float32)
        weights[f"blocks.{layer}.attn.o.weight"] = padded_o.reshape(d_model, n_heads * d_head)
        weights[f"blocks.{layer}.attn.o.bias"] = np.zeros(d_model, np.float32)

        mlp_in = params[f"transformer/layer_{layer}/mlp/linear_1"]["w"].T  # [d_mlp, d_model]
        mlp_out = params[f"transformer/layer_{layer}/mlp/linear_2"]["w"].T  # [d_model, d_mlp]
        weights[f"blocks.{layer}.mlp.in.weight"] = mlp_in
        weights[f"blocks.{layer}.mlp.in.bias"] = np.zeros(mlp_in.shape[0], np.float32)
        weights[f"blocks.{layer}.mlp.out.weight"] = mlp_out
        weights[f"blocks.{layer}.mlp.out.bias"] = np.zeros(d_model, np.float32)

        truth["heads"] += [[layer, head] for head in used_heads]
        neurons = [int(neuron) for neuron in np.flatnonzero(np.any(mlp_in, axis=1) & np.any(mlp_out, axis=0))]
        if neurons:
            truth["mlp_layers"].append(layer)
            truth["neurons"][str(layer)] = neurons

    unembed = np.zeros((len(output_tokens), d_model), np.float32)
    for output_id, value in enumerate(output_tokens):
        unembed[output_id, labels.index(str(bases.BasisDirection(output_label, value)))] = 1.0
    weights["unembed.weight"] = unembed
    tensors = {key: torch.from_numpy(np.ascontiguousarray(value)) for key, value in weights.items()}
    return Conversion(tl_config, tensors, input_tokens, output_tokens, labels, truth)


def _check_pad_directions(labels: list[str], program: TracrProgram) -> None:
    """The PAD mask of a used head reads the residual stream's ``one`` and ``tokens:PAD`` directions; refuse a
    program whose stream lacks either (a program with no used head needs no PAD mask)."""
    for needed in ("one", f"tokens:{PAD}"):
        if needed not in labels:
            raise NotImplementedError(
                f"{program.name}: the residual stream has no {needed!r} direction, which its heads' PAD mask reads"
            )


@dataclass
class TracrReference:
    """tracr's outputs on every input, laid out as the bridge sees them (``BOS x_1 .. x_n PAD ..``).

    Attributes:
        input_ids: ``[example, n_ctx]`` input ids.
        output_ids: ``[example, n_ctx]`` tracr's output id at positions ``1 .. n``, ``IGNORE_INDEX`` elsewhere.
        output_logits: ``[example, n_ctx, d_vocab_out]`` tracr's output-space values (zero where no output).
        residual: ``[example, n_ctx, d_model]`` tracr's final residual stream at ``0 .. n`` (zero on PAD).
    """

    input_ids: Tensor
    output_ids: Tensor
    output_logits: Tensor
    residual: Tensor


def run_tracr(assembled, program: TracrProgram, conversion: Conversion) -> TracrReference:
    """Run the compiled model on every input of ``program``, one batch per length."""
    inputs = program.inputs()
    n_ctx, d_model = conversion.tl_config["n_ctx"], conversion.tl_config["d_model"]
    n_out = len(conversion.output_tokens)
    input_ids = torch.full((len(inputs), n_ctx), PAD_ID)
    output_ids = torch.full((len(inputs), n_ctx), IGNORE_INDEX)
    output_logits = torch.zeros(len(inputs), n_ctx, n_out)
    residual = torch.zeros(len(inputs), n_ctx, d_model)
    unembed = conversion.weights["unembed.weight"].numpy()
    tracr_ids = assembled.input_encoder.encoding_map
    tl_ids = {token: index for index, token in enumerate(conversion.input_tokens)}
    start = 0
    for length, group in itertools.groupby(inputs, key=len):
        group = list(group)
        rows = slice(start, start + len(group))
        tokens = jnp.array([[tracr_ids[BOS], *(tracr_ids[token] for token in example)] for example in group])
        output = assembled.forward(assembled.params, tokens)
        final = np.asarray(output.transformer_output.output)
        input_ids[rows, : length + 1] = torch.tensor(
            [[BOS_ID, *(tl_ids[token] for token in example)] for example in group]
        )
        output_ids[rows, 1 : length + 1] = torch.from_numpy(np.asarray(output.unembedded_output)[:, 1:].copy())
        output_logits[rows, 1 : length + 1] = torch.from_numpy(final[:, 1:] @ unembed.T)
        residual[rows, : length + 1] = torch.from_numpy(final.copy())
        start += len(group)
    return TracrReference(input_ids, output_ids, output_logits, residual)


def compare_with_tracr(bridge: nn.Module, reference: TracrReference) -> dict:
    """How far the bridge is from tracr: largest residual and output-logit differences, and output agreement.

    Raises:
        AssertionError: when an output differs or the residual streams differ by more than ``RESIDUAL_TOLERANCE``.
    """
    with torch.no_grad():
        logits, cache = bridge.run_with_cache(reference.input_ids)
    final = cache[f"blocks.{bridge.cfg.n_layers - 1}.hook_resid_post"]
    real = reference.input_ids != PAD_ID
    scored = reference.output_ids != IGNORE_INDEX
    record = {
        "inputs": len(reference.input_ids),
        "max_abs_residual_difference": float((final - reference.residual)[real].abs().max()),
        "max_abs_output_logit_difference": float((logits - reference.output_logits)[scored].abs().max()),
        "max_abs_residual": float(reference.residual.abs().max()),
        "outputs_equal": bool(torch.equal(logits.argmax(-1)[scored], reference.output_ids[scored])),
    }
    if not record["outputs_equal"] or record["max_abs_residual_difference"] > RESIDUAL_TOLERANCE:
        raise AssertionError(f"the converted bridge does not reproduce tracr: {record}")
    return record


def ablations(bridge: nn.Module, data: SubtaskData, truth: dict) -> dict:
    """Exact match of the full model, of the truth alone, and with each head, MLP layer and used neuron removed.

    A used unit is necessary when removing it alone drops exact match below 1; an unused one changes no logit.
    """
    with torch.no_grad():
        full_logits = bridge(data.input_ids)

    def without(granularity: str, unit_name: str, index: int | None) -> tuple[float, float]:
        everything = truth_units(bridge, {"heads": [], "neurons": {}}, granularity)
        kept = {name: torch.ones_like(unit) for name, unit in everything.items()}
        kept[unit_name][slice(None) if index is None else index] = False
        mask = truth_mask(bridge, kept, granularity)
        with torch.no_grad(), masked(bridge, mask, check_weights=False):
            change = float((bridge(data.input_ids) - full_logits).abs().max())
        return exact_match(bridge, data, mask), change

    record: dict = {"full": exact_match(bridge, data)}
    record["truth_only"] = {
        granularity: exact_match(bridge, data, truth_mask(bridge, truth_units(bridge, truth, granularity), granularity))
        for granularity in ("head", "neuron", "weight")
    }
    used_heads = {tuple(pair) for pair in truth["heads"]}
    record["heads"] = []
    for layer in range(bridge.cfg.n_layers):
        for head in range(bridge.cfg.n_heads):
            accuracy, change = without("head", f"blocks.{layer}.attn", head)
            record["heads"].append(
                {
                    "layer": layer,
                    "head": head,
                    "used": (layer, head) in used_heads,
                    "exact_match_without": accuracy,
                    "max_abs_logit_change": change,
                }
            )
    record["mlp_layers"] = []
    for layer in range(bridge.cfg.n_layers):
        accuracy, change = without("neuron", f"blocks.{layer}.mlp", None)
        record["mlp_layers"].append(
            {
                "layer": layer,
                "used": layer in truth["mlp_layers"],
                "exact_match_without": accuracy,
                "max_abs_logit_change": change,
            }
        )
    record["neurons"] = [
        {
            "layer": int(layer),
            "neuron": neuron,
            "exact_match_without": without("neuron", f"blocks.{layer}.mlp", neuron)[0],
        }
        for layer, neurons in truth["neurons"].items()
        for neuron in neurons
    ]
    return record


def build(program: TracrProgram, out_dir: Path) -> dict:
    """Compile, convert, verify and write one program; returns its card."""
    sop = program.make()
    assembled = compiling.compile_rasp_to_model(
        sop, vocab=set(program.vocab), max_seq_len=program.max_seq_len, compiler_bos=BOS, compiler_pad=PAD
    )
    conversion = convert(assembled, program, sop.label)
    reference = run_tracr(assembled, program, conversion)
    bridge = boot_tracr_bridge(conversion.tl_config, conversion.weights)
    # at every scored position, also where the bridge's argmax agrees with tracr's by rounding (detect_pattern's
    # first positions: all-zero outputs)
    check_defined_outputs(program.name, reference.input_ids, reference.output_ids, reference.output_logits)
    verification = compare_with_tracr(bridge, reference)
    data = subtask_data(program.name, reference.input_ids, reference.output_ids)
    measured = ablations(bridge, data, conversion.truth)
    if measured["full"] != 1.0 or any(value != 1.0 for value in measured["truth_only"].values()):
        raise AssertionError(f"{program.name}: the full model or its truth misses examples: {measured}")
    unused_changes = [
        unit["max_abs_logit_change"] for unit in measured["heads"] + measured["mlp_layers"] if not unit["used"]
    ]
    if any(unused_changes):
        raise AssertionError(f"{program.name}: removing an unused head or MLP changed the logits: {measured}")
    necessary = {
        "head": all(unit["exact_match_without"] < 1.0 for unit in measured["heads"] if unit["used"]),
        "mlp_layer": all(unit["exact_match_without"] < 1.0 for unit in measured["mlp_layers"] if unit["used"]),
        "neuron": all(unit["exact_match_without"] < 1.0 for unit in measured["neurons"]),
    }
    card = {
        "name": program.name,
        "description": program.description,
        "tracr": {
            "package": f"tracr-pypi {version('tracr-pypi')}",
            "vocab": sorted(program.vocab),
            "max_seq_len": program.max_seq_len,
            "distinct_tokens": program.distinct_tokens,
            "compiler_bos": BOS,
            "compiler_pad": PAD,
            "mlp_exactness": 100,
            "output_label": sop.label,
            "layers": conversion.tl_config["n_layers"],
            "heads_per_layer": conversion.tl_config["n_heads"],
            "key_size": conversion.tl_config["d_head"] - 1,
        },
        "tl_config": conversion.tl_config,
        "input_tokens": conversion.input_tokens,
        "output_tokens": conversion.output_tokens,
        "residual_labels": conversion.residual_labels,
        "scoring": "input BOS x_1 .. x_n PAD; tracr's output at position t (1..n) is the label at t + 1",
        "pad_mask": {"extra_head_dimension": conversion.tl_config["d_head"] - 1, "pad_score": -PAD_SCORE},
        "truth": conversion.truth,
        "each_used_unit_necessary": necessary,
        "unique": all(necessary.values()),
        "verification": verification,
        "ablations": measured,
    }
    write_tracr_program(
        out_dir / program.name,
        conversion.weights,
        reference.input_ids,
        reference.output_ids,
        reference.output_logits,
        card,
    )
    return card


def program_from_arguments(parser: argparse.ArgumentParser, arguments: argparse.Namespace) -> TracrProgram:
    """The ``--program NAME=MODULE:FUNCTION`` program, its inputs from ``--vocab``, ``--max-seq-len`` and
    ``--distinct-tokens``; a usage error (exit 2) names what is missing before anything compiles."""
    name, _, target = arguments.program.partition("=")
    module_name, _, function_name = target.partition(":")
    if arguments.out.resolve() == TRACR_DIR.resolve():
        parser.error("--program needs --out DIR, a folder of your own: the default holds the shipped programs")
    if not (name and module_name and function_name):
        parser.error(
            f"--program {arguments.program!r}: write NAME=MODULE:FUNCTION, e.g. length=my_programs:make_length"
        )
    if not arguments.vocab or arguments.max_seq_len is None or arguments.max_seq_len < 1:
        parser.error("--program needs --vocab TOKEN ... and --max-seq-len N (N >= 1): the inputs it is compiled for")
    try:
        make = getattr(importlib.import_module(module_name), function_name)
    except (ImportError, AttributeError) as error:
        parser.error(f"--program {arguments.program!r}: {error} (is MODULE importable from the current folder?)")
    vocab = tuple(arguments.vocab)
    if all(token.lstrip("-").isdigit() for token in vocab):
        vocab = tuple(int(token) for token in vocab)
    if len(set(vocab)) != len(vocab) or {PAD, BOS} & set(vocab):
        parser.error(f"--vocab {list(vocab)}: tokens must be distinct and not {PAD} or {BOS}")
    description = arguments.description or f"{module_name}.{function_name}()"
    return TracrProgram(
        name, description, lambda: make().named(name), vocab, arguments.max_seq_len, arguments.distinct_tokens
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=TRACR_DIR, help="folder to write one subfolder per program to")
    parser.add_argument("--programs", nargs="*", default=None, choices=list(PROGRAMS), help="shipped programs")
    parser.add_argument(
        "--program",
        metavar="NAME=MODULE:FUNCTION",
        help="a program of your own instead: FUNCTION() in MODULE returns its output SOp (built after tracr is "
        "imported); needs --vocab and --max-seq-len",
    )
    parser.add_argument("--vocab", nargs="+", help="the program's input tokens (integers where every one parses)")
    parser.add_argument("--max-seq-len", type=int, help="the longest input, without BOS")
    parser.add_argument("--distinct-tokens", action="store_true", help="only inputs without repeated tokens")
    parser.add_argument("--description", default="", help="what the program computes, for its card")
    arguments = parser.parse_args()
    if arguments.programs is not None and not arguments.programs:
        parser.error("--programs needs at least one name; leave it out to build every shipped program")
    programs = [PROGRAMS[name] for name in arguments.programs or ([] if arguments.program else PROGRAMS)]
    if arguments.program:
        programs.append(program_from_arguments(parser, arguments))
    torch.set_num_threads(1)
    for program in programs:
        card = build(program, arguments.out)
        print(
            f"{program.name}: heads {card['truth']['heads']}, MLP layers {card['truth']['mlp_layers']}, "
            f"neurons {sum(len(n) for n in card['truth']['neurons'].values())}, unique {card['unique']}, "
            f"{card['verification']}"
        )


if __name__ == "__main__":
    main()
