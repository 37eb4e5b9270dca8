"""Fast tests for tools/ (no network, no GPU)."""
import json
import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = os.path.join(ROOT, "tools")
sys.path.insert(0, TOOLS)

import estimate_h100 as est  # noqa: E402
import significance as sig  # noqa: E402
from logparse import final_result, parse_log  # noqa: E402

SP1024 = {"VOCAB_SIZE": "1024"}  # the anchor's vocabulary (the estimator's default is the main job's, 8192)


def write_log(path, seed=1, run_id="synthetic", shift=0.0, finals=("roundtrip", "sliding", "ttt"), bpb_shift=0.0,
              tokenizer="t.model"):
    hp = {"seed": seed, "num_layers": 11, "model_dim": 512, "train_seq_len": 2048,
          "train_batch_tokens": 786432, "run_id": run_id, "tokenizer_path": tokenizer}
    lines = [f"hparams {json.dumps(hp)}", "model_params:27288668", "some unrelated line"]
    for s in range(10, 60, 10):
        lines.append(f"step:{s}/50 train_loss:{6.0 - s / 20:.4f} train_time:{s * 1000}ms "
                     f"step_avg:1000.00ms")
        if s % 20 == 0:
            lines.append(f"step:{s}/50 val_loss:{4.0 - s / 100:.4f} val_bpb:{2.4 - s / 100:.4f}")
    lines.append("artifact bytes_total:15900000 bytes_code:60000 bytes_model:15840000 cap:16000000")
    if "roundtrip" in finals:
        lines.append(f"final_int5_zstd_roundtrip_exact val_loss:{3.52 + shift:.6f} val_bpb:2.0900")
    if "sliding" in finals:
        lines.append(f"final_sliding_exact val_loss:{3.50 + shift:.6f} val_bpb:{2.08 + bpb_shift:.6f}")
    if "ttt" in finals:
        for i in range(1, 5):
            lines.append(f"ttt_chunk [{i}/4] bpb={2.10 - i / 100:.4f} time={i * 3.1:.1f}s")
        lines.append(f"legal_ttt_exact val_loss:{3.48 + shift:.6f} val_bpb:2.0700")
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def run(script, *args):
    return subprocess.run([sys.executable, os.path.join(TOOLS, script), *args],
                          capture_output=True, text=True, timeout=120)


# ---------------------------------------------------------------- logparse
def test_parse_log(tmp_path):
    p = parse_log(write_log(tmp_path / "a.log", seed=7))
    assert p["hparams"]["seed"] == 7 and p["hparams"]["run_id"] == "synthetic"
    assert p["model_params"] == 27288668
    assert p["train"][0] == (10, 5.5, 10000.0) and len(p["train"]) == 5
    assert p["val"] == [(20, 3.8, 2.2), (40, 3.6, 2.0)]
    assert p["ttt"][0] == (1, 4, 2.09) and len(p["ttt"]) == 4
    assert p["artifact"] == {"bytes_total": 15900000, "bytes_code": 60000,
                             "bytes_model": 15840000, "cap": 16000000}
    assert p["roundtrip"] == (3.52, 2.09)
    assert p["sliding"] == (3.50, 2.08)
    assert p["ttt_final"] == (3.48, 2.07)
    assert final_result(p) == ("legal_ttt_exact", 3.48, 2.07)


def test_parse_log_partial(tmp_path):
    p = parse_log(write_log(tmp_path / "b.log", finals=("roundtrip",)))
    assert p["ttt"] == [] and p["ttt_final"] is None and p["sliding"] is None
    assert final_result(p)[0] == "final_int5_zstd_roundtrip_exact"
    empty = tmp_path / "empty.log"
    empty.write_text("nothing here\n")
    e = parse_log(str(empty))
    assert e["hparams"] == {} and e["model_params"] is None and final_result(e) is None


# ---------------------------------------------------------------- estimator
def test_params_at_defaults():
    cfg = est.load_config(env=SP1024)
    assert 25e6 < est.matmul_params(cfg) < 29e6
    assert 25e6 < est.total_params(cfg) < 29e6


