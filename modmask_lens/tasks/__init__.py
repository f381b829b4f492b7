"""Offline tasks: generators (SCAN, arithmetic, DeepMind-style math), tokenizers, the text format, evaluation.

- ``scan``, ``arithmetic``, ``deepmind_math``: each task as a ``datasets.DatasetDict`` (``question`` / ``answer``
  columns plus subtask columns), deterministic for a seed.
- ``vocabulary``: word- and character-level tokenizers (the ``question SEP answer EOS`` tensors are
  :mod:`modmask_lens.core.encoding`).
- ``evaluation``: exact match by greedy decoding or teacher forcing, per subtask; ``views``: subtask views.
- ``catalog``: the named tasks the zoo models are trained on.
"""
