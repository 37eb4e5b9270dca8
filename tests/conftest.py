import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
BENCH = SHARED / "datasets" / "bench_sp1024"
TOKENIZER = SHARED / "tokenizers" / "fineweb_1024_bpe.model"

needs_shared = pytest.mark.skipif(not BENCH.is_dir() or not TOKENIZER.is_file(),
                                  reason="../shared/data (bench shards + tokenizer) is absent")


def load_tg():
    spec = importlib.util.spec_from_file_location("train_gpt", ROOT / "train_gpt.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["train_gpt"] = mod  # dataclasses look their module up here
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="session")
def tg():
    return load_tg()


def write_shard(path, tokens, magic=20240520, version=1, count=None):
    h = np.zeros(256, "<i4")
    h[0], h[1], h[2] = magic, version, len(tokens) if count is None else count
    Path(path).write_bytes(h.tobytes() + np.asarray(tokens, "<u2").tobytes())


TINY = dict(NUM_LAYERS="4", MODEL_DIM="64", NUM_HEADS="4", NUM_KV_HEADS="2", MLP_HIDDEN="128",
            BIGRAM_BUCKETS="256", BIGRAM_DIM="16", VE_DIM="16", TRAIN_SEQ_LEN="64",
            TRAIN_BATCH_TOKENS="1024", ITERATIONS="30", WARMDOWN_ITERS="10", WARMUP_STEPS="0",
            MAX_WALLCLOCK_SECONDS="0", TTT_CHUNK_TOKENS="2048", EVAL_STRIDE="32", TRAIN_LOG_EVERY="1",
            SEED="7", VAL_BATCH_SIZE="8192", EVAL_BATCH_SEQS="16", TTT_BATCH_SEQS="8")


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """Bench train shards plus a short validation shard (6,145 tokens)."""
    if not BENCH.is_dir():
        pytest.skip("../shared/data is absent")
    d = tmp_path_factory.mktemp("tinydata")
    for f in sorted(BENCH.glob("fineweb_train_*.bin")):
        (d / f.name).symlink_to(f)
    val = np.fromfile(BENCH / "fineweb_val_000000.bin", "<u2", offset=1024)[:6145]
    write_shard(d / "fineweb_val_000000.bin", val)
    return d


def run_script(out_dir, data_dir, nproc=1, **env_over):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(TINY, DATA_PATH=str(data_dir), TOKENIZER_PATH=str(TOKENIZER), OUT_DIR=str(out_dir),
               RUN_ID="t", OMP_NUM_THREADS="1")
    env.update({k: str(v) for k, v in env_over.items()})
    cmd = [sys.executable, str(ROOT / "train_gpt.py")] if nproc == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", str(ROOT / "train_gpt.py")]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=out_dir)


def metric(log_text, key):
    for line in reversed(log_text.splitlines()):
        if line.startswith(key + " "):
            return float(line.split("val_bpb:")[1].split()[0])
    raise AssertionError(f"{key} not in log")
