#!/usr/bin/env bash
# The library's default finder (`faithful`) on every ground-truth family at the granularities its answer keys are
# built for, then the null controls; one torch thread, 600 mask steps (STEPS overrides). Each family writes its own
# folder of CSV tables, so a stopped run keeps what it finished and a rerun skips it.
# Usage: benchmarks/groundtruth_default.sh OUT_DIR      (tables of docs/finder-study.md, "The default on the suite")
set -euo pipefail
out=${1:-groundtruth-default}
steps=${STEPS:-600}
run() {  # NAME, then groundtruth run options
  local name=$1
  shift
  [ -f "$out/$name/summary.csv" ] && return
  modmask-lens --threads 1 groundtruth run --method faithful --steps "$steps" "$@" --out "$out/$name"
}
run tracr --case tracr --control none
run entangled-head --case entangled-head --granularity head --control none
run entangled-neuron --case entangled-neuron --granularity neuron --control none
run partly-shared --case partly-shared --granularity neuron --control none
run per-weight --case per-weight --granularity weight --control none --seed 0 --seed 1
run disconnected --case disconnected --control none
run controls --case disconnected/add-mul --case entangled-head/add-mul --granularity head \
  --control random-init --control shuffled-answers
run tracr-controls --case tracr --granularity head --granularity neuron --control random-init \
  --control shuffled-answers
run tracr-controls-weight --case tracr --granularity weight --control random-init --control shuffled-answers
