"""Mask training against plain fine-tuning as the model grows: step-time and peak-memory ratios, and where the mask
step's time goes.

Models: random GPT-2 configurations (vocabulary 512, 64 positions) saved and booted offline through
``boot_transformers``, from about 4M to about 107M parameters. Batch 8 x 64 tokens, next-token cross-entropy, one
thread by default. Mask training uses the library's defaults (``MaskConfig()``, ``TrainConfig()``: 4 mask samples per
step) at weight, neuron and head granularity; fine-tuning is plain Adam on every weight through the same bridge.

All figures of a run come from this one invocation: step times are medians of the CPU time of interleaved steps
(``bench_masks.timed``; fine-tuning and every granularity in turn, warm-up excluded, so drifts in machine load hit all
alike); peak memory is the growth of the peak RSS over the ready process, measured in a fresh child process per
configuration (peak RSS cannot be reset inside one process). ``--profile SIZE`` adds the torch profiler's breakdown
of one size's weight-granularity mask step and fine-tuning step into noise, sampler, products, matmuls, optimiser and
the rest. By default the loss constraint's full-model reference is computed for the examples each step draws first,
as in a run's first pass over its data (64 examples here, so a few warm-up steps already cache most of them);
``--cached-references`` caches every example's before timing, the steady state of a longer run (memory children
always start cold).

Run: ``python benchmarks/bench_scaling.py`` (all sizes; the parts measured on the shared 2-core sandbox at load 8-12
took 9 minutes for 4M and 24M, 6 for 107M weight masks, 5 for 107M neuron and head masks: about 30-40 minutes in all,
and up to 6 GB of memory per process at 107M), or reduced, e.g.
``python benchmarks/bench_scaling.py --sizes 4M 24M --steps 3 --granularities weight``.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import multiprocessing
import resource
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
from bench_masks import FineTuning, MaskTraining, _current_rss_kb, timed
from transformer_lens.model_bridge import TransformerBridge
from transformers import GPT2Config, GPT2LMHeadModel

from modmask_lens import MaskConfig, SubtaskData, TrainConfig
from modmask_lens.masks import training
from modmask_lens.masks.apply import masked_parameters

BATCH, POSITIONS, VOCAB = 8, 64, 512
SIZES: dict[str, tuple[int, int, int]] = {  # name: (layers, d_model, heads); d_mlp = 4 d_model
    "4M": (4, 256, 4),
    "24M": (6, 512, 8),
    "57M": (8, 768, 12),
    "107M": (15, 768, 12),
}
GRANULARITIES = ("weight", "neuron", "head")
# finetune-chunked: fine-tuning with the batch run in one slice per mask sample (the price of the slicing alone);
# weight-unfused: weight granularity with the sample drawn first and multiplied through autograd (MaskSet.sample and
# masked_parameters, the path before masks/products.py), for a side-by-side comparison;
# sharded: weight granularity through the fully sharded path;
# neuron-in-out: neuron masks on each neuron's W_in column and W_out row (neuron_mask="in-out": one weight product and
# one backward per mask sample), beside the default neuron masks gated on the activations in one pass;
# weight-one-sample: weight granularity with one mask sample per step for the whole batch (TrainConfig(n_samples=1)).
KINDS = (
    "finetune",
    "finetune-chunked",
    *GRANULARITIES,
    "weight-unfused",
    "sharded",
    "neuron-in-out",
    "weight-one-sample",
)


def build_bridge(directory: str, size: str) -> TransformerBridge:
    n_layer, n_embd, n_head = SIZES[size]
    torch.manual_seed(0)
    config = GPT2Config(n_layer=n_layer, n_embd=n_embd, n_head=n_head, vocab_size=VOCAB, n_positions=POSITIONS)
    GPT2LMHeadModel(config).save_pretrained(directory)
    return TransformerBridge.boot_transformers(directory, device="cpu")


def n_parameters(size: str) -> int:
    """Parameters of the Hugging Face model (tied embedding and unembedding counted once)."""
    n_layer, n_embd, n_head = SIZES[size]
    config = GPT2Config(n_layer=n_layer, n_embd=n_embd, n_head=n_head, vocab_size=VOCAB, n_positions=POSITIONS)
    with torch.device("meta"):
        return sum(parameter.numel() for parameter in GPT2LMHeadModel(config).parameters())


def subtask() -> SubtaskData:
    input_ids = torch.randint(0, VOCAB, (BATCH * 8, POSITIONS), generator=torch.Generator().manual_seed(0))
    return SubtaskData("t0", input_ids, input_ids.clone())


@dataclass(frozen=True)
class MaskRunSettings:
    """How the mask kinds run: the sampler (``None``: ``MaskConfig()``'s), and whether the full model's reference
    of every example is cached before the first step (the steady state of a run past its first pass over the data)."""

    sampler: str | None = None
    cached_references: bool = False


def runner(kind: str, bridge: TransformerBridge, steps: int, settings: MaskRunSettings) -> Callable[[int], None]:
    """The step function of one kind: ``finetune``, a granularity, or ``sharded``."""
    if kind.startswith("finetune"):
        return FineTuning(bridge, subtask(), BATCH, TrainConfig().n_samples if kind == "finetune-chunked" else 1).step
    overrides = {"granularity": kind.split("-")[0] if kind.split("-")[0] in GRANULARITIES else "weight"}
    overrides |= ({"sampler": settings.sampler} if settings.sampler else {}) | (
        {"neuron_mask": "in-out"} if kind == "neuron-in-out" else {}
    )
    mask_config = dataclasses.replace(MaskConfig(), **overrides)
    sharded = kind == "sharded"
    n_samples = 1 if kind == "weight-one-sample" else TrainConfig().n_samples
    training_run = MaskTraining(
        bridge, [subtask()], steps, fully_shard=sharded, batch=BATCH, mask_config=mask_config, n_samples=n_samples
    )
    if settings.cached_references:
        training_run.cache_references()
    return unfused(training_run.step) if kind == "weight-unfused" else training_run.step


def unfused(step: Callable[[int], None]) -> Callable[[int], None]:
    """``step`` with the trainer's fused products replaced by a sample multiplied through autograd."""

    def sample_then_multiply(bridge, mask_set, temperature, noise):
        return masked_parameters(bridge, mask_set.sample(temperature, noise))

    def unfused_step(index: int) -> None:
        fused = training.sampled_parameters
        training.sampled_parameters = sample_then_multiply
        try:
            step(index)
        finally:
            training.sampled_parameters = fused

    return unfused_step


def peak_memory_child(size: str, kind: str, steps: int, settings: MaskRunSettings, threads: int, queue) -> None:
    torch.set_num_threads(threads)
    transformers.utils.logging.disable_progress_bar()
    with tempfile.TemporaryDirectory() as directory:
        bridge = build_bridge(directory, size)
        step = runner(kind, bridge, steps, settings)
        ready = _current_rss_kb()
        for index in range(steps):
            step(index)
        queue.put(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - ready)


def peak_memory_kb(size: str, kind: str, steps: int, settings: MaskRunSettings, threads: int) -> int:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=peak_memory_child, args=(size, kind, steps, settings, threads, queue))
    process.start()
    result = queue.get()
    process.join()
    return result


