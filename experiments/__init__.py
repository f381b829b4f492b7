"""Experiments built on modmask-lens: the demo, the paper reproductions and the zoo's training runs.

The library (``modmask_lens``) never imports this package. Its commands join the one ``modmask-lens`` command line
through the ``modmask_lens.commands`` entry points (pyproject.toml; :mod:`experiments.commands`):

- ``modmask-lens demo``: :mod:`experiments.demo`, the job of ``make demo``.
- ``modmask-lens reproduce NAME ...``: :mod:`experiments.csordas` (Csordás et al. 2021 on the zoo, the probes, the
  modular-training variants) and :mod:`experiments.bimt` (BIMT's MLP tasks).
- ``modmask-lens zoo train NAME``: :mod:`experiments.zoo` (recipes, architectures, the trainer).
"""
