#!/usr/bin/env bash
# The data loader A/B of docs/measurements.md on a reduced bench in fp32 (for CPUs without fast bf16):
# the SPEC §9 bench shape with 4 layers, 80 steps, TTT off; arms: the sequential stream of
# commit 6c21868 and the loader of commit 421129d (before the issue-19 levers became defaults;
# bench/levers_ab.sh measures those). Usage: bash bench/loader_ab.sh [OUT] [SEED...]
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-bench/out/ab19}"; shift || true
mkdir -p "$out"
git show 6c21868:train_gpt.py > "$out/stream.py"
git show 421129d:train_gpt.py > "$out/loader.py"
seeds=("$@"); [ ${#seeds[@]} -gt 0 ] || seeds=(42 1337 2024)
for seed in "${seeds[@]}"; do
  for arm in stream loader; do
    PYTHONPATH=bench/fp32 NUM_LAYERS=4 ITERATIONS=80 WARMDOWN_ITERS=24 TTT_ENABLED=0 EVAL_STRIDE=128 \
      SEED=$seed RUN_ID=seed$seed SCRIPT="$out/$arm.py" bash bench/bench_config.sh "$out/$arm/seed$seed"
  done
done
for m in prequant roundtrip sliding; do
  python3 tools/significance.py "$out"/loader/seed*/logs/*.txt --baseline-logs "$out"/stream/seed*/logs/*.txt --margin 0 --metric $m
done
