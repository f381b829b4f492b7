"""Train the planted models on one CPU thread and write them, with their cards, into the package.

Usage: ``python -m experiments.groundtruth.plant_training [NAME ...] [--out DIR]`` (default: every plant, into
``modmask_lens/groundtruth/plants/``). Deterministic: seeds fix the model, the plan and the (full-batch) training.

Each step, for each subtask, three forward passes of the Hugging Face model through ``functional_call``: the full
model, the model with only the subtask's planted set (and the shared tensors) kept, and the model with that set
removed. The loss is cross-entropy on the answer for the first two (sufficiency) plus, for the third, the negative
mean log-probability of the nine wrong answer digits, lowest when the right one gets no probability (necessity; a
uniform target instead left the right digit the argmax by a hair on about half of the examples).
Weights outside every subtask's set (a disconnected plant's cross weights) are zeroed at the start and their
gradients are zeroed every step, so they stay exactly 0.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformer_lens.model_bridge import TransformerBridge
from transformers import AutoModelForCausalLM

from experiments.zoo.architectures import build_model
from experiments.zoo.recipes import Architecture
from modmask_lens.adapters import adapter_for
from modmask_lens.core.atomic_files import replace_folder_atomically, write_text_atomically
from modmask_lens.groundtruth.ablations import planted_elements
from modmask_lens.groundtruth.digits import answer_token_ids, digit_tokenizer
from modmask_lens.groundtruth.measure import UNIQUE_RULE, is_unique, measure_plant
from modmask_lens.groundtruth.plan import PlantPlan
from modmask_lens.groundtruth.plants import (
    CARD_FILE,
    PLANT_ARCHITECTURE,
    PLANTS,
    PLANTS_DIR,
    PlantSpec,
    architecture_changes,
    plant_plan,
    plant_spec,
    plant_subtasks,
)

ARCHITECTURE = Architecture(**PLANT_ARCHITECTURE)
TORCH_THREADS = 1
LEARNING_RATE = 5e-3
MAX_STEPS = 8000
EVAL_EVERY = 100
NECESSITY_WEIGHT = 0.5


def _hf_names(bridge: nn.Module, model: nn.Module) -> dict[str, str]:
    """Bridge state_dict key -> name of the same tensor in a plain copy of the Hugging Face model (matched by the
    bridge's own wrapped module tree, where Hugging Face names gain ``._original_component``)."""
    name_of = {
        id(parameter): name.replace("._original_component", "")
        for name, parameter in bridge.original_model.named_parameters()
    }
    plain = dict(model.named_parameters())
    names = {}
    for spec in adapter_for(bridge).tensor_specs(bridge):
        module_path, _, attribute = spec.path.rpartition(".")
        name = name_of[id(getattr(bridge.get_submodule(module_path), attribute))]
        if name not in plain:
            raise KeyError(f"{spec.key}: no parameter {name!r} in the plain model")
        names[spec.key] = name
    return names


def _plan_masks(bridge: nn.Module, plan: PlantPlan, names: dict[str, str]) -> tuple[dict, dict, dict]:
    """Hugging Face name -> float mask: the structure (union of all sets), and per subtask its kept-only and
    removed masks (split tensors only)."""
    own = {
        subtask: {
            names[key]: elements.float() for key, (_, elements) in planted_elements(bridge, plan, subtask).items()
        }
        for subtask in plan.uses
    }
    removed = {subtask: {name: 1 - mask for name, mask in masks.items()} for subtask, masks in own.items()}
    structure = {
        name: torch.stack([masks[name] for masks in own.values()]).amax(dim=0) for name in next(iter(own.values()))
    }
    return structure, own, removed


def _answer_logits(model: nn.Module, masks: dict[str, Tensor], input_ids: Tensor) -> Tensor:
    parameters = {
        name: parameter * masks[name] if name in masks else parameter for name, parameter in model.named_parameters()
    }
    return torch.func.functional_call(model, parameters, (input_ids,)).logits[:, -2]


def train_plant(spec: PlantSpec, out_dir: Path, log=print, architecture: Architecture = ARCHITECTURE) -> dict:
    """Train ``spec`` on a model of ``architecture`` until every subtask is exact on the full model and on its own
    set and broken without it (or :data:`MAX_STEPS`), then write it, its tokenizer and its card to ``out_dir``
    whole (replacing the plant there); returns the card."""
    torch.set_num_threads(TORCH_THREADS)
    started = time.perf_counter()
    tokenizer = digit_tokenizer()
    torch.manual_seed(spec.seed)
    model = build_model(architecture, tokenizer)
    with tempfile.TemporaryDirectory() as scratch:
        model.save_pretrained(scratch)
        tokenizer.save_pretrained(scratch)
        bridge = TransformerBridge.boot_transformers(scratch, device="cpu")
        model = AutoModelForCausalLM.from_pretrained(scratch)
    plan = plant_plan(spec, bridge)
    structure, own, removed = _plan_masks(bridge, plan, _hf_names(bridge, model))
    parameters = dict(model.named_parameters())
    with torch.no_grad():
        for name, mask in structure.items():
            parameters[name].mul_(mask)
    data = plant_subtasks(spec, tokenizer)
    answers = {name: examples.input_ids[:, -1] for name, examples in data.items()}
    wrong = {}  # [example, vocab] True at the nine digits that are not the example's answer
    for name in data:
        wrong[name] = torch.zeros(len(data[name]), len(tokenizer), dtype=torch.bool)
        wrong[name][:, answer_token_ids(tokenizer, spec.primed(name))] = True
        wrong[name][torch.arange(len(data[name])), answers[name]] = False
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=0.0)
    step = 0
    while step < MAX_STEPS:
        loss = torch.zeros(())
        for name, examples in data.items():
            loss = loss + F.cross_entropy(_answer_logits(model, {}, examples.input_ids), answers[name])
            loss = loss + F.cross_entropy(_answer_logits(model, own[name], examples.input_ids), answers[name])
            broken = _answer_logits(model, removed[name], examples.input_ids).log_softmax(dim=-1)
            loss = loss - NECESSITY_WEIGHT * broken[wrong[name]].mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for name, mask in structure.items():
            parameters[name].grad.mul_(mask)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        step += 1
        if step % EVAL_EVERY == 0 and _planted(model, data, answers, own, removed, log, step, loss.detach()):
            break
    model.eval()
    for name, mask in structure.items():
        if bool((parameters[name].detach() * (1 - mask)).any()):
            raise AssertionError(f"{name}: a weight outside every planted set is not exactly 0")
    wall_time_s = time.perf_counter() - started
    card = {
        "name": spec.name,
        "family": spec.family,
        "pair": spec.pair,
        "subtasks": list(spec.subtasks),
        "seed": spec.seed,
        "architecture": dict(vars(architecture)),
        "training": {
            "command": _command(spec, architecture),
            "steps": step,
            "learning_rate": LEARNING_RATE,
            "necessity_weight": NECESSITY_WEIGHT,
            "torch_threads": TORCH_THREADS,
            "wall_time_s": round(wall_time_s, 1),
        },
        "plan": _plan_summary(plan),
    }

    def save(folder: Path) -> None:
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        card.update(_measured(spec, folder))  # on the saved model, as a later load sees it
        write_text_atomically(folder / CARD_FILE, json.dumps(card, indent=1) + "\n")

    replace_folder_atomically(out_dir, save)  # a killed run leaves the old plant, never half a new one
    log(f"{spec.name}: {step} steps, {wall_time_s:.0f} s, unique={card['unique']}")
    return card


