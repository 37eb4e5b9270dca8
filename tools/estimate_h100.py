"""ESTIMATE (from FLOPs, not a measurement) of the 8xH100 time budget for a configuration.

Usage:  python tools/estimate_h100.py [--log train.log] [--gpu-check gpu_check.json] [--no-memory]
Configuration: the training script's defaults (the main job: SP8192 CaseOps), overridden by its environment
variables (NUM_LAYERS, MODEL_DIM, ... , VOCAB_SIZE, TOKENIZER_PATH, VAL_TOKENS), overridden by the `hparams`
JSON of --log; the vocabulary's settings where neither sets them, as train_gpt.py gives them (its
VOCAB_SETTINGS, read from its source), and the validation tokens of the route (CaseOps when the tokenizer's
file name says so, as the default's does). VOCAB_SIZE=1024 prices the sp1024 route.

Model: forward FLOPs/token = 2 * matmul params + per layer 2*2*seq*d*0.5 (causal attention);
training FLOPs/token = 3 * forward. The MFU is calibrated on one published anchor
(PR #549: the default shape at 83.4 ms/step, 786,432 tokens/step, 8xH100 SXM, FlashAttention-3).
Three scenarios: optimistic (MFU x1.2), nominal (x1.0), pessimistic (x0.8, SDPA/FlashAttention-2
instead of FA3, slower QAT steps). The last ~QAT_THRESHOLD x warmdown steps run late QAT
(warmdown: WARMDOWN_ITERS, or when 0 WARMDOWN_FRAC of the run).
Compilation happens before both clocks (train_gpt.py primes every graph), so it costs no budget.
With --gpu-check (bench/gpu_check.py's JSON from one H100), the nominal scenario uses those
measured per-GPU figures scaled to 8 GPUs, and the pessimistic one adds 25%.
TTT_MODE=chunk prices the benches' chunked TTT (bench/chunk_ttt.py; train_gpt.py runs LoRA TTT only).
LoRA TTT (TTT_MODE=lora) is priced step by step from train_gpt.py's plan (its phases' documents, then
the rest's; segments of <= 4E at the eval context E; windows E/4, E/2, E with docs*E/W rows; each step's
window only as wide as its rows reach (lora_widths); the chunk schedule; every step forward + backward =
3x forward, plus the adapters' FLOPs of TTT_LORA_TARGETS), and each phase's global pass at the larger of
its FLOPs and PR #2135's measured ~85 ms a step, over a MODEL of the validation documents' lengths: log-normal with the median
(~730) and p90 (~2,455) read from PR #1354's per-batch logs of the 50,000 sp1024 documents, its 16
longest (38,248..123,566 tokens, same logs) in place of the top, the rest scaled to 62,021,632
tokens in all (which moves the median to ~780).
Then (unless --no-memory) the PEAK MEMORY per rank of every phase, from tools/memory_estimate.py (measured
on CPU with fake tensors; its docstring says how), and whether every phase is <= 72 GiB.
"""
import argparse
import ast
import json
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from logparse import parse_log  # noqa: E402

SP1024_VAL_TOKENS = 62_021_632  # the scored validation tokens of the official sp1024 shards (the default)
# the same 50,000 documents under other vocabularies (val_tokens of the runs' logs: SP4096 PRs #1218 and #1421,
# SP8192 PR #1394, SP8192 CaseOps PR #2135, openai/parameter-golf); keyed by (vocabulary, CaseOps); VAL_TOKENS
# overrides, an unlisted vocabulary keeps sp1024's (more work)
VAL_TOKENS_BY_ROUTE = {(1024, False): SP1024_VAL_TOKENS, (4096, False): 45_508_608, (8192, False): 40_540_160,
                       (8192, True): 47_851_520}
SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "train_gpt.py")
DEFAULTS = dict(
    num_layers=11, model_dim=512, num_heads=8, num_kv_heads=4, mlp_hidden=1536,
    vocab_size=8192,  # the default tokenizer's (the script's 0: the tokenizer's); the vocabulary's settings among these are sp1024's
    bigram_buckets=16384, bigram_dim=128, ve_dim=128, ve_layers=2,
    train_seq_len=2048, train_batch_tokens=786432,
    max_wallclock_seconds=600.0, max_eval_seconds=600.0, eval_stride=64,
    ttt_enabled=1, ttt_epochs=3, ttt_chunk_tokens=32768, ttt_batch_seqs=8, val_tokens=SP1024_VAL_TOKENS,
    ttt_mode="lora", ttt_lora_rank=80, ttt_lora_chunk=112, ttt_lora_docs=64, ttt_lora_targets="q,v,o,mlp,head",
    ttt_lora_chunk_schedule="", ttt_lora_warm_a=1, eval_seq_len=0,  # 0: the training context
    ttt_phases=1, ttt_phase_docs=2500, ttt_phase_batch_tokens=32768,
    warmdown_iters=0, warmdown_frac=0.85, qat_threshold=0.15, gptq_calib_seqs=64, gptq_reserve_seconds=2.0,
    iterations=0,  # 0 = bounded by wall clock only
    recur_layers="4,5", recur_passes=2, recur_start_frac=0.5,  # layers run this many times from this fraction of the steps
    parallel_from=7, skip_gates=1, smear_window=0, attn_gate=12,
    eval_batch_seqs=32, grad_accum_steps=0,  # memory (tools/memory_estimate.py); 0: 8 // ranks micro-batches, as on CUDA
)
GPUS = 8
PEAK_FLOPS = 989e12          # dense bf16 per H100 SXM
ANCHOR_STEP_S = 0.0834       # PR #549, default shape
ANCHOR_BATCH = 786432
# export + reload inside the eval budget: the rate-distortion export of the full-size model 340 KB over
# its cap (100 CPU steps; GPTQ, its ladders and 3 zstd-16 packs) took 71.7 s on the 2-core CPU here
# (STEPS=100 python3 bench/full_size_artifact.py, 2026-12-04); on a GPU node the ladders run on the GPU.
EXPORT_S = float(os.environ.get("EXPORT_SECONDS", 100.0))
# GPTQ calibration (train_gpt.py collect_hessians): an eager forward of GPTQ_CALIB_SEQS / 8
# sequences per rank, fp32 X^T X of every linear input (TF32 off), an all-reduce of the sums
FP32_FLOPS = 67e12           # H100 SXM fp32 (non-tensor) peak
FP32_EFFICIENCY = 0.3        # assumed for the Gram-matrix matmuls
ALLREDUCE_BYTES_S = {"optimistic": 300e9, "nominal": 200e9, "pessimistic": 100e9}  # NCCL bus bandwidth
EAGER_OVERHEAD_S = 0.5       # assumed: kernel launches of an eager forward with ~70 hooks
EVAL_MFU_RATIO = 0.7         # eval MFU assumed = train MFU * 0.7
TTT_STEP_OVERHEAD_S = 0.005  # assumed fixed cost per TTT optimizer step (small batch, all-reduce)
# A phased TTT's global-pass step (SGD on every weight, 32,768 tokens over 8 GPUs): small steps are bound by
# their fixed costs, not FLOPs. PR #2135's logs (seeds 42, 0, 314): 289 steps of 32,768 tokens in ~24.5 s on
# 8xH100, ~85 ms a step, for a model of ~36 M weights; priced as the larger of that and the step's FLOPs.
PHASE_STEP_S = 0.085
FA2_SLOWDOWN = 1.10          # SDPA (FlashAttention-2) instead of FA3 (the anchor's kernel)
MULTI_GPU_OVERHEAD = 1.05    # a 1-GPU measurement scaled to 8 GPUs: gradient all-reduce etc.
# A larger vocabulary's logits: memory-bound traffic the FLOP model misses (bf16 logits, fp32 softcap and
# cross-entropy, their gradients), assumed bytes per logit and token; priced beyond the anchor's (and the GPU
# check's, unless it ran another vocabulary) 1024 logits, at HBM3 3.35 TB/s x 0.7, x0.8 / 1 / 1.2 by scenario.
LOGIT_BYTES = {"train": 32, "eval": 12}
HBM_BYTES_S = 3.35e12 * 0.7
LOGIT_SCALE = {"optimistic": 0.8, "nominal": 1.0, "pessimistic": 1.2}
# (label, MFU factor, attention slowdown, QAT / plain step time)
SCENARIOS = (("optimistic", 1.2, 1.0, 1.15), ("nominal", 1.0, 1.0, 1.15), ("pessimistic", 0.8, FA2_SLOWDOWN, 1.30))
MEASURED_PESSIMISM = 1.25
LIMIT_S = 600.0              # challenge limits: train <= 600 s, eval <= 600 s
EVAL_TARGET_S = 540.0        # the pessimistic eval estimate must stay under this (margin)


def _coerce(key, value):
    ref = DEFAULTS[key]
    if isinstance(ref, str):
        return str(value)
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return int(value.strip().lower() == "true")
    return float(value) if isinstance(ref, float) else int(float(value))


def script_settings():
    """(VOCAB_SETTINGS, the default TOKENIZER_PATH) of train_gpt.py, read from its source (no torch needed)."""
    tree = ast.parse(open(SCRIPT, encoding="utf-8").read())
    rows = tokenizer = None
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == ["VOCAB_SETTINGS"]:
            rows = ast.literal_eval(node.value)
        if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", None) == "tokenizer_path":
            tokenizer = ast.literal_eval(node.value)
    return rows, tokenizer


def check_shape(cfg, measured, vocab):
    """The configuration a GPU check ran at `vocab`: its own shape where its JSON records one; a check from
    before issue 36 ran the 3x MLP and its vocabulary's settings."""
    if measured.get("shape"):
        at = dict(cfg, **measured["shape"])
        at.update(vocab_size=vocab)
        return at
    at = dict(cfg, **vocab_settings(script_settings()[0], vocab))
    at.update(vocab_size=vocab, mlp_hidden=1536)
    return at


