"""One-GPU check of the path users run: the default full shape, compiled, 1 process, under a time limit.

Runs train_gpt.py on random-token shards (timings and memory do not depend on the text) for a short, fixed
schedule, streams its output with the seconds since start, and writes what it measured (JSON), even when
the time limit ends the run early (`completed: false`; what was reached is kept):
- ms per 786,432-token step with the recurrence and with QAT on top of it (and plain, when GPU_CHECK_RECUR_FRAC
  leaves plain steps), the attention kernel, recompiles after priming;
- the peak memory (the largest rank's) of every phase the script logs, allocated and reserved, against an
  H100's 80 GB (priming runs each graph at its full per-rank shape: the training step, the sliding eval and
  every LoRA TTT window, so these are the per-rank figures of an 8-GPU run, within the one-GPU Muon share);
- eval tokens/s of the standard and the stride-64 sliding pass, ms per TTT step (LoRA or chunked), export seconds,
  and when each line of the log appeared (compile time per group of graphs).
The defaults' schedule in 20 steps: the recurrence switches on at step 10 (GPU_CHECK_RECUR_FRAC, default 0.5: plain,
recurrent and recurrent + QAT steps, the graphs a full run primes), QAT from step 18; the priming line's graphs,
seconds and compile-cache hits are read too (bench/gpu_check.sh runs the check cold, then warm).
`python3 tools/estimate_h100.py --gpu-check OUT/gpu_check.json` uses these figures.

Usage:  python3 bench/gpu_check.py [WORK_DIR] [--copy-to DIR] [--limit SECONDS]
(or bash bench/gpu_check.sh, which also installs zstandard from .whl/ when missing and copies to $OUT)
"""
import argparse, json, os, re, shutil, subprocess, sys, threading, time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "data"))
from prepare_text import write_shard  # noqa: E402

H100_BYTES = 80e9  # an H100 SXM's memory, decimal; the check's card may have more
MARGIN_GIB = 72.0  # every phase must stay under this (10% under 80 GB)
VAL_TOKENS = 1 << 19  # 512 K: the sliding pass and TTT in ~15 s on an H200
SCHEDULE = dict(ITERATIONS="20", WARMDOWN_ITERS="20", WARMUP_STEPS="4", TRAIN_LOG_EVERY="1",
                MAX_WALLCLOCK_SECONDS="0", MAX_EVAL_SECONDS="600", SEED="1", RUN_ID="gpu_check")
# at the default BYTE_CAP: 20 steps leave near-init weights over the cap, so the export times the rate-distortion
# allocation (its ladders on the GPU, GPTQ at the chosen steps and up to 7 packs on the CPU), as a full run needs it
FILES = ("logs/gpu_check.txt", "gpu_check.json", "gpu_check.stream.txt")
# the model's shape, from the log's hparams line: the estimator scales the check's times to another shape's FLOPs
SHAPE_KEYS = ("num_layers", "model_dim", "num_heads", "num_kv_heads", "mlp_hidden", "bigram_buckets", "bigram_dim",
              "ve_dim", "ve_layers", "recur_layers", "recur_passes")
# the vocabulary's shape (default 8192, the main job's; GPU_CHECK_VOCAB=1024 or 4096 for the other routes): the bench's
# plain tokenizer of that size (random tokens have no byte sidecar, which a CaseOps tokenizer needs); its pieces do
# not matter to times and memory, its size does, and train_gpt.py gives the run that vocabulary's settings
VOCAB = int(os.environ.get("GPU_CHECK_VOCAB", 8192))
TOKENIZER = ROOT / "data" / "tokenizers" / "fineweb_1024_bpe.model" if VOCAB == 1024 else \
    ROOT / "bench" / "tokenizers" / f"bench_{VOCAB}_bpe.model"


def random_shards(d: Path) -> None:
    """Uniform random ids below VOCAB with a BOS every ~1,000 tokens: 2 x 16 M train, 512 K validation."""
    rng = np.random.default_rng(0)
    d.mkdir(parents=True, exist_ok=True)
    for name, n in [("fineweb_train_000000.bin", 16 << 20), ("fineweb_train_000001.bin", 16 << 20),
                    ("fineweb_val_000000.bin", VAL_TOKENS + 1)]:
        if not (d / name).is_file():
            toks = rng.integers(4, VOCAB, n, dtype=np.uint16)
            toks[::1000] = 1
            write_shard(d / name, toks)


