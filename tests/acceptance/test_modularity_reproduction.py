"""BIMT's toy tasks, module finding, connectome SVGs and the reproduction entry point (few steps)."""

from __future__ import annotations

import json
import math
from xml.etree import ElementTree

import pytest
import torch
from typer.testing import CliRunner

from experiments.bimt import reproduce_independence
from modmask_lens.cli import app
from modmask_lens.modularity import (
    BimtConfig,
    BimtMLP,
    connected_modules,
    mlp_connectome,
    transformer_block_connectome,
    unit_graph_of,
)
from modmask_lens.tasks.bimt_tasks import independence_data, independence_targets, modular_addition_data
from modmask_lens.viz import connectome_svg

SVG = "{http://www.w3.org/2000/svg}"


def test_independence_targets_match_the_formulas():
    inputs = torch.tensor([[0.5, -1.0, 0.25, 0.5]])
    assert independence_targets(inputs).tolist()[0] == pytest.approx([0.75**3, 1.0 + math.sin(math.pi / 2)])
    split = independence_data()
    assert split.train_inputs.shape == (100, 4) and split.test_targets.shape == (100, 2)
    assert split.train_inputs.abs().max() <= 1


def test_modular_addition_split_covers_every_pair_once():
    split = modular_addition_data(modulus=7, train_fraction=0.8)
    pairs = torch.cat([split.train_tokens, split.test_tokens])
    assert len({tuple(pair) for pair in pairs.tolist()}) == 49 and len(split.train_tokens) == int(49 * 0.8)
    assert torch.equal(split.train_labels, split.train_tokens.sum(1) % 7)


def test_connected_modules_finds_two_disconnected_blocks():
    mlp = BimtMLP((4, 4, 2), seed=0)
    with torch.no_grad():
        mlp.linears[0].weight.copy_(torch.tensor([[1.0, 0, 1, 0], [0, 1, 0, 1], [1, 0, 0, 0], [0, 0, 0, 0.001]]))
        mlp.linears[1].weight.copy_(torch.tensor([[1.0, 0, 1, 0], [0, 1, 0, 0]]))
    modules = connected_modules(mlp.unit_graph(), relative_threshold=0.05)
    members = {module: set(zip(group["axis"], group["unit"])) for module, group in modules.groupby("module")}
    assert list(members.values()) == [
        {("input", 0), ("input", 2), ("hidden.0", 0), ("hidden.0", 2), ("output", 0)},
        {("input", 1), ("input", 3), ("hidden.0", 1), ("output", 1)},
    ]


def test_an_all_zero_matrix_joins_no_units():
    mlp = BimtMLP((4, 6, 6, 2), seed=0)
    with torch.no_grad():
        mlp.linears[1].weight.zero_()  # nothing passes from the first hidden layer to the second
    modules = connected_modules(mlp.unit_graph())
    axes_of = {module: set(group["axis"]) for module, group in modules.groupby("module")}
    assert list(axes_of.values()) == [{"input", "hidden.0"}, {"hidden.1", "output"}]


def test_mlp_connectome_is_a_standalone_svg_with_one_line_per_visible_weight():
    mlp = BimtMLP((3, 4, 2), seed=0)
    with torch.no_grad():
        for linear in mlp.linears:
            linear.weight.fill_(1.0)
        mlp.linears[0].weight[0, 0] = -5.0  # largest of its matrix, negative
        mlp.linears[0].weight[1, 1] = 5e-3  # below 1% of the largest: not drawn
    svg = connectome_svg(mlp_connectome(mlp.unit_graph()), title="a <b>")
    root = ElementTree.fromstring(svg)
    lines = root.findall(f".//{SVG}line")
    assert len(lines) == 12 - 1 + 8 and len(root.findall(f".//{SVG}circle")) == 3 + 4 + 2
    widest = max(lines, key=lambda line: float(line.get("stroke-width")))
    assert widest.get("stroke") == "#c0392b" and float(widest.get("stroke-width")) == 3.0
    assert "http" not in svg.replace('xmlns="http://www.w3.org/2000/svg"', "")


def test_transformer_block_connectome_draws_every_matrix_of_the_block(gpt2_bridge):
    graph = unit_graph_of(gpt2_bridge)
    drawn = transformer_block_connectome(graph, 1)
    assert {item.edge.role for item in drawn} == {"W_Q", "W_K", "W_V", "W_O", "W_in", "W_out"}
    assert ElementTree.fromstring(connectome_svg(drawn, min_relative=0.5)).tag == f"{SVG}svg"
    with pytest.raises(ValueError, match="blocks are 0 .. 1"):
        transformer_block_connectome(graph, 5)


def test_reproduce_independence_reports_error_and_modules():
    _, result, history = reproduce_independence(BimtConfig(steps=200, swap_every=100, log_every=100))
    assert result["test_mse"] < history["task_loss"].iloc[0]
    assert all(set(module["inputs"]) <= {"x1", "x2", "x3", "x4"} for module in result["modules"])
    assert result["modules_with_an_output"] >= 1


def test_reproduction_command_writes_result_history_and_connectome(tmp_path):
    result = CliRunner().invoke(
        app, ["reproduce", "modular_addition", "--steps", "20", "--out", str(tmp_path), "--frames"]
    )
    assert result.exit_code == 0, result.output
    result = json.loads((tmp_path / "result.json").read_text())
    assert 0 <= result["test_accuracy"] <= 1 and len(result["embedding_column_norms"]) == 32
    assert (tmp_path / "history.csv").read_text().startswith("step,task_loss")
    assert ElementTree.parse(tmp_path / "connectome.svg").getroot().tag == f"{SVG}svg"
    assert sorted(path.name for path in (tmp_path / "frames").iterdir()) == ["frame_000000.svg", "frame_000019.svg"]