def test_anchor_reproduced():
    r = est.estimate(est.load_config(env=SP1024))
    one = next(s for s in r["scenarios"] if s["factor"] == 1.0)
    assert one["step_ms"] == pytest.approx(83.4, rel=1e-9)
    fwd, train = est.flops_per_token(est.load_config(env=SP1024))
    assert train == pytest.approx(3 * fwd)


def test_double_batch_doubles_step_time():
    a = est.estimate(est.load_config(env=SP1024))
    b = est.estimate(est.load_config(env={**SP1024, "TRAIN_BATCH_TOKENS": "1572864"}))
    for sa, sb in zip(a["scenarios"], b["scenarios"]):
        assert sb["step_ms"] == pytest.approx(2 * sa["step_ms"])


def test_estimator_cli(tmp_path):
    out = run("estimate_h100.py", "--no-memory")
    assert out.returncode == 0, out.stderr
    assert "ESTIMATE" in out.stdout and "est." in out.stdout
    assert "83.4 ms" in out.stdout and ("fits" in out.stdout or "OVER" in out.stdout)
    out = run("estimate_h100.py", "--no-memory", "--log", write_log(tmp_path / "a.log"))
    assert out.returncode == 0, out.stderr
    assert "27,288,668" in out.stdout


# ---------------------------------------------------------------- significance
BASE = [3.500, 3.502, 3.498]


def test_welch_clear_improvement_passes():
    new = [3.480, 3.481, 3.479]
    t, dof, p = sig.welch_one_sided(new, BASE)
    assert t > 0 and p < 0.01


def test_welch_small_improvement_fails():
    new = [x - 0.003 for x in BASE]
    t, dof, p = sig.welch_one_sided(new, BASE)
    assert t < 0 and p > 0.01


def test_welch_matches_scipy():
    import scipy.stats as stats
    cases = [([3.480, 3.481, 3.479], BASE), ([3.49, 3.495, 3.489, 3.50], BASE),
             ([3.40, 3.45, 3.41], [3.46, 3.50, 3.44, 3.47, 3.45]), ([x - 0.003 for x in BASE], BASE)]
    for new, base in cases:
        t, dof, p = sig.welch_one_sided(new, base)
        ref = stats.ttest_ind([b - 0.005 for b in base], new, equal_var=False,
                              alternative="greater")
        assert t == pytest.approx(ref.statistic, abs=1e-9)
        assert abs(p - ref.pvalue) < 1e-6
    for tv, d in [(0.3, 2.5), (-1.7, 4.0), (5.0, 7.3), (12.0, 30.0)]:
        assert abs(sig.t_sf(tv, d) - stats.t.sf(tv, d)) < 1e-9


def test_significance_cli(tmp_path):
    new = [write_log(tmp_path / f"new{s}.log", seed=s, shift=d)
           for s, d in [(1, -0.020), (2, -0.021), (3, -0.019)]]
    base = [write_log(tmp_path / f"base{s}.log", seed=s, shift=d)
            for s, d in [(1, 0.0), (2, 0.002), (3, -0.002)]]
    out = run("significance.py", *new, "--baseline-logs", *base)
    assert out.returncode == 0, out.stderr
    assert "legal_ttt_exact" in out.stdout and "PASS" in out.stdout
    out = run("significance.py", *new, "--baseline-mean", "3.463", "--baseline-std", "0.002",
              "--baseline-n", "3")
    assert out.returncode == 0, out.stderr
    assert "FAIL" in out.stdout


# ---------------------------------------------------------------- plot
def test_plot_writes_png(tmp_path):
    png = tmp_path / "out.png"
    logs = [write_log(tmp_path / "a.log"), write_log(tmp_path / "b.log", finals=())]
    out = run("plot_log.py", *logs, "-o", str(png))
    assert out.returncode == 0, out.stderr
    data = png.read_bytes()
    assert len(data) > 1000 and data[:8] == b"\x89PNG\r\n\x1a\n"