def figures(log: str) -> dict:
    """What the log shows; a figure the run did not reach is None."""
    def num(pattern, cast=float):
        m = re.search(pattern, log, re.M)
        return cast(m.group(1)) if m else None

    steps = {int(s): float(t) for s, t in re.findall(r"^step:(\d+)/\d+ train_loss:\S+ train_time:([\d.]+)ms", log, re.M)}
    steps[0] = 0.0
    last = max(steps)
    qat_at = num(r"^qat: .* on at step (\d+)", int)  # steps after it ran QAT
    rec_at = num(r"^recurrence: .* from step (\d+)", int)  # steps after it ran the recurrence
    qat_end = qat_at if qat_at is not None else last

    def ms_per_step(a, b):
        """Mean ms of steps a+1..b; None when the log has no such stretch."""
        if a is None or b is None or b <= a or a not in steps or b not in steps:
            return None
        return (steps[b] - steps[a]) / (b - a)

    hp = re.search(r"^hparams (\{.*\})$", log, re.M)
    hparams = json.loads(hp.group(1)) if hp else {}
    val = num(r"^(?:vocab:\d+ )?val_tokens:(\d+)", int)
    rt_s, sl_s = num(r"^final_int5_zstd_roundtrip_exact .* time:([\d.]+)s"), num(r"^final_sliding_exact .* time:([\d.]+)s")
    ttt = re.search(r"adapting ([\d.]+)s in (\d+) steps", log)
    lora = re.search(r"^ttt lora: \d+ batches, (\d+) steps, \d+ adapting, ([\d.]+)s", log, re.M)
    memory = {p: dict(allocated_gib=float(a), reserved_gib=float(r))
              for p, a, r in re.findall(r"^peak memory (.+?): ([\d.]+) GiB allocated, ([\d.]+) GiB reserved", log, re.M)}
    return dict(
        device=num(r"device:(.+?) compile:", str), attention=num(r"attention:(\S+)", str),
        step_ms=ms_per_step(0, min(rec_at, qat_end) if rec_at is not None else qat_end),  # plain steps: before both
        recur_step_ms=ms_per_step(rec_at, qat_end),
        qat_step_ms=ms_per_step(qat_at, last),
        peak_memory=memory,
        recompiles_after_priming=num(r"recompiles after priming: (\d+)", int),
        priming_graphs=num(r"^priming: .*?(\d+) graphs compiled", int),
        priming_s=num(r"^priming: .* graphs compiled in ([\d.]+)s"),
        compile_cache_hits=num(r"^priming: .*: (\d+) hits, \d+ misses", int),
        compile_cache_misses=num(r"^priming: .*: \d+ hits, (\d+) misses", int),
        standard_eval_tok_s=val / rt_s if val and rt_s else None,
        sliding_eval_tok_s=val / sl_s if val and sl_s else None,
        ttt_step_ms=1000 * float(ttt.group(1)) / int(ttt.group(2)) if ttt and int(ttt.group(2)) else None,  # chunked TTT
        lora_step_ms=1000 * float(lora.group(2)) / int(lora.group(1)) if lora else lora_ms_from_batches(log),  # TTT_LORA_DOCS x L tokens
        export_s=num(r"export_time:([\d.]+)s"),
        gptq_calibration_ms=num(r"gptq_calibration:(\d+)ms", int),  # 1 GPU: all GPTQ_CALIB_SEQS on it
        val_tokens=val, vocab_size=num(r"^vocab:(\d+)", int),
        shape={k: hparams[k] for k in SHAPE_KEYS if k in hparams} or None)


def lora_ms_from_batches(log: str) -> float | None:
    """Without the LoRA summary (the limit ended TTT): ms per step between the first and the last batch logged."""
    rows = [(int(k), float(t)) for k, t in re.findall(r"^ttt_lora \[\d+/\d+\] window \d+ rows \d+ chunk \d+ steps (\d+) time=([\d.]+)s", log, re.M)]
    steps = sum(k for k, _ in rows[1:])
    return 1000 * (rows[-1][1] - rows[0][1]) / steps if steps else None