def step_times(
    size: str, kinds: list[str], warmup: int, steps: int, settings: MaskRunSettings
) -> dict[str, list[float]]:
    """Interleaved step times (seconds) of every kind at one size, warm-up excluded."""
    with tempfile.TemporaryDirectory() as directory:
        # Fine-tuning changes its weights; the mask runs share their own pristine bridge.
        bridges = {"finetune": build_bridge(directory + "/finetune", size), "masks": build_bridge(directory, size)}
        steppers = {
            kind: runner(
                kind, bridges["finetune" if kind.startswith("finetune") else "masks"], warmup + steps, settings
            )
            for kind in kinds
        }
        times: dict[str, list[float]] = defaultdict(list)
        for index in range(warmup + steps):
            for kind, step in steppers.items():
                elapsed = timed(step, index)
                if index >= warmup:
                    times[kind].append(elapsed)
    return times


CATEGORIES = ("noise", "sampler", "products", "matmuls", "optimiser", "other")
_SCOPES = {  # profiler event name (prefix) -> category of its whole subtree
    "modmask.noise": "noise",
    "modmask.sampler": "sampler",  # the fused kernels (masks/products.py): sample and product in one pass
    "Optimizer.": "optimiser",
    "aten::_foreach_norm": "optimiser",  # gradient clipping (foreach on accelerators, per tensor on CPU)
    "aten::linalg_vector_norm": "optimiser",
}
_BACKWARD_NODES = {  # autograd node (in "autograd::engine::evaluate_function: <node>") -> category
    "ProductBackward": "products",
    "StraightThrough": "sampler",
    "MulBackward": "products",
    "MmBackward": "matmuls",
    "AddmmBackward": "matmuls",
    "BmmBackward": "matmuls",
}
_MATMULS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")


