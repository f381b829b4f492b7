"""Analyses of binary masks, each returning a tidy pandas DataFrame (Csordás et al. 2021, section 3 metrics).

A mask set is a dict of subtask name -> :class:`~modmask_lens.BinaryMask`; the control mask is one more entry,
trained on the model's full training data (``SubtaskData.concatenate("control", subtasks)``).
"""

from modmask_lens.analysis.accuracy import IO_ROLES, exact_match, inverse_mask, mask_accuracy, paper_table
from modmask_lens.analysis.circuit_graph import CircuitGraph, circuit_graph, node_names, shared_mask
from modmask_lens.analysis.importance import unit_importance
from modmask_lens.analysis.output_rows import output_row_removal
from modmask_lens.analysis.sharing import pairwise_overlap, shared_fraction
from modmask_lens.analysis.stability import beta_sweep, seed_stability

__all__ = [
    "IO_ROLES",
    "CircuitGraph",
    "beta_sweep",
    "circuit_graph",
    "exact_match",
    "inverse_mask",
    "mask_accuracy",
    "node_names",
    "output_row_removal",
    "pairwise_overlap",
    "paper_table",
    "seed_stability",
    "shared_fraction",
    "shared_mask",
    "unit_importance",
]