def test_estimator_uses_measured_gpu_figures(tmp_path):
    m = dict(step_ms=800.0, qat_step_ms=1000.0, standard_eval_tok_s=4e6, sliding_eval_tok_s=1.5e5,
             ttt_step_ms=80.0, export_s=30.0, lora_step_ms=250.0)
    r = est.estimate(est.load_config(env=SP1024), m)
    nom, pes = r["scenarios"][1], r["scenarios"][2]
    full = sum(widths / W for W, _, _, widths in r["lora_plan"])  # the steps' windows, in whole-window steps
    assert 0 < full < r["ttt_steps"]
    assert nom["eval_parts_s"]["lora_ttt"] == pytest.approx(full * 0.25)
    assert pes["eval_parts_s"]["lora_ttt"] == pytest.approx(full * 0.25 * est.MEASURED_PESSIMISM)
    assert nom["step_ms"] == pytest.approx(800.0 / 8 * est.MULTI_GPU_OVERHEAD)
    assert nom["qat_ratio"] == pytest.approx(1.25) and pes["step_ms"] > nom["step_ms"]
    assert nom["eval_parts_s"]["sliding_pass"] == pytest.approx(62021632 / 1.5e5 / 8 * est.MULTI_GPU_OVERHEAD)
    assert nom["steps"] * nom["step_ms"] / 1e3 < 600 and nom["train_s"] <= 600
    path = tmp_path / "g.json"
    path.write_text(json.dumps(m))
    out = run("estimate_h100.py", "--no-memory", "--gpu-check", str(path))
    assert out.returncode == 0 and "MEASURED 1-GPU" in out.stdout


def test_a_check_recurrent_from_step_0_prices_plain_steps_by_flops_and_shows_its_memory(tmp_path):
    m = dict(step_ms=None, recur_step_ms=900.0, qat_step_ms=990.0, standard_eval_tok_s=4e6, sliding_eval_tok_s=1e5,
             export_s=15.0, lora_step_ms=130.0, device="GPU X",
             peak_memory={"training": dict(allocated_gib=30.6, reserved_gib=42.5)})
    r = est.estimate(est.load_config(env=SP1024), m)
    nom = r["scenarios"][1]
    assert nom["step_ms"] == pytest.approx(900.0 / r["recur_ratio"] / 8 * est.MULTI_GPU_OVERHEAD)
    assert nom["recur_ratio"] == pytest.approx(r["recur_ratio"]) and nom["qat_ratio"] == pytest.approx(1.1)
    path = tmp_path / "g.json"
    path.write_text(json.dumps(m))
    out = run("estimate_h100.py", "--no-memory", "--gpu-check", str(path))
    assert out.returncode == 0, out.stderr
    assert "peak memory training: 30.6 GiB per rank (measured on GPU X, 1 process, compiled; allocated: the phase's own peak; the allocator held 42.5)" in out.stdout


def test_qat_steps_shorten_training_to_stay_in_the_wall_clock():
    fixed = {"RECUR_LAYERS": "", "WARMDOWN_ITERS": "3500"}
    cfg = est.load_config(env={**SP1024, "GPTQ_CALIB_SEQS": "0", **fixed})
    plain = est.train_steps(0.1, 1.0, cfg)
    slow = est.train_steps(0.1, 1.5, cfg)
    assert plain in (5999, 6000) and plain - slow in (262, 263)  # 525 QAT steps at +50%: 262.5 steps' time
    reserved = est.train_steps(0.1, 1.0, est.load_config(env={**SP1024, **fixed}))  # 2 s kept for GPTQ calibration
    assert plain - reserved in (19, 20, 21)


def test_calibration_estimate_fits_its_reserve_with_room():
    cfg = est.load_config(env=SP1024)
    d, hid = cfg["model_dim"], cfg["mlp_hidden"]
    assert est.hessian_elements(cfg) == 11 * (5 * d * d + hid * hid) + 128 ** 2 + 128 ** 2 + d * d
    for s in est.estimate(cfg)["scenarios"]:
        assert 0 < 2.5 * s["calib_s"] <= cfg["gptq_reserve_seconds"]  # the stated margin
    assert est.estimate(est.load_config(env={**SP1024, "GPTQ_CALIB_SEQS": "0"}))["scenarios"][1]["calib_s"] == 0


