#!/usr/bin/env bash
# The library's default finder (`faithful`) on every ground-truth family at the granularities its answer keys are
# built for, each beside its two null controls (a randomly initialised copy, shuffled answers); one torch thread,
# 600 mask steps (STEPS overrides). Each family writes its own folder of CSV tables, so a stopped run keeps what it
# finished and a rerun skips it. It ends with `groundtruth targets`: issue #18's targets checked on the tables.
# Usage: benchmarks/groundtruth_default.sh [OUT_DIR]    (default docs/groundtruth-default: the tables of
# docs/finder-study.md, "The default on the suite", and targets.md)
set -euo pipefail
out=${1:-docs/groundtruth-default}
steps=${STEPS:-600}
run() {  # NAME, then groundtruth run options
  local name=$1
  shift
  [ -f "$out/$name/summary.csv" ] && return
  modmask-lens --threads 1 groundtruth run --method faithful --steps "$steps" "$@" --out "$out/$name"
}
controls=(--control none --control random-init --control shuffled-answers)
run tracr --case tracr "${controls[@]}"
run entangled-head --case entangled-head --granularity head "${controls[@]}"
run entangled-neuron --case entangled-neuron --granularity neuron "${controls[@]}"
run partly-shared --case partly-shared --granularity neuron "${controls[@]}"
run per-weight --case per-weight --granularity weight --control none --seed 0 --seed 1
run per-weight-controls --case per-weight --granularity weight --control random-init --control shuffled-answers
run disconnected --case disconnected "${controls[@]}"
modmask-lens groundtruth targets "$out" --method faithful --out "$out/targets.md"
