"""One self-contained offline HTML report for a set of masks on a model: summary, circuit and overlap graphs,
attention through masks, plots, tables, the configuration and the library versions (``modmask-lens report``)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path

import pandas as pd
import torch
from jaxtyping import Int
from torch import Tensor

from modmask_lens.analysis import mask_accuracy, pairwise_overlap
from modmask_lens.analysis.accuracy import own_accuracy
from modmask_lens.analysis.circuit_graph import circuit_graph, norm_reading, undrawable_reason
from modmask_lens.core.bridge import Bridge
from modmask_lens.core.data import SubtaskData, check_context
from modmask_lens.core.encoding import check_known_words
from modmask_lens.masks.binary import BinaryMask
from modmask_lens.masks.io import check_labels, library_version, load_masks, mask_labels
from modmask_lens.masks.mask_set import MaskSet
from modmask_lens.masks.objectives import AnswerCrossEntropy, Objective, describe_objective
from modmask_lens.probes.analysis import (
    ProbeEvaluation,
    error_attribution,
    routing_information,
    routing_table,
)
from modmask_lens.viz.attention_patterns import FULL, attention_patterns, inverse_label
from modmask_lens.viz.attention_view import AttentionView
from modmask_lens.viz.colors import series_colors
from modmask_lens.viz.graph_view import CircuitView, OverlapView
from modmask_lens.viz.html import Section, TableView, View, escape, write_page
from modmask_lens.viz.plots import (
    accuracy_table,
    iou_heatmap,
    kept_fraction_plot,
    logit_histogram,
    removal_table,
    routing_heatmap,
)


def versions() -> dict[str, str]:
    """Versions of the libraries a report was made with."""
    return {
        "modmask-lens": library_version(),
        "transformer-lens": version("transformer-lens"),
        "torch": torch.__version__,
        "circuitsvis": version("circuitsvis"),
    }


def report_views(
    bridge: Bridge,
    masks: Mapping[str, MaskSet | BinaryMask],
    prompt: Int[Tensor, " pos"],
    data: Mapping[str, SubtaskData] | None = None,
    token_labels: list[str] | None = None,
    settings: Mapping[str, object] | None = None,
    max_edges: int = 60,
    probe: ProbeEvaluation | None = None,
    objective: Objective = AnswerCrossEntropy(),
) -> list[View]:
    """Every view of the report, in order (:func:`write_report` for the arguments)."""
    if not masks:
        raise ValueError("a report needs at least one mask; pass {name: mask_set}")
    check_prompt(bridge, prompt)
    # a mask is scored on the subtask it was trained for (its name), else on the data its label names
    subtask_of = {label: mask.name if mask.name in (data or {}) else label for label, mask in masks.items()}
    # Each mask under its label, also in the views that read a mask's own name (two seeds of one subtask stay apart).
    binaries = {
        name: dataclasses.replace(mask.binary() if isinstance(mask, MaskSet) else mask, name=name)
        for name, mask in masks.items()
    }
    mask_sets = {name: mask for name, mask in masks.items() if isinstance(mask, MaskSet)}
    patterns = attention_patterns(bridge, prompt, binaries, token_labels)
    undrawable = undrawable_reason(next(iter(binaries.values())))  # one model, so one answer for every mask
    accuracy = mask_accuracy(bridge, binaries, data, objective=objective) if data else None
    kept = pd.concat([binary.kept_fraction(by="layer_role") for binary in binaries.values()], ignore_index=True)

    views: list[View] = [
        Section("Summary"),
        TableView(
            _summary(binaries, accuracy, subtask_of),
            "Masks",
            shade=["kept_fraction", "accuracy full", "accuracy mask", "accuracy inverse"],
        ),
    ]
    if undrawable is None:
        views += [Section("Circuits", "One graph per mask, laid out by layer.")]
        views += [CircuitView(circuit_graph(binary), patterns, max_edges) for binary in binaries.values()]
    else:
        views += [Section("Circuits", f"No circuit graph: the graph {undrawable}. The plots show each layer and role.")]
    if len(binaries) > 1:
        overlap = pairwise_overlap(binaries, by="layer_role")
        views.append(Section("Overlap", "Which components the subtasks share."))
        views.append(
            OverlapView.from_masks(binaries) if undrawable is None else TableView(overlap, "IoU per layer and role")
        )
    if patterns.layers:
        views += [
            Section(
                "Attention through masks",
                "circuitsvis attention of the full model, each mask, and its inverse, on the same prompt.",
            )
        ]
        views += [
            AttentionView(patterns, [FULL, name, inverse_label(name)], f"Attention through {name}") for name in binaries
        ]
    else:
        views += [Section("Attention through masks", patterns.missing_note())]
    views += [Section("Plots"), kept_fraction_plot(kept)]
    if len(binaries) > 1:
        views.append(iou_heatmap(overlap))
    if mask_sets:
        views.append(logit_histogram(mask_sets, series_colors(binaries)))  # the colours of the views of every mask
    if accuracy is not None:
        exact = type(objective) is AnswerCrossEntropy
        metric = "exact-match accuracy" if exact else f"{objective.metric} ({objective.name})"
        views.append(accuracy_table(accuracy, metric, subtask_of))
        if accuracy["subtask"].nunique() > 1:
            views.append(removal_table(accuracy, metric))
    if probe is not None:
        views += [
            Section(
                "Gated-module probe",
                "Which expert the probe's gate picks for each subtask (argmax "
                "gate), how much that routing tells about the subtask, and whose "
                "the probe's errors are.",
            ),
            routing_heatmap(routing_table(probe)),
            TableView(routing_information(probe), "Routing information (bits)"),
            TableView(error_attribution(probe), "Error attribution"),
        ]
    views += [
        Section("Configuration"),
        TableView(_configuration(binaries, mask_sets, settings), "Model, masks and settings"),
    ]
    return views


def write_report(
    path: str | Path,
    bridge: Bridge,
    masks: Mapping[str, MaskSet | BinaryMask],
    prompt: Int[Tensor, " pos"],
    data: Mapping[str, SubtaskData] | None = None,
    token_labels: list[str] | None = None,
    title: str = "modmask-lens report",
    settings: Mapping[str, object] | None = None,
    max_edges: int = 60,
    probe: ProbeEvaluation | None = None,
    objective: Objective = AnswerCrossEntropy(),
) -> Path:
    """Write one self-contained HTML file (no network needed to open it) for a set of masks on a model.

    Args:
        path: the HTML file to write.
        bridge: the model the masks were trained on.
        masks: label (the subtask's name, or any other) -> mask set (adds the logit histogram and training
            settings) or binary mask; a mask is scored on the data of its own ``name`` (the subtask it was trained
            for), or, where ``data`` has none of that name, on the data its label names.
        prompt: token ids of the prompt whose attention the report shows (no batch axis).
        data: subtask name -> evaluation data, for accuracy of the full model, each mask and its inverse.
        token_labels: display strings of the prompt's tokens (default: the tokenizer's tokens, else the ids).
        title: page title.
        settings: anything else to record in the configuration table (e.g. the command that made the masks).
        max_edges: strongest edges drawn per circuit graph.
        probe: a gated-module probe's :func:`~modmask_lens.probes.evaluate_probe` result on the same model, for
            its routing table (subtask x expert), routing information and error attribution.
        objective: what the masks were trained to keep; the accuracy columns hold its metric on ``data`` (exact
            match by default; cosine for :class:`~modmask_lens.HiddenState`).

    Returns:
        ``path``.

    Example:
        >>> write_report("report.html", bridge, mask_sets, torch.tensor([3, 7, 10]), data=subtasks)  # doctest: +SKIP
    """
    views = report_views(bridge, masks, prompt, data, token_labels, settings, max_edges, probe, objective)
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    header = (
        f'<header class="mm-view"><h1>{escape(title)}</h1><p class="mm-caption">{escape(mask_kind(masks))} '
        f"(the differentiable masks of Csordás et al. 2021) of {escape(', '.join(masks))}. Generated {generated} with "
        + ", ".join(f"{escape(name)} {escape(number)}" for name, number in versions().items())
        + ". This file is self-contained and works offline.</p></header>"
    )
    return write_page(path, title, views, header)


GRANULARITY_NAMES = {"weight": "Per-weight", "neuron": "Neuron", "head": "Head", "matrix": "Per-matrix"}


def mask_kind(masks: Mapping[str, MaskSet | BinaryMask]) -> str:
    """What the report's header calls its masks: their granularity and, if not the default, their objective
    (``"Head masks trained on hidden_state (hook_name=...)"``); binary masks alone do not record either."""
    mask_sets = [mask for mask in masks.values() if isinstance(mask, MaskSet)]
    if len(mask_sets) < len(masks):
        return "Binary masks"
    granularities = sorted({mask.config.granularity for mask in mask_sets})
    kind = " and ".join(GRANULARITY_NAMES[granularity] for granularity in granularities) + " masks"
    objectives = sorted({describe_objective(mask.objective) for mask in mask_sets})
    if objectives != [describe_objective(None)]:
        kind += " trained on " + "; ".join(objectives)
    return kind


def parse_prompt(bridge: Bridge, prompt: str, token_ids: bool = False) -> Int[Tensor, " pos"]:
    """Token ids of a prompt: text for the model's tokenizer, digits included (as TransformerLens's ``to_tokens``
    reads a string), or, with ``token_ids``, space-separated integer token ids (``"3 7 10"``). Which one is never
    guessed from the prompt: ``"3 7"`` is the tokens of the text "3 7" unless ``token_ids`` says otherwise.

    Raises:
        ValueError: the prompt is empty, holds ids outside the model's vocabulary or words its tokenizer does not
            know, is longer than the model's context, is text for a model without a usable tokenizer, or, with
            ``token_ids``, holds a word that is not an integer.
    """
    words = prompt.split()
    if not words:
        raise ValueError(
            "the prompt is empty; give text for the model's tokenizer, or token ids with --prompt-ids, e.g. "
            "--prompt '3 7 10' --prompt-ids"
        )
    if token_ids:
        ids = read_token_ids(prompt)
    else:
        tokenizer = getattr(bridge, "tokenizer", None)
        if tokenizer is None or len(tokenizer) < 2:
            raise ValueError(
                f"the model has no usable tokenizer to encode {prompt!r}; give the prompt as space-separated "
                "token ids with --prompt-ids, e.g. --prompt '3 7 10 3 12' --prompt-ids "
                "(report_from_files(..., prompt_ids=True))"
            )
        ids = tokenizer(prompt)["input_ids"]
        check_known_words(tokenizer, [prompt], [ids])
    prompt_ids = torch.tensor(ids)
    check_prompt(bridge, prompt_ids)
    return prompt_ids


def read_token_ids(prompt: str) -> list[int]:
    """The integers of a prompt of space-separated token ids (``--prompt-ids``), read without the model.

    Raises:
        ValueError: a word of the prompt is not an integer.

    Example:
        >>> read_token_ids("3 7 10")
        [3, 7, 10]
    """
    words = prompt.split()
    not_ids = [word for word in words if not word.lstrip("-").isdigit()]
    if not_ids:
        raise ValueError(
            f"--prompt-ids reads the prompt as space-separated token ids, but {not_ids} are not integers; give "
            "ids, e.g. --prompt '3 7 10' --prompt-ids, or leave out --prompt-ids to tokenize the text"
        )
    return [int(word) for word in words]


def check_prompt(bridge: Bridge, prompt: Int[Tensor, " pos"]) -> None:
    """Refuse a prompt that is not a non-empty 1-D tensor of the model's token ids within its context.

    Raises:
        ValueError: naming what is wrong and the fix.
    """
    if prompt.ndim != 1 or prompt.numel() == 0 or prompt.is_floating_point():
        raise ValueError(
            f"the prompt must be a non-empty 1-D tensor of token ids (no batch axis), got {prompt.dtype} of shape "
            f"{tuple(prompt.shape)}; e.g. torch.tensor([3, 7, 10])"
        )
    outside = [token for token in prompt.tolist() if not 0 <= token < bridge.cfg.d_vocab]
    if outside:
        raise ValueError(
            f"the prompt's token ids {outside} are outside the model's vocabulary [0, {bridge.cfg.d_vocab})"
        )
    check_context(bridge, len(prompt), "the prompt")


def report_from_files(
    path: str | Path,
    model: str | Path,
    mask_files: Sequence[str | Path],
    prompt: str,
    title: str = "modmask-lens report",
    labels: Sequence[str] | None = None,
    tasks: Sequence[str] = (),
    eval_limit: int = 500,
    prompt_ids: bool = False,
    prepend_bos: bool = False,
) -> Path:
    """:func:`write_report` for a model and saved mask files (what ``modmask-lens report`` runs).

    Args:
        path: the HTML file to write.
        model: a zoo model name, a local Hugging Face model folder, or (online) a hub id, as every command takes.
        mask_files: ``.safetensors`` files written by :func:`~modmask_lens.save_masks` for this model.
        prompt: text for the model's tokenizer, digits included; with ``prompt_ids``, space-separated token ids
            (:func:`parse_prompt`).
        labels: one label per mask file (default: the subtask names, with the file's name where two masks share
            one; :func:`~modmask_lens.masks.io.mask_labels`).
        tasks: subtasks to score the masks on, as ``masks train --task`` takes them (``scan/jump``,
            ``file.jsonl:test``): the report then holds the accuracy table of the full model, each mask and its
            inverse on the first ``eval_limit`` examples of each (a mask meets its own subtask by name).
        prepend_bos: start each of ``tasks``' pairs with the tokenizer's BOS token, as the masks were trained.

    Raises:
        ValueError: ``eval_limit`` is below 1, ``labels`` are not one distinct label per file, ``prompt_ids`` and
            a word of ``prompt`` is not an integer, or ``path`` is one of ``mask_files`` or of the task files
            (checked before the model loads).
    """
    from modmask_lens.loading import load_bridge, load_subtask, task_file

    if eval_limit < 1:
        raise ValueError(f"eval_limit must be at least 1, got {eval_limit}")
    check_labels(labels, mask_files)
    if prompt_ids:
        read_token_ids(prompt)
    # Before the model loads, and never replace the masks or the task data the report reads.
    inputs = {"mask file": mask_files, "task file": [task_file(task) for task in tasks]}
    for kind, files in inputs.items():
        for file in files:
            if file is not None and Path(path).exists() and Path(file).exists() and Path(path).samefile(file):
                raise ValueError(
                    f"the report's file {path} is the {kind} {file}: writing it would replace the {kind}; name "
                    "another HTML file, e.g. --out report.html"
                )
    bridge, tokenizer = load_bridge(str(model))
    # keyed by label, each keeping its subtask's name: the accuracy of a mask is read on its own subtask
    loaded = [load_masks(file, bridge) for file in mask_files]
    mask_sets = dict(zip(mask_labels([mask_set.name for mask_set in loaded], mask_files, labels), loaded))
    subtasks = [load_subtask(task, tokenizer, prepend_bos=prepend_bos).head(eval_limit) for task in tasks]
    settings = {"model": str(model), "mask files": ", ".join(str(file) for file in mask_files)}
    if tasks:
        settings["scored on"] = ", ".join(f"{data.name} ({len(data)} examples)" for data in subtasks)
    return write_report(
        path,
        bridge,
        mask_sets,
        parse_prompt(bridge, prompt, prompt_ids),
        data={data.name: data for data in subtasks} or None,
        title=title,
        settings=settings,
    )


def _summary(
    binaries: Mapping[str, BinaryMask], accuracy: pd.DataFrame | None, subtask_of: Mapping[str, str]
) -> pd.DataFrame:
    rows = [
        {"mask": name, "kept": binary.count, "total": binary.total, "kept_fraction": binary.count / binary.total}
        for name, binary in binaries.items()
    ]
    summary = pd.DataFrame(rows)
    if accuracy is None:
        return summary
    own = own_accuracy(accuracy, subtask_of).drop(columns="subtask")
    own = own.rename(columns=lambda condition: f"accuracy {condition}")
    return summary.merge(own, left_on="mask", right_index=True, how="left")


def _configuration(
    binaries: Mapping[str, BinaryMask], mask_sets: Mapping[str, MaskSet], settings: Mapping[str, object] | None
) -> pd.DataFrame:
    """(scope, setting, value) rows: library versions, the model, each mask's configuration, and ``settings``."""
    origin = next(iter(binaries.values())).origin
    rows = [("library", name, number) for name, number in versions().items()]
    rows += [("model", "adapter", origin.adapter), ("model", "weights", origin.mode)]
    rows.append(("model", "norms in the circuit view", norm_reading(next(iter(binaries.values())))))
    rows += [
        ("model", key, value if isinstance(value, str | int) else json.dumps(value))
        for key, value in origin.model.items()
    ]
    for name, mask_set in mask_sets.items():
        rows += [(name, f"mask {key}", json.dumps(value)) for key, value in mask_set.config.to_dict().items()]
        rows.append((name, "objective", json.dumps(mask_set.objective)))
        rows += [(name, f"training {key}", json.dumps(value)) for key, value in mask_set.train_config.items()]
    rows += [("report", key, str(value)) for key, value in (settings or {}).items()]
    return pd.DataFrame(rows, columns=["scope", "setting", "value"])
