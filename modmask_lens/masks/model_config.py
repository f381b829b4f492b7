"""A model's config record: the settings beyond its weights that decide what it computes (activation, norm and its
eps, positions, attention scale and windows, multipliers; :func:`model_config`), read from TransformerLens's config
of the bridge or the Hugging Face model's own, normalised so that releases of transformers that lay a config out
differently record the same values; and how records written by earlier releases of modmask-lens, which held fewer
of these settings, compare with today's (:func:`comparable_models`)."""

from __future__ import annotations

import math
import warnings

from modmask_lens.core.bridge import Bridge

TRANSFORMER_LENS_FIELDS = (
    "act_fn",
    "normalization_type",
    "eps",
    "positional_embedding_type",
    "attn_scores_soft_cap",
    "output_logits_soft_cap",
)
"""The settings :func:`model_config` reads from TransformerLens's config of the bridge, under its names."""
FALCON_H1_MULTIPLIERS = (
    "lm_head_multiplier",
    "key_multiplier",
    "attention_in_multiplier",
    "attention_out_multiplier",
    "mlp_multipliers",
    "ssm_multipliers",
    "ssm_in_multiplier",
    "ssm_out_multiplier",
)
"""Falcon H1's multipliers beside the embedding one (muP's, each in its own place of every layer: the logits, the
keys, the attention block's input and output, the MLP's gate and down projections, the SSM's input projection by
section, its input and output), recorded as its config names them, ``None`` where a config has none."""
FIELDS_ADDED_LATER = (
    ("rope_scaling", "attn_scale", "sliding_window"),
    (
        "partial_rotary_factor",
        "scale_attn_weights",
        "scale_attn_by_inverse_layer_idx",
        "embedding_multiplier",
        "residual_multiplier",
        "logits_scaling",
        "use_bidirectional_attention",
    ),
    (*FALCON_H1_MULTIPLIERS, "clip_qkv", "is_causal"),
)
"""The settings of :data:`MODEL_CONFIG_FIELDS` that the first records did not hold, in the groups that releases of
modmask-lens added together: a record without any of a group's was written before that group, and
:func:`comparable_models` leaves them unchecked against it, with a warning."""
MODEL_CONFIG_FIELDS = (
    *TRANSFORMER_LENS_FIELDS[:4],
    "rope_theta",
    *TRANSFORMER_LENS_FIELDS[4:],
    *(field for group in FIELDS_ADDED_LATER for field in group),
)
"""The settings :func:`model_config` records: those that change what the same weights compute, in TransformerLens's
names (``rope_theta``, ``rope_scaling`` and ``partial_rotary_factor`` only for rotary positions; ``attn_scale`` the
number attention scores are divided by, as TransformerLens's ``attn_scale``) or, where it has none, Hugging Face's.

GPT-2's ``reorder_and_upcast_attn`` is not among them: it computes attention scores in float32 whatever the weights'
dtype, which changes only their rounding (on a tiny GPT-2: logits equal in float32, 0.002 apart in bfloat16), as the
attention implementation (eager, sdpa), which no record holds either, does. Nor is MPT's ``alibi_bias_max``: neither
transformers (5.23) nor TransformerLens's bridge (4.3) reads it, both build MPT's ALiBi slopes with the default 8."""


