"""modmask-lens: which weights of a transformer does a subtask use?

Differentiable weight masks (Csordás et al. 2021, "Are Neural Nets Modular?") learned on a frozen TransformerLens
4.x ``TransformerBridge`` and applied through ``torch.func.functional_call``.

Example (a tiny random model; labels score the last two tokens of each example):
    >>> import torch
    >>> import modmask_lens as mm
    >>> from modmask_lens.testing.tiny_models import tiny_bridge
    >>> bridge = tiny_bridge()
    >>> input_ids = torch.randint(0, 40, (8, 6), generator=torch.Generator().manual_seed(0))
    >>> labels = torch.where(torch.arange(6) >= 4, input_ids, -100)
    >>> masks = mm.train_masks(bridge, mm.SubtaskData("jump", input_ids, labels),
    ...                        train_config=mm.TrainConfig(steps=2, batch_size=4), progress=False)
    >>> with mm.masked(bridge, masks["jump"]):
    ...     logits, cache = bridge.run_with_cache(input_ids)
    >>> logits.shape
    torch.Size([8, 6, 40])
"""

__version__ = "0.1.0"

from modmask_lens.adapters import Adapter, TensorSpec, UnsupportedArchitecture, adapter_for
from modmask_lens.analysis import circuit_graph
from modmask_lens.core.data import Batch, SubtaskData
from modmask_lens.core.scoring import score_answers
from modmask_lens.masks.apply import masked, masked_call
from modmask_lens.masks.binary import BinaryMask
from modmask_lens.masks.config import MaskConfig, TrainConfig
from modmask_lens.masks.evaluation import objective_metric
from modmask_lens.masks.export import export_masked_model
from modmask_lens.masks.identity import ModelMismatch
from modmask_lens.masks.io import MaskFileError, load_masks, save_masks
from modmask_lens.masks.mask_set import MaskSet
from modmask_lens.masks.objectives import (
    AnswerCrossEntropy,
    CustomObjective,
    HiddenState,
    KLDivergence,
    LinearProbe,
    LogitDifference,
    Objective,
    Outputs,
)
from modmask_lens.masks.readout import faithful_binary, faithful_threshold
from modmask_lens.masks.training import MaskTrainer, NonFiniteLoss, train_masks
from modmask_lens.modularity import BimtMLP, ClusterabilityLoss, clusterability, train_bimt
from modmask_lens.versions import warn_about_known_breaks
from modmask_lens.viz import AttentionView, CircuitView, OverlapView, attention_patterns, write_report

warn_about_known_breaks()

__all__ = [
    "Adapter",
    "AnswerCrossEntropy",
    "AttentionView",
    "Batch",
    "BimtMLP",
    "BinaryMask",
    "CircuitView",
    "ClusterabilityLoss",
    "CustomObjective",
    "HiddenState",
    "KLDivergence",
    "LinearProbe",
    "LogitDifference",
    "MaskConfig",
    "MaskFileError",
    "MaskSet",
    "MaskTrainer",
    "ModelMismatch",
    "NonFiniteLoss",
    "Objective",
    "Outputs",
    "OverlapView",
    "SubtaskData",
    "TensorSpec",
    "TrainConfig",
    "UnsupportedArchitecture",
    "adapter_for",
    "attention_patterns",
    "circuit_graph",
    "clusterability",
    "export_masked_model",
    "faithful_binary",
    "faithful_threshold",
    "load_masks",
    "masked",
    "masked_call",
    "objective_metric",
    "save_masks",
    "score_answers",
    "train_bimt",
    "train_masks",
    "write_report",
]
