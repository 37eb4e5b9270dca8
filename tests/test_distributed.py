"""End-to-end runs of train_gpt.py on the synthetic corpus: eager and compiled (the path users
run), 1 and 2 processes (gloo), priming undone, bad input."""
import hashlib
import json
import re
import subprocess
import sys

import pytest

from conftest import ROOT, metric, run_script


def run_ok(out, data, **env):
    r = run_script(out, data, **env)
    assert r.returncode == 0, r.stderr[-3000:]
    return (out / "logs" / "t.txt").read_text()


@pytest.fixture(scope="module")
def one_proc(tmp_path_factory, tiny_data):
    out = tmp_path_factory.mktemp("one")
    return out, run_ok(out, tiny_data)


@pytest.fixture(scope="module")
def compiled(tmp_path_factory, tiny_data):
    out = tmp_path_factory.mktemp("compiled")
    return out, run_ok(out, tiny_data, COMPILE=1)


def train_losses(log):
    return [float(x) for x in re.findall(r"train_loss:(\S+)", log)]


def assert_compiled_run_is_whole(log, primed=4, graphs=7, phased=True):
    """Every LoRA step that may adapt did (all but each batch's last), the phase's global pass ran whole, TTT
    beat the plain eval, nothing compiled after priming. Graphs: one per training state primed, sliding scoring,
    LoRA TTT's two (adapting, scoring) for every window shape, and, phased (TINY), the global pass's step and the
    scoring of the eval context's windows (80) beside the training context's (the standard eval)."""
    assert "compile:True" in log
    assert re.search(rf"priming: {primed} steps run and undone, {graphs} graphs compiled in [\d.]+s: training [\d.]+s, scoring [\d.]+s, lora ttt [\d.]+s \(compile cache ", log)
    assert "stopped adapting" not in log and "global pass stopped" not in log
    passed = re.search(r"ttt phase 1/1: 8 documents scored; global pass (\d+)/(\d+) steps of 4 x 80 tokens", log)
    assert bool(passed and passed.group(1) == passed.group(2) and int(passed.group(1)) >= 2) == phased  # TINY: its phase, whole
    assert ("window 80 " in log) == phased  # TINY's eval context (80), or the training one
    batches, steps, adapted = map(int, re.search(r"ttt lora: (\d+) batches, (\d+) steps, (\d+) adapting", log).groups())
    assert batches >= 3 and adapted == steps - batches
    # doc-isolated: on this corpus of ~120-token documents the sliding window's context from the
    # previous document is worth as much as the TTT (the bench compares them); beat the plain eval
    assert metric(log, "legal_ttt_exact") < metric(log, "final_int5_zstd_roundtrip_exact")
    assert "recompiles after priming: 0" in log


def test_one_process_run_learns_and_writes_a_matching_submission(one_proc):
    out, log = one_proc
    losses = train_losses(log)
    assert len(losses) == 30 and losses[-1] < losses[0] - 1.0
    sub = json.loads((out / "submission.json").read_text())
    assert sub["val_bpb"] == pytest.approx(metric(log, "legal_ttt_exact"), abs=1e-8)
    assert sub["sliding_val_bpb"] == pytest.approx(metric(log, "final_sliding_exact"), abs=1e-8)
    art = re.search(r"artifact bytes_total:(\d+) bytes_code:(\d+) bytes_model:(\d+)", log)
    assert [sub["bytes_total"], sub["bytes_code"], sub["bytes_model"]] == [int(g) for g in art.groups()]
    assert sub["bytes_model"] == (out / "final_model.int5.ptz").stat().st_size
    assert sub["steps"] == 30 and sub["world_size"] == 1
    assert re.search(r"qat: round-to-nearest on at step \d+", log)
    assert re.search(r"artifact gptq zstd level \d+, 0 tensors at other steps, 0 with LQER factors, pruned 0 symbols", log)
    assert str(out) not in log.split("\n", 1)[1]  # only the hparams line names the output folder


