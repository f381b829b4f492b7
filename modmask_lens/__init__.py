"""modmask-lens: which weights of a transformer does a subtask use?

Differentiable weight masks (Csordás et al. 2021, "Are Neural Nets Modular?") learned on a frozen TransformerLens
4.x ``TransformerBridge`` and applied through ``torch.func.functional_call``. The default finder keeps the fewest
units that keep the subtask (docs/finder-study.md); Csordás's own is ``CSORDAS_MASKS`` with ``CSORDAS_TRAINING``.

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

from typing import TYPE_CHECKING

from modmask_lens.lazy import lazy_exports
from modmask_lens.versions import warn_about_known_breaks

if TYPE_CHECKING:  # what the names below are, for type checkers and the API docs; imported on first use
    from modmask_lens.adapters import Adapter, TensorSpec, UnsupportedArchitecture, adapter_for
    from modmask_lens.analysis import circuit_graph
    from modmask_lens.core.data import Batch, SubtaskData
    from modmask_lens.core.scoring import score_answers
    from modmask_lens.masks.apply import masked, masked_call
    from modmask_lens.masks.binary import BinaryMask
    from modmask_lens.masks.config import CSORDAS_MASKS, CSORDAS_TRAINING, MaskConfig, TrainConfig
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
    from modmask_lens.masks.readout import faithful_binary, faithful_threshold, faithful_units, marginal_gains
    from modmask_lens.masks.training import MaskTrainer, NonFiniteLoss, train_masks
    from modmask_lens.modularity import BimtMLP, ClusterabilityLoss, clusterability, train_bimt
    from modmask_lens.viz import AttentionView, CircuitView, OverlapView, attention_patterns, write_report

# name -> module: ``import modmask_lens`` (and ``modmask-lens --help``) stays light until a name is used.
EXPORTS = {
    "Adapter": "modmask_lens.adapters",
    "TensorSpec": "modmask_lens.adapters",
    "UnsupportedArchitecture": "modmask_lens.adapters",
    "adapter_for": "modmask_lens.adapters",
    "circuit_graph": "modmask_lens.analysis",
    "Batch": "modmask_lens.core.data",
    "SubtaskData": "modmask_lens.core.data",
    "score_answers": "modmask_lens.core.scoring",
    "masked": "modmask_lens.masks.apply",
    "masked_call": "modmask_lens.masks.apply",
    "BinaryMask": "modmask_lens.masks.binary",
    "CSORDAS_MASKS": "modmask_lens.masks.config",
    "CSORDAS_TRAINING": "modmask_lens.masks.config",
    "MaskConfig": "modmask_lens.masks.config",
    "TrainConfig": "modmask_lens.masks.config",
    "objective_metric": "modmask_lens.masks.evaluation",
    "export_masked_model": "modmask_lens.masks.export",
    "ModelMismatch": "modmask_lens.masks.identity",
    "MaskFileError": "modmask_lens.masks.io",
    "load_masks": "modmask_lens.masks.io",
    "save_masks": "modmask_lens.masks.io",
    "MaskSet": "modmask_lens.masks.mask_set",
    "AnswerCrossEntropy": "modmask_lens.masks.objectives",
    "CustomObjective": "modmask_lens.masks.objectives",
    "HiddenState": "modmask_lens.masks.objectives",
    "KLDivergence": "modmask_lens.masks.objectives",
    "LinearProbe": "modmask_lens.masks.objectives",
    "LogitDifference": "modmask_lens.masks.objectives",
    "Objective": "modmask_lens.masks.objectives",
    "Outputs": "modmask_lens.masks.objectives",
    "faithful_binary": "modmask_lens.masks.readout",
    "faithful_threshold": "modmask_lens.masks.readout",
    "faithful_units": "modmask_lens.masks.readout",
    "marginal_gains": "modmask_lens.masks.readout",
    "MaskTrainer": "modmask_lens.masks.training",
    "NonFiniteLoss": "modmask_lens.masks.training",
    "train_masks": "modmask_lens.masks.training",
    "BimtMLP": "modmask_lens.modularity",
    "ClusterabilityLoss": "modmask_lens.modularity",
    "clusterability": "modmask_lens.modularity",
    "train_bimt": "modmask_lens.modularity",
    "AttentionView": "modmask_lens.viz",
    "CircuitView": "modmask_lens.viz",
    "OverlapView": "modmask_lens.viz",
    "attention_patterns": "modmask_lens.viz",
    "write_report": "modmask_lens.viz",
}
__getattr__, __dir__ = lazy_exports(__name__, EXPORTS)

warn_about_known_breaks()

__all__ = [
    "CSORDAS_MASKS",
    "CSORDAS_TRAINING",
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
    "faithful_units",
    "load_masks",
    "marginal_gains",
    "masked",
    "masked_call",
    "objective_metric",
    "save_masks",
    "score_answers",
    "train_bimt",
    "train_masks",
    "write_report",
]
