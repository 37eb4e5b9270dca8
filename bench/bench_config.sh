#!/usr/bin/env bash
# The CPU bench configuration of SPEC §9 on the shared bench corpus, one process.
# Usage: bash bench/bench_config.sh [OUT_DIR]   (extra env vars override, e.g. TTT_ENABLED=0;
# SCRIPT=bench/export_ab.py runs that script in this configuration instead of train_gpt.py)
set -euo pipefail
# Runs from the project root with the paths as given, so the log's hparams line carries no
# machine-specific absolute path when OUT_DIR is relative (the default).
cd "$(dirname "$0")/.."
shared="${SHARED:-../shared}"
out="${1:-bench/out/bench}"
mkdir -p "$out"
export DATA_PATH="${DATA_PATH:-$shared/data/datasets/bench_sp1024}"
export TOKENIZER_PATH="${TOKENIZER_PATH:-$shared/data/tokenizers/fineweb_1024_bpe.model}"
export NUM_LAYERS=${NUM_LAYERS:-11} MODEL_DIM=${MODEL_DIM:-128} NUM_HEADS=${NUM_HEADS:-4} NUM_KV_HEADS=${NUM_KV_HEADS:-4}
export MLP_HIDDEN=${MLP_HIDDEN:-384} BIGRAM_BUCKETS=${BIGRAM_BUCKETS:-1024} BIGRAM_DIM=${BIGRAM_DIM:-32}
export TRAIN_SEQ_LEN=${TRAIN_SEQ_LEN:-256} TRAIN_BATCH_TOKENS=${TRAIN_BATCH_TOKENS:-8192} ITERATIONS=${ITERATIONS:-200}
export WARMDOWN_ITERS=${WARMDOWN_ITERS:-60} WARMUP_STEPS=${WARMUP_STEPS:-0} MAX_WALLCLOCK_SECONDS=${MAX_WALLCLOCK_SECONDS:-0}
export SEED=${SEED:-42} TRAIN_LOG_EVERY=${TRAIN_LOG_EVERY:-20} TTT_LOG_EVERY=${TTT_LOG_EVERY:-4} MAX_EVAL_SECONDS=${MAX_EVAL_SECONDS:-3600}
export OUT_DIR="$out" RUN_ID="${RUN_ID:-bench_seed$SEED}"
python3 "${SCRIPT:-train_gpt.py}"
log="$out/logs/$RUN_ID.txt"
[ -f "$log" ] || exit 0
python3 - "$log" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
steps = re.findall(r"step:(\d+)/\d+ train_loss:\S+ train_time:(\d+)ms", text)
if not steps:  # a bench script that trained nothing (or read a cache)
    sys.exit(0)
s, ms = map(int, steps[-1])
tok = int(re.search(r'"train_batch_tokens": (\d+)', text).group(1))
print(f"bench: {s} steps, {ms / 1000 / s:.3f} s/step, {tok * s / (ms / 1000):.0f} train tokens/s")
for key in ("final_prequant_ema_exact", "final_int5_zstd_roundtrip_exact", "final_sliding_exact", "legal_ttt_exact", "artifact bytes_total", "eval_time"):
    m = re.findall(rf"^{key}.*$", text, re.M)
    print(m[-1] if m else f"{key}: (absent)")
PY
