"""COMPILE_CACHE_DIR: inductor's caches kept across runs never change a result; and the packed script
(tools/pack.py), compiled as users run it, gives the plain script's results. A file of its own, so its
cold compiles run beside test_distributed.py's under pytest-xdist."""
import hashlib
import json
import re
import subprocess
import sys

from conftest import ROOT, SHARED_COMPILE_CACHE, metric, run_script

SMALL = dict(COMPILE=1, NUM_LAYERS=2, PARALLEL_FROM=-1, ITERATIONS=12, WARMDOWN_ITERS=6)  # every graph kind, quick


def run_ok(out, data, **env):
    out.mkdir(exist_ok=True)
    r = run_script(out, data, **SMALL, **env)
    assert r.returncode == 0, r.stderr[-3000:]
    return (out / "logs" / "t.txt").read_text()


def cache_counts(log):
    """(hits, misses) of inductor's FX-graph cache during priming."""
    return tuple(map(int, re.search(r"\(compile cache .*?: (\d+) hits, (\d+) misses\)", log).groups()))


def test_a_cold_a_warm_and_a_foreign_compile_cache_and_the_packed_script_give_identical_results(tmp_path, tiny_data):
    """A fresh COMPILE_CACHE_DIR compiles every graph; the same one again loads them all; the packed script, run
    with the tests' shared cache (entries of many other configurations and scripts), counts its own bytes: the
    three runs' scores, losses and artifacts are identical, byte for byte."""
    packed = tmp_path / "dist" / "train_gpt.py"
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "pack.py"), str(ROOT / "train_gpt.py"), "-o", str(packed)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    cache = tmp_path / "cache"
    logs, arts = {}, {}
    runs = (("cold", cache, ROOT / "train_gpt.py"), ("warm", cache, ROOT / "train_gpt.py"),
            ("packed", SHARED_COMPILE_CACHE, packed))
    for name, where, script in runs:
        logs[name] = run_ok(tmp_path / name, tiny_data, script=script, COMPILE_CACHE_DIR=where)
        arts[name] = (tmp_path / name / "final_model.int5.ptz").read_bytes()
        assert f"compile cache {where}:" in logs[name] and "recompiles after priming: 0" in logs[name]
    hits, misses = cache_counts(logs["cold"])
    assert hits == 0 and misses > 0
    assert cache_counts(logs["warm"]) == (misses, 0)  # everything the cold run compiled, loaded
    for key in ("final_prequant_ema_exact", "final_int5_zstd_roundtrip_exact", "final_sliding_exact", "legal_ttt_exact"):
        assert len({metric(log, key) for log in logs.values()}) == 1, key
    losses = {k: re.findall(r"train_loss:(\S+)", v) for k, v in logs.items()}
    assert len(losses["cold"]) == 12 and all(v == losses["cold"] for v in losses.values())
    assert len(set(arts.values())) == 1
    assert (cache / "fxgraph").is_dir()  # the cache lives where it was named
    sub = json.loads((tmp_path / "packed" / "submission.json").read_text())
    data, source = packed.read_bytes(), (ROOT / "train_gpt.py").read_bytes()
    assert sub["bytes_code"] == len(data) <= 48_000 and sub["code_sha256"] == hashlib.sha256(data).hexdigest()
    assert sub["source_sha256"] == hashlib.sha256(source).hexdigest()
    assert f"code: train_gpt.py {len(data)} bytes, sha256 {sub['code_sha256']} (packed; source sha256 " in logs["packed"]
    plain = json.loads((tmp_path / "cold" / "submission.json").read_text())
    assert plain["bytes_code"] == len(source) and plain["source_sha256"] is None
