import importlib.util
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER = ROOT / "data" / "tokenizers" / "fineweb_1024_bpe.model"  # the challenge's sp1024
sys.path.insert(0, str(ROOT / "data"))  # the data tools import data/caseops.py as their neighbour


def pytest_configure(config):
    """Under pytest-xdist (.ci/run's `-n 2`) two workers share the two cores: one thread each, in
    process and in the scripts the tests start (oversubscribed OpenMP threads slow both 10x or more)."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ["OMP_NUM_THREADS"] = "1"
        import torch
        torch.set_num_threads(1)


def load_module(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses look their module up here
    spec.loader.exec_module(mod)
    return mod


def load_tg():
    return load_module("train_gpt", ROOT / "train_gpt.py")


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
            SEED="7", EVAL_BATCH_SEQS="16", TTT_BATCH_SEQS="8", COMPILE="0",
            PARALLEL_FROM="3", RECUR_LAYERS="",  # two lanes in the last layer; recurrence where a test asks
            TTT_LORA_CHUNK="32", TTT_LORA_DOCS="8", TTT_LORA_RANK="8", TTT_LORA_ALPHA="8",
            # issue 35's plan, all of it: context 80 against training at 64, a phase (the 8 longest documents, then a
            # global pass of 4 x 80 tokens a step at any world size), warm-started A, short documents' chunks of 8
            EVAL_SEQ_LEN="80", TTT_PHASES="1", TTT_PHASE_DOCS="8", TTT_PHASE_BATCH_TOKENS="320", TTT_LORA_WARM_A="1",
            TTT_LORA_CHUNK_SCHEDULE="40:8")


@pytest.fixture(scope="session")
def synth_docs():
    """(train documents, validation documents) of the seeded synthetic corpus."""
    docs = load_module("synthetic_text", ROOT / "data" / "synthetic_text.py").documents(1050, seed=1)
    return docs[50:], docs[:50]


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory, synth_docs):
    """Synthetic corpus in the challenge's shard format: train shards of 50,000 tokens (the
    stream crosses shard boundaries) and one validation shard of ~6,000 tokens."""
    import sentencepiece as spm
    pt = load_module("prepare_text", ROOT / "data" / "prepare_text.py")
    sp = spm.SentencePieceProcessor(model_file=str(TOKENIZER))
    d = tmp_path_factory.mktemp("tinydata")
    train, val = synth_docs
    pt.write_split(d, "train", pt.encode_documents(sp, train), 50_000)
    pt.write_split(d, "val", pt.encode_documents(sp, val), 1 << 30)
    return d


# Compiled runs share one compile cache across tests and sessions (as torch's default cache would): its
# entries are keyed by graph, shapes, torch version and config, so another test's entries never change a
# result (test_distributed.py checks that). A test that needs a cold cache names its own.
SHARED_COMPILE_CACHE = Path(tempfile.gettempdir()) / "parameter_golf_test_compile_cache"


def run_script(out_dir, data_dir, nproc=1, timeout=900, script=ROOT / "train_gpt.py", **env_over):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(TINY, DATA_PATH=str(data_dir), TOKENIZER_PATH=str(TOKENIZER), OUT_DIR=str(out_dir),
               RUN_ID="t", OMP_NUM_THREADS="1", COMPILE_CACHE_DIR=str(SHARED_COMPILE_CACHE))
    env.update({k: str(v) for k, v in env_over.items()})
    cmd = [sys.executable, str(script)] if nproc == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", str(script)]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=out_dir)


def metric(log_text, key):
    for line in reversed(log_text.splitlines()):
        if line.startswith(key + " "):
            return float(line.split("val_bpb:")[1].split()[0])
    raise AssertionError(f"{key} not in log")
