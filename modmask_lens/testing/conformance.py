"""The conformance checks, each against an independent computation on the model itself.

Every check returns a :class:`CheckResult` instead of raising, so that one run reports all of them. The model is
never modified: checks that need compatibility mode run on a deep copy.
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor, nn
from transformer_lens.model_bridge.generalized_components.attention import PerLayerGeometryError

from modmask_lens.adapters import (
    GranularityNotApplicable,
    TensorSpec,
    adapter_for,
    feature_shape,
    model_shape,
    query_rows_per_head,
)
from modmask_lens.adapters.export import native_config, native_state_dict
from modmask_lens.core.bridge import Bridge
from modmask_lens.core.data import SubtaskData
from modmask_lens.core.functional import call_with_parameters, frozen_call, slot_of, tensor_slots
from modmask_lens.masks.apply import masked, masked_call, sampled_parameters
from modmask_lens.masks.binary import BinaryMask, kept_per_unit
from modmask_lens.masks.config import GRANULARITIES, NEURON_MASKS, Granularity, MaskConfig, TrainConfig
from modmask_lens.masks.export import export_masked_model
from modmask_lens.masks.mask_set import MaskSet
from modmask_lens.masks.output_gates import chunk_samples, gated, output_gates
from modmask_lens.masks.sampling import UniformNoise
from modmask_lens.masks.training import MaskTrainer
from modmask_lens.masks.units import MaskUnit

ALL_KINDS = MaskConfig(kinds=("linear", "norm", "embedding", "bias"))
ModelInput = Int[Tensor, "batch pos"] | Float[Tensor, "batch ..."]
"""What the kit runs a model on: token ids, or for an audio or vision encoder its float input (a raw waveform, a
spectrogram, an image: :func:`conformance_inputs`)."""
_TL_VIEWS = {"W_Q": "W_Q", "W_K": "W_K", "W_V": "W_V", "W_O": "W_O", "W_in": "W_in", "W_out": "W_out"}


@dataclass(frozen=True)
class CheckResult:
    """One named check on one model family: passed or not, and what was seen (one line)."""

    name: str
    passed: bool
    detail: str = ""
    family: str = ""
    applies: bool = True
    """``False`` when the check has no meaning for the family (head checks on a model without attention): then
    :attr:`passed` is ``False`` too and :attr:`detail` says why."""

    def __str__(self) -> str:
        subject = f"{self.family} {self.name}" if self.family else self.name
        verdict = "N/A" if not self.applies else "PASS" if self.passed else "FAIL"
        return f"{verdict} {subject}" + (f": {self.detail}" if self.detail else "")


class Passed(str):
    """What a check returns to pass with a remark (:attr:`CheckResult.detail`), such as what it left out and why;
    any other string it returns says what failed."""


def applicable_checks(bridge: Bridge) -> list[str]:
    """The names of :data:`CHECKS` that apply to ``bridge`` (``hf_export_reloads`` only for bridges booted from
    Hugging Face models)."""
    exports = hasattr(bridge.original_model, "save_pretrained")
    return [name for name in CHECKS if name != "hf_export_reloads" or exports]


def conformance_inputs(bridge: Bridge, batch: int = 2, positions: int = 8, seed: int = 0) -> ModelInput:
    """Seeded inputs of ``batch`` examples and ``positions`` positions (at most the model's context): random token
    ids, or for a model that reads a waveform (:func:`~modmask_lens.adapters.reads_waveform`) standard-normal samples,
    as many as its feature extractor turns into ``positions`` frames
    (:func:`~modmask_lens.adapters.waveform_samples`), and for one that reads a spectrogram or an image
    standard-normal values of the shape its config fixes (:func:`~modmask_lens.adapters.feature_shape`).

    >>> from modmask_lens.testing.tiny_models import tiny_bridge
    >>> conformance_inputs(tiny_bridge()).shape
    torch.Size([2, 8])
    """
    generator = torch.Generator().manual_seed(seed)
    features = feature_shape(bridge, positions)
    if features is not None:
        return torch.randn(batch, *features, generator=generator)
    return torch.randint(0, bridge.cfg.d_vocab, (batch, min(positions, bridge.cfg.n_ctx)), generator=generator)


def run_conformance(
    bridge: Bridge, tokens: ModelInput | None = None, checks: Sequence[str] | None = None
) -> list[CheckResult]:
    """Run ``checks`` (default: every applicable one of :data:`CHECKS`) on ``bridge`` with its adapter; ``tokens``
    defaults to :func:`conformance_inputs` (seeded random ids, or a waveform, spectrogram or image for an audio or
    vision encoder). A check that raises is reported as failed, with the others; one that has no meaning for the
    model (head checks without attention, compatibility mode where TransformerLens declares it unsupported or fails
    unmasked) is reported as not applicable.

    Checks: ``all_ones_bit_identical``, ``all_zeros_changes_logits``, ``every_target_matters``,
    ``head_off_equals_zeroed_hook_z``, ``neuron_off_equals_zeroed_hook_post``, ``unit_slices_equal_tl_views``,
    ``gradients_reach_only_mask_logits``, ``output_gates_equal_weight_products``, ``compat_mode_bit_exact``,
    ``hf_export_reloads``. A passing result's
    detail says what the check left out, where it left something out (``every_target_matters``: the routed experts
    that their router selects for none of the tokens).
    """
    if tokens is None:
        tokens = conformance_inputs(bridge)
    family = str(bridge.cfg.architecture)
    try:
        with torch.no_grad():
            bridge(tokens)
        unmasked_failure = None
    except Exception as error:  # noqa: BLE001 (the model itself failing is reported as every check's cause)
        unmasked_failure = (
            f"the unmasked model itself fails on these tokens{_whose_failure(bridge, tokens)} ({_one_line(error)}); "
            "no mask is involved"
        )
    results = []
    for name in applicable_checks(bridge) if checks is None else checks:
        outcome, applies = unmasked_failure, True
        if outcome is None:
            try:
                outcome = CHECKS[name](bridge, tokens)
            except GranularityNotApplicable as error:
                outcome, applies = str(error), False
            except Exception as error:  # noqa: BLE001 (a crash is a failed check, reported with the others)
                outcome = f"raised {_one_line(error)}"
        passed = applies and (outcome is None or isinstance(outcome, Passed))
        results.append(CheckResult(name, passed, outcome or "", family, applies))
    return results


def _one_line(error: Exception) -> str:
    return f"{type(error).__name__}: {' '.join(str(error).split())}"


def check_head_mask(bridge: Bridge, mask: MaskSet, tokens: ModelInput) -> str | None:
    """A head-granularity mask equals zeroing ``hook_z`` of every head it drops (None when it does); each head is
    zeroed on the attention that holds it (a decoder block's cross-attention heads on its ``cross_attn``), or where
    the bridge has no ``hook_z`` there, in the input of its ``W_O`` (:func:`_run_zeroed`)."""
    binary = mask.binary()
    zeroings: list[tuple[str, TensorSpec, list[int]]] = []
    for spec in binary.specs:
        if spec.role != "W_O" or spec.unit != "head":
            continue
        kept, _ = kept_per_unit(spec, binary.kept[spec.key])
        heads = [head - spec.unit_offset for head in range(spec.unit_offset, len(kept)) if kept[head] == 0]
        if heads:
            zeroings.append((f"{spec.key.rsplit('.', 2)[0]}.hook_z", spec, heads))
    dropped = {name.rsplit(".", 1)[0]: heads for name, _, heads in zeroings}
    expected = _run_zeroed(bridge, tokens, zeroings)
    with masked(bridge, binary):
        actual = bridge(tokens)
    return _compare(actual, expected, f"heads {dropped} off")


def _zero_slices(activation: Tensor, units: list[int], width: int) -> Tensor:
    """``activation`` (``[batch, pos, ...]``) with each of ``units`` zeroed: its ``width`` consecutive entries of the
    flattened per-position features (head-major ``hook_z`` or a writer's input; ``hook_post`` with width 1), whatever
    head split TransformerLens gives the hook. On latent attention TransformerLens splits ``hook_z`` by
    ``cfg.d_head`` (the rotary width), not by the ``v_head_dim`` that ``W_O`` reads per head, so there
    ``hook_z[:, :, h]`` is not head h."""
    flat = activation.reshape(*activation.shape[:2], -1).clone()
    for unit in units:
        flat[..., unit * width : (unit + 1) * width] = 0.0
    return flat.reshape(activation.shape)


def _compare(actual: Tensor, expected: Tensor, what: str) -> str | None:
    difference = (actual - expected).abs().max().item()
    return None if difference <= 1e-5 else f"{what}: max difference {difference:.3g}"


def _constant(bridge: Bridge, config: MaskConfig, value: bool) -> BinaryMask:
    binary = MaskSet.for_bridge(bridge, config).binary()
    return BinaryMask(
        binary.specs, {key: torch.full_like(kept, value) for key, kept in binary.kept.items()}, binary.origin
    )


def _all_ones(bridge: Bridge, tokens: Tensor) -> str | None:
    reference = bridge(tokens)
    with masked(bridge, _constant(bridge, ALL_KINDS, True)):
        output = bridge(tokens)
    return _all_ones_difference(bridge, tokens, output, reference)


def _all_ones_difference(bridge: Bridge, tokens: Tensor, output: Tensor, reference: Tensor) -> str | None:
    """``None`` when the all-ones-masked ``output`` equals, bit for bit, the unmasked ``reference`` or the unmasked
    model run with its parameters detached, as every masked call runs them (:func:`frozen_call`), or with the masked
    parameters copied to fresh memory, as every masked call reads them (the product of weight and mask is a new
    tensor). The references differ on some families with no mask involved: Mamba's and FalconMamba's kernels take
    another path for parameters that require gradients (about 1e-6 apart on tiny models); the batched matrix products
    of JetMoE's experts take another path for a weight whose address is not 64-byte aligned, as a checkpoint loaded
    from safetensors can leave one (its tiny model's expert stacks, cloned unmasked: 1.8e-7 apart)."""
    if torch.equal(output, reference):
        return None
    detached = frozen_call(bridge, bridge.forward, tokens)
    if torch.equal(output, detached):
        return None
    slots = tensor_slots(bridge)
    parameters = {path: parameter.detach() for path, parameter in slots.values()}
    for member in MaskSet.for_bridge(bridge, ALL_KINDS).members:
        path = slots[slot_of(bridge, member.path)][0]
        parameters[path] = parameters[path].clone()
    if torch.equal(output, call_with_parameters(bridge, parameters, bridge.forward, tokens)):
        return None
    return f"logits differ under an all-ones mask (max {(output - detached).abs().max().item():.3g} from the model)"


def _all_zeros(bridge: Bridge, tokens: Tensor) -> str | None:
    reference = bridge(tokens)
    with masked(bridge, _constant(bridge, MaskConfig(), False)):
        output = bridge(tokens)
    return "logits unchanged under an all-zeros mask" if torch.allclose(output, reference) else None


def _cancels_exactly(spec: TensorSpec, bridge: Bridge) -> bool:
    """b_K shifts every attention score of a query equally, which softmax cancels (without rotary positions)."""
    return spec.role == "b_K" and bridge.cfg.positional_embedding_type != "rotary"


def _every_target_matters(bridge: Bridge, tokens: Tensor) -> str | Passed | None:
    """Zeroing each mask target alone changes the logits. Tensors that are zero already (biases a checkpoint keeps at
    their zero initialisation, such as an absent masked-LM head's) are left out: no mask can change them. So are
    the tensors of a routed expert held as its own module (Switch Transformers' ``experts.expert_{e}``) that its
    layer's router selects for none of these tokens (:func:`_unpicked_experts`; with 16 tokens and 4 experts, 2 of 3
    seeded tiny Switch models left an expert unpicked in some layer); a passing result names them. An expert the
    router selects is checked like any tensor, so one whose module the forward pass does not run (the model runs
    another copy) fails as unread."""
    specs = MaskSet.for_bridge(bridge, ALL_KINDS).members
    unpicked = _unpicked_experts(bridge, tokens, specs)
    reference = bridge(tokens)
    unread = []
    for spec in specs:
        if _cancels_exactly(spec, bridge) or not bool(bridge.get_parameter(spec.path).detach().any()):
            continue
        if _expert_name(spec) in unpicked:
            continue
        perturbed = {spec.path: torch.zeros(spec.shape)}
        if torch.allclose(masked_call(bridge, perturbed, bridge.forward, tokens), reference):
            unread.append(spec.key)
    excused = f"excused, selected by their router for none of these tokens: {sorted(unpicked)}" if unpicked else ""
    if unread:
        failure = f"zeroing these alone changed nothing (unread or aliased?): {unread}"
        return f"{failure}; {excused}" if excused else failure
    return Passed(excused) if excused else None


def _expert_name(spec: TensorSpec) -> str:
    """The module name of the routed expert that holds ``spec`` (``decoder_blocks.1.mlp.experts.expert_3`` for its
    ``wi.weight``)."""
    return spec.key.rsplit(".", 2)[0]


def _unpicked_experts(bridge: Bridge, tokens: Tensor, specs: list[TensorSpec]) -> set[str]:
    """The routed experts held one module each (``W_experts_in``/``W_experts_out`` without an expert axis) whose
    layer's router selects them for none of ``tokens``, read at the router itself: the output of the module holding
    the layer's ``W_router`` (its logits, ``[..., n_experts]``, column e for the layer's e-th expert in unit order) in
    one forward pass, each token's ``cfg.experts_per_token`` largest (1 where unset: Switch routing sends each token to
    one expert). A layer without such a router, or whose router's width is not its number of experts, excuses
    nothing."""
    experts: dict[int, dict[int, str]] = {}
    for spec in specs:
        if spec.role in ("W_experts_in", "W_experts_out") and spec.expert_axis is None:
            experts.setdefault(spec.layer, {})[spec.unit_offset] = _expert_name(spec)
    routers = {spec.layer: spec for spec in specs if spec.role == "W_router" and spec.layer in experts}
    if not routers:
        return set()
    picked: dict[int, set[int]] = {}
    per_token = int(getattr(bridge.cfg, "experts_per_token", None) or 1)

    def record(layer: int):
        def hook(module, args, output):
            picked.setdefault(layer, set())
            if isinstance(output, Tensor) and output.shape[-1] == len(experts[layer]):
                top = output.detach().reshape(-1, output.shape[-1]).topk(min(per_token, output.shape[-1]), dim=-1)
                picked[layer].update(top.indices.unique().tolist())
            else:
                picked[layer].update(range(len(experts[layer])))  # not the logits this reads: excuse nothing

        return hook

    handles = [
        bridge.get_submodule(spec.path.rpartition(".")[0]).register_forward_hook(record(layer))
        for layer, spec in routers.items()
    ]
    try:
        with torch.no_grad():
            bridge(tokens)
    finally:
        for handle in handles:
            handle.remove()
    unpicked = set()
    for layer, indices in picked.items():  # a router the forward pass never ran excuses nothing
        names = [experts[layer][offset] for offset in sorted(experts[layer])]
        unpicked.update(name for index, name in enumerate(names) if index not in indices)
    return unpicked


WRITER_ROLES = {"head": ("W_O",), "neuron": ("W_out", "W_experts_out")}
"""The roles whose tensor writes a head's or a neuron's output into the residual stream."""
UNIT_HOOKS = {"head": "attn.hook_z", "neuron": "mlp.hook_post"}
"""A block's TransformerLens hook of each unit: where a layer has one, it has units of that kind."""


def _unit_off(bridge: Bridge, tokens: Tensor, unit: str) -> str | None:
    """Turning one head or neuron off (mask logit -1, every other +1) in the first and last masked layers equals an
    independent computation of the same ablation: zeroing its ``hook_z`` / ``hook_post`` slice, or for a
    mixture-of-experts layer (:func:`_expert_neuron_ablations`) zeroing what reads the neuron, and for a mixture of
    attention heads (JetMoE) the columns of the expert output projection that read the head. Neurons are turned off
    both ways a neuron mask can mask them (``neuron_mask`` ``output``, the default, and ``in-out``)."""
    configs = (
        [MaskConfig(granularity=unit, neuron_mask=neuron_mask) for neuron_mask in NEURON_MASKS]
        if unit == "neuron"
        else [MaskConfig(granularity=unit)]
    )
    for config in configs:
        failure = _unit_off_under(bridge, tokens, unit, MaskSet.for_bridge(bridge, config))
        if failure:
            return f"neuron_mask={config.neuron_mask!r}: {failure}" if unit == "neuron" else failure
    return None


def _unit_off_under(bridge: Bridge, tokens: Tensor, unit: str, mask: MaskSet) -> str | None:
    """:func:`_unit_off` for one mask of ``unit`` granularity, after checking that every layer with a
    TransformerLens hook of that unit (``hook_z``, ``hook_post``) has a unit of the mask: an adapter that leaves a
    layer's writer out of the mask targets would otherwise pass on the first and last layers alone."""
    hook = UNIT_HOOKS[unit]
    hooked = {layer for layer in range(bridge.cfg.n_layers) if f"blocks.{layer}.{hook}" in bridge.hook_dict}
    covered = {int(mask_unit.name.split(".")[1]) for mask_unit in mask.units if mask_unit.name.startswith("blocks.")}
    if hooked - covered:
        return (
            f"layers {sorted(hooked - covered)} have {unit}s (blocks.L.{hook}) but the mask has no {unit} unit there: "
            f"the adapter leaves the tensors that hold them out of the mask targets (unread_keys, tensor_specs)"
        )
    for mask_unit in dict.fromkeys((mask.units[0], mask.units[-1])):
        layer = int(mask_unit.name.split(".")[1])
        if any(member.expert_axis is not None and member.expert_width == 1 for member in mask_unit.members):
            ablations = _expert_neuron_ablations(bridge, tokens, mask_unit, unit)
            if isinstance(ablations, str):
                return ablations
        else:
            ablations = _hooked_ablations(bridge, tokens, unit, mask_unit)
            if isinstance(ablations, str):
                return ablations
        for index, expected in ablations.items():
            for logits in mask.logits.values():
                logits.data.fill_(1.0)
            mask.logits[mask_unit.name].data[index] = -1.0
            with masked(bridge, mask):
                actual = bridge(tokens)
            failure = _compare(actual, expected, f"layer {layer} {unit} {index}")
            if failure:
                return failure
    return None


def _hooked_ablations(bridge: Bridge, tokens: Tensor, unit: str, mask_unit: MaskUnit) -> dict[int, Tensor] | str:
    """Logits with the first and the last unit of ``mask_unit`` removed (:func:`_hooked_ablation`). Where the layer's
    neurons are routed experts held one module each (Switch Transformers: ``W_experts_out`` without an expert axis),
    the first and the last neuron that is non-zero on some token of ``tokens`` (read at each expert's ``W_experts_out``
    input in one forward pass): an expert the router sends no token, or a ReLU unit that no routed token activates,
    would make the comparison vacuous.

    Returns:
        unit index -> expected logits, or what went wrong.
    """
    if not any(member.role in WRITER_ROLES[unit] for member in mask_unit.members):
        return (
            f"{mask_unit.name}: no {'/'.join(WRITER_ROLES[unit])} member writes its {unit}s out, so they cannot be "
            "turned off: the adapter leaves that tensor out of the mask targets (unread_keys, tensor_specs)"
        )
    experts = [member for member in mask_unit.members if member.role == "W_experts_out"]
    if not experts:
        indices = {0, mask_unit.numel - 1}
        return {index: _hooked_ablation(bridge, tokens, unit, mask_unit, index) for index in indices}
    active: dict[int, Tensor] = {}

    def record(expert: TensorSpec):
        def pre_hook(module, args):
            hidden = args[0].detach().reshape(-1, args[0].shape[-1])
            active[expert.unit_offset] = (hidden != 0).any(dim=0)

        return pre_hook

    handles = [
        bridge.get_submodule(expert.path.rpartition(".")[0]).register_forward_pre_hook(record(expert))
        for expert in experts
    ]
    try:
        bridge(tokens)
    finally:
        for handle in handles:
            handle.remove()
    indices = [offset + int(local) for offset, used in sorted(active.items()) for local in used.nonzero().flatten()]
    if not indices:
        return f"{mask_unit.name}: no routed expert's {unit} is non-zero on these tokens (try other tokens)"
    return {index: _hooked_ablation(bridge, tokens, unit, mask_unit, index) for index in {indices[0], indices[-1]}}


def _hooked_ablation(bridge: Bridge, tokens: Tensor, unit: str, mask_unit: MaskUnit, index: int) -> Tensor:
    """Logits with unit ``index`` of ``mask_unit`` zeroed at its TransformerLens hook: a head's ``hook_z`` slice or
    a neuron's ``hook_post`` slice, on the component that holds it (where the bridge has no such hook, as
    RecurrentGemma's layers, DeepSeek V4's attention, NemotronH's attention and MLP layers or Switch Transformers'
    experts, the same slice of the writer's input: :func:`_run_zeroed`). The component is read off the key of the
    member that writes the unit out (``W_O`` / ``W_out``, or an expert module's ``W_experts_out``), whose
    ``unit_offset`` says where its units start in the layer: a decoder block's cross-attention heads follow its
    self-attention heads, expert e's neurons follow expert e - 1's."""
    writer = next(
        member
        for member in mask_unit.members
        if member.role in WRITER_ROLES[unit] and member.unit_offset <= index < member.unit_offset + member.unit_count
    )
    component, local = writer.key.rsplit(".", 2)[0], index - writer.unit_offset
    hook_name = f"{component}.{'hook_z' if unit == 'head' else 'hook_post'}"
    return _run_zeroed(bridge, tokens, [(hook_name, writer, [local])])


def _run_zeroed(bridge: Bridge, tokens: Tensor, zeroings: list[tuple[str, TensorSpec, list[int]]]) -> Tensor:
    """Logits with the units of each ``(hook name, writer, local units)`` of ``zeroings`` zeroed: at the
    TransformerLens hook (``hook_z``: :attr:`TensorSpec.unit_width` entries per head; ``hook_post``: one per neuron)
    where the bridge has it, else in a copy of the input of the module that holds the writer (``W_O`` / ``W_out``; a
    forward pre-hook, removed after), each of the writer's :attr:`TensorSpec.unit_count` units an equal share of the
    flattened features (at every module that holds the writer: :func:`_modules_holding`). Both are the same
    activation; RecurrentGemma's layers, DeepSeek V4's attention (whose grouped output projection stores a head as a
    group's rows, so ``unit_width`` describes the weight, not the input), NemotronH's attention and MLP layers and
    Zamba2's shared transformer block have neither hook."""

    def at_hook(writer: TensorSpec, units: list[int]):
        width = writer.unit_width if writer.unit == "head" else 1
        return lambda activation, hook: _zero_slices(activation, units, width)

    def at_input(writer: TensorSpec, units: list[int]):
        def pre_hook(module, args):
            # [batch, pos, ...], or [tokens, features] where an expert module reads only the tokens routed to it
            activation = args[0] if args[0].dim() > 2 else args[0].unsqueeze(0)
            features = activation.reshape(*activation.shape[:2], -1).shape[-1]
            zeroed = _zero_slices(activation, units, features // writer.unit_count)
            return (zeroed.reshape(args[0].shape), *args[1:])

        return pre_hook

    fwd_hooks = [(name, at_hook(writer, units)) for name, writer, units in zeroings if name in bridge.hook_dict]
    handles = [
        module.register_forward_pre_hook(at_input(writer, units))
        for name, writer, units in zeroings
        if name not in bridge.hook_dict
        for module in _modules_holding(bridge, writer.path)
    ]
    try:
        return bridge.run_with_hooks(tokens, fwd_hooks=fwd_hooks)
    finally:
        for handle in handles:
            handle.remove()


def _modules_holding(bridge: Bridge, path: str) -> list[nn.Module]:
    """The module at ``path`` and every other module of the bridge (or of its wrapped model) that holds the same
    parameter: a block shared across depths runs it through a module of its own at each depth (Zamba2's shared
    transformer), and a unit of it is removed at every one."""
    attribute, parameter = path.rpartition(".")[2], bridge.get_parameter(path)
    original = getattr(bridge, "original_model", None)
    modules = [*bridge.modules(), *(original.modules() if isinstance(original, nn.Module) else ())]
    return list({id(module): module for module in modules if module._parameters.get(attribute) is parameter}.values())


def _expert_neuron_ablations(
    bridge: Bridge, tokens: Tensor, unit: MaskUnit, kind: str = "neuron"
) -> dict[int, Tensor] | str:
    """Logits with one neuron of a mixture-of-experts layer (or one head of a mixture of attention heads, ``kind``
    ``head``) removed, computed without masks. TransformerLens has no per-expert ``hook_post`` or ``hook_z``, so a
    unit is removed by zeroing what alone reads it: neuron ``e * d_expert + i`` is hidden unit i of expert e, read by
    column i of expert e in the down-projection stack (``W_experts_out``); the shared expert's hidden unit j (if the
    layer has one) is neuron ``n_experts * d_expert + j``, read by column j of its ``W_out``. Head
    ``e * heads_per_expert + j`` is read by expert e's output-projection columns ``j * d_head .. (j + 1) * d_head``
    (``W_O`` with an expert axis), ``d_head`` being the hidden width over the heads per expert. The columns are
    zeroed in a clone passed to ``torch.func.functional_call``, so the model is never written (asserted bit-exact
    after).

    Only which tensor is the down projection (and, for heads, how many the layer has) comes from the adapter; the
    rest is read off the tensor: the expert axis is 0 (transformers keeps every batched stack expert-major) and the
    hidden axis is the one that is not ``d_model``. Routed units: unit 0 of the first expert and the last unit of the
    last expert whose removal changes the logits on ``tokens`` (an expert the router never picks would make the
    comparison vacuous).

    Returns:
        unit index -> expected logits, or what went wrong.
    """
    writer_role = "W_experts_out" if kind == "neuron" else "W_O"
    stacks = [member for member in unit.members if member.role == writer_role and member.expert_axis is not None]
    shared = [member for member in unit.members if member.role == "W_out" and member.expert_axis is None]
    if len(stacks) != 1 or len(shared) > 1:
        return f"{unit.name}: expected one expert down projection and at most one shared one, got {unit.members}"
    down = bridge.get_parameter(stacks[0].path)
    hidden_axes = [axis for axis in (1, 2) if down.shape[axis] != bridge.cfg.d_model]
    if len(hidden_axes) != 1:
        return f"{stacks[0].key} {tuple(down.shape)}: cannot tell its hidden axis from d_model={bridge.cfg.d_model}"
    n_experts, d_hidden = down.shape[0], down.shape[hidden_axes[0]]
    units_per_expert = d_hidden if kind == "neuron" else stacks[0].unit_count // n_experts
    width = d_hidden // units_per_expert
    before = {member.path: bridge.get_parameter(member.path).detach().clone() for member in stacks + shared}
    reference = bridge(tokens)

    def without(path: str, expert: int | None, axis: int, start: int, length: int = 1) -> Tensor:
        zeroed = bridge.get_parameter(path).detach().clone()
        (zeroed if expert is None else zeroed[expert]).narrow(axis, start, length).zero_()
        return torch.func.functional_call(bridge, {path: zeroed}, (tokens,), tie_weights=False, strict=False)

    ablations = {}
    for experts, local in ((range(n_experts), 0), (reversed(range(n_experts)), units_per_expert - 1)):
        for expert in experts:
            logits = without(stacks[0].path, expert, hidden_axes[0] - 1, local * width, width)
            if not torch.allclose(logits, reference):
                ablations[expert * units_per_expert + local] = logits
                break
    if len(ablations) < 2:
        return f"{unit.name}: no routed expert's {kind} changes the logits on these tokens (try other tokens)"
    for member in shared:
        shared_down = bridge.get_parameter(member.path)
        hidden_axis = 1 if shared_down.shape[0] == bridge.cfg.d_model else 0
        for hidden_unit in (0, shared_down.shape[hidden_axis] - 1):
            ablations[n_experts * d_hidden + hidden_unit] = without(member.path, None, hidden_axis, hidden_unit)
    changed = [path for path, tensor in before.items() if not torch.equal(bridge.get_parameter(path), tensor)]
    return f"{changed}: the model changed while computing the ablations" if changed else ablations


def _tl_views(bridge: Bridge) -> str | None:
    """Head h / neuron slices of each tensor, in TransformerLens orientation ([in, out]), equal ``bridge.W_Q`` etc.
    (a shared expert's: its own component's ``W_in`` / ``W_out``; tensors without a TransformerLens view, such as an
    unwrapped shared expert's, are skipped). ``W_Q[h]`` is compared with head h's query rows
    (:func:`~modmask_lens.adapters.base.query_rows_per_head`: a gated query's head also holds its gate rows)."""
    checked = 0
    adapter = adapter_for(bridge)
    specs = adapter.tensor_specs(bridge)
    reasons = [adapter.inapplicable(bridge, granularity, specs) for granularity in ("head", "neuron")]
    if all(reasons):
        raise GranularityNotApplicable(f"{bridge.cfg.architecture}: {reasons[0]}; {reasons[1]}")
    for spec in specs:
        if spec.role not in _TL_VIEWS or spec.layer is None:
            continue
        weight = bridge.get_parameter(spec.path).detach()
        tl_view = _tl_view(bridge, spec)
        if tl_view is None:
            continue
        tl_tensor = tl_view.detach()
        view = f"bridge.{spec.role}[{spec.layer}] {tuple(tl_tensor.shape)}"
        if spec.input_axis is None:
            return f"{spec.key} {spec.shape}: its adapter cannot tell how the matrix is stored, so {view} is unplaced"

        def as_tl(piece: Tensor, spec: TensorSpec = spec) -> Tensor:
            return piece.movedim(spec.input_axis, 0)  # TransformerLens stores [in, out]

        if spec.unit in ("head", "kv_head"):
            for head in range(tl_tensor.shape[0]):
                piece = as_tl(weight.narrow(spec.unit_axis, head * spec.unit_width, spec.unit_width))
                if spec.role == "W_Q":
                    piece = piece[..., : query_rows_per_head(bridge, spec)]  # [d_model, rows]
                if piece.shape != tl_tensor[head].shape or not torch.allclose(piece, tl_tensor[head]):
                    return (
                        f"{spec.key} {spec.shape} head {head} (heads on axis {spec.unit_axis}) is "
                        f"{tuple(piece.shape)} and differs from {view}[{head}]"
                    )
        elif tl_tensor.dim() != weight.dim():
            return f"{spec.key} {spec.shape} has no {spec.unit or 'head'} layout, but {view} is split by heads"
        elif as_tl(weight).shape != tl_tensor.shape or not torch.allclose(as_tl(weight), tl_tensor):
            return f"{spec.key} {spec.shape} with inputs on axis {spec.input_axis} differs from {view}"
        checked += 1
    if checked:
        return None
    roles = sorted({spec.role for spec in specs if spec.role in _TL_VIEWS and spec.unit is not None})
    exposed = _components_with_views(bridge)
    if roles and exposed:
        return (
            f"TransformerLens exposes views at {exposed[:3]}, but none belongs to a tensor of the adapter's head and "
            f"neuron roles {roles}: their keys do not name the components that hold them"
        )
    if roles:  # JetMoE, NemotronH: TransformerLens delegates their attention and MLPs and exposes none of these views
        raise GranularityNotApplicable(
            f"{bridge.cfg.architecture}: TransformerLens exposes no view (bridge.W_Q, component.W_in, ...) of this "
            f"model's head and neuron tensors {roles}, so there is nothing to compare their slices with; the head- "
            "and neuron-off checks test their layout"
        )
    return "no tensor with a TransformerLens view was found"


def _components_with_views(bridge: Bridge) -> list[str]:
    """``component.view`` for each module under ``bridge.blocks`` that TransformerLens gives a ``W_Q`` ... ``W_out``
    view, read off the bridge alone (no adapter), so that a check finding no view to compare with can tell a model
    without views from an adapter whose keys miss them."""
    exposed = []
    for name, module in bridge.blocks.named_modules(remove_duplicate=False):
        if "_original_component" in name:  # the same components again, under the wrapped model's names
            continue
        for view in _TL_VIEWS:
            try:
                if getattr(module, view, None) is not None:
                    exposed.append(f"blocks.{name}.{view}")
            except Exception:  # noqa: BLE001, S112 (a view whose property fails here is no view to compare with)
                continue
    return exposed


def _tl_view(bridge: Bridge, spec: TensorSpec) -> Tensor | None:
    """TransformerLens's view of ``spec``'s tensor: ``bridge.W_Q[layer]`` etc., counting only the layers that have
    one (the dense layers of an interleaved mixture-of-experts stack have ``W_in``, its sparse layers none), or the
    property of a component nested in the block (``blocks.1.mlp.shared_expert.W_in``) or named other than the
    ``attn``/``mlp`` that the bridge's stacked views read (RWKV's ``blocks.0.channel_mix.W_in``); ``None`` where there
    is none. Where no block of the bridge has the component at all (RecurrentGemma's bridge wraps each layer whole),
    the view TransformerLens's conventions give the map the wrapped module computes (:func:`_probed_view`)."""
    name, component = _TL_VIEWS[spec.role], spec.key.rsplit(".", 2)[0]
    block_part = component.split(".")[2]
    dims = model_shape(bridge)
    if spec.role in ("W_K", "W_V") and dims.at_layer(spec.layer).n_kv_heads != dims.n_kv_heads:
        # TransformerLens splits every layer's keys and values by the config's count; where this layer has its own
        # (Gemma 4's full-attention layers) and the widths happen to divide, its view is that count's, not the layer's.
        return None
    if component != f"blocks.{spec.layer}.{block_part}" or block_part not in ("attn", "mlp"):
        try:
            return getattr(bridge.get_submodule(component), name, None)
        except AttributeError:
            return None
    if all(getattr(block, block_part, None) is None for block in bridge.blocks):
        return _probed_view(bridge, spec)
    having = [
        layer
        for layer in range(bridge.cfg.n_layers)
        if _has_view(getattr(bridge.blocks[layer], block_part, None), name)
    ]
    if spec.layer not in having:
        return None
    if block_part == "mlp" and dims.layer_d_mlp:
        # TransformerLens stacks every layer's W_in / W_out, which fails where blocks' MLP widths differ (Gemma 4's
        # double-wide MLPs, ModelShape.layer_d_mlp): the layer's own component has its view.
        return getattr(bridge.blocks[spec.layer].mlp, name)
    try:
        return getattr(bridge, name)[having.index(spec.layer)]
    except PerLayerGeometryError:  # one layer's heads differ from the config's (Gemma 4): read layer by layer
        try:
            return getattr(getattr(bridge.blocks[spec.layer], block_part), name)
        except PerLayerGeometryError:  # TransformerLens gives this layer no per-head view
            return None


def _has_view(component: nn.Module | None, name: str) -> bool:
    """Whether ``component`` has TransformerLens's view ``name``; a view TransformerLens refuses to split by heads
    because the layer's geometry differs from the config's (Gemma 4's full-attention layers, ``head_dim`` 512 against
    256) is still there."""
    try:
        return hasattr(component, name)
    except PerLayerGeometryError:
        return True


def _probed_view(bridge: Bridge, spec: TensorSpec) -> Tensor | None:
    """The view TransformerLens would give ``spec``'s tensor, built from the module that holds it rather than from
    the adapter's layout: the Jacobian of the module's map (``[in, out]``, TransformerLens's orientation), split as
    TransformerLens splits attention matrices, heads outermost on the head side: ``W_Q``/``W_K``/``W_V`` to ``[n,
    d_model, d_head]`` (``n`` = ``cfg.n_heads`` for queries, ``cfg.n_key_value_heads`` for keys and values), ``W_O`` to
    ``[n_heads, d_head, d_model]``; ``W_in``/``W_out`` whole. ``None`` for a module that is no ``nn.Linear``."""
    module = bridge.get_submodule(spec.path.rpartition(".")[0])
    if not isinstance(module, nn.Linear):
        return None
    probe = torch.zeros(module.in_features, dtype=module.weight.dtype, device=module.weight.device)
    in_out = torch.autograd.functional.jacobian(module, probe).T
    n_kv_heads = int(getattr(bridge.cfg, "n_key_value_heads", None) or bridge.cfg.n_heads)
    n_units = {"W_Q": bridge.cfg.n_heads, "W_K": n_kv_heads, "W_V": n_kv_heads, "W_O": bridge.cfg.n_heads}
    if spec.role == "W_O":
        return in_out.reshape(n_units["W_O"], -1, in_out.shape[1])
    if spec.role in n_units:
        return in_out.reshape(in_out.shape[0], n_units[spec.role], -1).transpose(0, 1)
    return in_out


def check_gradients(bridge: Bridge, tokens: ModelInput, granularity: Granularity) -> str | None:
    """Two training steps at ``granularity`` give every mask logit a gradient, no model parameter one, and leave the
    model bit-exact (None when they do). On token ids the steps are :class:`MaskTrainer`'s; a waveform, spectrogram or
    image is no :class:`SubtaskData` (which holds token ids), so on one they are :func:`_waveform_steps`."""
    before = _parameter_snapshot(bridge)
    if tokens.is_floating_point():
        mask = _waveform_steps(bridge, tokens, granularity)
    else:
        labels = tokens.clone()
        labels[:, : tokens.shape[1] // 2] = -100
        # A bidirectional model sees the next token, so it is asked for each token at its own position (as a
        # masked-LM head is) rather than the next one (SubtaskData.check_fits refuses the latter).
        own_position = getattr(bridge.cfg, "attention_dir", "causal") == "bidirectional"
        trainer = MaskTrainer(
            bridge,
            [SubtaskData("conformance", tokens, labels, label_shift=0 if own_position else 1)],
            mask_config=MaskConfig(granularity=granularity),
            train_config=TrainConfig(steps=2, batch_size=2, n_samples=2),
            progress=False,
        )
        mask = trainer.train()["conformance"]
    silent = [name for name, logit in mask.logits.items() if logit.grad is None or not logit.grad.abs().sum() > 0]
    if silent:
        return f"{granularity} granularity: mask logits {silent} received no gradient"
    if any(parameter.grad is not None for parameter in bridge.parameters()):
        return f"{granularity} granularity: a model parameter received a gradient"
    changed = _changed_parameters(bridge, before)
    return f"{granularity} granularity: model parameters changed: {changed}" if changed else None


def _waveform_steps(bridge: Bridge, waveform: Float[Tensor, "batch ..."], granularity: Granularity) -> MaskSet:
    """Two Adam steps on fresh mask logits at ``granularity``, as a user's own loop around :func:`masked_call` runs
    them on an audio encoder: the task term is the mean squared distance of the masked output (frames' logits or
    hidden states) to the full model's, the sparsity term the expected kept fraction (what the trainer's default
    Lagrangian pulls on); learning rate, temperature and sampler are the trainer's defaults. The logits keep the
    last step's gradients."""
    train_config = TrainConfig()
    mask = MaskSet.for_bridge(bridge, MaskConfig(granularity=granularity))
    optimizer = torch.optim.Adam(mask.parameters(), lr=train_config.lr)
    with torch.no_grad():
        full = bridge(waveform)
    for step in range(2):
        optimizer.zero_grad(set_to_none=True)
        sample = mask.sample(train_config.temperature, UniformNoise(step))
        masked_output = masked_call(bridge, sample, bridge.forward, waveform)
        (F.mse_loss(masked_output, full) + mask.expected_density()).backward()
        optimizer.step()
    return mask


def _gradients(bridge: Bridge, tokens: Tensor) -> str | None:
    """:func:`check_gradients` at every granularity that applies to the model (a Mamba has no heads or neurons)."""
    failures = []
    for granularity in GRANULARITIES:
        try:
            failures.append(check_gradients(bridge, tokens, granularity))
        except GranularityNotApplicable:
            continue
    return "; ".join(failure for failure in failures if failure) or None


def _output_gates(bridge: Bridge, tokens: ModelInput) -> str | Passed | None:
    """Head and neuron masks gated on their writers' inputs in one pass (:mod:`~modmask_lens.masks.output_gates`,
    how training runs neuron masks and hard-concrete or Gumbel-sigmoid head masks) give the output and the logit
    gradients of a weight product per mask sample (:func:`_gated_equals_products`), at each of the two granularities
    where the model's masks are gated. Not applicable where neither is (expert stacks, a block shared across depths,
    a writer whose units are not its input features: training multiplies the weights there)."""
    ungated, gated_granularities, failures = [], [], []
    for granularity in ("neuron", "head"):
        try:
            mask = MaskSet.for_bridge(bridge, MaskConfig(granularity=granularity, sampler="hard-concrete"))
        except GranularityNotApplicable:
            continue
        gates = output_gates(bridge, mask.config, mask.units)
        if gates is None:
            ungated.append(granularity)
            continue
        gated_granularities.append(granularity)
        failure = _gated_equals_products(bridge, tokens, mask, gates)
        if failure:
            failures.append(f"{granularity} masks: {failure}")
    if failures:
        return "; ".join(failures)
    reason = (
        f"{bridge.cfg.architecture}: its {' and '.join(ungated)} masks train through a weight product per sample (an "
        "expert stack, a block shared across depths or a writer whose units are not its input features), never gated"
    )
    if not gated_granularities:
        raise GranularityNotApplicable(reason if ungated else f"{bridge.cfg.architecture}: no head or neuron masks")
    return Passed(reason) if ungated else None


def _gated_equals_products(bridge: Bridge, tokens: ModelInput, mask: MaskSet, gates: list) -> str | None:
    """``None`` when one gated pass over ``tokens``, each example its own sample of ``mask`` (soft hard-concrete values
    included: logits drawn in [-2, 3]), gives the output and logit gradients of one weight product per example; the
    loss is the output's dot product with a fixed random tensor."""
    generator = torch.Generator().manual_seed(0)
    for logits in mask.logits.values():
        logits.data.uniform_(-2.0, 3.0, generator=generator)
    noises = [UniformNoise(example) for example in range(len(tokens))]
    outputs = [
        call_with_parameters(bridge, sampled_parameters(bridge, mask, 1.0, noise), bridge.forward, tokens[[example]])
        for example, noise in enumerate(noises)
    ]
    projection = torch.randn(torch.cat(outputs).shape, generator=generator)
    sum(((output.float() * part).sum() for output, part in zip(outputs, projection, strict=True))).backward()
    product_grads = {name: logits.grad.clone() for name, logits in mask.logits.items()}
    for logits in mask.logits.values():
        logits.grad = None
    with gated(bridge, gates, chunk_samples(mask, 1.0, noises), [1] * len(tokens)):
        gated_output = frozen_call(bridge, bridge.forward, tokens)
    (gated_output.float() * projection).sum().backward()
    # (x * m) @ W and x @ (W * m) round apart: each comparison is relative to its largest value, at the rounding of
    # the model's dtype (float32 1e-4; float16 and bfloat16 5e-2).
    tolerance = 1e-4 if gated_output.dtype == torch.float32 else 5e-2
    compared = {"output": (gated_output.detach().float(), torch.cat(outputs).detach().float())}
    compared |= {f"{name} logit gradients": (logits.grad, product_grads[name]) for name, logits in mask.logits.items()}
    for what, (gated_value, product_value) in compared.items():
        difference = (gated_value - product_value).abs().max().item()
        scale = product_value.abs().max().item()
        if difference > tolerance * max(scale, 1e-6):
            return f"gated {what} differ from the weight products' by {difference:.3g} (largest {scale:.3g})"
    return None


def _parameter_snapshot(model: nn.Module) -> dict[str, Tensor]:
    """Clones of every parameter, by every module path."""
    return {name: tensor.detach().clone() for name, tensor in model.named_parameters(remove_duplicate=False)}


def _changed_parameters(model: nn.Module, before: dict[str, Tensor]) -> list[str]:
    """The paths whose parameter differs from :func:`_parameter_snapshot`'s ``before``."""
    return [
        name for name, tensor in model.named_parameters(remove_duplicate=False) if not torch.equal(tensor, before[name])
    ]


def _deep_copy(bridge: Bridge) -> nn.Module:
    """``copy.deepcopy`` that also copes with activations TransformerLens caches on modules (e.g. ``_pattern``),
    which are not graph leaves and refuse deepcopy: they are copied detached."""
    memo = {
        id(value): value.detach().clone()
        for module in bridge.modules()
        for value in vars(module).values()
        if isinstance(value, Tensor) and value.grad_fn is not None
    }
    return copy.deepcopy(bridge, memo)


def _compat_mode(bridge: Bridge, tokens: Tensor) -> str | None:
    """An all-ones mask on a copy of the bridge in TransformerLens's compatibility mode (folded norms, centred
    weights: another set of parameters, read through the same paths) reproduces that copy's output bit for bit and
    leaves its parameters unchanged.

    Where TransformerLens itself declares compatibility mode unsupported (an architecture adapter's
    ``supports_compatibility_mode = False``, or any audio encoder: ``enable_compatibility_mode`` refuses both), or
    the model reads no token ids (a vision encoder: the weight processing then fails looking for the text embedding
    and unembedding it assumes, TransformerLens's own reason for refusing audio encoders), the check has no meaning
    and is reported not applicable with TransformerLens's message. Where TransformerLens's
    compatibility mode fails with no mask attached (Falcon-H1: ``fold_layer_norm`` on grouped key/value weights),
    the check runs in compatibility mode without folding the norms (``fold_ln=False``) instead: a mask failing
    there fails the check; passing there, the check is still reported not applicable (the full compatibility mode,
    the check's subject, cannot run), with both facts in its line.

    Raises:
        GranularityNotApplicable: where TransformerLens declares compatibility mode unsupported, or where it fails
            with no mask attached and an all-ones mask passes in its compatibility mode without folded norms.
    """
    declared_unsupported = (
        not getattr(bridge.adapter, "supports_compatibility_mode", True) or feature_shape(bridge, 1) is not None
    )
    try:
        return _all_ones_in_compat_mode(bridge, tokens)
    except _CompatModeFails as failure:  # TransformerLens failing (or refusing) is not a mask's fault
        error = failure.__cause__
        if declared_unsupported:
            raise GranularityNotApplicable(
                f"{bridge.cfg.architecture}: TransformerLens does not support compatibility mode here "
                f"({_one_line(error)}); masks apply to the bridge's default forward"
            ) from error
    try:
        unfolded = _all_ones_in_compat_mode(bridge, tokens, fold_ln=False)
    except _CompatModeFails as failure:
        return (
            f"TransformerLens's compatibility mode itself fails here ({_one_line(error)}), and also without folded "
            f"norms ({_one_line(failure.__cause__)}); no mask is involved"
        )
    if unfolded is not None:
        return f"{unfolded} (with fold_ln=False: TransformerLens's full compatibility mode fails here unmasked)"
    raise GranularityNotApplicable(
        f"{bridge.cfg.architecture}: TransformerLens's compatibility mode fails here with no mask attached "
        f"({_one_line(error)}); without folded norms (fold_ln=False) an all-ones mask is bit-exact"
    ) from error


class _CompatModeFails(Exception):
    """TransformerLens's compatibility mode failed on the unmasked copy (the cause is its error)."""


def _all_ones_in_compat_mode(bridge: Bridge, tokens: Tensor, **processing: bool) -> str | None:
    """The compatibility-mode check's body on a deep copy of ``bridge`` with
    ``enable_compatibility_mode(**processing)``; raises :class:`_CompatModeFails` where that copy fails unmasked."""
    processed = _deep_copy(bridge)
    try:
        processed.enable_compatibility_mode(disable_warnings=True, **processing)
        reference = processed(tokens)
    except Exception as error:
        raise _CompatModeFails from error
    before = _parameter_snapshot(processed)
    with masked(processed, _constant(processed, ALL_KINDS, True)):
        output = processed(tokens)
    difference = _all_ones_difference(processed, tokens, output, reference)
    if difference is not None:
        return f"compat mode: {difference}"
    changed = _changed_parameters(processed, before)
    return f"compat mode: parameters changed: {changed}" if changed else None


def _hf_export(bridge: Bridge, tokens: Tensor) -> str | None:
    mask = MaskSet.for_bridge(bridge, ALL_KINDS)
    generator = torch.Generator().manual_seed(0)
    for logits in mask.logits.values():
        logits.data = torch.randn(logits.shape, generator=generator) + 1.0
    decoder_inputs = {}

    def record_decoder_inputs(module, args, kwargs):
        if kwargs.get("decoder_input_ids") is not None:
            decoder_inputs["decoder_input_ids"] = kwargs["decoder_input_ids"]

    handle = bridge.original_model.register_forward_pre_hook(record_decoder_inputs, with_kwargs=True)
    try:
        with masked(bridge, mask):
            expected = bridge(tokens)
    finally:
        handle.remove()
    with tempfile.TemporaryDirectory() as directory:
        export_masked_model(bridge, mask, directory)
        reloaded = type(bridge.original_model).from_pretrained(directory)
        try:
            output = reloaded(tokens, **decoder_inputs)  # an encoder-decoder gets the bridge's decoder inputs
        except Exception:  # told apart from transformers' own failure below, else re-raised
            own_failure = _transformers_own_failure(bridge, tokens, decoder_inputs)
            if own_failure is None:
                raise
            return own_failure
    # What the bridge returns: the logits, or an encoder without a head's last hidden state (TransformerLens's driver)
    actual = output.logits if getattr(output, "logits", None) is not None else output.last_hidden_state
    return _compare(actual, expected, "exported model")


def _transformers_own_failure(bridge: Bridge, tokens: Tensor, decoder_inputs: dict[str, Tensor]) -> str | None:
    """One line saying that ``transformers``' own model class fails on ``tokens``, unmasked and outside
    TransformerLens with the bridge's weights (:func:`_outside_transformer_lens`), or ``None`` when it runs them.
    TransformerLens runs some attention itself (latent attention), so the bridge can run a config that
    ``transformers`` cannot."""
    model = _outside_transformer_lens(bridge)
    try:
        with torch.no_grad():
            model(tokens, **decoder_inputs)
    except Exception as error:  # noqa: BLE001 (any failure of transformers' own forward pass is the finding)
        return (
            f"transformers' own {type(model).__name__} fails on these tokens with this config, unmasked and outside "
            f"TransformerLens ({_one_line(error)}); no mask is involved"
        )
    return None


ATTRIBUTION_MAX_PARAMETERS = 500_000_000
"""Largest model whose failing unmasked forward pass the kit runs again outside TransformerLens to say whose failure
it is (that needs a second copy of the weights)."""


def _whose_failure(bridge: Bridge, tokens: Tensor) -> str:
    """For a bridge whose unmasked forward pass fails, a clause saying whether ``transformers``' own model fails too
    outside TransformerLens with the same weights, or runs (then the failure is TransformerLens's); empty where that
    cannot be tried (no Hugging Face model, an encoder-decoder, which needs the bridge's decoder inputs, or a model over
    :data:`ATTRIBUTION_MAX_PARAMETERS`)."""
    model = bridge.original_model
    config = getattr(model, "config", None)
    if (
        not hasattr(model, "save_pretrained")
        or getattr(config, "is_encoder_decoder", False)
        or sum(parameter.numel() for parameter in model.parameters()) > ATTRIBUTION_MAX_PARAMETERS
    ):
        return ""
    try:
        own_failure = _transformers_own_failure(bridge, tokens, {})
    except Exception:  # noqa: BLE001 (a model that cannot even be built outside TransformerLens says nothing here)
        return ""
    name = type(model).__name__
    if own_failure is not None:
        return f", and so does transformers' own {name} outside TransformerLens"
    return (
        f", while transformers' own {name} runs them outside TransformerLens with the same weights: TransformerLens's"
    )


def _outside_transformer_lens(bridge: Bridge) -> nn.Module:
    """A fresh ``transformers`` model of the bridge's class and config holding the bridge's weights, with none of
    TransformerLens's components inside, in evaluation mode.

    Raises:
        LookupError: where a tensor of the fresh model is neither loaded from the bridge's weights nor tied to one
            that is, or a bridge weight has no place in it: then it would not hold the same weights.
    """
    hf_model = bridge.original_model
    state, _ = native_state_dict(hf_model)
    model = type(hf_model)(native_config(hf_model)).eval()
    result = model.load_state_dict(state, strict=False)
    fresh = model.state_dict()
    loaded = {fresh[key].data_ptr() for key in state if key in fresh}
    unloaded = [key for key in result.missing_keys if fresh[key].data_ptr() not in loaded]
    if unloaded or result.unexpected_keys:
        raise LookupError(
            f"{type(hf_model).__name__} rebuilt outside TransformerLens does not take the bridge's weights: "
            f"not loaded {unloaded[:3]}, no place for {result.unexpected_keys[:3]}"
        )
    return model


CHECKS: dict[str, Callable[[Bridge, Tensor], str | Passed | None]] = {
    "all_ones_bit_identical": _all_ones,
    "all_zeros_changes_logits": _all_zeros,
    "every_target_matters": _every_target_matters,
    "head_off_equals_zeroed_hook_z": lambda bridge, tokens: _unit_off(bridge, tokens, "head"),
    "neuron_off_equals_zeroed_hook_post": lambda bridge, tokens: _unit_off(bridge, tokens, "neuron"),
    "unit_slices_equal_tl_views": lambda bridge, tokens: _tl_views(bridge),
    "gradients_reach_only_mask_logits": _gradients,
    "output_gates_equal_weight_products": _output_gates,
    "compat_mode_bit_exact": _compat_mode,
    "hf_export_reloads": _hf_export,
}
"""Every check of the kit by name: each takes the bridge and token ids and returns ``None`` or a :class:`Passed`
remark when it passes, else what went wrong."""