def vocab_settings(rows, vocab):
    """The row of the largest vocabulary not above `vocab` (the first row below all), as train_gpt.vocab_settings."""
    return ([settings for size, settings in rows if vocab >= size] or [rows[0][1]])[-1]


def load_config(env=None, hparams=None):
    """The script's defaults < environment variables < hparams dict (e.g. from a log)."""
    env = os.environ if env is None else env
    cfg = dict(DEFAULTS)
    for key in DEFAULTS:
        if key.upper() in env:
            cfg[key] = _coerce(key, env[key.upper()])
    hp = {k.lower(): v for k, v in (hparams or {}).items()}
    vocab = int(hp.get("vocab_size") or cfg["vocab_size"])
    rows, default_tokenizer = script_settings()
    tokenizer = hp.get("tokenizer_path") or env.get("TOKENIZER_PATH") or default_tokenizer
    if "VAL_TOKENS" not in env and not hp.get("val_tokens"):
        route = (vocab, "caseops" in os.path.basename(tokenizer))
        cfg["val_tokens"] = VAL_TOKENS_BY_ROUTE.get(route, VAL_TOKENS_BY_ROUTE.get((vocab, False), SP1024_VAL_TOKENS))
    for key, value in vocab_settings(rows, vocab).items():
        if key.upper() not in env:
            cfg[key] = value
    if "mlp_hidden" not in hp and "mlp_mult" in hp:
        hp["mlp_hidden"] = float(hp["mlp_mult"]) * float(hp.get("model_dim", cfg["model_dim"]))
    for key in DEFAULTS:
        if hp.get(key) is not None and not (key == "vocab_size" and not hp[key]):  # 0: the tokenizer's
            cfg[key] = _coerce(key, hp[key])
    return cfg