def model_config(bridge: Bridge) -> dict:
    """The settings beyond the weights that decide what ``bridge`` computes (:data:`MODEL_CONFIG_FIELDS`), normalised
    so that two releases of transformers that write one config differently record the same values: names lower-case,
    numbers as floats (``10000`` and ``1e4`` are one value), read from TransformerLens's config of the bridge (one
    vocabulary for every family) except those TransformerLens's config of a Hugging Face model does not follow, which
    are read from the model's own config, in transformers 4's or 5's layout:

    - ``rope_theta``, the rotary base, and ``rope_scaling``, its scaling (``rope_type`` and the factors the config
      gives; ``None`` for none) (:func:`_rope_parameters`): one value where every layer uses it, else a dict by layer
      type (Gemma 3's ``full_attention`` and ``sliding_attention``) whichever layout lists it;
    - ``partial_rotary_factor``: the share of each head's dimensions that the rotation turns (1.0: all of them), by
      layer type as ``rope_theta``: transformers 5's ``partial_rotary_factor`` among the rotary settings, 4's beside
      them (GPT-NeoX's ``rotary_pct``), GPT-J's and CodeGen's ``rotary_dim`` (a number of dimensions) over the head
      dimension;
    - ``attn_scale`` (:func:`_attn_scale`): what attention scores are divided by where the config sets it, ``None``
      where it is the square root of the head dimension; GPT-2's switches ``scale_attn_weights`` (off: scores not
      divided at all) and ``scale_attn_by_inverse_layer_idx`` (scores of layer ``l`` divided by ``l + 1`` as well),
      on and off where the config has no such switch;
    - Granite's ``embedding_multiplier`` (what token embeddings are multiplied by), ``residual_multiplier`` (what
      each attention and MLP output is multiplied by before it joins the residual stream) and ``logits_scaling``
      (what the logits are divided by; Cohere's ``logit_scale`` multiplies them, so it records as ``1 /
      logit_scale``), ``None`` where the config has none;
    - ``sliding_window`` (:func:`_sliding_windows`): the window of every layer, one value where all layers share it;
    - ``use_bidirectional_attention``: whether every position attends to every other (Gemma 3's, for its embedding
      models), ``False`` where the config has no such switch;
    - Falcon H1's multipliers (:data:`FALCON_H1_MULTIPLIERS`; its ``embedding_multiplier`` is Granite's), ``None``
      where the config has none;
    - ``clip_qkv``: the bound MPT clamps queries, keys and values to (``None``: unclamped; MPT's own 0 too);
    - ``is_causal``: ``False`` where the config turns causal masking off (transformers' masks then let every
      position attend to every other), ``True`` where it has no such switch.

    Example:
        >>> from modmask_lens.testing.tiny_models import tiny_bridge
        >>> model_config(tiny_bridge())["act_fn"], model_config(tiny_bridge())["eps"]
        ('gelu', 1e-05)
    """
    cfg = bridge.cfg
    config = {name: _normalised(getattr(cfg, name, None)) for name in TRANSFORMER_LENS_FIELDS}
    text_config = _hf_text_config(bridge)
    if config["positional_embedding_type"] == "rotary":
        rope = _rope_parameters(cfg, text_config)
        config["rope_theta"] = _by_layer_type(
            {layer_type: settings.get("rope_theta") for layer_type, settings in rope.items()}
        )
        config["rope_scaling"] = _by_layer_type(
            {layer_type: _rope_scaling(settings, text_config) for layer_type, settings in rope.items()}
        )
        config["partial_rotary_factor"] = _by_layer_type(
            {layer_type: settings.get("partial_rotary_factor", 1.0) for layer_type, settings in rope.items()}
        )
    config["attn_scale"] = _normalised(_attn_scale(cfg, text_config))
    config["scale_attn_weights"] = bool(getattr(text_config, "scale_attn_weights", True))
    config["scale_attn_by_inverse_layer_idx"] = bool(getattr(text_config, "scale_attn_by_inverse_layer_idx", False))
    config["embedding_multiplier"] = _normalised(getattr(text_config, "embedding_multiplier", None))
    config["residual_multiplier"] = _normalised(getattr(text_config, "residual_multiplier", None))
    config["logits_scaling"] = _normalised(_logits_scaling(text_config))
    config["sliding_window"] = _sliding_windows(text_config, cfg.n_layers)
    config["use_bidirectional_attention"] = bool(getattr(text_config, "use_bidirectional_attention", False))
    for name in FALCON_H1_MULTIPLIERS:
        config[name] = _normalised(getattr(text_config, name, None))
    config["clip_qkv"] = _normalised(_mpt_attention_setting(text_config, "clip_qkv") or None)
    config["is_causal"] = bool(getattr(text_config, "is_causal", True))
    return config


