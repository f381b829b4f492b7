"""Fault injection: an exception, a KeyboardInterrupt or an out-of-memory error raised at any point of attaching,
running, back-propagating, stepping or checkpointing masks and probes leaves the model bit-exact, its hooks as they
were, ``bridge.forward`` its class's, and no gradient on its parameters.

Each seed picks a phase (mask training, masked evaluation, probe training, component-gate training: hooks on the
frozen model through ``run_with_hooks``), an injection point reached in that phase, which of its calls fails
(counted in a dry run of the phase), and the fault.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest
import torch
from conftest import VOCAB, boot_native, state_snapshot
from transformer_lens.hook_points import HookPoint

import modmask_lens.core.checkpoint
import modmask_lens.core.functional
import modmask_lens.masks.apply
import modmask_lens.masks.training
from modmask_lens import MaskConfig, MaskSet, MaskTrainer, SubtaskData, TrainConfig, masked
from modmask_lens.masks.identity import MaskOrigin
from modmask_lens.probes import (
    ComponentGate,
    ComponentGateConfig,
    ProbeConfig,
    ProbeData,
    ProbeTrainer,
    train_component_gate,
)

N_SEEDS = 160
HOOK_NAME = "blocks.0.hook_resid_post"


class InjectedFault(RuntimeError):
    """The exception this test raises at an injection point."""


FAULTS: dict[str, Callable[[], BaseException]] = {
    "exception": lambda: InjectedFault("injected"),
    "keyboard_interrupt": KeyboardInterrupt,
    "out_of_memory": lambda: torch.OutOfMemoryError("injected: CUDA out of memory"),
}


class Trigger:
    """Counts the calls of an injection point and raises ``fault`` on call number ``fail_on`` (never if None)."""

    def __init__(self, fail_on: int | None = None, fault: Callable[[], BaseException] = FAULTS["exception"]):
        self.calls, self.fail_on, self.fault = 0, fail_on, fault

    def __call__(self) -> None:
        self.calls += 1
        if self.calls == self.fail_on:
            raise self.fault()


def wrap(owner, attribute: str, trigger: Trigger, monkeypatch, after: bool = False) -> None:
    """Replace ``owner.attribute`` by a function that pulls ``trigger`` before (or after) calling the original."""
    original = getattr(owner, attribute)

    def injected(*args, **kwargs):
        if not after:
            trigger()
        result = original(*args, **kwargs)
        if after:
            trigger()
        return result

    monkeypatch.setattr(owner, attribute, injected)


def hook_in_backward(owner, attribute: str, trigger: Trigger, monkeypatch) -> None:
    """Make what ``owner.attribute`` returns (a tensor, or a dict of them) pull ``trigger`` when its gradient is
    computed."""
    original = getattr(owner, attribute)

    def injected(*args, **kwargs):
        result = original(*args, **kwargs)
        for tensor in result.values() if isinstance(result, dict) else [result]:
            tensor.register_hook(lambda grad: trigger())
        return result

    monkeypatch.setattr(owner, attribute, injected)


# Injection point -> how to install it. "attach": building the masked (or detached) parameters and checking the
# model on entering masked(); "forward": inside a TransformerLens hook point, while functional_call has the masked
# tensors swapped in; "backward": in the gradient of a mask sample (the training path: its products) or of a component
# gate's output; "optimiser": the optimiser steps and the gradient clipping; "checkpoint": after the temporary file is
# written, before the rename.
POINTS: dict[str, Callable[[Trigger, pytest.MonkeyPatch], None]] = {
    "attach_parameters": lambda t, mp: wrap(modmask_lens.masks.apply, "masked_parameters", t, mp),
    "attach_detached": lambda t, mp: wrap(modmask_lens.core.functional, "tensor_slots", t, mp),
    "attach_check": lambda t, mp: wrap(MaskOrigin, "check", t, mp),
    "forward_hook_point": lambda t, mp: wrap(HookPoint, "forward", t, mp),
    "backward": lambda t, mp: hook_in_backward(MaskSet, "sample", t, mp),
    "backward_products": lambda t, mp: hook_in_backward(MaskSet, "sample_products", t, mp),
    "backward_gate": lambda t, mp: hook_in_backward(ComponentGate, "forward", t, mp),
    "optimiser_adam": lambda t, mp: wrap(torch.optim.Adam, "step", t, mp),
    "optimiser_rmsprop": lambda t, mp: wrap(torch.optim.RMSprop, "step", t, mp),
    "gradient_clip": lambda t, mp: wrap(torch.nn.utils, "clip_grad_norm_", t, mp),
    "checkpoint_write": lambda t, mp: wrap(modmask_lens.core.checkpoint, "save_file", t, mp, after=True),
    "user_hook": lambda t, mp: None,  # the evaluation's own hook pulls the trigger
}


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    bridge = boot_native()
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(0, VOCAB, (8, 6), generator=generator)
    labels = torch.full_like(input_ids, -100)
    labels[:, 4:] = input_ids[:, 4:]
    data = SubtaskData("faults", input_ids, labels)
    mask_set = MaskSet.for_bridge(bridge, MaskConfig(), name="faults")
    return bridge, data, mask_set


def train_masks_phase(bridge, data, mask_set, trigger, checkpoint_dir) -> None:
    config = TrainConfig(steps=2, batch_size=4, n_samples=2, checkpoint_every=1)
    MaskTrainer(bridge, [data], train_config=config, checkpoint_dir=checkpoint_dir, progress=False).train()


def evaluate_masked_phase(bridge, data, mask_set, trigger, checkpoint_dir) -> None:
    with masked(bridge, mask_set):
        bridge.run_with_hooks(data.input_ids, fwd_hooks=[(HOOK_NAME, lambda activation, hook: trigger())])
        bridge.run_with_cache(data.input_ids, names_filter=[HOOK_NAME])
    with masked(bridge, lambda: mask_set.sample()):
        bridge(data.input_ids).logsumexp(dim=-1).mean().backward()
    for logit in mask_set.logits.values():
        logit.grad = None


def train_probe_phase(bridge, data, mask_set, trigger, checkpoint_dir) -> None:
    probe_data = ProbeData.from_subtasks([data], vocab_size=VOCAB)
    config = ProbeConfig(steps=2, batch_size=4, checkpoint_every=1, n_experts=2)
    ProbeTrainer(bridge, [HOOK_NAME], probe_data, config, checkpoint_dir=checkpoint_dir, progress=False).train()


def train_component_gate_phase(bridge, data, mask_set, trigger, checkpoint_dir) -> None:
    other = SubtaskData("other", data.input_ids.flip(0), data.labels.flip(0))
    train_component_gate(bridge, [data, other], ComponentGateConfig(hidden=8, steps=2, batch_size=4), progress=False)


PHASES = {
    "train_masks": (
        train_masks_phase,
        [
            "attach_parameters",
            "forward_hook_point",
            "backward_products",
            "optimiser_adam",
            "gradient_clip",
            "checkpoint_write",
        ],
    ),
    "evaluate_masked": (
        evaluate_masked_phase,
        ["attach_check", "attach_parameters", "forward_hook_point", "user_hook", "backward"],
    ),
    "train_probe": (train_probe_phase, ["forward_hook_point", "optimiser_rmsprop", "checkpoint_write"]),
    "train_component_gate": (
        train_component_gate_phase,
        ["attach_detached", "forward_hook_point", "backward_gate", "optimiser_adam"],
    ),
}


def hook_state(bridge) -> dict:
    """Every hook registration, training flag and gradient slot of the model, by every module and parameter path."""
    state = {
        path: (
            tuple(module._forward_hooks),
            tuple(module._forward_pre_hooks),
            tuple(module._backward_hooks),
            tuple(module._backward_pre_hooks),
            tuple(getattr(module, "fwd_hooks", ())),
            tuple(getattr(module, "bwd_hooks", ())),
            module.training,
        )
        for path, module in bridge.named_modules(remove_duplicate=False)
    }
    state["parameters"] = [
        (name, parameter.requires_grad, parameter.grad is None, parameter._backward_hooks)
        for name, parameter in bridge.named_parameters(remove_duplicate=False)
    ]
    state["global_hooks"] = (
        tuple(torch.nn.modules.module._global_forward_hooks),
        tuple(torch.nn.modules.module._global_backward_hooks),
    )
    state["instance_forward"] = bridge.__dict__.get("forward")
    return state


@pytest.fixture(scope="module")
def calls_per_point(setup, tmp_path_factory):
    """How often each injection point is reached in each phase (a dry run with counting triggers)."""
    counts = {}
    for phase, (run, points) in PHASES.items():
        for point in points:
            trigger = Trigger()
            with pytest.MonkeyPatch.context() as monkeypatch:
                POINTS[point](trigger, monkeypatch)
                run(*setup, trigger, tmp_path_factory.mktemp("dry"))
            assert trigger.calls > 0, (phase, point)
            counts[phase, point] = trigger.calls
    return counts


@pytest.mark.parametrize("seed", range(N_SEEDS))
def test_a_fault_anywhere_leaves_the_model_exactly_as_it_was(seed, setup, calls_per_point, tmp_path, monkeypatch):
    bridge = setup[0]
    parameters_before, hooks_before = state_snapshot(bridge), hook_state(bridge)
    rng = random.Random(seed)
    phase = rng.choice(sorted(PHASES))
    run, points = PHASES[phase]
    point = rng.choice(points)
    fault_name = rng.choice(sorted(FAULTS))
    trigger = Trigger(rng.randint(1, calls_per_point[phase, point]), FAULTS[fault_name])
    POINTS[point](trigger, monkeypatch)

    with pytest.raises(type(FAULTS[fault_name]())):
        run(*setup, trigger, tmp_path)

    monkeypatch.undo()
    assert trigger.calls == trigger.fail_on, (phase, point)
    parameters_after = state_snapshot(bridge)
    assert parameters_after.keys() == parameters_before.keys()
    changed = [name for name, tensor in parameters_before.items() if not torch.equal(parameters_after[name], tensor)]
    assert changed == [], (phase, point, fault_name)
    assert hook_state(bridge) == hooks_before, (phase, point, fault_name)
    assert all(parameter.grad is None for parameter in bridge.parameters())


def test_the_seeds_cover_every_phase_point_and_fault(calls_per_point):
    drawn = set()
    for seed in range(N_SEEDS):
        rng = random.Random(seed)
        phase = rng.choice(sorted(PHASES))
        point = rng.choice(PHASES[phase][1])
        drawn.add((phase, point, rng.choice(sorted(FAULTS))))
    assert {(phase, point) for phase, point, _ in drawn} == set(calls_per_point)
    assert {fault for _, _, fault in drawn} == set(FAULTS)