def run(cmd, env, cwd, stream_path: Path, limit: float) -> tuple[int | None, float]:
    """Runs cmd, echoing and saving each output line with the seconds since start; kills it at `limit`.
    Returns (exit code, or None when the limit ended it; seconds)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    timer = threading.Timer(limit, proc.kill)
    timer.start()
    with open(stream_path, "w") as stream:
        for line in proc.stdout:
            stamped = f"[{time.perf_counter() - t0:7.1f}s] {line}"
            print(stamped, end="", flush=True)
            stream.write(stamped)
            stream.flush()
    proc.wait()
    killed = not timer.is_alive() and proc.returncode != 0
    timer.cancel()
    return (None if killed else proc.returncode), time.perf_counter() - t0


def report(fig: dict) -> None:
    print("gpu_check (measured, 1 process):")
    for k, v in fig.items():
        if k != "peak_memory":
            print(f"  {k:<26} {v:,.1f}" if isinstance(v, float) else f"  {k:<26} {v}")
    print(f"peak memory per phase (GiB, the largest rank's; an H100 has {H100_BYTES / 2**30:.1f} GiB, the margin is {MARGIN_GIB:g}):")
    for phase, m in fig["peak_memory"].items():
        flag = "OVER 80 GB" if m["reserved_gib"] * 2**30 > H100_BYTES else "over the margin" if m["reserved_gib"] > MARGIN_GIB else "ok"
        print(f"  {phase:<52} {m['allocated_gib']:6.2f} allocated {m['reserved_gib']:6.2f} reserved  {flag}")


def main() -> None:
    ap = argparse.ArgumentParser(description="one-GPU check of train_gpt.py at the full shape")
    ap.add_argument("work", nargs="?", default=str(ROOT / "bench" / "out" / "gpu_check"))
    ap.add_argument("--copy-to", help="copy the log, the stream and the JSON here (e.g. $OUT)")
    ap.add_argument("--cache", help="COMPILE_CACHE_DIR (default WORK_DIR/compile_cache): a second run with the same one is warm")
    ap.add_argument("--limit", type=float, default=float(os.environ.get("GPU_CHECK_SECONDS", 540)),
                    help="seconds the run may take before it is stopped (figures reached so far are kept)")
    args = ap.parse_args()
    out = Path(args.work).resolve()
    if not TOKENIZER.is_file():
        sys.exit(f"error: no tokenizer for GPU_CHECK_VOCAB={VOCAB} ({TOKENIZER}); 1024, 4096 or 8192")
    data = out / ("data" if VOCAB == 1024 else f"data_sp{VOCAB}")
    random_shards(data)
    env = dict(os.environ, **SCHEDULE, DATA_PATH=str(data), OUT_DIR=str(out), COMPILE="1",
               RECUR_START_FRAC=os.environ.get("GPU_CHECK_RECUR_FRAC", "0.5"), TOKENIZER_PATH=str(TOKENIZER),
               COMPILE_CACHE_DIR=str(Path(args.cache).resolve() if args.cache else out / "compile_cache"))
    (out / "logs").mkdir(parents=True, exist_ok=True)
    (out / "logs" / "gpu_check.txt").unlink(missing_ok=True)
    script = os.environ.get("GPU_CHECK_SCRIPT", str(ROOT / "train_gpt.py"))  # gpu_check.sh: the packed one, as records run
    code, wall = run([sys.executable, script], env, ROOT, out / "gpu_check.stream.txt", args.limit)
    log_path = out / "logs" / "gpu_check.txt"
    fig = dict(completed=code == 0, exit_code=code, limit_s=args.limit, wall_s=wall,
               **figures(log_path.read_text() if log_path.is_file() else ""))
    (out / "gpu_check.json").write_text(json.dumps(fig, indent=2) + "\n")
    report(fig)
    print(f"-> {out / 'gpu_check.json'}" + ("" if code == 0 else f"  (run {'stopped at the limit' if code is None else f'failed ({code})'})"))
    if args.copy_to:
        Path(args.copy_to).mkdir(parents=True, exist_ok=True)
        for f in FILES:
            if (out / f).is_file():
                shutil.copy(out / f, Path(args.copy_to) / Path(f).name)
    sys.exit(0 if code == 0 else 1)


if __name__ == "__main__":
    main()
