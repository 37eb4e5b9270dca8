#!/usr/bin/env bash
# CaseOps against plain text at 8192 pieces (issue 34): the SPEC §9 shape, 200 steps, TTT on, on the bench text
# re-tokenized by BPE tokenizers of 8192 pieces trained on the bench's training text by data/train_tokenizer.py
# (bench/tokenizers/bench_8192_bpe.model; bench_8192_caseops.model with --caseops). Both arms score the same
# validation documents' bytes: plain from its pieces, CaseOps from its byte sidecar.
# ~15 min a run on 2 CPU cores with fast bf16. Compare with tools/significance.py (the README says how).
# Usage: bash bench/caseops_bench.sh [OUT_DIR] [SEEDS...]   (default bench/out/caseops, seeds 42 1337 2024)
set -euo pipefail
cd "$(dirname "$0")/.."
shared="${SHARED:-../shared}"
out="${1:-bench/out/caseops}"
shift || true
seeds=("${@:-42 1337 2024}")
mkdir -p "$out"
for arm in plain caseops; do
  tok="bench/tokenizers/bench_8192_$([ $arm = plain ] && echo bpe || echo caseops).model"
  data="$out/data/bench_sp8192_$arm"
  flag=$([ $arm = caseops ] && echo --caseops || true)
  [ -f "$data/prepare_text.json" ] || python3 data/prepare_text.py "$shared/data/text/bench_val.jsonl" \
    "$shared/data/text/bench_train.jsonl" --tokenizer "$tok" --out "$data" --own-corpus --val-docs 543 --shard-tokens 2000000 $flag
done
for seed in ${seeds[@]}; do
  for arm in plain caseops; do
    tok="bench/tokenizers/bench_8192_$([ $arm = plain ] && echo bpe || echo caseops).model"
    echo "== $arm seed $seed"
    SEED=$seed DATA_PATH="$out/data/bench_sp8192_$arm" TOKENIZER_PATH="$tok" RUN_ID="${arm}_seed$seed" \
      bash bench/bench_config.sh "$out/$arm" | tail -7
  done
done