def _hf_text_config(bridge: Bridge) -> object | None:
    """The Hugging Face config of the bridge's text model, ``None`` for a TransformerLens-native bridge."""
    hf_config = getattr(getattr(bridge, "original_model", None), "config", None)
    return hf_config.get_text_config() if hasattr(hf_config, "get_text_config") else None


def _rope_parameters(cfg: object, text_config: object | None) -> dict[str, dict]:
    """The rotary settings the model computes with, by layer type (``{"": settings}`` where one set serves every
    layer), each as transformers 5 lays it out (``rope_theta``, ``rope_type`` and the scaling's factors).

    A Hugging Face model's come from its config: ``rope_parameters`` (transformers 5: flat, or nested by layer type
    where types differ), else transformers 4's layout, converted as transformers 5 converts it (its
    ``convert_rope_params_to_dict``): ``rope_theta`` at the top level with ``rope_scaling`` beside it; a second base
    for sliding-window layers, Gemma 3's ``rope_local_base_freq`` (the scaling then serves full attention only) or
    ModernBERT's ``global_rope_theta``/``local_rope_theta`` (the scaling serves both); the share of each head's
    dimensions rotated, ``partial_rotary_factor`` (:func:`_legacy_partial_rotary_factor`), in each. A
    TransformerLens-native model's (``text_config`` ``None``) from TransformerLens's config ``cfg``, its
    ``rotary_dim`` (``None``: the whole head) as that share.
    """
    if text_config is None:
        share = 1.0 if cfg.rotary_dim is None else cfg.rotary_dim / cfg.d_head
        scaling = getattr(cfg, "rope_scaling", None) or {}
        return {"": {"rope_theta": cfg.rotary_base, "partial_rotary_factor": share, **scaling}}
    parameters = getattr(text_config, "rope_parameters", None)
    if parameters and all(isinstance(value, dict) for value in parameters.values()):
        return dict(parameters)
    if parameters:
        return {"": parameters}
    scaling = getattr(text_config, "rope_scaling", None) or {}
    share = _legacy_partial_rotary_factor(cfg, text_config)
    scaling = scaling | ({"partial_rotary_factor": share} if share is not None else {})
    if hasattr(text_config, "rope_local_base_freq"):
        return {
            "full_attention": {"rope_theta": text_config.rope_theta, **scaling},
            "sliding_attention": {"rope_theta": text_config.rope_local_base_freq},
        }
    if hasattr(text_config, "local_rope_theta"):
        return {
            "full_attention": {"rope_theta": text_config.global_rope_theta, **scaling},
            "sliding_attention": {"rope_theta": text_config.local_rope_theta, **scaling},
        }
    return {"": {"rope_theta": getattr(text_config, "rope_theta", None), **scaling}}


def _legacy_partial_rotary_factor(cfg: object, text_config: object) -> float | None:
    """The share of each head's dimensions rotated, from a config in transformers 4's layout (or one that transformers
    5 still keeps beside the rotary settings): ``partial_rotary_factor`` (Phi, StableLM), GPT-NeoX's ``rotary_pct``,
    or GPT-J's and CodeGen's ``rotary_dim`` over the head dimension (``cfg.d_head``), as transformers 5 converts them;
    ``None`` where the config says nothing (the whole head)."""
    share = getattr(text_config, "partial_rotary_factor", None)
    if share is None:
        share = getattr(text_config, "rotary_pct", None)
    rotary_dim = getattr(text_config, "rotary_dim", None)
    if share is None and rotary_dim is not None:
        share = rotary_dim / cfg.d_head
    return share


