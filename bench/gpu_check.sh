#!/usr/bin/env bash
# The GPU check in one command, on any single GPU (an H100, or a lent H200 with no zstandard installed):
# installs zstandard from the wheel in .whl/ (a folder git ignores) when it is missing, then runs
# bench/gpu_check.py twice in one work folder (its random shards made once) with one fresh compile cache:
# cold (everything compiles), then warm (priming loads the first run's graphs), each under a time limit,
# together inside a 10-minute call. Copies each
# run's log, timestamped output and JSON to $OUT (the warm run's to $OUT/warm) when set. Prints the
# figures and the peak memory per phase against 80 GB.
# Usage: bash bench/gpu_check.sh [COLD_SECONDS [WARM_SECONDS]]   (default 380 and 140; GPU_CHECK_WARM=0: cold only)
set -uo pipefail
cd "$(dirname "$0")/.."
if ! python3 -c "import zstandard" 2>/dev/null; then
  ls .whl/zstandard-*.whl >/dev/null 2>&1 || { echo "error: zstandard is missing and .whl/ has no wheel of it (pip install zstandard)"; exit 1; }
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/zstandard-*.whl && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
python3 -c "import torch, zstandard, sentencepiece; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'gpu', torch.cuda.is_available(), 'zstandard', zstandard.__version__)"
python3 tools/pack.py train_gpt.py -o dist/train_gpt.py || exit 1
export GPU_CHECK_SCRIPT="$PWD/dist/train_gpt.py"  # the packed script, as a record runs it
cold="${1:-380}"
warm="${2:-140}"
work="${GPU_CHECK_WORK:-/tmp/gpu_check}"
cache="$work/compile_cache"
rm -rf "$cache"
timeout -k 10 $((cold + 30)) python3 bench/gpu_check.py "$work" --cache "$cache" --limit "$cold" ${OUT:+--copy-to "$OUT"}
status=$?
if [ "${GPU_CHECK_WARM:-1}" = 1 ]; then
  echo "--- the same check again, warm compile cache ($cache)"
  timeout -k 10 $((warm + 30)) python3 bench/gpu_check.py "$work" --cache "$cache" --limit "$warm" ${OUT:+--copy-to "$OUT/warm"}
fi
exit $status
