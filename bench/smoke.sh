#!/usr/bin/env bash
# CPU demo that works on a fresh clone (no network, no ../shared): builds a synthetic corpus
# with data/synthetic_text.py, tokenizes it with the committed sp1024 tokenizer, then runs the
# whole pipeline of train_gpt.py on a tiny model (train, QAT, int5 export, reload, standard and
# sliding eval, score-first TTT) and prints its log. About two minutes on 2 CPU cores.
# It shows the script working; its val_bpb says nothing about FineWeb or the real model.
# Usage: bash bench/smoke.sh [OUT_DIR]   (COMPILE=1 to run the compiled path: slower on CPU)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-bench/out/smoke}"
mkdir -p "$out/data"
python3 data/synthetic_text.py --docs 4000 --seed 0 --out "$out/corpus.jsonl"
python3 data/prepare_text.py "$out/corpus.jsonl" --tokenizer data/tokenizers/fineweb_1024_bpe.model \
  --out "$out/data" --own-corpus --val-docs 150 --shard-tokens 200000 --vocab-size 1024
export DATA_PATH="$out/data" TOKENIZER_PATH=data/tokenizers/fineweb_1024_bpe.model OUT_DIR="$out" RUN_ID=smoke
export NUM_LAYERS=${NUM_LAYERS:-6} MODEL_DIM=${MODEL_DIM:-128} NUM_HEADS=4 NUM_KV_HEADS=2 MLP_HIDDEN=384
export BIGRAM_BUCKETS=512 BIGRAM_DIM=32 VE_DIM=32 TRAIN_SEQ_LEN=128 TRAIN_BATCH_TOKENS=4096
export ITERATIONS=${ITERATIONS:-150} WARMDOWN_ITERS=50 WARMUP_STEPS=${WARMUP_STEPS:-0} MAX_WALLCLOCK_SECONDS=0
export TTT_CHUNK_TOKENS=4096 EVAL_STRIDE=32 TRAIN_LOG_EVERY=25 TTT_LOG_EVERY=1 SEED=${SEED:-1} COMPILE=${COMPILE:-0}
rm -f "$out/logs/smoke.txt"
python3 train_gpt.py