def _rope_scaling(settings: dict, text_config: object | None) -> dict | None:
    """The scaling in one layer type's rotary ``settings`` (:func:`_rope_parameters`): ``rope_type`` (transformers
    4's ``type``) and the factors beside it, ``None`` for the default (unscaled) rotation. A llama3, yarn or longrope
    scaling without its original context length gets the one transformers 5 fills in (its
    ``standardize_rope_params``: the config's ``original_max_position_embeddings``, else ``max_position_embeddings``),
    so that a config written for transformers 4 records what 5 reads from it."""
    rope_type = settings.get("rope_type", settings.get("type", "default"))
    if rope_type == "default":
        return None
    # the base is recorded apart; transformers 5 moves partial_rotary_factor (a share of d_head) in, 4 kept it beside
    factors = {
        key: value for key, value in settings.items() if key not in ("type", "rope_theta", "partial_rotary_factor")
    }
    if rope_type in ("llama3", "yarn", "longrope") and text_config is not None:
        original = getattr(text_config, "original_max_position_embeddings", None)
        if original is not None:
            factors["original_max_position_embeddings"] = original
        factors.setdefault("original_max_position_embeddings", getattr(text_config, "max_position_embeddings", None))
    return factors | {"rope_type": rope_type}


def _attn_scale(cfg: object, text_config: object | None) -> float | None:
    """What the model divides attention scores by where its config sets that, ``None`` where it is the square root of
    the head dimension: from a Hugging Face config, Gemma's ``query_pre_attn_scalar`` (scores divided by its square
    root), Granite's ``attention_multiplier`` or MPT's ``softmax_scale`` (scores multiplied by either); from a
    TransformerLens-native model's config ``cfg``, ``attn_scale`` where ``use_attn_scale`` and it is positive (as its
    attention reads them)."""
    if text_config is None:
        scale = getattr(cfg, "attn_scale", -1.0)
        return scale if getattr(cfg, "use_attn_scale", True) and scale > 0 else None
    if getattr(text_config, "query_pre_attn_scalar", None) is not None:
        return math.sqrt(text_config.query_pre_attn_scalar)
    if getattr(text_config, "attention_multiplier", None) is not None:
        return 1.0 / text_config.attention_multiplier
    softmax_scale = _mpt_attention_setting(text_config, "softmax_scale")
    return None if softmax_scale is None else 1.0 / softmax_scale


def _mpt_attention_setting(text_config: object | None, name: str) -> object:
    """The setting ``name`` of MPT's ``attn_config`` (a config of its own, or a dict as written in config.json),
    ``None`` where the config has no such setting."""
    attention = getattr(text_config, "attn_config", None)
    return attention.get(name) if isinstance(attention, dict) else getattr(attention, name, None)


def _logits_scaling(text_config: object | None) -> float | str | None:
    """What the model divides its logits by where its config sets that: Granite's ``logits_scaling``, or one over
    Cohere's ``logit_scale`` (which multiplies them); ``None`` elsewhere. MPT's configs may spell ``logit_scale`` as
    a word (``inv_sqrt_d_model``, for its remote code), recorded as written."""
    if getattr(text_config, "logits_scaling", None) is not None:
        return text_config.logits_scaling
    logit_scale = getattr(text_config, "logit_scale", None)
    if isinstance(logit_scale, int | float) and not isinstance(logit_scale, bool):
        return 1.0 / logit_scale
    return logit_scale


