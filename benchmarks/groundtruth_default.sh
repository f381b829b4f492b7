#!/usr/bin/env bash
# The library's default finder (`faithful`) on every ground-truth family at the granularities its answer keys are
# built for, each beside its two null controls (a randomly initialised copy, shuffled answers); one torch thread,
# 600 mask steps (STEPS overrides). Each family writes its own folder of CSV tables, so a stopped run keeps what it
# finished and a rerun skips it. The default's random-init control keeps its loss within a margin of the random copy's
# own loss, which the empty mask already meets; so one run also trains Csordás's method, whose regulariser trains for
# the task itself, on the random copy of a disconnected plant: how much task accuracy masks can create from random
# weights. It ends with `groundtruth targets`: issue #18's targets checked on the default's tables.
# Usage: benchmarks/groundtruth_default.sh [OUT_DIR]    (default docs/groundtruth-default: the tables of
# docs/finder-study.md, "The default on the suite", and targets.md)
set -euo pipefail
out=${1:-docs/groundtruth-default}
steps=${STEPS:-600}
run() {  # NAME, METHOD, then groundtruth run options
  local name=$1 method=$2
  shift 2
  [ -f "$out/$name/summary.csv" ] && return
  modmask-lens --threads 1 groundtruth run --method "$method" --steps "$steps" "$@" --out "$out/$name"
}
controls=(--control none --control random-init --control shuffled-answers)
run tracr faithful --case tracr "${controls[@]}"
run entangled-head faithful --case entangled-head --granularity head "${controls[@]}"
run entangled-neuron faithful --case entangled-neuron --granularity neuron "${controls[@]}"
run partly-shared faithful --case partly-shared --granularity neuron "${controls[@]}"
run per-weight faithful --case per-weight --granularity weight --control none --seed 0 --seed 1
run per-weight-controls faithful --case per-weight --granularity weight --control random-init --control shuffled-answers
run disconnected faithful --case disconnected "${controls[@]}"
run task-driven-control csordas --case disconnected/add-mul --granularity weight --granularity neuron \
  --granularity head --control none --control random-init
modmask-lens groundtruth targets "$out" --method faithful --out "$out/targets.md"