def test_recurrence_costs_its_extra_layers_from_the_switch_on():
    plain = est.load_config(env={**SP1024, "GPTQ_CALIB_SEQS": "0", "RECUR_LAYERS": "", "WARMDOWN_ITERS": "3500"})
    cfg = est.load_config(env={**SP1024, "GPTQ_CALIB_SEQS": "0", "RECUR_LAYERS": "4,5", "RECUR_START_FRAC": "0.5", "WARMDOWN_ITERS": "3500"})
    fwd, _ = est.flops_per_token(cfg)
    fwd_r, _ = est.flops_per_token(cfg, recur=True)
    assert fwd == est.flops_per_token(plain)[0] and 1.15 < fwd_r / fwd < 2 / 11 + 1  # + 2 of 11 layers, not the head
    r = est.estimate(cfg)
    ratio = r["recur_ratio"]
    assert ratio == pytest.approx(fwd_r / fwd)
    steps = est.train_steps(0.1, 1.0, cfg, ratio)
    assert est.train_seconds(steps, 0.1, 1.0, cfg, ratio) <= 600 < est.train_seconds(steps + 2, 0.1, 1.0, cfg, ratio)
    assert steps == pytest.approx(6000 / (0.5 + 0.5 * ratio), abs=2)
    nom = r["scenarios"][1]
    assert nom["train_s"] <= 600 and nom["steps"] < est.estimate(plain)["scenarios"][1]["steps"]


def test_significance_compares_any_metric_and_pairs_seeds(tmp_path):
    new = [write_log(tmp_path / f"new{s}.log", seed=s, shift=d) for s, d in [(1, -0.010), (2, -0.012), (3, -0.008)]]
    base = [write_log(tmp_path / f"base{s}.log", seed=s, shift=d) for s, d in [(1, 0.0), (2, 0.004), (3, -0.004)]]
    out = run("significance.py", *new, "--baseline-logs", *base, "--metric", "sliding", "--margin", "0")
    assert out.returncode == 0, out.stderr
    assert "final_sliding_exact" in out.stdout and "legal_ttt_exact" not in out.stdout
    assert "paired by seed [1, 2, 3]: improvements (nats) +0.01000 +0.01600 +0.00400" in out.stdout


def test_significance_across_tokenizers_tests_bpb_and_refuses_nats(tmp_path):
    new = [write_log(tmp_path / f"c{s}.log", seed=s, shift=-0.3, bpb_shift=d, tokenizer="caseops.model")
           for s, d in [(1, -0.010), (2, -0.012), (3, -0.008)]]
    base = [write_log(tmp_path / f"p{s}.log", seed=s, bpb_shift=d) for s, d in [(1, 0.0), (2, 0.004), (3, -0.004)]]
    out = run("significance.py", *new, "--baseline-logs", *base, "--metric", "sliding", "--margin", "0")
    assert out.returncode == 2 and "use --unit bpb" in out.stdout
    out = run("significance.py", *new, "--baseline-logs", *base, "--metric", "sliding", "--margin", "0", "--unit", "bpb")
    assert out.returncode == 0, out.stderr
    assert "paired by seed [1, 2, 3]: improvements (bpb) +0.01000 +0.01600 +0.00400" in out.stdout
    assert "improvement +0.01000 bpb" in out.stdout