def measure_again(spec: PlantSpec, folder: Path, log=print) -> dict:
    """Measure the plant saved in ``folder`` again by the current rule (:func:`~modmask_lens.groundtruth.measure.
    measure_plant`) and rewrite its card's ``measurements``, ``unique`` and ``unique_rule``; the weights and the rest
    of the card stay as they are. Returns the card."""
    card = json.loads((folder / CARD_FILE).read_text()) | _measured(spec, folder)
    write_text_atomically(folder / CARD_FILE, json.dumps(card, indent=1) + "\n")
    log(f"{spec.name}: measured again, unique={card['unique']}")
    return card


def _measured(spec: PlantSpec, folder: Path) -> dict:
    """The card's ``measurements``, ``unique`` and ``unique_rule`` of the plant saved in ``folder``."""
    bridge = TransformerBridge.boot_transformers(str(folder), device="cpu")
    measurements = measure_plant(bridge, plant_plan(spec, bridge), plant_subtasks(spec, digit_tokenizer()))
    return {"measurements": measurements, "unique": is_unique(measurements), "unique_rule": UNIQUE_RULE}


def _command(spec: PlantSpec, architecture: Architecture) -> str:
    """The command that trains ``spec`` on ``architecture`` again (fields the options do not reach: named)."""
    changes = architecture_changes(vars(architecture))
    shipped = spec == PLANTS.get(spec.name) and not changes
    options = [f" --seed {spec.seed}"] * bool(spec.seed)
    options += [f" --{key.replace('_', '-')} {changes.pop(key)}" for key in ("d_model", "d_mlp") if key in changes]
    return (
        f"python -m experiments.groundtruth.plant_training {spec.name}{''.join(options)}"
        + ("" if shipped else " --out DIR")
        + (f" (with the architecture's {sorted(changes)} set in code)" if changes else "")
    )


