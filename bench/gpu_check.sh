#!/usr/bin/env bash
# The GPU check in one command, on any single GPU (an H100, or a lent H200 with no zstandard installed):
# installs zstandard from the wheel in .whl/ (a folder git ignores) when it is missing, runs
# bench/gpu_check.py under a time limit that ends inside a 10-minute call, and copies its log, its
# timestamped output and its JSON to $OUT when set. Prints the figures and the peak memory per phase
# against 80 GB.   Usage: bash bench/gpu_check.sh [SECONDS]   (default 540: the run's limit; on one H200 priming alone took 436 s)
set -uo pipefail
cd "$(dirname "$0")/.."
if ! python3 -c "import zstandard" 2>/dev/null; then
  ls .whl/zstandard-*.whl >/dev/null 2>&1 || { echo "error: zstandard is missing and .whl/ has no wheel of it (pip install zstandard)"; exit 1; }
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/zstandard-*.whl && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
python3 -c "import torch, zstandard, sentencepiece; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'gpu', torch.cuda.is_available(), 'zstandard', zstandard.__version__)"
limit="${1:-540}"
work="${GPU_CHECK_WORK:-/tmp/gpu_check}"
timeout -k 10 $((limit + 30)) python3 bench/gpu_check.py "$work" --limit "$limit" ${OUT:+--copy-to "$OUT"}
