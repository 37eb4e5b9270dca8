#!/usr/bin/env bash
# Priming and compiled step times (bench/priming.py) at the SPEC §9 bench shape (bench/bench_config.sh) with every
# phase on: recurrence (layers 4-5 from mid-run), QAT, sliding eval and LoRA TTT graphs, COMPILE=1.
# Usage: [TRAIN_SCRIPT=path/to/train_gpt.py] [COMPILE_CACHE_DIR=...] bash bench/priming.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
COMPILE=1 RUN_ID="${RUN_ID:-priming}" SCRIPT=bench/priming.py bash bench/bench_config.sh "${1:-bench/out/priming}"
