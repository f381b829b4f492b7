"""Views: attention patterns through masks, plots, graph views and their offline HTML (no browser needed here)."""

from __future__ import annotations

import json
import re
from xml.etree import ElementTree

import pandas as pd
import pytest
import torch

from modmask_lens import MaskSet, masked
from modmask_lens.analysis import circuit_graph, pairwise_overlap
from modmask_lens.viz import (
    AttentionView,
    CircuitView,
    OverlapView,
    TableView,
    accuracy_table,
    attention_patterns,
    iou_heatmap,
    kept_fraction_plot,
    logit_histogram,
    removal_table,
    routing_heatmap,
)
from modmask_lens.viz.attention_patterns import FULL
from modmask_lens.viz.html import page_html
from modmask_lens.viz.report import parse_prompt

SVG_NAMESPACES = {
    "http://www.w3.org/2000/svg",
    "http://www.w3.org/1999/xhtml",
    "http://www.w3.org/1999/xlink",
    "http://www.w3.org/XML/1998/namespace",
    "http://www.w3.org/1998/Math/MathML",
}


def random_mask_set(bridge, name: str, seed: int) -> MaskSet:
    """A mask set with standard-normal logits (about half the weights kept), no training needed."""
    mask_set = MaskSet.for_bridge(bridge, name=name)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for logit in mask_set.logits.values():
            logit.copy_(torch.randn(logit.shape, generator=generator))
    return mask_set


def urls_outside_the_page(html: str) -> set[str]:
    """Absolute URLs in markup or script that are not XML namespace names (those are never fetched)."""
    return set(re.findall(r"(?:https?:)?//[A-Za-z0-9.-]+\.[a-z]{2,}[^\s\"'<>)]*", html)) - SVG_NAMESPACES


@pytest.fixture
def two_masks(gpt2_bridge):
    return {name: random_mask_set(gpt2_bridge, name, seed) for seed, name in enumerate(["first", "second"])}


def test_all_kept_mask_sees_the_full_models_attention_and_its_inverse_does_not(gpt2_bridge, tokens):
    all_kept = MaskSet.for_bridge(gpt2_bridge, name="all").binary()  # init logit 2 > 0: every weight kept
    patterns = attention_patterns(gpt2_bridge, tokens[0], {"all": all_kept})
    _, cache = gpt2_bridge.run_with_cache(tokens[:1])
    direct = torch.stack([cache[f"blocks.{layer}.attn.hook_pattern"][0] for layer in range(2)])
    assert list(patterns.patterns) == [FULL, "all", "~all"]
    torch.testing.assert_close(patterns.patterns[FULL], direct)
    torch.testing.assert_close(patterns.patterns["all"], direct)
    assert not torch.allclose(patterns.patterns["~all"], direct)
    torch.testing.assert_close(patterns.patterns["~all"].sum(-1), torch.ones(2, 4, tokens.shape[1]))
    assert patterns.tokens == [str(token) for token in tokens[0].tolist()]


def test_circuit_view_draws_every_node_and_only_the_strongest_edges(two_masks):
    graph = circuit_graph(two_masks["first"].binary())
    svg = CircuitView(graph, max_edges=10).svg()
    nodes = re.findall(r'class="mm-node[^"]*" data-node="([^"]+)"', svg)
    assert nodes == [
        "embed",
        *[f"L0H{h}" for h in range(4)],
        "L0MLP",
        *[f"L1H{h}" for h in range(4)],
        "L1MLP",
        "unembed",
    ]
    drawn = set(re.findall(r'class="mm-edge" data-source="([^"]+)" data-target="([^"]+)"', svg))
    strongest = graph.edges.nlargest(10, "weight")
    assert drawn == set(zip(strongest["source"], strongest["target"]))
    ElementTree.fromstring(svg)  # well-formed standalone SVG


