#!/usr/bin/env bash
# Runs the training script once per seed and compares them with tools/significance.py.
# Usage: bash bench/seeds.sh OUT_DIR SEED [SEED...]    (the hardware is whatever this runs on;
# set NPROC=8 on a GPU node; set BENCH=1 for the CPU bench configuration)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="$1"; shift
mkdir -p "$out"; logs=()
for seed in "$@"; do
  if [ "${BENCH:-0}" = 1 ]; then
    SEED=$seed RUN_ID=seed$seed bash "$root/bench/bench_config.sh" "$out/seed$seed"
  else
    mkdir -p "$out/seed$seed"
    (cd "$out/seed$seed" && SEED=$seed RUN_ID=seed$seed OUT_DIR=. torchrun --standalone --nproc_per_node="${NPROC:-8}" "$root/train_gpt.py")
  fi
  logs+=("$out/seed$seed/logs/seed$seed.txt")
done
python3 "$root/tools/significance.py" "${logs[@]}" ${BASELINE_ARGS:-}
