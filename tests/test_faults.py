"""Fault injection on the path users run (2 gloo processes unless said): every failure ends
every rank within a bounded time with one `error:` line and no half-written result; a matrix
GPTQ cannot use falls back; non-finite scores and broken time limits are never a clean record."""
import json
import os
import re
import socket
import subprocess
import sys
import time

import pytest

from conftest import ROOT, TINY, TOKENIZER, metric, run_script

CHOLESKY_SHIM = '''# test shim: the first Cholesky factorisation in a worker gets a NaN matrix
import os
if "RANK" in os.environ:
    import torch
    _orig, _calls = torch.linalg.cholesky, [0]
    def _poisoned(A, *a, **k):
        _calls[0] += 1
        return _orig(A * float("nan") if _calls[0] == 1 else A, *a, **k)
    torch.linalg.cholesky = _poisoned
'''


def run_two_ranks_without_torchrun(out, data, timeout=300, **env_over):
    """Both ranks as plain processes (no torchrun to stop a waiting peer): each must end by
    itself. Returns [(returncode, stderr)] per rank."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, **TINY, "DATA_PATH": str(data), "TOKENIZER_PATH": str(TOKENIZER), "OUT_DIR": str(out),
           "RUN_ID": "t", "OMP_NUM_THREADS": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(port), **{k: str(v) for k, v in env_over.items()}}
    procs = [subprocess.Popen([sys.executable, str(ROOT / "train_gpt.py")], cwd=out, text=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              env={**env, "RANK": str(r), "LOCAL_RANK": str(r)}) for r in range(2)]
    try:
        errs = [p.communicate(timeout=timeout)[1] for p in procs]
        return [(p.returncode, e) for p, e in zip(procs, errs)]
    finally:
        for p in procs:
            p.kill()


def error_lines(r):
    return [line for line in r.stderr.splitlines() if line.startswith("error:")]


def assert_failed_cleanly(r, out, msg):
    assert r.returncode != 0
    (line,) = error_lines(r)
    assert msg in line, r.stderr[-3000:]
    assert not (out / "submission.json").exists() and not (out / "final_model.int5.ptz").exists()
    assert not (out / "train.log").exists()


def test_a_missing_package_stops_every_rank_before_priming(tmp_path, tiny_data):
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "zstandard.py").write_text('raise ImportError("No module named zstandard (test shim)")\n')
    out = tmp_path / "out"
    out.mkdir()
    t0 = time.monotonic()
    r = run_script(out, tiny_data, nproc=2, timeout=300, PYTHONPATH=shim, COMPILE=1)
    assert time.monotonic() - t0 < 60  # startup only: no priming, no training
    assert_failed_cleanly(r, out, "missing package zstandard")
    assert f'File "{ROOT / "train_gpt.py"}"' not in r.stderr  # an anticipated failure: no traceback of ours


def test_an_unwritable_artifact_on_rank_0_ends_both_ranks_promptly(tmp_path, tiny_data):
    (tmp_path / "final_model.int5.ptz.tmp").mkdir()  # the temporary file rank 0 writes first
    (rc0, err0), (rc1, err1) = run_two_ranks_without_torchrun(tmp_path, tiny_data, TTT_ENABLED=0)
    ended = time.time()
    assert rc0 == rc1 == 1  # rank 1, which only waited for rank 0's export, ended by itself too
    lines = [line for line in (err0 + err1).splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "cannot write" in lines[0] and lines[0] in err0, err0[-2000:] + err1[-2000:]
    assert not any((tmp_path / f).exists() for f in ("submission.json", "final_model.int5.ptz", "train.log"))
    log = tmp_path / "logs" / "t.txt"
    assert "final_prequant_ema_exact" in log.read_text()  # the fault came after training...
    assert ended - log.stat().st_mtime < 60  # ...and both ranks ended soon after it


def test_a_hessian_that_cannot_be_factored_falls_back_and_the_run_completes(tmp_path, tiny_data):
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(CHOLESKY_SHIM)
    out = tmp_path / "out"
    out.mkdir()
    r = run_script(out, tiny_data, nproc=2, timeout=600, PYTHONPATH=shim, TTT_ENABLED=0)
    assert r.returncode == 0, r.stderr[-3000:]
    log = (out / "train.log").read_text()
    assert len(re.findall(r"^gptq fallback: \S+ rounded to nearest", log, re.M)) == 1
    sub = json.loads((out / "submission.json").read_text())
    assert sub["rule_violations"] == [] and sub["val_bpb"] == pytest.approx(metric(log, "final_sliding_exact"), abs=1e-8)


def test_a_non_finite_score_is_an_error_not_a_record(tmp_path, tiny_data):
    r = run_script(tmp_path, tiny_data, TTT_LORA_LR=1e30)  # TTT diverges: NaN scores
    assert r.returncode != 0
    (line,) = error_lines(r)
    assert "legal_ttt_exact is not finite" in line and "Traceback" not in r.stderr
    assert not (tmp_path / "submission.json").exists()


def test_training_over_the_wall_clock_is_an_error_in_the_log_and_the_record(tmp_path, tiny_data):
    r = run_script(tmp_path, tiny_data, TRAIN_BATCH_TOKENS=8192, MAX_WALLCLOCK_SECONDS=0.2,
                   GPTQ_RESERVE_SECONDS=0.1, TTT_ENABLED=0)  # one step alone takes longer
    assert r.returncode != 0
    (line,) = error_lines(r)
    assert "> MAX_WALLCLOCK_SECONDS=0.2" in line
    sub = json.loads((tmp_path / "submission.json").read_text())
    assert len(sub["rule_violations"]) == 1 and "MAX_WALLCLOCK_SECONDS" in sub["rule_violations"][0]
    assert re.search(r"^error: training \+ calibration took", (tmp_path / "train.log").read_text(), re.M)


def test_the_eval_guard_keeps_the_score_inside_the_budget_minus_the_margin(tmp_path, tiny_data):
    budget = 30.0  # the passes before TTT take ~6 s here; LoRA TTT, 16-token chunks on 2 rows, ~a minute
    r = run_script(tmp_path, tiny_data, MAX_EVAL_SECONDS=600, EVAL_MARGIN_SECONDS=600 - budget, TTT_LORA_CHUNK=16, TTT_LORA_DOCS=2)
    assert r.returncode == 0, r.stderr[-3000:]
    log = (tmp_path / "train.log").read_text()
    assert float(re.search(r"^final_sliding_exact .* eval_time:([\d.]+)s", log, re.M).group(1)) < budget / 2
    assert "stopped adapting" in log  # TTT ran, and its guard fired
    assert float(re.search(r"^eval_time:([\d.]+)s", log, re.M).group(1)) <= budget
    sub = json.loads((tmp_path / "submission.json").read_text())
    assert sub["eval_time_s"] <= budget and sub["rule_violations"] == []