def test_circuit_view_embeds_the_heads_patterns_under_full_mask_and_inverse(gpt2_bridge, two_masks, tokens):
    binaries = {name: mask.binary() for name, mask in two_masks.items()}
    patterns = attention_patterns(gpt2_bridge, tokens[0], binaries)
    html = CircuitView(circuit_graph(binaries["first"]), patterns)._repr_html_()
    for condition in (FULL, "first", "~first"):
        assert f'"label":"{condition}"' in html
    assert '"label":"second"' not in html
    assert urls_outside_the_page(html) == set()


def test_overlap_view_marks_nodes_shared_only_when_masks_share_weights(two_masks):
    first = two_masks["first"].binary()
    identical = OverlapView.from_masks({"a": first, "b": first}).svg()
    disjoint = OverlapView.from_masks({"a": first, "b": ~first}).svg()
    # every masked node: 8 heads, 2 MLPs and the unembedding (W_E is not masked by default)
    assert identical.count('class="mm-node mm-shared"') == 11
    assert disjoint.count("mm-shared") == 0
    assert identical.count('class="mm-overlap-bar"') == 2 * 12


def test_overlap_view_tables_iou_by_layer_and_role(two_masks):
    binaries = {name: mask.binary() for name, mask in two_masks.items()}
    view = OverlapView.from_masks(binaries)
    table = view.iou_table().frame.set_index("component")
    overlap = pairwise_overlap(binaries, by="layer_role")
    assert table.loc["L1 W_Q", "first ∩ second"] == pytest.approx(
        overlap.query("layer == 1 and role == 'W_Q'")["iou"].item()
    )
    assert "IoU by layer and role" in view.body()


def test_kept_fraction_plot_draws_one_bar_per_mask_and_tensor(two_masks):
    kept = pd.concat([mask.binary().kept_fraction(by="layer_role") for mask in two_masks.values()])
    svg = kept_fraction_plot(kept).svg()
    assert svg.count('class="mm-bar"') == len(kept)
    row = kept.iloc[3]
    assert f"{row['mask']} · L{row.layer} {row.role}: {row.kept_fraction:.3f}" in svg


def test_iou_heatmap_has_a_cell_per_pair_and_component(two_masks):
    binaries = {name: mask.binary() for name, mask in two_masks.items()}
    overlap = pairwise_overlap(binaries | {"third": ~binaries["first"]}, by="layer_role")
    svg = iou_heatmap(overlap).svg()
    assert svg.count('class="mm-cell"') == len(overlap)
    assert "first ∩ third · L0 W_Q: 0.00" in svg


def test_logit_histogram_has_one_curve_per_mask_counting_every_logit(two_masks):
    svg = logit_histogram(two_masks).svg()
    assert svg.count('class="mm-histogram"') == 2
    total = sum(logit.numel() for logit in two_masks["first"].logits.values())
    assert f"first: {total} logits" in svg


def test_logit_histogram_marks_each_masks_own_readout_threshold(two_masks):
    """The faithful readout keeps logits above a threshold of its own, not 0 (a walk-through found the line at 0)."""
    first, second = two_masks["first"], two_masks["second"]
    thresholds = {"first": first.threshold, "second": second.threshold}
    try:
        first.threshold, second.threshold = 1.25, -0.5
        svg = logit_histogram(two_masks).svg()
    finally:
        first.threshold, second.threshold = thresholds["first"], thresholds["second"]
    assert svg.count('class="mm-threshold"') == 2
    assert "first keeps logit &gt; 1.25" in svg and "second keeps logit &gt; -0.5" in svg


def test_logit_histogram_counts_what_the_logits_stand_for(gpt2_bridge, two_masks):
    """The y-axis read "fraction of weights" for head and neuron masks too, whose logits are heads and neurons."""
    from modmask_lens import MaskConfig

    heads = MaskSet.for_bridge(gpt2_bridge, MaskConfig(granularity="head"), name="heads")
    neurons = MaskSet.for_bridge(gpt2_bridge, MaskConfig(granularity="neuron"), name="neurons")
    assert ">fraction of heads<" in logit_histogram({"heads": heads}).svg()
    assert ">fraction of neurons<" in logit_histogram({"neurons": neurons}).svg()
    assert ">fraction of weights<" in logit_histogram(two_masks).svg()
    mixed = logit_histogram({"heads": heads, "first": two_masks["first"]}).svg()
    assert ">fraction of units<" in mixed and "fraction of weights" not in mixed