def _sliding_windows(text_config: object | None, n_layers: int) -> object:
    """The attention window of each layer (``None``: full attention) as a record holds it: one value where every
    layer has the same, else the list by layer. A Hugging Face config's ``sliding_window`` serves the layers its
    ``layer_types`` call ``sliding_attention`` (or, in a transformers 4 config without them, those its
    ``sliding_window_pattern`` picks, Gemma 3's and Cohere 2's, every other layer from the first, Gemma 2's, whose
    config said nothing, or those from ``max_window_layers`` on, Qwen 2's, Qwen 3's and dots1's, as transformers 5
    converts them), every layer where it names no types, none where ``use_sliding_window`` is off (Qwen 2).
    TransformerLens-native models attend in full."""
    window = getattr(text_config, "sliding_window", None)
    if window is None or getattr(text_config, "use_sliding_window", True) is False:
        return None
    layer_types = getattr(text_config, "layer_types", None)
    pattern = getattr(text_config, "sliding_window_pattern", None)
    if pattern is None and getattr(text_config, "model_type", None) == "gemma2":
        pattern = 2
    if layer_types is None and pattern:
        layer_types = ["sliding_attention" if (layer + 1) % pattern else "full_attention" for layer in range(n_layers)]
    # transformers 5 converts Qwen 2 MoE's max_window_layers otherwise (every other layer below it), not followed here
    if layer_types is None and getattr(text_config, "model_type", None) in ("qwen2", "qwen3", "dots1"):
        first_windowed = text_config.max_window_layers
        layer_types = [
            "sliding_attention" if layer >= first_windowed else "full_attention" for layer in range(n_layers)
        ]
    if not layer_types:
        return _normalised(window)
    return _by_layer_type(
        {str(layer): window if kind == "sliding_attention" else None for layer, kind in enumerate(layer_types)},
        as_list=True,
    )


def _by_layer_type(values: dict[str, object], as_list: bool = False) -> object:
    """One setting of each layer type (normalised) as a record holds it: the one value where all types share it (or
    the model has one type), else the dict by layer type (the list, ``as_list``, where the keys are layer indices in
    order), so that a model whose config lists a setting per type records what one whose config lists it once
    records."""
    normalised = {layer_type: _normalised(value) for layer_type, value in values.items()}
    distinct = list(normalised.values())
    if all(value == distinct[0] for value in distinct):
        return distinct[0]
    return distinct if as_list else _normalised(normalised)


def _normalised(value: object) -> object:
    """``value`` as :func:`model_config` records it: strings lower-case, numbers float, dicts by sorted key, tuples
    as lists."""
    if isinstance(value, str):
        return value.strip().lower()
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, dict):
        return {str(key): _normalised(value[key]) for key in sorted(value)}
    if isinstance(value, list | tuple):
        return [_normalised(item) for item in value]
    return str(value)


class ModelConfigUnchecked(UserWarning):
    """A mask or checkpoint written before model records held the model's ``config`` (:func:`model_config`), or some
    of its fields (:data:`FIELDS_ADDED_LATER`): it loads, its weights, dimensions and the settings it records
    compared, but the others could not be."""


def comparable_models(first: dict, second: dict, source: str) -> tuple[dict, dict]:
    """Two model records (:func:`modmask_lens.masks.identity.fingerprint`) as they can be compared: both without
    ``config`` where one predates it (with a :class:`ModelConfigUnchecked` warning that names ``source`` and the
    fields left unchecked), else with their configs as :func:`model_config` writes them now: without a group of
    :data:`FIELDS_ADDED_LATER` the other holds where one predates it (holds none of the group; with the same warning,
    naming them), every other config field compared, also one that only one side holds.

    Example:
        >>> import warnings
        >>> with warnings.catch_warnings():
        ...     warnings.simplefilter("ignore")
        ...     comparable_models({"n_layers": 2}, {"n_layers": 2, "config": {"act_fn": "relu"}}, "mask.safetensors")
        ({'n_layers': 2}, {'n_layers': 2})
    """
    if "config" in first and "config" in second:
        return _without_unrecorded_fields(_with_comparable_config(first), _with_comparable_config(second), source)
    if "config" not in first and "config" not in second:
        return first, second
    warnings.warn(
        f"{source} records no model config (the model's 'config' entry: it was written before modmask-lens recorded "
        f"one), so {', '.join(MODEL_CONFIG_FIELDS)} were not compared with the model it was made for, only the "
        "weights and dimensions; if this model may run with other settings, retrain the mask on it",
        ModelConfigUnchecked,
        stacklevel=3,
    )
    return (
        {key: value for key, value in first.items() if key != "config"},
        {key: value for key, value in second.items() if key != "config"},
    )


