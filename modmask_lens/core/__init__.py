"""The foundation that masks, probes and modularity stand on as peers.

- ``encoding``: the text format (``prompt SEP completion EOS`` tensors, :data:`IGNORE_INDEX` labels);
  ``pairs``: a user's (prompt, completion) pairs from a list, JSONL or a dataset.
- ``data``: :class:`SubtaskData`, a subtask as token ids, and the checks that a model can run it.
- ``scoring``: answer-token cross-entropy and exact match (:func:`score_answers`, :func:`answer_correct`).
- ``checkpoint``: atomic safetensors files with a JSON header and a checksum; :class:`Checkpointer` for trainers.
- ``atomic_files``: writing any file atomically (a synced temporary file, then a rename), which every writer uses.
- ``random``: local random streams (:func:`stream_seed`); ``world``: the distributed rank and world size.
- ``bridge``: :class:`Bridge`, the model type every method accepts; ``booting``: :func:`boot_transformers`, booting
  a model folder without TransformerLens installing packages.
- ``hook_layout``: where a hook point's activation keeps its positions, and the activation read position-major
  (what probes and hook-reading objectives read).
"""

from modmask_lens.core.bridge import Bridge
from modmask_lens.core.checkpoint import Checkpointer, MaskFileError
from modmask_lens.core.data import SubtaskData
from modmask_lens.core.encoding import IGNORE_INDEX, TokenizedExamples, encode_pairs
from modmask_lens.core.random import seeded, stream_seed
from modmask_lens.core.scoring import AnswerScore, answer_correct, score_answers
from modmask_lens.core.world import world

__all__ = [
    "IGNORE_INDEX",
    "AnswerScore",
    "Bridge",
    "Checkpointer",
    "MaskFileError",
    "SubtaskData",
    "TokenizedExamples",
    "answer_correct",
    "encode_pairs",
    "score_answers",
    "seeded",
    "stream_seed",
    "world",
]
