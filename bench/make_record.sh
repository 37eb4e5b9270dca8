#!/usr/bin/env bash
# Regenerates train.log and submission.json at the repository root from one real run of the
# committed train_gpt.py, packed as a record runs it (tools/pack.py -> dist/train_gpt.py): the bench
# configuration on CPU, on the shared bench corpus (paths relative to the project root, so the log
# reads the same on any machine).
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf bench/out/record
python3 tools/pack.py train_gpt.py -o dist/train_gpt.py
SCRIPT=dist/train_gpt.py RUN_ID=record bash bench/bench_config.sh bench/out/record
cp bench/out/record/logs/record.txt train.log
cp bench/out/record/submission.json submission.json
echo "wrote train.log and submission.json (from bench/out/record, run by dist/train_gpt.py)"