def _kv_dim(cfg):
    return cfg["num_kv_heads"] * (cfg["model_dim"] // cfg["num_heads"])


def matmul_params(cfg):
    d, L, kv = cfg["model_dim"], cfg["num_layers"], _kv_dim(cfg)
    per_layer = 2 * d * d + 2 * d * kv + 2 * d * cfg["mlp_hidden"]   # q, out, k, v, up, down
    bigram_proj = cfg["bigram_dim"] * d
    ve_proj = (cfg["ve_layers"] > 0) * cfg["ve_dim"] * kv            # one projection, shared
    lm_head = cfg["vocab_size"] * d                                  # tied embedding
    return L * per_layer + bigram_proj + ve_proj + lm_head


def total_params(cfg):
    """Matmul params + lookup tables + the per-channel vectors and scalars (from shapes)."""
    d, L = cfg["model_dim"], cfg["num_layers"]
    ve = cfg["ve_layers"] > 0
    tables = cfg["bigram_buckets"] * cfg["bigram_dim"] + ve * cfg["vocab_size"] * cfg["ve_dim"]
    skips = L // 2 * (1 + (cfg["skip_gates"] != 0))                     # U-Net skip weights (+ gates)
    vectors = L * (4 * d + cfg["num_heads"]) + skips * d              # mixes/gains, skips
    smear = cfg["smear_window"] + 1 if cfg["smear_window"] > 0 else d  # content gate and lambda, or per channel
    gates = L * cfg["num_heads"] * cfg["attn_gate"]                   # attention-output gates
    scalars = 1 + ve + min(cfg["ve_layers"], L) + (0 <= cfg["parallel_from"] < L)  # bigram/VE scales, VE gains, lane merge
    return matmul_params(cfg) + tables + vectors + smear + gates + scalars


def extra_passes(cfg):
    """Layer passes the recurrence adds: its layers, each run RECUR_PASSES - 1 more times."""
    return len([t for t in str(cfg["recur_layers"]).split(",") if t.strip()]) * (int(cfg["recur_passes"]) - 1)


def eval_len(cfg):
    """The sliding eval's and TTT's context (train_gpt.py's eval_context)."""
    return cfg["eval_seq_len"] or cfg["train_seq_len"]


def flops_per_token(cfg, recur=False, seq=None):
    """(forward, train) FLOPs per token; recur: with the recurrent layers' repeated passes; seq: the context
    (default: the training one)."""
    r = extra_passes(cfg) if recur else 0
    layers = cfg["num_layers"] + r
    attn = layers * 2 * 2 * (seq or cfg["train_seq_len"]) * cfg["model_dim"] * 0.5
    d, kv = cfg["model_dim"], _kv_dim(cfg)
    fwd = 2 * (matmul_params(cfg) + r * (2 * d * d + 2 * d * kv + 2 * d * cfg["mlp_hidden"])) + attn
    return fwd, 3 * fwd


def hessian_elements(cfg):
    """Entries of all GPTQ Hessians: each linear's input dim squared, and d^2 for the tied head."""
    d = cfg["model_dim"]
    per_layer = 5 * d * d + cfg["mlp_hidden"] ** 2                   # q, k, v, out, up read d; down reads hidden
    return cfg["num_layers"] * per_layer + cfg["bigram_dim"] ** 2 + (cfg["ve_layers"] > 0) * cfg["ve_dim"] ** 2 + d * d


def calibration_seconds(cfg, mfu, label):
    """ESTIMATE of the GPTQ calibration inside the training clock, per scenario: a forward and a backward (the
    export's sensitivities: squared output gradients), the fp32 Gram matrices, and the all-reduce of both."""
    tokens = cfg["gptq_calib_seqs"] / GPUS * cfg["train_seq_len"]
    _, fwd_bwd = flops_per_token(cfg, recur=cfg["recur_start_frac"] < 1)
    tables = cfg["vocab_size"] * (1 + cfg["ve_dim"] * (cfg["ve_layers"] > 0)) + cfg["bigram_buckets"] * cfg["bigram_dim"]  # + outputs
    compute = tokens * fwd_bwd / (PEAK_FLOPS * mfu) + tokens * 2 * hessian_elements(cfg) / (FP32_FLOPS * FP32_EFFICIENCY)
    return compute + 4 * (hessian_elements(cfg) + tables) / ALLREDUCE_BYTES_S[label] + EAGER_OVERHEAD_S


def logit_seconds(cfg, tokens, kind, base=1024):
    """ESTIMATE: one GPU's extra seconds for `tokens` positions' logits beyond `base` of them (train: fwd + bwd)."""
    return tokens * max(0, cfg["vocab_size"] - base) * LOGIT_BYTES[kind] / HBM_BYTES_S


def anchor_mfu():
    _, train = flops_per_token(dict(DEFAULTS, vocab_size=1024))  # PR #549's shape: sp1024
    return train * ANCHOR_BATCH / (GPUS * PEAK_FLOPS * ANCHOR_STEP_S)


def train_seconds(steps, step_s, qat_ratio, cfg, recur_ratio=1.0):
    """Seconds of `steps` steps: the last ceil(QAT_THRESHOLD x warmdown) run QAT (x qat_ratio),
    those from recur_start_frac x steps on run the recurrence (x recur_ratio)."""
    warmdown = cfg["warmdown_iters"] if cfg["warmdown_iters"] > 0 else round(cfg["warmdown_frac"] * steps)
    q = min(steps, math.ceil(cfg["qat_threshold"] * warmdown))
    rec = extra_passes(cfg) and cfg["recur_start_frac"] < 1
    sw = max(0, math.ceil(cfg["recur_start_frac"] * steps)) if rec else steps
    a = steps - q  # the first QAT step
    plain, rec_only, qat_only, both = min(a, sw), max(0, a - sw), max(0, sw - a), steps - max(a, sw)
    return step_s * (plain + rec_only * recur_ratio + qat_only * qat_ratio + both * recur_ratio * qat_ratio)


def train_steps(step_s, qat_ratio, cfg, recur_ratio=1.0):
    """The most steps whose train_seconds fit the wall clock minus the GPTQ reserve."""
    left = cfg["max_wallclock_seconds"] - (cfg["gptq_reserve_seconds"] if cfg["gptq_calib_seqs"] > 0 else 0)
    lo, hi = 0, int(left / step_s) + 1  # steps never cost less than step_s
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if train_seconds(mid, step_s, qat_ratio, cfg, recur_ratio) <= left else (lo, mid - 1)
    return min(lo, cfg["iterations"]) if cfg["iterations"] > 0 else lo


def doc_lengths(total, n_docs=50_000):
    """MODEL of the validation documents' lengths (tokens incl. the next BOS); see the docstring. Another
    vocabulary holds the same documents in fewer tokens: the 16 longest shrink by total / SP1024_VAL_TOKENS."""
    from statistics import NormalDist
    nd = NormalDist()
    lens = [math.exp(math.log(730) + 0.946 * nd.inv_cdf((i + 0.5) / n_docs)) for i in range(n_docs - 16)]
    top = [38248 * (123566 / 38248) ** (i / 15) * min(1.0, total / SP1024_VAL_TOKENS) for i in range(16)]
    k = (total - sum(top)) / sum(lens)
    return [max(2, round(x * k)) for x in lens] + [round(x) for x in top]


def chunk_schedule(spec):
    """TTT_LORA_CHUNK_SCHEDULE "N:C,...": (N, C) pairs, smallest N first (train_gpt.py's parse_chunk_schedule)."""
    return sorted((int(n), int(c)) for n, c in (p.split(":") for p in str(spec).replace(" ", "").split(",") if p))


def phase_split(cfg, lengths):
    """train_gpt.py's phase_groups on document lengths: the phases' groups (longest first), then the rest."""
    order = sorted(lengths, reverse=True)
    phases = cfg["ttt_phases"]
    p = min(cfg["ttt_phase_docs"], len(order)) if phases > 0 else 0
    cuts = [p * i // max(1, phases) for i in range(phases + 1)]
    return [order[a:b] for a, b in zip(cuts, cuts[1:]) if b > a], order[p:]


def batch_plan(cfg, lengths, world):
    """(W, rows, steps, widths) of every global batch of train_gpt.py's lora_batches over documents of these
    lengths; widths: the sum of its steps' windows (lora_widths, over the global batch: an upper bound of a
    rank's). A later segment of a document (a > 0: at least 4E from its start) needs the whole W throughout;
    otherwise the longest segment reaches furthest."""
    L, docs = eval_len(cfg), cfg["ttt_lora_docs"]
    schedule = chunk_schedule(cfg["ttt_lora_chunk_schedule"])
    shapes = sorted({max(1, L // 4), max(1, L // 2), L})
    segs = []
    for m in lengths:
        for a in range(0, m, 4 * L):
            end = min(a + 4 * L, m)
            segs.append((next((w for w in shapes if w >= end), L), end - a, end, a))
    segs.sort(key=lambda s: (-s[0], -s[1]))
    out, i = [], 0
    while i < len(segs):
        W = segs[i][0]
        R = docs * L // W
        batch = [s for s in segs[i:i + R * world] if s[0] == W]
        c = next((c for n, c in schedule if max(s[2] for s in batch) <= n), cfg["ttt_lora_chunk"])
        m = batch[0][1]
        k = math.ceil(m / c)
        later = any(s[3] > 0 for s in batch)
        out.append((W, R, k, k * W if later else sum(max(min(2, W), min(W, m, (j + 1) * c)) for j in range(k))))
        i += len(batch)
    return out


def lora_plan(cfg, world=GPUS, lengths=None):
    """The steps of every global batch of train_gpt.py's LoRA TTT plan (W, rows, steps, widths): each phase's
    documents, then the rest's, longest first."""
    phases, rest = phase_split(cfg, lengths or doc_lengths(cfg["val_tokens"]))
    return [b for group in phases + [rest] for b in batch_plan(cfg, group, world)]


def phase_pass_tokens(cfg, lengths=None):
    """Tokens of every phase's global pass (each over all documents scored so far; none after the last group)."""
    phases, rest = phase_split(cfg, lengths or doc_lengths(cfg["val_tokens"]))
    scored = [sum(sum(g) for g in phases[:i + 1]) for i in range(len(phases))]
    return scored if rest else scored[:-1]


def lora_flops_per_token(cfg):
    """Forward FLOPs of the adapters per token: 2 x rank x (in + out) of every adapted matrix (TTT_LORA_TARGETS)."""
    d, kv, r = cfg["model_dim"], _kv_dim(cfg), cfg["ttt_lora_rank"]
    layers = cfg["num_layers"] + (extra_passes(cfg) if cfg["recur_start_frac"] < 1 else 0)
    names = {t for t in str(cfg["ttt_lora_targets"]).replace(" ", "").split(",") if t}
    names |= {"q", "k", "v", "o", "up", "down", "bigram", "ve", "head"} if "all" in names else set()
    names |= {"up", "down"} if "mlp" in names else set()
    sizes = {"q": d + d, "k": d + kv, "v": d + kv, "o": d + d, "up": d + cfg["mlp_hidden"], "down": d + cfg["mlp_hidden"]}
    per_layer = sum(v for k, v in sizes.items() if k in names)
    other = ("bigram" in names) * (cfg["bigram_dim"] + d) + ("ve" in names and cfg["ve_layers"] > 0) * (cfg["ve_dim"] + kv)
    return 2 * r * (layers * per_layer + other + ("head" in names) * (d + cfg["vocab_size"]))


def estimate(cfg, measured=None):
    fwd0, train0 = flops_per_token(cfg)
    fwd, train = flops_per_token(cfg, recur=cfg["recur_start_frac"] < 1)  # the finished model
    E = eval_len(cfg)
    fwd_e, train_e = flops_per_token(cfg, recur=cfg["recur_start_frac"] < 1, seq=E)  # at the eval context
    recur_ratio = train / train0
    base_mfu = anchor_mfu()
    val = cfg["val_tokens"]
    windows = math.ceil(val / cfg["eval_stride"])
    eval_flops = {
        "standard_val_x2": 2 * val * fwd,  # pre-quant EMA eval + reloaded-artifact eval
        "sliding_pass": windows * E * fwd_e,
    }
    lora = cfg["ttt_enabled"] and cfg["ttt_mode"] == "lora"
    plan = lora_plan(cfg) if lora else []
    passes = phase_pass_tokens(cfg) if lora and cfg["ttt_epochs"] > 0 else []
    pass_rows = max(1, cfg["ttt_phase_batch_tokens"] // (E * GPUS))  # train_gpt.py's phase_rows
    pass_steps = sum(t // (pass_rows * GPUS * E) for t in passes)
    step_tokens = cfg["ttt_lora_docs"] * E  # per GPU, every step of every shape
    step_flops = step_tokens * 3 * (fwd_e + lora_flops_per_token(cfg))
    # a step's cost follows its window (lora_widths): the plan in steps of the full window W
    full_steps = sum(ws / W for W, _, _, ws in plan)
    if lora:  # all steps adapt but each batch's last (forward only), every GPU on its own documents
        bwd = 2 * step_tokens * (fwd_e + lora_flops_per_token(cfg))  # TTT_EPOCHS=0: scoring only
        eval_flops["lora_ttt"] = GPUS * (full_steps * step_flops - (len(plan) * bwd if cfg["ttt_epochs"] > 0 else full_steps * bwd))
    elif cfg["ttt_enabled"]:
        eval_flops["ttt_scoring_pass"] = windows * cfg["train_seq_len"] * fwd
        eval_flops["ttt_training"] = cfg["ttt_epochs"] * val * train
    if passes:  # every weight learns: 3x forward a token, the GPUs on shares of each step
        eval_flops["ttt_global_pass"] = sum(passes) * train_e
    seqs = max(1, cfg["ttt_chunk_tokens"] // cfg["train_seq_len"])
    ttt_steps = sum(k for _, _, k, _ in plan) if lora else (
        cfg["ttt_enabled"] * cfg["ttt_epochs"] * math.ceil(val / cfg["ttt_chunk_tokens"]) * math.ceil(seqs / cfg["ttt_batch_seqs"]))
    out = {"matmul_params": matmul_params(cfg), "total_params": total_params(cfg),
           "forward_flops_per_token": fwd, "train_flops_per_token": train0, "recur_ratio": recur_ratio,
           "anchor_mfu": base_mfu, "eval_windows": windows, "measured": measured is not None,
           "ttt_chunks": math.ceil(val / cfg["ttt_chunk_tokens"]), "ttt_steps": ttt_steps, "lora_plan": plan,
           "pass_tokens": passes, "pass_steps": pass_steps,
           "eval_flops": eval_flops, "scenarios": []}
    for label, f, attn, qat_ratio in SCENARIOS:
        rr = recur_ratio
        mfu = base_mfu * f
        step_s = attn * train0 * cfg["train_batch_tokens"] / (GPUS * PEAK_FLOPS * mfu)
        eval_mfu = mfu * EVAL_MFU_RATIO
        parts = {k: attn * v / (GPUS * PEAK_FLOPS * eval_mfu) for k, v in eval_flops.items()}
        if passes:  # small steps: their fixed cost (PR #2135's), unless the FLOPs take longer
            fixed = pass_steps * PHASE_STEP_S * (MEASURED_PESSIMISM if label == "pessimistic" else 1.0)
            parts["ttt_global_pass"] = max(parts["ttt_global_pass"], fixed)
        export_s, ttt_overhead = EXPORT_S, ttt_steps * TTT_STEP_OVERHEAD_S
        step_s_lora = attn * step_flops / (PEAK_FLOPS * eval_mfu) + TTT_STEP_OVERHEAD_S  # one GPU's step
        base = (measured.get("vocab_size") or 1024) if measured and label != "optimistic" else 1024  # logits timed
        logit_s = {k: LOGIT_SCALE[label] * logit_seconds(cfg, n, kind, base) for k, n, kind in (
            ("step", cfg["train_batch_tokens"] / GPUS, "train"), ("standard_val_x2", 2 * val / GPUS, "eval"),
            ("sliding_pass", windows * E / GPUS, "eval"), ("lora_step", step_tokens, "train"))}
        if measured and label != "optimistic":
            m = 1.0 if label == "nominal" else MEASURED_PESSIMISM
            at = check_shape(cfg, measured, base)  # the check's model: the FLOPs of another shape scale its times
            flop_train = train0 / flops_per_token(at)[1]
            flop_fwd = fwd / flops_per_token(at, recur=cfg["recur_start_frac"] < 1)[0]
            at_recur = flops_per_token(at, recur=True)[1] / flops_per_token(at)[1]  # its recurrence's FLOP ratio
            scale = m * MULTI_GPU_OVERHEAD / GPUS
            rec_ms = measured.get("recur_step_ms")  # measured: QAT steps ran the recurrence too
            plain_ms = measured.get("step_ms") or rec_ms / at_recur  # a check recurrent from step 0: plain by FLOPs
            step_s = scale * plain_ms / 1e3 * cfg["train_batch_tokens"] / 786432 * flop_train
            qat_ratio = measured["qat_step_ms"] / (rec_ms or plain_ms)
            rr = max(1.0, rec_ms / plain_ms * recur_ratio / at_recur) if rec_ms else rr  # the check's, scaled to cfg's
            flop_parts, parts = parts, {"standard_val_x2": 2 * scale * val / measured["standard_eval_tok_s"] * flop_fwd,
                                        "sliding_pass": scale * val / measured["sliding_eval_tok_s"] * flop_fwd * fwd_e * E / (fwd * cfg["train_seq_len"])}
            if passes:  # no check measures a global pass: the FLOP / fixed-cost estimate
                parts["ttt_global_pass"] = flop_parts["ttt_global_pass"]
            if lora and measured.get("lora_step_ms"):  # one GPU's step: the GPUs run their steps side by side
                step_s_lora = m * measured["lora_step_ms"] / 1e3 * flop_train  # a whole-window step, its fixed cost in
                parts["lora_ttt"] = full_steps * step_s_lora  # narrower steps: their share, plus the fixed cost (below)
            elif lora:  # a check from before LoRA TTT: its FLOP estimate
                parts["lora_ttt"] = flop_parts["lora_ttt"]
            elif cfg["ttt_enabled"]:
                parts["ttt_scoring_pass"] = parts["sliding_pass"]
                parts["ttt_training"] = m * ttt_steps * measured["ttt_step_ms"] / 1e3 * MULTI_GPU_OVERHEAD / GPUS
            export_s = m * measured["export_s"]
        step_s += logit_s["step"]
        for k in ("standard_val_x2", "sliding_pass"):
            parts[k] += logit_s[k]
        if lora:
            parts["lora_ttt"] += full_steps * logit_s["lora_step"]
            step_s_lora += logit_s["lora_step"]
        calib_s = calibration_seconds(cfg, mfu, label) if cfg["gptq_calib_seqs"] > 0 else 0.0
        steps = train_steps(step_s, qat_ratio, cfg, rr)
        train_s = train_seconds(steps, step_s, qat_ratio, cfg, rr)
        eval_s = sum(parts.values()) + export_s + ttt_overhead
        out["scenarios"].append({
            "label": label, "factor": f, "mfu": mfu, "eval_mfu": eval_mfu, "step_ms": step_s * 1e3,
            "qat_ratio": qat_ratio, "recur_ratio": rr, "steps": steps, "train_tokens": steps * cfg["train_batch_tokens"],
            "train_s": train_s, "calib_s": calib_s, "eval_parts_s": parts, "export_s": export_s, "eval_s": eval_s,
            "lora_step_s": step_s_lora, "lora_longest_batch_s": plan[0][3] / plan[0][0] * step_s_lora if plan else 0.0,
            "train_fits": train_s <= LIMIT_S,
            "eval_fits": eval_s <= min(LIMIT_S, cfg["max_eval_seconds"]),
        })
    return out


def _report(cfg, est, logged_params=None):
    sc = est["scenarios"]
    row = lambda label, vals: print(f"  {label:<38}" + "".join(f"{v:>16}" for v in vals))
    print("=" * 90)
    print("ESTIMATE from FLOPs and one published anchor -- NOT a measurement on H100s.")
    print("=" * 90)
    print("config: " + " ".join(f"{k}={v}" for k, v in cfg.items()))
    print(f"matmul params (incl. tied lm head): {est['matmul_params']:,}")
    print(f"total params (from shapes):         {est['total_params']:,}"
          + (f"   (log model_params: {logged_params:,})" if logged_params else ""))
    print(f"forward FLOPs/token (est.):         {est['forward_flops_per_token'] / 1e6:,.1f} M"
          + (" (the recurrent model, as evaluated)" if est["recur_ratio"] > 1 else "") +
          "   (matmuls + causal attention only)")
    print(f"training FLOPs/token (est.):        {est['train_flops_per_token'] / 1e6:,.1f} M"
          "   (3x forward of a plain step)")
    if est["recur_ratio"] > 1:
        print(f"recurrent steps (from recur_start_frac={cfg['recur_start_frac']} of the run): "
              f"x{est['recur_ratio']:.3f} the FLOPs of a plain step (est.; eval runs the recurrent model)")
    print(f"anchor: PR #549 default shape at {ANCHOR_STEP_S * 1e3:.1f} ms/step, {ANCHOR_BATCH:,} "
          f"tokens/step, {GPUS}x{PEAK_FLOPS / 1e12:.0f} TFLOP/s -> implied MFU "
          f"{est['anchor_mfu'] * 100:.1f}% (est.)")
    if est["measured"]:
        print("nominal/pessimistic columns: MEASURED 1-GPU figures (bench/gpu_check.py) scaled to "
              f"{GPUS} GPUs x{MULTI_GPU_OVERHEAD} overhead; pessimistic x{MEASURED_PESSIMISM}")
    print(f"assumptions: compile/priming before both clocks (not counted); eval MFU = train MFU x "
          f"{EVAL_MFU_RATIO}; {EXPORT_S:.0f} s export/reload allowance; {TTT_STEP_OVERHEAD_S * 1e3:.0f} ms "
          f"per TTT optimizer step; pessimistic = SDPA (FA2, x{FA2_SLOWDOWN}) and slower QAT steps")
    print()
    row("scenario", [s["label"] for s in sc])
    row("MFU (est.)", [f"{s['mfu'] * 100:.1f}%" for s in sc])
    row("step time (est.)", [f"{s['step_ms']:.1f} ms" for s in sc])
    row("QAT step time / plain (est.)", [f"x{s['qat_ratio']:.2f}" for s in sc])
    row(f"steps in {cfg['max_wallclock_seconds']:.0f} s - GPTQ reserve (est.)", [f"{s['steps']:,}" for s in sc])
    row("training tokens (est.)", [f"{s['train_tokens'] / 1e9:.2f} B" for s in sc])
    row("training time (est.)", [f"{s['train_s']:.0f} s" for s in sc])
    row(f"GPTQ calibration (est.; reserve {cfg['gptq_reserve_seconds']:g} s)", [f"{s['calib_s']:.1f} s" for s in sc])
    lora = est["lora_plan"]
    print(f"  eval workload: {cfg['val_tokens']:,} val tokens, {est['eval_windows']:,} sliding "
          f"windows x {eval_len(cfg)}, TTT {'on' if cfg['ttt_enabled'] else 'off'}"
          + (f" (LoRA: {len(lora)} batches, {est['ttt_steps']:,} steps per GPU of {cfg['ttt_lora_docs'] * eval_len(cfg):,}"
             f" tokens; the longest batch {lora[0][2]} steps" + (f"; {cfg['ttt_phases']} phase(s), global passes over "
             f"{'/'.join(f'{t:,}' for t in est['pass_tokens'])} tokens, {est['pass_steps']} steps" if est["pass_tokens"] else "")
             + ")" if lora else
             f" ({est['ttt_chunks']} chunks, {cfg['ttt_epochs']} epoch(s))" if cfg["ttt_enabled"] else ""))
    row("eval MFU (est.)", [f"{s['eval_mfu'] * 100:.1f}%" for s in sc])
    for part in est["eval_flops"]:
        row(f"  {part} (est.)", [f"{s['eval_parts_s'][part]:.0f} s" for s in sc])
    row("  export/reload", [f"{s['export_s']:.0f} s" for s in sc])
    row(f"  {est['ttt_steps']:,} TTT step overheads", [f"{est['ttt_steps'] * TTT_STEP_OVERHEAD_S:.0f} s" for _ in sc])
    if lora:
        row("  LoRA step, one GPU (est.)", [f"{s['lora_step_s'] * 1e3:.0f} ms" for s in sc])
        row(f"  of which the longest batch ({lora[0][2]} steps)", [f"{s['lora_longest_batch_s']:.0f} s" for s in sc])
    row("eval time (est.)", [f"{s['eval_s']:.0f} s" for s in sc])
    row("train <= 600 s (est.)", ["fits" if s["train_fits"] else "OVER" for s in sc])
    row(f"eval <= {min(LIMIT_S, cfg['max_eval_seconds']):.0f} s (est.)",
        ["fits" if s["eval_fits"] else "OVER" for s in sc])
    worst = sc[-1]["eval_s"]
    print(f"pessimistic eval {worst:.0f} s {'<=' if worst <= EVAL_TARGET_S else '>'} {EVAL_TARGET_S:.0f} s target (margin under 600 s)")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--log", help="read the configuration from this log's hparams line")
    ap.add_argument("--gpu-check", help="bench/gpu_check.py's JSON: use its measured figures")
    ap.add_argument("--no-memory", action="store_true",
                    help="skip the peak memory per rank (tools/memory_estimate.py: ~15 s of CPU)")
    args = ap.parse_args(argv)
    measured = json.loads(open(args.gpu_check).read()) if args.gpu_check else None
    if measured and (measured.get("qat_step_ms") is None or not (measured.get("step_ms") or measured.get("recur_step_ms"))):
        print(f"error: {args.gpu_check} has no step times (a check stopped before training): nothing to scale")
        return 1
    hparams, logged = None, None
    if args.log:
        parsed = parse_log(args.log)
        hparams, logged = parsed["hparams"], parsed["model_params"]
        if parsed["vocab_size"]:  # the run's tokenizer (its hparams line may say 0: the tokenizer's)
            hparams = dict(hparams, vocab_size=parsed["vocab_size"])
        if not hparams:
            print(f"warning: no hparams line in {args.log}; using env/defaults")
    cfg = load_config(hparams=hparams)
    _report(cfg, estimate(cfg, measured), logged)
    for phase, m in (measured or {}).get("peak_memory", {}).items():
        print(f"peak memory {phase}: {m['allocated_gib']:.1f} GiB per rank (measured on {measured.get('device')}, "
              f"1 process, compiled; allocated: the phase's own peak; the allocator held {m['reserved_gib']:.1f})")
    if not args.no_memory:
        from memory_estimate import memory_report  # imports torch and train_gpt.py
        print()
        try:
            memory_report(cfg, GPUS)
        except Exception as e:  # the time estimate stands; the memory one is missing: say so, fail
            print(f"peak memory: not measured ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else '?'})")
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