def test_measured_recurrent_steps_set_the_recurrence_and_qat_ratios():
    m = dict(step_ms=800.0, recur_step_ms=900.0, qat_step_ms=1080.0, standard_eval_tok_s=4e6,
             sliding_eval_tok_s=1.5e5, ttt_step_ms=80.0, export_s=30.0)
    cfg = est.load_config(env={**SP1024, "RECUR_LAYERS": "4,5"})
    nom = est.estimate(cfg, m)["scenarios"][1]
    assert nom["recur_ratio"] == pytest.approx(900 / 800) and nom["qat_ratio"] == pytest.approx(1080 / 900)
    assert nom["train_s"] <= 600 - est.DEFAULTS["gptq_reserve_seconds"] and est.estimate(cfg)["scenarios"][1]["recur_ratio"] > 1.15  # FLOPs without a measurement


def test_a_gpu_checks_shape_scales_its_times_to_the_configurations():
    cfg = est.load_config(env={})  # the main job: 8192 pieces, the 4x MLP
    m = dict(step_ms=800.0, qat_step_ms=880.0, standard_eval_tok_s=4e6, sliding_eval_tok_s=1.5e5, export_s=30.0,
             lora_step_ms=250.0, vocab_size=8192)
    same = est.estimate(cfg, dict(m, shape={k: cfg[k] for k in ("mlp_hidden", "ve_layers", "bigram_buckets")}))["scenarios"][1]
    older = est.estimate(cfg, m)["scenarios"][1]  # no shape recorded: a check from before issue 36 ran the 3x MLP
    assert same["step_ms"] == pytest.approx(800 / 8 * est.MULTI_GPU_OVERHEAD)
    ratio = est.flops_per_token(cfg)[1] / est.flops_per_token(dict(cfg, mlp_hidden=1536))[1]
    assert ratio > 1.1 and older["step_ms"] / same["step_ms"] == pytest.approx(ratio)


def test_estimator_counts_every_repeated_pass(tg):
    for layers, passes in (("4,5", 2), ("3,4,5", 3), ("", 2)):
        cfg = est.load_config(env={**SP1024, "RECUR_LAYERS": layers, "RECUR_PASSES": str(passes)})
        plan = tg.layer_plan(11, tg.parse_recur(layers, 11), passes)
        assert est.extra_passes(cfg) == len(plan) - 11, (layers, passes)
    loop = est.load_config(env={**SP1024, "RECUR_LAYERS": "3,4,5", "RECUR_PASSES": "3"})
    d, kv, f = 512, 256, 1536  # each pass adds its layer's matmuls (q, out, k, v, up, down) twice over
    assert est.flops_per_token(loop, recur=True)[0] - est.flops_per_token(loop)[0] == pytest.approx(
        6 * 2 * (2 * d * d + 2 * d * kv + 2 * d * f) + 6 * 2 * 2 * 2048 * d * 0.5)


def test_estimator_defaults_and_parameter_count_match_the_script(tg):
    h = tg.Hyperparameters()
    shared = [k for k in est.DEFAULTS if hasattr(h, k) and k not in ("iterations", "vocab_size")]  # estimator: wall
    assert h.vocab_size == 0 and est.DEFAULTS["vocab_size"] == 8192  # the script: the tokenizer's, the default one's 8192
    assert len(shared) > 20 and {k: getattr(h, k) for k in shared} == {k: est.DEFAULTS[k] for k in shared}
    with torch.device("meta"):
        for env in ({"VOCAB_SIZE": "1024"}, {"VOCAB_SIZE": "8192", "VE_LAYERS": "0", "BIGRAM_BUCKETS": "4096", "RECUR_LAYERS": "", "PARALLEL_FROM": "-1", "SKIP_GATES": "0",
                    "SMEAR_WINDOW": "12", "ATTN_GATE": "0"}):
            h = tg.Hyperparameters.from_env(env)
            tg.apply_vocab_settings(h)  # both follow the vocabulary (8192: the 4x MLP)
            n = sum(p.numel() for p in tg.GPT(h).parameters())
            assert est.total_params(est.load_config(env=env)) == n, env