def test_compiled_run_adapts_every_chunk_never_recompiles_and_matches_eager(compiled, one_proc):
    log, eager = compiled[1], one_proc[1]
    assert_compiled_run_is_whole(log)
    assert max(abs(a - b) for a, b in zip(train_losses(log), train_losses(eager))) < 0.02
    for key in ("final_prequant_ema_exact", "final_int5_zstd_roundtrip_exact", "final_sliding_exact", "legal_ttt_exact"):
        assert metric(log, key) == pytest.approx(metric(eager, key), abs=0.01), key


def test_compiled_two_process_run_matches_one_process(tmp_path, tiny_data, compiled):
    log2, log1 = run_ok(tmp_path, tiny_data, nproc=2, COMPILE=1), compiled[1]
    assert_compiled_run_is_whole(log2)
    assert max(abs(a - b) for a, b in zip(train_losses(log1), train_losses(log2))) < 0.02
    for key in ("final_int5_zstd_roundtrip_exact", "final_sliding_exact", "legal_ttt_exact"):
        assert metric(log2, key) == pytest.approx(metric(log1, key), abs=0.01), key
    assert json.loads((tmp_path / "submission.json").read_text())["world_size"] == 2


RECUR = dict(RECUR_LAYERS="1,2", PARALLEL_FROM="2", QAT_THRESHOLD="0.5",  # QAT from step 26 of 30; and TTT without
             TTT_PHASES="0", EVAL_SEQ_LEN="0", TTT_LORA_WARM_A="0", TTT_LORA_CHUNK_SCHEDULE="")  # issue 35's plan


@pytest.fixture(scope="module")
def recurrent(tmp_path_factory, tiny_data):
    out = tmp_path_factory.mktemp("recurrent")
    return out, run_ok(out, tiny_data, COMPILE=1, **RECUR)


def graphs(log):
    return int(re.search(r"(\d+) graphs compiled", log).group(1))


def test_compiled_recurrent_parallel_run_switches_graphs_without_recompiling(recurrent, compiled, tmp_path, tiny_data):
    log = recurrent[1]
    assert_compiled_run_is_whole(log, primed=6, graphs=6, phased=False)  # plain, recurrent, recurrent + QAT: 2 steps each
    assert "recurrence: layers (1, 2), 2 passes, from step 15" in log and "on at step 26" in log
    assert "compiling now" not in log
    assert graphs(log) == graphs(compiled[1]) - 1  # 2 more training states; no global pass, one scoring context
    eager = run_ok(tmp_path, tiny_data, **RECUR)  # the compiled graphs follow the model's recurrence flag
    assert max(abs(a - b) for a, b in zip(train_losses(log), train_losses(eager))) < 0.02
    for key in ("final_int5_zstd_roundtrip_exact", "final_sliding_exact", "legal_ttt_exact"):
        assert metric(log, key) == pytest.approx(metric(eager, key), abs=0.01), key


def test_qat_before_the_recurrence_switch_is_primed_too(tmp_path, tiny_data):
    log = run_ok(tmp_path, tiny_data, COMPILE=1, **{**RECUR, "RECUR_START_FRAC": "0.95"})
    assert "on at step 26" in log and "recurrence: layers (1, 2), 2 passes, from step 29" in log
    assert_compiled_run_is_whole(log, primed=8, graphs=7, phased=False)  # QAT can start first: the 4th training state


def test_priming_steps_are_undone_completely(tmp_path, tiny_data, one_proc):
    log = run_ok(tmp_path, tiny_data, WARMUP_STEPS=3)
    assert "priming: 3 steps run and undone" in log
    assert train_losses(log) == train_losses(one_proc[1])
    assert metric(log, "legal_ttt_exact") == metric(one_proc[1], "legal_ttt_exact")


def test_wall_clock_run_keeps_training_and_calibration_inside_the_limit(tmp_path, tiny_data):
    log = run_ok(tmp_path, tiny_data, MAX_WALLCLOCK_SECONDS=8, GPTQ_RESERVE_SECONDS=1, ITERATIONS=10**6,
                 WARMDOWN_ITERS=20, TTT_ENABLED=0)  # 8 s: room for QAT's start on a loaded machine
    train, calib, total = map(int, re.search(r"train_time:(\d+)ms gptq_calibration:(\d+)ms .* total:(\d+)ms", log).groups())
    assert train <= 7500 and total <= 8000 and "qat: round-to-nearest on at step" in log
    timed, reserve = re.search(r"training clock: [\d.]+s, ([\d.]+)s kept for GPTQ calibration \(timed: (\d+)ms\)", log).groups()[::-1]
    assert int(timed) > 0 and float(reserve) == pytest.approx(max(1.0, 2e-3 * int(timed)), abs=0.06)