def test_a_mask_has_one_colour_in_every_view_of_a_report_mixing_mask_sets_and_binary_masks(gpt2_bridge, two_masks):
    """The histogram draws only the mask sets and coloured them by their own order: ``second``, the one mask set
    after a binary mask, was blue there and orange in the bar chart and overlap."""
    from modmask_lens.viz.colors import subtask_color
    from modmask_lens.viz.report import report_views

    masks = {"first": two_masks["first"].binary(), "second": two_masks["second"]}
    views = {
        view.title: view.svg()
        for view in report_views(gpt2_bridge, masks, torch.tensor([3, 7]))
        if hasattr(view, "svg")
    }
    orange = subtask_color(1)  # second's place among the report's masks
    assert re.findall(r'class="mm-histogram"[^>]*stroke="(#\w+)"', views["Mask logits"]) == [orange]
    assert set(re.findall(r'class="mm-threshold"[^>]*stroke="(#\w+)"', views["Mask logits"])) == {orange}
    bars = re.findall(r'class="mm-bar"[^>]*fill="(#\w+)">.*?<title>(\w+) ', views["Kept fraction per layer and role"])
    assert {name: color for color, name in bars} == {"first": subtask_color(0), "second": orange}


def test_accuracy_table_shows_full_mask_and_inverse_per_mask():
    accuracy = pd.DataFrame(
        [
            {"subtask": "a", "mask": pd.NA, "condition": "full", "accuracy": 1.0},
            {"subtask": "a", "mask": "a", "condition": "mask", "accuracy": 0.75},
            {"subtask": "a", "mask": "a", "condition": "inverse", "accuracy": 0.125},
        ]
    )
    table = accuracy_table(accuracy)
    assert table.frame.to_dict("records") == [
        {"mask": "a", "subtask": "a", "full": 1.0, "mask only": 0.75, "inverse": 0.125}
    ]
    assert "<td" in table.body() and "0.125" in table.body()


def test_removal_table_shows_every_subtask_under_each_mask_alone_and_removed():
    rows = [("a", pd.NA, "full", 1.0), ("b", pd.NA, "full", 0.5)]
    rows += [
        ("a", "a", "mask", 0.75),
        ("a", "a", "inverse", 0.125),
        ("b", "a", "mask", 0.25),
        ("b", "a", "inverse", 0.5),
    ]
    accuracy = pd.DataFrame(rows, columns=["subtask", "mask", "condition", "accuracy"])
    table = removal_table(accuracy)
    assert table.frame.to_dict("records") == [
        {"mask": "full model", "condition": "", "a": 1.0, "b": 0.5},
        {"mask": "a", "condition": "mask only", "a": 0.75, "b": 0.25},
        {"mask": "a", "condition": "mask removed", "a": 0.125, "b": 0.5},
    ]
    assert table.shade == ["a", "b"] and "0.125" in table.body()


def test_pages_inline_circuitsvis_once_and_reference_nothing_online(gpt2_bridge, two_masks, tokens, tmp_path):
    binaries = {name: mask.binary() for name, mask in two_masks.items()}
    patterns = attention_patterns(gpt2_bridge, tokens[0], binaries)
    views = [AttentionView(patterns, [FULL, name]) for name in binaries]
    html = page_html("test", views)
    assert html.count("var CircuitsVis=") == 1
    # The bundle mentions URLs in error texts, never loaded (the browser test records every request); what must not
    # appear is anything that loads: CDN imports, source maps, or elements with src/href.
    assert (
        "unpkg" not in html and "sourceMappingURL" not in html and not re.search(r"import[^;]*from\s*['\"]http", html)
    )
    assert not re.search(r"<(?:script|img|link|iframe)[^>]+(?:src|href)=", html)
    path = AttentionView(patterns).save_html(tmp_path / "attention.html")
    assert path.read_text().startswith("<!DOCTYPE html>")


