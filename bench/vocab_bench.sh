#!/usr/bin/env bash
# The vocabulary bench (issue 28): the SPEC §9 shape at equal steps (200) on the bench text re-tokenized with
# BPE tokenizers of 1024, 4096 and 8192 pieces trained on the bench's training text (bench/tokenizers/, made by
# data/train_tokenizer.py ../shared/data/text/bench_train.jsonl --vocab-size V --own-corpus --skip-docs 0), plus the
# official sp1024 shards as the reference. bpb is charged on the same validation text's bytes, so the rows
# compare. ~40 min on 2 CPU cores with TTT off (the default here; TTT_ENABLED=1 adds its score).
# Usage: bash bench/vocab_bench.sh [OUT_DIR] [VOCABS...]   (VOCABS: 1024 4096 8192 official)
set -euo pipefail
cd "$(dirname "$0")/.."
shared="${SHARED:-../shared}"
out="${1:-bench/out/vocab}"
shift || true
vocabs=("${@:-1024 4096 8192 official}")
mkdir -p "$out"
export TTT_ENABLED=${TTT_ENABLED:-0}
# the settings the documented rows ran with (issue 28), before settings followed the vocabulary (issue 34)
export EMBED_BITS=${EMBED_BITS:-5} VE_LAYERS=${VE_LAYERS:-2} TTT_LORA_DOCS=${TTT_LORA_DOCS:-64}
for v in ${vocabs[@]}; do
  if [ "$v" = official ]; then
    data="$shared/data/datasets/bench_sp1024" tok="$shared/data/tokenizers/fineweb_1024_bpe.model"
  else
    data="$out/data/bench_sp$v" tok="bench/tokenizers/bench_${v}_bpe.model"
    [ -f "$data/prepare_text.json" ] || python3 data/prepare_text.py "$shared/data/text/bench_val.jsonl" \
      "$shared/data/text/bench_train.jsonl" --tokenizer "$tok" --out "$data" --own-corpus --val-docs 543 --shard-tokens 2000000
  fi
  echo "== vocab $v ($tok)"
  DATA_PATH="$data" TOKENIZER_PATH="$tok" RUN_ID="vocab_$v" bash bench/bench_config.sh "$out/$v" | tail -7
done
