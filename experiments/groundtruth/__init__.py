"""Builds of the ground-truth suite's shipped models: planted subnetworks
(:mod:`experiments.groundtruth.plant_training`) and compiled tracr programs (:mod:`experiments.groundtruth.tracr_build`,
in a venv with the ``tracr`` extra)."""
