import json
import re

import pytest

from conftest import metric, needs_shared, run_script

pytestmark = needs_shared


@pytest.fixture(scope="module")
def one_proc(tmp_path_factory, tiny_data):
    out = tmp_path_factory.mktemp("one")
    r = run_script(out, tiny_data)
    assert r.returncode == 0, r.stderr[-3000:]
    return out, (out / "logs" / "t.txt").read_text()


def train_losses(log):
    return [float(x) for x in re.findall(r"train_loss:(\S+)", log)]


def test_one_process_run_learns_and_writes_a_matching_submission(one_proc):
    out, log = one_proc
    losses = train_losses(log)
    assert len(losses) == 30 and losses[-1] < losses[0] - 0.5
    sub = json.loads((out / "submission.json").read_text())
    assert sub["val_bpb"] == pytest.approx(metric(log, "legal_ttt_exact"), abs=1e-8)
    assert sub["sliding_val_bpb"] == pytest.approx(metric(log, "final_sliding_exact"), abs=1e-8)
    art = re.search(r"artifact bytes_total:(\d+) bytes_code:(\d+) bytes_model:(\d+)", log)
    assert [sub["bytes_total"], sub["bytes_code"], sub["bytes_model"]] == [int(g) for g in art.groups()]
    assert sub["bytes_model"] == (out / "final_model.int5.ptz").stat().st_size
    assert sub["steps"] == 30 and sub["world_size"] == 1
    assert re.search(r"qat: prune 0\.15 \+ int5 fake quantization on at step \d+", log)


def test_two_process_run_matches_one_process(tmp_path, tiny_data, one_proc):
    r = run_script(tmp_path, tiny_data, nproc=2)
    assert r.returncode == 0, r.stderr[-3000:]
    log2 = (tmp_path / "logs" / "t.txt").read_text()
    log1 = one_proc[1]
    l1, l2 = train_losses(log1), train_losses(log2)
    assert l2[-1] < l2[0] - 0.5
    assert max(abs(a - b) for a, b in zip(l1, l2)) < 0.02
    for key in ("final_int5_zstd_roundtrip_exact", "final_sliding_exact", "legal_ttt_exact"):
        assert metric(log2, key) == pytest.approx(metric(log1, key), abs=0.01), key
    assert json.loads((tmp_path / "submission.json").read_text())["world_size"] == 2


def test_priming_steps_are_undone_completely(tmp_path, tiny_data, one_proc):
    r = run_script(tmp_path, tiny_data, WARMUP_STEPS=3)
    assert r.returncode == 0, r.stderr[-3000:]
    log = (tmp_path / "logs" / "t.txt").read_text()
    assert "compile priming: 3 steps run and undone" in log
    assert train_losses(log) == train_losses(one_proc[1])
    assert metric(log, "legal_ttt_exact") == metric(one_proc[1], "legal_ttt_exact")


@pytest.mark.parametrize("env,msg", [
    (dict(VOCAB_SIZE=2048), "VOCAB_SIZE 2048"),
    (dict(TRAIN_BATCH_TOKENS=1000), "does not split"),
    (dict(MATRIX_LR=1e30, EMBED_LR=1e30, SCALAR_LR=1e30, GRAD_CLIP_NORM=1e30), "non-finite training loss"),
    (dict(DATA_PATH="/nonexistent"), "no shard files match"),
])
def test_bad_input_stops_with_one_clear_line(tmp_path, tiny_data, env, msg):
    r = run_script(tmp_path, tiny_data, **env)
    assert r.returncode != 0
    lines = [l for l in r.stderr.strip().splitlines() if l.startswith("error:")]
    assert len(lines) == 1 and msg in lines[0], r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "final_model.int5.ptz").exists() and not (tmp_path / "submission.json").exists()