def test_every_view_renders_in_a_notebook_and_as_a_page(two_masks, tmp_path):
    first = two_masks["first"].binary()
    views = [
        CircuitView(circuit_graph(first)),
        OverlapView.from_masks({"a": first, "b": ~first}),
        logit_histogram(two_masks),
        TableView(pd.DataFrame({"x": [0.5]}), "t", shade=["x"]),
    ]
    for index, view in enumerate(views):
        assert view.title in view._repr_html_()
        page = view.save_html(tmp_path / f"view{index}.html").read_text()
        assert page.startswith("<!DOCTYPE html>") and view.title in page
    svg_path = views[0].save_svg(tmp_path / "circuit.svg")
    assert ElementTree.parse(svg_path).getroot().tag == "{http://www.w3.org/2000/svg}svg"


def test_prompts_are_token_ids_or_text_for_the_tokenizer(gpt2_bridge):
    assert parse_prompt(gpt2_bridge, "3 7 10", token_ids=True).tolist() == [3, 7, 10]
    with pytest.raises(ValueError, match="space-separated token ids with --prompt-ids"):
        parse_prompt(gpt2_bridge, "hello world")
    with pytest.raises(ValueError, match="no usable tokenizer to encode '3 7 10'.*--prompt-ids"):
        parse_prompt(gpt2_bridge, "3 7 10")  # digits alone are text too: a model without a tokenizer says so
    with pytest.raises(ValueError, match=r"\['seven'\] are not integers"):
        parse_prompt(gpt2_bridge, "3 seven", token_ids=True)


def test_a_prompt_of_digits_is_text_for_the_tokenizer_unless_token_ids_are_asked_for():
    """A digit-only prompt was read as token ids even where the model has a tokenizer: on a plant, whose tokenizer
    has the digits, "3 7" became ids 3 and 7 ('<unk>', 'max') instead of the tokens of "3" and "7"."""
    from modmask_lens.core.booting import boot_transformers
    from modmask_lens.groundtruth.plants import PLANTS_DIR

    bridge = boot_transformers(str(PLANTS_DIR / "disconnected-add-mul"), device="cpu")
    as_text = parse_prompt(bridge, "3 7").tolist()
    assert as_text == bridge.tokenizer("3 7")["input_ids"]
    assert bridge.tokenizer.convert_ids_to_tokens(as_text) == ["3", "7"]
    assert parse_prompt(bridge, "3 7", token_ids=True).tolist() == [3, 7]


def boot_bert(directory):
    """A tiny BERT (bidirectional attention: every query attends to later keys too)."""
    from transformers import BertConfig, BertForMaskedLM

    from modmask_lens.testing.tiny_models import TINY_HF_SIZES, boot_tiny

    torch.manual_seed(0)
    return boot_tiny(BertForMaskedLM(BertConfig(**TINY_HF_SIZES)), directory)


def hf_attentions(directory, prompt: torch.Tensor) -> torch.Tensor:
    """[layer, head, query, key] attention of the saved Hugging Face model itself (eager), not the bridge's."""
    from transformers import AutoModelForMaskedLM

    model = AutoModelForMaskedLM.from_pretrained(directory, attn_implementation="eager").eval()
    with torch.no_grad():
        attentions = model(prompt[None], output_attentions=True).attentions
    return torch.stack([attention[0] for attention in attentions])


