#!/usr/bin/env bash
# CaseOps against plain text at 8192 pieces (issue 34): the SPEC §9 shape, 200 steps, TTT on, on the bench text
# re-tokenized by BPE tokenizers of 8192 pieces trained on the bench's training text by data/train_tokenizer.py
# (bench/tokenizers/bench_8192_bpe.model; bench_8192_caseops.model with --caseops). Both arms score the same
# validation documents' bytes: plain from its pieces, CaseOps from its byte sidecar.
# Compare with tools/significance.py (the README says how). PARALLEL=1 runs a seed's two arms side by side, one
# thread each (this 128-wide shape gains little from a second thread), instead of one after the other.
# Usage: [PARALLEL=1] bash bench/caseops_bench.sh [OUT_DIR] [SEEDS...]   (default bench/out/caseops, seeds 42 1337 2024)
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
run_arm() {  # arm seed
  local tok="bench/tokenizers/bench_8192_$([ $1 = plain ] && echo bpe || echo caseops).model"
  SEED=$2 DATA_PATH="$out/data/bench_sp8192_$1" TOKENIZER_PATH="$tok" RUN_ID="${1}_seed$2" \
    bash bench/bench_config.sh "$out/$1" > "$out/$1_seed$2.summary" 2>&1
  echo "== $1 seed $2"
  tail -7 "$out/$1_seed$2.summary"
}
for seed in ${seeds[@]}; do
  if [ "${PARALLEL:-0}" = 1 ]; then
    OMP_NUM_THREADS=1 run_arm plain $seed &
    first=$!
    OMP_NUM_THREADS=1 run_arm caseops $seed &
    wait $first
    wait $!
  else
    run_arm plain $seed
    run_arm caseops $seed
  fi
done
