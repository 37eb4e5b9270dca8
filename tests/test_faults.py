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


def shim_dir(tmp_path, code, module="sitecustomize"):
    """A folder for PYTHONPATH holding one module: code every Python process started with it runs or imports."""
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / f"{module}.py").write_text(code)
    return shim


def error_lines(r):
    return [line for line in r.stderr.splitlines() if line.startswith("error:")]


def assert_failed_cleanly(r, out, msg):
    assert r.returncode != 0
    (line,) = error_lines(r)
    assert msg in line, r.stderr[-3000:]
    assert not (out / "submission.json").exists() and not (out / "final_model.int5.ptz").exists()
    assert not (out / "train.log").exists()


def test_a_missing_package_stops_every_rank_before_priming(tmp_path, tiny_data):
    shim = shim_dir(tmp_path, 'raise ImportError("No module named zstandard (test shim)")\n', module="zstandard")
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
    shim = shim_dir(tmp_path, CHOLESKY_SHIM)
    out = tmp_path / "out"
    out.mkdir()
    r = run_script(out, tiny_data, nproc=2, timeout=600, PYTHONPATH=shim, TTT_ENABLED=0)
    assert r.returncode == 0, r.stderr[-3000:]
    log = (out / "train.log").read_text()
    assert len(re.findall(r"^gptq fallback: \S+ rounded to nearest", log, re.M)) == 1
    sub = json.loads((out / "submission.json").read_text())
    assert sub["rule_violations"] == [] and sub["val_bpb"] == pytest.approx(metric(log, "final_sliding_exact"), abs=1e-8)


def test_a_non_finite_ttt_score_is_an_error_and_the_record_stays_the_provisional_sliding_one(tmp_path, tiny_data):
    r = run_script(tmp_path, tiny_data, TTT_LORA_LR=1e30)  # TTT diverges: NaN scores
    assert r.returncode != 0
    (line,) = error_lines(r)
    assert "legal_ttt_exact is not finite" in line and "Traceback" not in r.stderr
    sub, log = json.loads((tmp_path / "submission.json").read_text()), (tmp_path / "train.log").read_text()
    assert sub["status"].startswith("provisional: TTT did not finish (legal_ttt_exact is not finite")
    assert sub["val_bpb"] == sub["sliding_val_bpb"] == pytest.approx(metric(log, "final_sliding_exact"), abs=1e-8)
    assert sub["ttt_val_bpb"] is None and "score-first" not in sub["blurb"]


def test_training_over_the_wall_clock_is_an_error_in_the_log_and_the_record(tmp_path, tiny_data):
    r = run_script(tmp_path, tiny_data, TRAIN_BATCH_TOKENS=8192, MAX_WALLCLOCK_SECONDS=0.2,
                   GPTQ_RESERVE_SECONDS=0.1, TTT_ENABLED=0)  # one step alone takes longer
    assert r.returncode != 0
    (line,) = error_lines(r)
    assert "> MAX_WALLCLOCK_SECONDS=0.2" in line
    sub = json.loads((tmp_path / "submission.json").read_text())
    assert len(sub["rule_violations"]) == 1 and "MAX_WALLCLOCK_SECONDS" in sub["rule_violations"][0]
    assert re.search(r"^error: training \+ calibration took", (tmp_path / "train.log").read_text(), re.M)


TICK_CLOCK = """# test shim: time.perf_counter counts work, not time: 1 s per model forward (one cross-entropy), 2 s
# per backward. The run's clocks then depend on the code path alone: the same on a fast machine and a slow one.
import time, torch, torch.nn.functional as F
_now, _ce, _backward = [0.0], F.cross_entropy, torch.Tensor.backward
def _forward_s(*a, **k):
    _now[0] += 1.0
    return _ce(*a, **k)
def _backward_s(self, *a, **k):
    _now[0] += 2.0
    return _backward(self, *a, **k)
time.perf_counter, F.cross_entropy, torch.Tensor.backward = (lambda: _now[0]), _forward_s, _backward_s
"""


def test_the_eval_guard_keeps_the_score_inside_the_budget_minus_the_margin(tmp_path, tiny_data):
    """On a clock the test controls (it counts forwards and backwards): a first run with no budget to speak of
    measures the eval; a second whose budget ends halfway through its TTT must stop adapting, fit, and score."""
    shim = shim_dir(tmp_path, TICK_CLOCK)
    env = dict(PYTHONPATH=shim, TTT_LORA_CHUNK=16, TTT_LORA_DOCS=2, TTT_LOG_EVERY=1)

    def run(out, budget):
        out.mkdir()
        r = run_script(out, tiny_data, MAX_EVAL_SECONDS=100_000, EVAL_MARGIN_SECONDS=100_000 - budget, **env)
        assert r.returncode == 0, r.stderr[-3000:]
        log = (out / "train.log").read_text()
        sliding = float(re.search(r"^final_sliding_exact .* eval_time:([\d.]+)s", log, re.M).group(1))
        return log, sliding, float(re.search(r"^eval_time:([\d.]+)s", log, re.M).group(1))

    log, sliding, total = run(tmp_path / "free", 90_000)
    assert "stopped adapting" not in log and total > sliding + 50  # TTT ran whole, over many readings
    budget = sliding + (total - sliding) / 2
    log, sliding2, total2 = run(tmp_path / "tight", budget)
    assert sliding2 == sliding  # the same readings up to TTT
    assert "stopped adapting" in log  # TTT ran, and its guard fired
    assert total2 <= budget
    sub = json.loads((tmp_path / "tight" / "submission.json").read_text())
    assert sub["eval_time_s"] <= budget and sub["rule_violations"] == [] and sub["status"] == "final"


TTT_FAILS = """# test shim: the first optimizer step over 3-D tensors (the LoRA adapters, TTT's first step) notes
# what submission.json holds at that moment, then fails
import json, os, pathlib, torch
_step = torch.optim.AdamW.step
def _failing(self, *a, **k):
    if any(p.dim() == 3 for g in self.param_groups for p in g["params"]):
        sub = pathlib.Path("submission.json")
        pathlib.Path("at_ttt_start.json").write_text(sub.read_text() if sub.exists() else "null")
        raise RuntimeError("test shim: a TTT step failed")
    return _step(self, *a, **k)
torch.optim.AdamW.step = _failing
"""


def test_the_record_is_written_before_ttt_and_stays_marked_when_ttt_fails(tmp_path, tiny_data):
    shim = shim_dir(tmp_path, TTT_FAILS)
    out = tmp_path / "out"
    out.mkdir()
    r = run_script(out, tiny_data, PYTHONPATH=shim)
    assert r.returncode == 1
    (line,) = error_lines(r)
    assert "RuntimeError: test shim: a TTT step failed" in line
    before = json.loads((out / "at_ttt_start.json").read_text())
    assert before["status"] == "provisional: the sliding score; TTT has not finished"
    sub, log = json.loads((out / "submission.json").read_text()), (out / "train.log").read_text()
    assert sub["status"] == "provisional: TTT did not finish (RuntimeError: test shim: a TTT step failed); the score is the sliding one"
    assert sub["val_bpb"] == before["val_bpb"] == pytest.approx(metric(log, "final_sliding_exact"), abs=1e-8)
    assert sub["roundtrip_val_bpb"] == pytest.approx(metric(log, "final_int5_zstd_roundtrip_exact"), abs=1e-8)
    assert (out / "final_model.int5.ptz").is_file() and "legal_ttt_exact" not in log