def test_bidirectional_attention_is_shown_above_the_diagonal(gpt2_bridge, tmp_path):
    """A BERT query attends to later keys; the attention view must not blank them (circuitsvis ``maskUpperTri``
    hid 79% of query 0's attention in layer 0 of this tiny BERT). A causal model's upper triangle stays blanked."""
    bridge = boot_bert(tmp_path / "bert")
    prompt = torch.tensor([2, 5, 6, 7, 3])
    patterns = attention_patterns(bridge, prompt, {"m": MaskSet.for_bridge(bridge, name="m").binary()})
    expected = hf_attentions(tmp_path / "bert", prompt)
    assert float(expected.triu(diagonal=1).sum(-1)[0, 0, 0]) > 0.5  # a real share of the attention is ahead
    assert patterns.patterns[FULL] == pytest.approx(expected, abs=1e-5)
    props = re.search(r"AttentionHeads, (\{.*?\})\);", AttentionView(patterns, [FULL]).body())[1]
    shown = json.loads(props)
    assert shown["maskUpperTri"] is False
    assert torch.tensor(shown["attention"]) == pytest.approx(expected.flatten(0, 1), abs=1e-4)
    assert not patterns.causal
    causal = attention_patterns(gpt2_bridge, prompt, {})
    assert causal.causal
    assert json.loads(re.search(r"AttentionHeads, (\{.*?\})\);", AttentionView(causal).body())[1])["maskUpperTri"]


def test_mask_names_that_are_condition_labels_are_refused(gpt2_bridge, tmp_path):
    """Conditions are keyed by label: a mask named ``~a`` beside ``a`` replaced a's inverse (the report's "Attention
    through a" showed the other mask's pattern as ``~a``), and one named ``full model`` replaced the full model."""
    first, second = (random_mask_set(gpt2_bridge, name, seed).binary() for seed, name in enumerate("ab"))
    prompt = torch.tensor([3, 7, 10, 3])
    for masks in ({"a": first, "~a": second}, {"full model": first}):
        with pytest.raises(ValueError, match="condition labels"):
            attention_patterns(gpt2_bridge, prompt, masks)
    patterns = attention_patterns(gpt2_bridge, prompt, {"~a": second}, inverse=False)  # no inverse: no clash
    with torch.no_grad(), masked(gpt2_bridge, second):
        _, cache = gpt2_bridge.run_with_cache(prompt[None])
    assert patterns.head("~a", 1, 2) == pytest.approx(cache["blocks.1.attn.hook_pattern"][0, 2], abs=1e-6)


def test_a_connectome_of_no_matrices_is_refused_naming_what_to_draw(tmp_path):
    """``connectome_svg([])`` failed on Python's own ``max() arg is an empty sequence``; it now says what to pass, as
    ``transformer_block_connectome`` does for a block without matrices. ``ConnectomeFrames`` refuses before training
    (its first frame is drawn at the first logged step)."""
    from modmask_lens.modularity import BimtMLP
    from modmask_lens.viz import ConnectomeFrames, connectome_svg

    with pytest.raises(ValueError, match=r"nothing to plot; pass the matrices of mlp_connectome\(graph\) or "):
        connectome_svg([])
    with pytest.raises(ValueError, match="nothing to plot"):
        ConnectomeFrames(BimtMLP((3, 4, 2), seed=0).unit_graph(), tmp_path / "frames", drawn=[])
    assert not (tmp_path / "frames").exists()


@pytest.mark.parametrize(
    ("plot", "empty", "to_pass"),
    [
        (kept_fraction_plot, pd.DataFrame(columns=["mask", "layer", "role", "kept_fraction"]), "kept_fraction"),
        (iou_heatmap, pd.DataFrame(columns=["mask_a", "mask_b", "layer", "role", "iou"]), "pairwise_overlap"),
        (routing_heatmap, pd.DataFrame(columns=["subtask", "expert", "count"]), "routing_table"),
        (logit_histogram, {}, "{name: mask_set}"),
    ],
    ids=["kept_fraction_plot", "iou_heatmap", "routing_heatmap", "logit_histogram"],
)
def test_a_plot_of_nothing_is_refused_naming_what_to_pass(plot, empty, to_pass):
    """Each failed on Python's own error (``max() arg is an empty sequence``, ``torch.cat(): expected a non-empty
    list``), when drawn or at once; now each says what to pass, as connectome_svg does."""
    with pytest.raises(ValueError, match=rf"nothing to plot; pass .*{re.escape(to_pass)}"):
        plot(empty)
