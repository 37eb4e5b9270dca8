#!/usr/bin/env bash
# Issue 19's frontier levers on the reduced fp32 bench (for CPUs without fast bf16: the SPEC §9
# shape with 4 layers, 80 steps, TTT off). Arms: `base` (every lever off: the loader-only
# configuration of bench/loader_ab.sh) and all of them (3 seeds each), each lever alone (seed 42);
# and, on top of all of them (3 seeds each, compared with `all`), the byte spending and weight decay:
# 4x hash buckets (buckets4k), +8% MLP width (mlp416), the old weight decay (wd04).
# 4-layer stand-ins: lanes from layer 3 (the last of 4), recurrence of layers 1-2 from step 40.
# Usage: bash bench/levers_ab.sh [OUT] [ARM...]   (arms: base rownorm gates qk5 lanes recur all buckets4k mlp416 wd04)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-bench/out/levers}"; shift || true
mkdir -p "$out"
cp train_gpt.py "$out/script.py"
OFF=(PARALLEL_FROM=-1 SKIP_GATES=0 RECUR_LAYERS= QK_GAIN_INIT=1.5 MUON_ROW_NORM=0)
declare -A ON=([rownorm]="MUON_ROW_NORM=1" [gates]="SKIP_GATES=1" [qk5]="QK_GAIN_INIT=5.0"
               [lanes]="PARALLEL_FROM=3" [recur]="RECUR_LAYERS=1,2"
               [all]="MUON_ROW_NORM=1 SKIP_GATES=1 QK_GAIN_INIT=5.0 PARALLEL_FROM=3 RECUR_LAYERS=1,2")
ON+=([buckets4k]="${ON[all]} BIGRAM_BUCKETS=4096" [mlp416]="${ON[all]} MLP_HIDDEN=416" [wd04]="${ON[all]} WEIGHT_DECAY=0.04")
arms=("$@"); [ ${#arms[@]} -gt 0 ] || arms=(base rownorm gates qk5 lanes recur all)
for arm in "${arms[@]}"; do
  seeds=(42); case $arm in base|all|buckets4k|mlp416|wd04) seeds=(42 1337 2024) ;; esac
  for seed in "${seeds[@]}"; do
    # shellcheck disable=SC2086
    env "${OFF[@]}" ${ON[$arm]:-} PYTHONPATH=bench/fp32 NUM_LAYERS=4 ITERATIONS=80 WARMDOWN_ITERS=24 TTT_ENABLED=0 \
      EVAL_STRIDE=128 SEED=$seed RUN_ID=seed$seed SCRIPT="$out/script.py" bash bench/bench_config.sh "$out/$arm/seed$seed"
  done
done
if [ -d "$out/base" ] && [ -d "$out/all" ]; then
  for m in prequant roundtrip sliding; do
    python3 tools/significance.py "$out"/all/seed*/logs/*.txt --baseline-logs "$out"/base/seed*/logs/*.txt --margin 0 --metric $m
  done
fi
for arm in buckets4k mlp416 wd04; do
  [ -d "$out/$arm" ] && [ -d "$out/all" ] || continue
  for m in prequant roundtrip sliding; do
    python3 tools/significance.py "$out/$arm"/seed*/logs/*.txt --baseline-logs "$out"/all/seed*/logs/*.txt --margin 0 --metric $m
  done
done