def test_two_ranks_stop_adapting_at_the_same_chunk(tmp_path):
    """Rank 1's clock runs 3x faster than rank 0's: both still stop at one chunk, and finish."""
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        str(ROOT / "tests" / "budget_worker.py"), str(tmp_path)],
                       capture_output=True, text=True, timeout=300, env={"OMP_NUM_THREADS": "1", **dict(__import__("os").environ)})
    assert r.returncode == 0, r.stderr[-3000:]
    res = [json.loads((tmp_path / f"rank{i}.json").read_text()) for i in range(2)]
    stops = [[m for m in x["logs"] if "stopped adapting" in m] for x in res]
    assert len(stops[0]) == len(stops[1]) == 1, res
    chunk = [int(re.search(r"at chunk (\d+)/", s[0]).group(1)) for s in stops]
    assert chunk[0] == chunk[1] and 0 < chunk[0] < res[0]["chunks"] - 1
    assert res[0]["nll"] == res[1]["nll"]


def test_two_ranks_stop_the_global_pass_at_the_same_step(tmp_path):
    """Phased LoRA TTT, rank 1's clock 1,000 s ahead and 3x faster: the guard stops the global pass at one step
    on both ranks (every input reduced; a rank's own clock in the decision would part the collectives), and both
    finish with the same scores."""
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        str(ROOT / "tests" / "budget_worker.py"), str(tmp_path), "phased", "1050"],
                       capture_output=True, text=True, timeout=300, env={"OMP_NUM_THREADS": "1", **dict(__import__("os").environ)})
    assert r.returncode == 0, r.stderr[-3000:]
    res = [json.loads((tmp_path / f"rank{i}.json").read_text()) for i in range(2)]
    stops = [[m for m in x["logs"] if "global pass stopped" in m] for x in res]
    assert len(stops[0]) == len(stops[1]) == 1 and stops[0] == stops[1], res
    step = int(re.search(r"at step (\d+),", stops[0][0]).group(1))
    assert 0 < step < 15 and all(f"global pass {step}/15 steps" in " ".join(x["logs"]) for x in res)
    assert res[0]["nll"] == res[1]["nll"]


@pytest.mark.parametrize("env,msg", [
    (dict(VOCAB_SIZE=2048), "VOCAB_SIZE=2048 but"),
    (dict(TRAIN_BATCH_TOKENS=1000), "does not split"),
    (dict(MATRIX_LR=1e30, EMBED_LR=1e30, SCALAR_LR=1e30, GRAD_CLIP_NORM=1e30), "non-finite training loss"),
    (dict(DATA_PATH="/nonexistent"), "no shard files match"),
    (dict(TOKENIZER_PATH="/nonexistent.model"), "tokenizer not found"),
    (dict(MAX_WALLCLOCK_SECONDS=10, GPTQ_RESERVE_SECONDS=12), "leaves no training time"),
    (dict(RECUR_LAYERS="1,3"), "must be consecutive layers"),
    (dict(RECUR_LAYERS="x"), "must be consecutive layers"),
    (dict(TTT_LORA_CHUNK=81), "<= the eval context 80"),  # a longer chunk would leave targets unscored
    (dict(TTT_LORA_CHUNK_SCHEDULE="40:90"), "<= the eval context 80"),
    (dict(TTT_LORA_CHUNK_SCHEDULE="40"), "TTT_LORA_CHUNK_SCHEDULE='40' must be"),
    (dict(TTT_LORA_TARGETS="q,kv"), "unknown target 'kv'"),
    (dict(EVAL_SEQ_LEN=20000), "fewer than one window of EVAL_SEQ_LEN=20000+1"),
    (dict(EMBED_BITS=9), "2 <= EMBED_BITS <= 8"),  # the container stores a symbol in a byte
    (dict(NS_COEFFS="polar", MUON_BACKEND_STEPS=6), "NS_COEFFS='polar' with MUON_BACKEND_STEPS=6"),
    (dict(MIN_LR=1.5), "need 0 <= MIN_LR=1.5 <= 1"),
    (dict(ATTN_GATE=65), "SMEAR_WINDOW, ATTN_GATE <= MODEL_DIM=64"),
    (dict(DOC_ISOLATION=2), "DOC_ISOLATION 0 or 1"),
    (dict(LQER_RANK=-1), "LQER_RANK >= 0"),
    (dict(RECUR_PASSES=1), "RECUR_PASSES >= 2"),
])
def test_bad_input_stops_with_one_clear_line(tmp_path, tiny_data, env, msg):
    r = run_script(tmp_path, tiny_data, **env)
    assert r.returncode != 0
    lines = [l for l in r.stderr.strip().splitlines() if l.startswith("error:")]
    assert len(lines) == 1 and msg in lines[0], r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "final_model.int5.ptz").exists() and not (tmp_path / "submission.json").exists()