def _category(event) -> str:
    """The category of an event's self time: that of the nearest enclosing scope that has one."""
    node = event
    while node is not None:
        name = node.name
        for prefix, category in _SCOPES.items():
            if name.startswith(prefix):
                return category
        if name.startswith("autograd::engine::evaluate_function:"):
            for marker, category in _BACKWARD_NODES.items():
                if marker in name:
                    return category
            return "other"
        if name in _MATMULS:
            return "matmuls"
        node = node.cpu_parent
    return "other"


def profile(step, warmup: int, steps: int) -> dict[str, float]:
    """Milliseconds per step by category (self CPU time of every op, attributed to its enclosing scope)."""
    for index in range(warmup):
        step(index)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
        for index in range(warmup, warmup + steps):
            step(index)
    totals = dict.fromkeys(CATEGORIES, 0.0)
    for event in profiler.events():
        totals[_category(event)] += event.self_cpu_time_total / 1e3 / steps
    return totals


def plot(rows: list[dict], path: Path) -> None:
    """Two panels, step time and peak memory growth (mask training / fine-tuning) against the parameter count (log
    scale), one line per kind, the targets dashed; written as a standalone SVG (no plotting dependency)."""
    kinds = sorted({row["kind"] for row in rows})
    millions = [row["parameters"] / 1e6 for row in rows]
    low, high = math.log10(min(millions)), math.log10(max(millions)) + 1e-9
    panel_width, panel_height, margin = 360, 240, 50
    parts = []
    for panel, (key, title, target) in enumerate(
        (("time_ratio", "step time", 1.10), ("memory_ratio", "peak memory", 1.3))
    ):
        left = margin + panel * (panel_width + margin)
        ratios = [row[key] for row in rows if row.get(key) is not None] + [target]
        top_ratio = max(ratios) * 1.1

        def point(parameters: float, ratio: float, left: float = left, top_ratio: float = top_ratio) -> str:
            share = (math.log10(parameters / 1e6) - low) / (high - low) if high > low else 0.5
            return f"{left + share * panel_width:.1f},{margin + panel_height * (1 - ratio / top_ratio):.1f}"

        parts.append(
            f'<rect x="{left}" y="{margin}" width="{panel_width}" height="{panel_height}" fill="none" stroke="black"/>'
        )
        parts.append(
            f'<text x="{left}" y="{margin - 8}">{title}: mask training / fine-tuning (0 to '
            f"{top_ratio:.2f}; dashed: target {target})</text>"
        )
        target_y = margin + panel_height * (1 - target / top_ratio)
        parts.append(
            f'<line x1="{left}" x2="{left + panel_width}" y1="{target_y:.1f}" y2="{target_y:.1f}" '
            'stroke="grey" stroke-dasharray="4"/>'
        )
        for index, kind in enumerate(kinds):
            chosen = sorted(
                (row for row in rows if row["kind"] == kind and row.get(key) is not None),
                key=lambda row: row["parameters"],
            )
            if not chosen:
                continue
            colour = f"hsl({index * 360 // len(kinds)}, 70%, 40%)"
            points = " ".join(point(row["parameters"], row[key]) for row in chosen)
            parts.append(f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="2"/>')
            last = point(chosen[-1]["parameters"], chosen[-1][key]).split(",")
            parts.append(f'<text x="{float(last[0]) + 4}" y="{last[1]}" fill="{colour}" font-size="11">{kind}</text>')
        parts.append(
            f'<text x="{left}" y="{margin + panel_height + 18}" font-size="11">parameters (log scale): '
            f"{min(millions):.1f}M to {max(millions):.1f}M</text>"
        )
    width = 2 * (panel_width + margin) + 120
    path.write_text(
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{panel_height + 2 * margin + 20}" '
        f'font-family="sans-serif" font-size="12">{"".join(parts)}</svg>',
        encoding="utf-8",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", choices=list(SIZES), default=list(SIZES))
    parser.add_argument("--granularities", nargs="+", choices=GRANULARITIES, default=list(GRANULARITIES))
    parser.add_argument("--fully-shard", action="store_true", help="also time the fully sharded path (one process)")
    parser.add_argument("--unfused", action="store_true", help="also time weight masks without the fused products")
    parser.add_argument("--in-out", action="store_true", help="also time neuron masks with neuron_mask='in-out'")
    parser.add_argument("--one-sample", action="store_true", help="also time weight masks with one sample per step")
    parser.add_argument("--steps", type=int, default=4, help="timed steps per configuration")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--memory-steps", type=int, default=2, help="steps in each memory child (0: skip memory)")
    parser.add_argument("--sampler", choices=("gumbel-sigmoid", "hard-concrete"), help="default: MaskConfig()'s")
    parser.add_argument("--profile", choices=list(SIZES), help="profile this size's weight-granularity mask step")
    parser.add_argument("--plot", type=Path, default=Path("bench_scaling.svg"), help="where to write the plot")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--cached-references",
        action="store_true",
        help="cache the full model's reference of every example before timing (a run past its first pass over the "
        "data); default: computed for the examples each step draws first, as in a run's first pass",
    )
    arguments = parser.parse_args()
    torch.set_num_threads(arguments.threads)
    settings = MaskRunSettings(arguments.sampler, arguments.cached_references)
    transformers.utils.logging.disable_progress_bar()
    kinds = ["finetune", "finetune-chunked", *arguments.granularities]
    kinds += (["weight-unfused"] if arguments.unfused else []) + (["sharded"] if arguments.fully_shard else [])
    kinds += (["neuron-in-out"] if arguments.in_out else []) + (["weight-one-sample"] if arguments.one_sample else [])
    start = time.perf_counter()

    rows = []
    for size in arguments.sizes:
        times = step_times(size, kinds, arguments.warmup, arguments.steps, settings)
        memory = {
            # From a cold cache: filling it before the child's baseline would put the reference forward's peak
            # before the measurement, and the growth would read near zero.
            kind: peak_memory_kb(
                size,
                kind,
                arguments.memory_steps,
                dataclasses.replace(settings, cached_references=False),
                arguments.threads,
            )
            for kind in kinds
            if arguments.memory_steps > 0 and kind != "finetune-chunked"
        }
        finetune_time = statistics.median(times["finetune"])
        for kind in kinds[1:]:
            rows.append(
                {
                    "size": size,
                    "parameters": n_parameters(size),
                    "kind": kind,
                    "finetune_ms": finetune_time * 1e3,
                    "mask_ms": statistics.median(times[kind]) * 1e3,
                    "time_ratio": statistics.median(times[kind]) / finetune_time,
                    "finetune_mb": memory["finetune"] / 1024 if kind in memory else None,
                    "mask_mb": memory[kind] / 1024 if kind in memory else None,
                    "memory_ratio": memory[kind] / memory["finetune"] if kind in memory else None,
                }
            )
            print_row(rows[-1], header=len(rows) == 1)

    if arguments.profile:
        print(f"\nprofile of one step at {arguments.profile}, ms per step (self CPU time by enclosing scope)")
        with tempfile.TemporaryDirectory() as directory:
            bridge = build_bridge(directory, arguments.profile)
            mask_profile = profile(runner("weight", bridge, 4, settings), 1, 2)
            finetune_profile = profile(runner("finetune", bridge, 4, settings), 1, 2)
        print("| category | mask step | fine-tuning step |\n|---|---|---|")
        for category in CATEGORIES:
            print(f"| {category} | {mask_profile[category]:.0f} | {finetune_profile[category]:.0f} |")
        print(f"| total | {sum(mask_profile.values()):.0f} | {sum(finetune_profile.values()):.0f} |")

    plot(rows, arguments.plot)
    print(f"\nthreads: {arguments.threads}; plot: {arguments.plot}; run time: {time.perf_counter() - start:.0f} s")


def print_row(row: dict, header: bool) -> None:
    if header:
        print("| size | parameters | kind | fine-tune step ms | mask step ms | time ratio |", end=" ")
        print("fine-tune MB | mask MB | memory ratio |\n|---|---|---|---|---|---|---|---|---|")
    memory = (
        f"{row['finetune_mb']:.0f} | {row['mask_mb']:.0f} | {row['memory_ratio']:.2f}"
        if row["memory_ratio"] is not None
        else "- | - | -"
    )
    print(
        f"| {row['size']} | {row['parameters'] / 1e6:.1f}M | {row['kind']} | {row['finetune_ms']:.0f} | "
        f"{row['mask_ms']:.0f} | {row['time_ratio']:.3f} | {memory} |",
        flush=True,
    )


if __name__ == "__main__":
    main()
