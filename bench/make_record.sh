#!/usr/bin/env bash
# Regenerates train.log and submission.json at the repository root from one real run of the
# committed train_gpt.py: the bench configuration on CPU, on the shared bench corpus.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="$(mktemp -d)"
RUN_ID=record bash "$root/bench/bench_config.sh" "$out"
cp "$out/logs/record.txt" "$root/train.log"
cp "$out/submission.json" "$root/submission.json"
echo "wrote $root/train.log and $root/submission.json (from $out)"