def _planted(model, data, answers, own, removed, log, step, loss) -> bool:
    """Log progress; whether every subtask is exact on the full model and its own set, and broken without it."""
    done = True
    report = []
    with torch.no_grad():
        for name, examples in data.items():
            full, kept, without = (
                float((_answer_logits(model, masks, examples.input_ids).argmax(-1) == answers[name]).float().mean())
                for masks in ({}, own[name], removed[name])
            )
            done &= full == 1.0 and kept == 1.0 and without <= 0.2
            report.append(f"{name} full {full:.2f} own {kept:.2f} removed {without:.2f}")
    log(f"step {step} loss {loss.item():.4f} " + "; ".join(report))
    return done


def _plan_summary(plan: PlantPlan) -> dict:
    """Counts of each subtask's heads, neurons and residual dimensions, and of those it shares."""
    names = list(plan.uses)
    first, second = (plan.uses[name] for name in names)
    return {
        "family": plan.family,
        "split_roles": list(plan.split_roles) if plan.split_roles else "all",
        "granularities": list(plan.granularities),
        "ablation_unit": plan.ablation_unit,
        "heads": {name: int(plan.uses[name].heads.sum()) for name in names},
        "neurons": {name: int(plan.uses[name].neurons.sum()) for name in names},
        "residual_dims": {name: int(plan.uses[name].residual.sum()) for name in names},
        "shared_neurons": int((first.neurons & second.neurons).sum()),
        "shared_heads": int((first.heads & second.heads).sum()),
    }


def main(argv: list[str] | None = None) -> None:
    """Command-line entry: train the named plants (default: the shipped ones)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "names",
        nargs="*",
        help=f"plants to train, FAMILY-PAIR of any family and two digit functions, e.g. entangled-head-add-sub "
        f"(default: the shipped {', '.join(PLANTS)})",
    )
    parser.add_argument("--out", type=Path, default=None, help="parent folder (default: the package's plants)")
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the model, plan and training (not 0: written to NAME-seedN)"
    )
    parser.add_argument("--d-model", type=int, default=ARCHITECTURE.d_model, help="residual width (folder: -d_modelN)")
    parser.add_argument("--d-mlp", type=int, default=ARCHITECTURE.d_mlp, help="MLP neurons per layer (folder: -d_mlpN)")
    parser.add_argument(
        "--measure-again",
        action="store_true",
        help="do not train: measure the saved plants again by the current rule and rewrite their cards' measurements",
    )
    arguments = parser.parse_args(argv)
    architecture = dataclasses.replace(ARCHITECTURE, d_model=arguments.d_model, d_mlp=arguments.d_mlp)
    specs = []
    for name in arguments.names or list(PLANTS):
        try:
            specs.append(plant_spec(name, arguments.seed))
        except ValueError as error:
            raise SystemExit(str(error)) from error
    if arguments.out is None and (architecture != ARCHITECTURE or any(spec != PLANTS.get(spec.name) for spec in specs)):
        raise SystemExit(
            "only the shipped plants (seed 0, the shipped size) are written into the package: give --out DIR"
        )
    for spec in specs:
        changes = architecture_changes(vars(architecture))
        suffix = (f"-seed{spec.seed}" if spec.seed else "") + "".join(
            f"-{key}{value}" for key, value in changes.items()
        )
        folder = (arguments.out or PLANTS_DIR) / (spec.name + suffix)
        if arguments.measure_again:
            measure_again(spec, folder, log=_log)
        else:
            train_plant(spec, folder, log=_log, architecture=architecture)


def _log(message: str) -> None:
    """Print ``message`` after the time of day."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


if __name__ == "__main__":
    main()
