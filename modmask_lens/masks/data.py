"""Transition only (delete once the groundtruth branch is merged): these names moved to :mod:`modmask_lens.core`."""

from modmask_lens.core.data import SubtaskData, check_context, check_device
from modmask_lens.core.encoding import IGNORE_INDEX
from modmask_lens.core.scoring import AnswerScore, score_answers

__all__ = ["IGNORE_INDEX", "AnswerScore", "SubtaskData", "check_context", "check_device", "score_answers"]