def test_no_data_says_where_and_how_to_get_it(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "train_gpt.py")], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    (line,) = [l for l in r.stderr.splitlines() if l.startswith("error:")]
    assert "./data/tokenizers/fineweb_8192_bpe_lossless_caps_caseops_v1_reserved.model" in line and "data/get_caseops.py" in line


def test_gpu_check_reads_every_figure_from_a_compiled_run_log(compiled, recurrent):
    from conftest import load_module
    figures = load_module("gpu_check", ROOT / "bench" / "gpu_check.py").figures
    assert figures(compiled[1])["recur_step_ms"] is None
    fig = figures(recurrent[1])
    steps = {int(s): float(t) for s, t in re.findall(r"step:(\d+)/\d+ train_loss:\S+ train_time:([\d.]+)ms", recurrent[1])}
    assert fig["step_ms"] == pytest.approx(steps[15] / 15) and fig["recur_step_ms"] == pytest.approx((steps[26] - steps[15]) / 11)
    assert fig["attention"] == "sdpa" and fig["recompiles_after_priming"] == 0 and fig["device"] == "cpu"
    assert fig["shape"]["mlp_hidden"] == 128 and fig["shape"]["recur_layers"] == "1,2"  # the estimator scales by it
    for k in ("step_ms", "qat_step_ms", "standard_eval_tok_s", "sliding_eval_tok_s", "lora_step_ms"):
        assert fig[k] > 0, k
    assert fig["ttt_step_ms"] is None  # LoRA TTT, the default: no chunked TTT ran
    assert fig["export_s"] >= 0  # logged to 0.1 s: a tiny export reads 0.0


def test_the_warmdown_fraction_sets_the_lr_decay_and_the_qat_start_under_a_wall_clock(tmp_path, tiny_data):
    """WARMDOWN_ITERS=0: the LR decays over WARMDOWN_FRAC of the (predicted) run, here 0.5 x 30
    = 15 steps, so the multiplier (30 - step) / 15 first falls below QAT_THRESHOLD=0.5 at step 23."""
    log = run_ok(tmp_path, tiny_data, WARMDOWN_ITERS=0, WARMDOWN_FRAC=0.5, QAT_THRESHOLD=0.5,
                 MAX_WALLCLOCK_SECONDS=900, TTT_ENABLED=0)
    assert "training clock: " in log and re.search(r"^step:30/30 train_loss", log, re.M)
    assert re.search(r"qat: .* on at step 23 \(lr multiplier 0\.467\)", log)


def eval_only(out, data, **env):
    r = run_script(out, data, EVAL_ONLY=1, **env)
    assert r.returncode == 0, r.stderr[-3000:]
    return (out / "logs" / "t.reeval.txt").read_text()


