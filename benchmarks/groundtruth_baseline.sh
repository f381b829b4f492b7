#!/usr/bin/env bash
# The ground-truth baseline of docs/ground-truth.md: the three baseline methods on every add-mul plant at every
# granularity it answers, and the library defaults under the two null controls; one torch thread, 300 mask steps.
# Usage: benchmarks/groundtruth_baseline.sh OUT_DIR   (one folder of CSV tables per case and control set)
set -euo pipefail
out=${1:-groundtruth-baseline}
steps=${STEPS:-300}
for case in disconnected entangled-neuron entangled-head partly-shared per-weight; do
  modmask-lens --threads 1 groundtruth run --case "$case/add-mul" --steps "$steps" --control none \
    --out "$out/$case-add-mul/methods"
  modmask-lens --threads 1 groundtruth run --case "$case/add-mul" --steps "$steps" --method library-defaults \
    --control random-init --control shuffled-answers --out "$out/$case-add-mul/controls"
done