def _without_unrecorded_fields(first: dict, second: dict, source: str) -> tuple[dict, dict]:
    """``first`` and ``second`` (records with a ``config``) without the fields of each group of
    :data:`FIELDS_ADDED_LATER` that one holds and the other, written before that group, could not, with a
    :class:`ModelConfigUnchecked` warning naming them; without ``rope_theta`` too where the older one, written before
    the first group, read a model with a base per layer type under transformers 4 (one number, the full-attention
    base) and it equals that base; without ``sliding_window`` where the older one, written before the third, read
    Gemma 2's or Qwen 2's under transformers 4 before layer types (one number for every layer) and it is the window
    of every sliding layer."""
    configs = [first["config"], second["config"]]
    if not all(isinstance(config, dict) for config in configs):
        return first, second
    unrecorded, named = [], []
    for position, group in enumerate(FIELDS_ADDED_LATER):
        held = [[field for field in group if field in config] for config in configs]
        if bool(held[0]) == bool(held[1]):
            continue
        unrecorded += held[0] or held[1]
        named += held[0] or held[1]
        older, newer = configs if not held[0] else configs[::-1]
        base, bases = older.get("rope_theta"), newer.get("rope_theta")
        # Those records read transformers 4's top-level rope_theta alone, where a model has a base per layer type:
        # Gemma 3's full-attention base, none of ModernBERT's (global_rope_theta). Compared on it, the rest named
        # unchecked.
        if position == 0 and isinstance(bases, dict) and (base is None or base == bases.get("full_attention")):
            unchecked_types = [layer_type for layer_type in bases if base is None or layer_type != "full_attention"]
            unrecorded = ["rope_theta", *unrecorded]
            named = [f"rope_theta of {', '.join(unchecked_types)} layers", *named]
        if position == 2 and _one_window_for_every_sliding_layer(
            older.get("sliding_window"), newer.get("sliding_window")
        ):
            unrecorded = ["sliding_window", *unrecorded]
            named = ["sliding_window of full-attention layers", *named]
    if not unrecorded:
        return first, second
    warnings.warn(
        f"{source} records the model config without {', '.join(named)} (written before modmask-lens recorded "
        "them), so those were not compared with the model it was made for, only the other settings, the weights and "
        "dimensions; if this model may run with other settings, retrain the mask on it",
        ModelConfigUnchecked,
        stacklevel=4,
    )
    return tuple(
        record | {"config": {key: value for key, value in config.items() if key not in unrecorded}}
        for record, config in zip((first, second), configs)
    )


def _one_window_for_every_sliding_layer(window: object, windows: object) -> bool:
    """Whether ``window``, one number in a record written before the third group of :data:`FIELDS_ADDED_LATER`, is
    what those records read from a transformers 4 Gemma 2 or Qwen 2 config (no layer types: its window served every
    layer) of the model whose windows by layer are ``windows`` now: that window on some layers, full attention on the
    others."""
    return (
        isinstance(windows, list)
        and window is not None
        and None in windows
        and all(layer_window in (window, None) for layer_window in windows)
    )


def _with_comparable_config(record: dict) -> dict:
    """``record`` with its ``config`` as :func:`model_config` writes it now, where an earlier version wrote the same
    settings otherwise: a rotary base listed per layer type though all types share it is one number."""
    config = record.get("config")
    if not isinstance(config, dict) or not isinstance(config.get("rope_theta"), dict):
        return record
    return record | {"config": config | {"rope_theta": _by_layer_type(config["rope_theta"])}}