def test_eval_only_reproduces_the_runs_scores_from_its_artifact_and_says_so(tmp_path, tiny_data, one_proc):
    out, log = one_proc
    art = tmp_path / "published.ptz"
    art.write_bytes((out / "final_model.int5.ptz").read_bytes())
    again = eval_only(tmp_path, tiny_data, ARTIFACT_PATH=art)
    for key in ("final_int5_zstd_roundtrip_exact", "final_sliding_exact", "legal_ttt_exact"):
        assert metric(again, key) == metric(log, key), key  # same weights, same evaluation: the same numbers
    assert "train_loss" not in again and "final_prequant_ema_exact" not in again
    assert (tmp_path / "train.log").read_text() == again
    sub, first = json.loads((tmp_path / "submission.json").read_text()), json.loads((out / "submission.json").read_text())
    sha = hashlib.sha256(art.read_bytes()).hexdigest()
    assert sub["status"] == "re-evaluated" and first["status"] == "final" and first["artifact_sha256"] == sha
    assert sub["reevaluated"] == dict(artifact=str(art), sha256=sha) and sub["artifact_sha256"] == sha
    assert sub["val_bpb"] == first["val_bpb"] and sub["bytes_total"] == first["bytes_total"] and sub["rule_violations"] == []
    assert sub["steps"] is None and sub["gptq"] is None and "RTN" not in sub["blurb"]  # no record of its training here
    assert art.read_bytes() == (out / "final_model.int5.ptz").read_bytes()  # the artifact is only read


def test_eval_only_recovers_a_run_whose_ttt_failed_and_keeps_its_training_figures(tmp_path, tiny_data, one_proc):
    out, log = one_proc
    for f in ("final_model.int5.ptz", "submission.json"):
        (tmp_path / f).write_bytes((out / f).read_bytes())
    r = run_script(tmp_path, tiny_data, EVAL_ONLY=1)  # OUT_DIR holds a final record: refused, untouched
    assert r.returncode == 1 and "would replace the final record" in r.stderr
    assert (tmp_path / "submission.json").read_bytes() == (out / "submission.json").read_bytes()
    first = json.loads((out / "submission.json").read_text())
    failed = dict(first, status="provisional: TTT did not finish (a test); the score is the sliding one",
                  val_bpb=first["sliding_val_bpb"], ttt_val_bpb=None)
    (tmp_path / "submission.json").write_text(json.dumps(failed))
    again = eval_only(tmp_path, tiny_data)
    assert metric(again, "legal_ttt_exact") == metric(log, "legal_ttt_exact")
    sub = json.loads((tmp_path / "submission.json").read_text())
    assert sub["status"] == "re-evaluated" and sub["val_bpb"] == first["val_bpb"]
    for k in ("steps", "train_time_s", "gptq", "prequant_val_bpb", "zstd_level"):
        assert sub[k] == first[k] is not None, k


@pytest.mark.parametrize("case", ["missing", "truncated", "foreign", "other shape"])
def test_eval_only_rejects_a_bad_artifact_in_one_line(tmp_path, tiny_data, one_proc, case):
    good = (one_proc[0] / "final_model.int5.ptz").read_bytes()
    art, env = tmp_path / "a.ptz", {}
    if case == "truncated":
        art.write_bytes(good[:len(good) // 2])
    elif case == "foreign":
        import zstandard
        art.write_bytes(zstandard.ZstdCompressor().compress(b"not a model" * 100))
    elif case == "other shape":
        art.write_bytes(good)
        env = dict(MODEL_DIM=32)
    r = run_script(tmp_path, tiny_data, EVAL_ONLY=1, ARTIFACT_PATH=art, **env)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    (line,) = [l for l in r.stderr.splitlines() if l.startswith("error:")]
    assert {"missing": "EVAL_ONLY=1: no artifact at", "truncated": "not a complete zstd stream",
            "foreign": "no container header", "other shape": "does not match the model configuration"}[case] in line, line
    assert not (tmp_path / "submission.json").exists()


def test_compiled_eval_only_primes_its_graphs_and_reproduces_the_compiled_run(tmp_path, tiny_data, compiled):
    out, log = compiled
    art = tmp_path / "a.ptz"
    art.write_bytes((out / "final_model.int5.ptz").read_bytes())
    again = eval_only(tmp_path, tiny_data, ARTIFACT_PATH=art, COMPILE=1)
    # scoring at the training and the eval context (TINY: 64, 80), LoRA's two, the global pass's step
    assert "priming: the evaluation graphs run and undone, 5 graphs compiled" in again and "recompiles after priming: 0" in again
    for key in ("final_int5_zstd_roundtrip_exact", "final_sliding_exact", "legal_ttt_exact"):
        assert metric(again, key) == pytest.approx(metric(log, key), abs=1e-6), key  # compiled kernels: near-exact

