#!/usr/bin/env bash
# The ground-truth baseline of docs/ground-truth.md: the baseline methods (`baseline_methods`) on every plant of one
# pair at every granularity it answers, and Csordás's method under the two null controls; one torch thread, 300 mask
# steps (STEPS overrides). Usage: benchmarks/groundtruth_baseline.sh OUT_DIR [PAIR]   (PAIR: add-mul or sub-max)
# Writes one folder of CSV tables per case and control set.
set -euo pipefail
out=${1:-groundtruth-baseline}
pair=${2:-add-mul}
steps=${STEPS:-300}
for family in disconnected entangled-neuron entangled-head partly-shared per-weight; do
  modmask-lens --threads 1 groundtruth run --case "$family/$pair" --steps "$steps" --control none \
    --out "$out/$family-$pair/methods"
  modmask-lens --threads 1 groundtruth run --case "$family/$pair" --steps "$steps" --method csordas \
    --control random-init --control shuffled-answers --out "$out/$family-$pair/controls"
done