def test_lora_eval_estimate_follows_the_scripts_plan_and_fits():
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from conftest import load_tg
    tg = load_tg()
    lengths = [5, 700, 64, 17, 300, 16, 33, 2, 129, 90, 48, 256, 1]
    starts = [sum(lengths[:i]) for i in range(len(lengths))]
    spans = [(a, a + m) for a, m in zip(starts, lengths)]
    base = {"TRAIN_SEQ_LEN": "64", "TTT_LORA_CHUNK": "16", "TTT_LORA_DOCS": "3", "TTT_PHASES": "0"}
    phased = {"TTT_PHASES": "2", "TTT_PHASE_DOCS": "5", "TTT_LORA_CHUNK_SCHEDULE": "20:4,100:8", "EVAL_SEQ_LEN": "80"}
    for env in (base, {**base, **phased}):
        cfg = est.load_config(env={**SP1024, **env})
        h = tg.Hyperparameters.from_env(env)
        E = tg.eval_context(h)
        schedule = tg.parse_chunk_schedule(h.ttt_lora_chunk_schedule)
        phases, rest = tg.phase_groups(spans, h.ttt_phases, h.ttt_phase_docs)
        for world in (1, 2, 8):  # the script's plan, as eval_lora builds it: (W, R, steps, the steps' widths)
            plan = []
            for docs in phases + [rest]:
                for W, R, segs in tg.lora_batches(docs, E, 3, world):
                    c = tg.batch_chunk(max(hi - start for _, hi, start in segs), 16, schedule)
                    K = -(-(segs[0][1] - segs[0][0]) // c)
                    plan.append((W, R, K, sum(tg.lora_widths(segs, W, K, c))))
            assert est.lora_plan(cfg, world, lengths) == plan
        scored = [sum(hi - lo for g in phases[:i + 1] for lo, hi in g) for i in range(len(phases))]
        assert est.phase_pass_tokens(cfg, lengths) == scored  # every pass over all documents scored so far
    lens = est.doc_lengths(62021632)
    assert len(lens) == 50_000 and abs(sum(lens) - 62021632) < 100 and max(lens) == 123566
    assert 700 < sorted(lens)[25_000] < 800 and 0.1 < sum(x > 2048 for x in lens) / 50_000 < 0.2  # ~14% (PR #1354)
    r = est.estimate(est.load_config(env=SP1024))
    assert r["ttt_steps"] == sum(k for _, _, k, _ in r["lora_plan"]) and r["scenarios"][2]["eval_s"] <= est.EVAL_TARGET_S
    chunked = est.estimate(est.load_config(env={**SP1024, "TTT_MODE": "chunk"}))
    assert "ttt_training" in chunked["eval_flops"] and "lora_ttt" not in chunked["eval_flops"]


# ---------------------------------------------------------------- peak memory per rank (tools/memory_estimate.py)
# A one-layer model (recurrence on its layer), small enough that every phase runs in a few seconds on CPU.
MEM_TINY = dict(NUM_LAYERS="1", MODEL_DIM="32", NUM_HEADS="2", NUM_KV_HEADS="1", MLP_HIDDEN="64",
                BIGRAM_BUCKETS="64", BIGRAM_DIM="8", VE_DIM="8", TRAIN_SEQ_LEN="32", TRAIN_BATCH_TOKENS="2048",
                RECUR_LAYERS="0", VAL_TOKENS="5000", EVAL_BATCH_SEQS="4", GPTQ_CALIB_SEQS="16", EVAL_STRIDE="16",
                TTT_LORA_DOCS="2", TTT_LORA_RANK="4", TTT_LORA_CHUNK="8")
MEM_PHASES = ["train step", "train step + recurrence", "train step + QAT", "train step + QAT + recurrence", "priming",
              "gptq calibration", "standard eval", "sliding eval", "lora ttt window 8", "lora ttt window 16",
              "lora ttt window 32", "ttt global pass"]


@pytest.fixture
def one_thread():
    """Tiny tensors: threads only contend (the suite under xdist runs one a worker anyway)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def memory_lines(out):
    import re
    lines = [line for line in out.splitlines() if line.startswith("peak memory ")]
    got = [re.fullmatch(r"peak memory (.+): (\d+\.\d) GiB per rank \((measured|arithmetic)\)", line) for line in lines]
    assert all(got), lines
    return [m.group(1) for m in got]


def test_memory_estimate_prints_every_phase_with_its_assumptions(monkeypatch, capsys, one_thread):
    import memory_estimate as mem
    for k, v in MEM_TINY.items():
        monkeypatch.setenv(k, v)
    assert mem.main(["--detail"]) == 0
    out = capsys.readouterr().out
    assert memory_lines(out) == MEM_PHASES
    assert out.splitlines()[-1].startswith("every phase <= 72 GiB per rank: yes")
    assert "PEAK MEMORY per rank, 8 ranks" in out and "micro-batch 8 x 32" in out and "CUDA's cast lists" in out


def test_estimator_prints_the_memory_lines_unless_told_not_to(monkeypatch, capsys, one_thread):
    for k, v in MEM_TINY.items():
        monkeypatch.setenv(k, v)
    assert est.main(["--no-memory"]) == 0
    out = capsys.readouterr().out
    assert "ESTIMATE" in out and "peak memory" not in out
    assert est.main([]) == 0
    out = capsys.readouterr().out
    assert "ESTIMATE" in out and memory_lines(out) == MEM_PHASES and "every phase <= 72 GiB per rank: yes" in out


def test_memory_fake_tensors_allocate_what_real_ones_do(one_thread):
    import memory_estimate as mem
    tg, cfg = mem.load_tg(), est.load_config(env=MEM_TINY)
    fake = mem.measure(tg, cfg, rows=2)  # every phase, the script's own code
    assert fake == mem.measure(tg, cfg, fake=False, rows=2)  # byte for byte
    assert set(fake[0]) == set(MEM_PHASES) - {"priming"}


def test_memory_grows_with_rows_recurrence_and_lora_rows(one_thread):
    import memory_estimate as mem
    tg, cfg = mem.load_tg(), est.load_config(env=MEM_TINY)
    m = {r: mem.measure(tg, cfg, fake=False, rows=r, groups=("train",)) for r in (1, 2, 4)}  # real tensors: quick
    for k in ("train step", "train step + recurrence"):
        saved = {r: m[r][1]["saved " + k] for r in m}
        peak = {r: m[r][0][k] for r in m}
        assert 0 < saved[2] - saved[1] and saved[4] - saved[2] == 2 * (saved[2] - saved[1])  # per row: doubles
        assert 0 < peak[2] - peak[1] and peak[4] - peak[2] == 2 * (peak[2] - peak[1])
    for r in m:  # the recurrent layer's second pass saves more
        assert m[r][1]["saved train step + recurrence"] > m[r][1]["saved train step"]
        assert m[r][0]["train step + recurrence"] > m[r][0]["train step"]
    peak, part = mem.measure(tg, cfg, fake=False, groups=("lora",))
    assert {W: mem.lora_rows(cfg, W) for W in (8, 16, 32)} == {8: 8, 16: 4, 32: 2}  # TTT_LORA_DOCS x L / W
    assert part["adapters 8"] == 2 * part["adapters 16"] == 4 * part["adapters 32"] > 0  # adapters: x L / W
    assert part["adamw temporaries 8"] == part["adapters 8"]  # foreach AdamW: one copy of the adapters
    assert peak["lora ttt window 8"] > peak["lora ttt window 16"] > peak["lora ttt window 32"]


def test_memory_autocast_follows_cuda_lists_while_measuring():
    import torch.nn.functional as F
    import memory_estimate as mem
    x = torch.ones(2, 8, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert F.rms_norm(x, (8,)).dtype == x.square().dtype == torch.bfloat16  # CPU's lists
        with mem.cuda_autocast_lists():  # CUDA's: fp32
            assert F.rms_norm(x, (8,)).dtype == x.square().dtype == x.sum(-1).dtype == torch.float32
            assert F.linear(x.float(), torch.ones(4, 8)).dtype == torch.bfloat16
        assert F.rms_norm(x, (8,)).dtype == x.square().dtype == torch.bfloat16  # and back


def test_memory_compiled_estimate_saves_less_than_eager(one_thread):
    import memory_estimate as mem
    tg, cfg = mem.load_tg(), est.load_config(env=MEM_TINY)
    compiled = mem.compiled_saved(tg, cfg, phases_wanted={"train step + recurrence"})
    _, part = mem.measure(tg, cfg, fake=False, groups=("train",))  # real tensors: quicker here, the same bytes
    assert set(compiled) == {"train step + recurrence"}
    assert 0 < compiled["train step + recurrence"] < part["saved train step + recurrence"]  # pointwise ops recomputed


def test_another_vocabulary_prices_its_validation_tokens_documents_and_logits(tg):
    c1, c8 = est.load_config(env=SP1024), est.load_config(env={**SP1024, "VOCAB_SIZE": "8192", "TOKENIZER_PATH": "fineweb_8192_bpe.model"})
    assert (c1["val_tokens"], c8["val_tokens"]) == (est.SP1024_VAL_TOKENS, 40_540_160)
    caseops = est.load_config(env={})  # the default: the CaseOps route's
    assert caseops["val_tokens"] == 47_851_520 and (caseops["embed_bits"], caseops["bigram_buckets"], caseops["ve_layers"]) == (7, 4096, 0)
    assert est.load_config(env={"VE_LAYERS": "2"})["ve_layers"] == 2  # set: kept
    for v in (300, 1024, 2048, 4096, 8192, 10240):  # the script's rows, read from its source
        assert est.vocab_settings(est.script_settings()[0], v) == tg.vocab_settings(v)
    assert est.load_config(env={**SP1024, "VOCAB_SIZE": "8192", "VAL_TOKENS": "1000"})["val_tokens"] == 1000
    assert est.load_config(env=SP1024, hparams={"vocab_size": 0})["vocab_size"] == 1024  # a log's 0: the tokenizer's
    assert est.load_config(env=SP1024, hparams={"vocab_size": 4096})["val_tokens"] == 45_508_608
    l1, l8 = est.doc_lengths(c1["val_tokens"]), est.doc_lengths(c8["val_tokens"])
    assert abs(sum(l8) - c8["val_tokens"]) < 1e-3 * c8["val_tokens"] and len(l8) == len(l1) == 50_000
    assert max(l8) == round(max(l1) * c8["val_tokens"] / c1["val_tokens"])  # the same documents, fewer tokens
    assert est.logit_seconds(c1, 1e6, "train") == 0 < est.logit_seconds(c8, 1e6, "eval") < est.logit_seconds(c8, 1e6, "train")
    (f1, _), (f8, _) = est.flops_per_token(c1), est.flops_per_token(c8)
    s1, s8 = (est.estimate(c)["scenarios"][1] for c in (c1, c8))
    assert s8["step_ms"] / s1["step_ms"] > f8 / f1  # FLOPs and the logits' memory traffic
    assert s8["eval_parts_s"]["sliding_pass"] < s1["eval_parts_s"]["sliding_pass"]  # 35% fewer tokens to score
    m = json.loads(open(os.path.join(ROOT, "bench", "results", "gpu_check_h200_2026-12-04", "gpu_check.json")).read())
    at1024, at8192 = (est.estimate(c8, dict(m, vocab_size=v))["scenarios"][1]["step_ms"] for v in (1024, 8192))
    assert at8192 < at1024  # a GPU check at 8192 timed those logits already: they are not charged twice


def test_parse_log_reads_the_vocabulary_and_validation_tokens_of_new_and_older_logs(tmp_path):
    (tmp_path / "new.log").write_text("vocab:8192 val_tokens:40540160 val_bytes:151080633\n")
    (tmp_path / "old.log").write_text("val_tokens:62021632 val_bytes:151080633\n")
    new, old = parse_log(tmp_path / "new.log"), parse_log(tmp_path / "old.log")
    assert (new["vocab_size"], new["val_tokens"]) == (8192, 40540160)
    assert (old["vocab_size"], old["val_tokens"]) == (None, 62021632)
