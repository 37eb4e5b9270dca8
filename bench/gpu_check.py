"""One-GPU check of the path users run: the default full shape, compiled, 1 process.

Runs train_gpt.py on random-token shards (timings do not depend on the text) for a short,
fixed schedule, then prints (and writes as JSON) what it measured: ms per 786,432-token step
plain, with the recurrence (when configured) and with QAT (on top of it), peak memory, the attention kernel, recompiles after priming, eval
tokens/s of the standard and the stride-64 sliding pass, ms per TTT step (chunked or LoRA), export seconds.
`python3 tools/estimate_h100.py --gpu-check OUT/gpu_check.json` then uses these figures.
Meant for one H100 and <= 8 minutes:  python3 bench/gpu_check.py [OUT_DIR]
"""
import json, os, re, subprocess, sys, time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "data"))
from prepare_text import write_shard  # noqa: E402

VAL_TOKENS = 1 << 20
SCHEDULE = dict(ITERATIONS="40", WARMDOWN_ITERS="100", WARMUP_STEPS="4", TRAIN_LOG_EVERY="1",
                MAX_WALLCLOCK_SECONDS="0", MAX_EVAL_SECONDS="600", SEED="1", RUN_ID="gpu_check",
                BYTE_CAP="1000000000")  # 40 steps leave near-init weights, which would prune to fit;
# a trained model's export does not (README, full-size artifact): time the plain export


def random_shards(d: Path) -> None:
    """Uniform random ids with a BOS every ~1,000 tokens: 2 x 16 M train, 1 M validation."""
    rng = np.random.default_rng(0)
    d.mkdir(parents=True, exist_ok=True)
    for name, n in [("fineweb_train_000000.bin", 16 << 20), ("fineweb_train_000001.bin", 16 << 20),
                    ("fineweb_val_000000.bin", VAL_TOKENS + 1)]:
        toks = rng.integers(4, 1024, n, dtype=np.uint16)
        toks[::1000] = 1
        write_shard(d / name, toks)


def figures(log: str, wall_s: float) -> dict:
    def num(pattern, cast=float):
        m = re.search(pattern, log, re.M)
        return cast(m.group(1)) if m else None
    steps = {int(s): float(t) for s, t in re.findall(r"^step:(\d+)/\d+ train_loss:\S+ train_time:([\d.]+)ms", log, re.M)}
    qat_at, last = num(r"^qat: .* on at step (\d+)", int), max(steps)  # steps > qat_at ran QAT
    rec_at = num(r"^recurrence: .* from step (\d+)", int)  # steps > rec_at ran the recurrence
    plain_to = rec_at if rec_at is not None and rec_at < qat_at else qat_at
    val = num(r"^val_tokens:(\d+)", int)
    ttt = re.search(r"adapting ([\d.]+)s in (\d+) steps", log)
    lora = re.search(r"^ttt lora: \d+ batches, (\d+) steps, \d+ adapting, ([\d.]+)s", log, re.M)
    return dict(
        device=num(r"device:(.+?) compile:", str), attention=num(r"attention:(\S+)", str),
        step_ms=steps[plain_to] / plain_to,
        recur_step_ms=(steps[qat_at] - steps[plain_to]) / (qat_at - plain_to) if plain_to < qat_at else None,
        qat_step_ms=(steps[last] - steps[qat_at]) / (last - qat_at),
        peak_mem_mib=num(r"peak memory allocated: (\d+) MiB", int),
        recompiles_after_priming=num(r"recompiles after priming: (\d+)", int),
        standard_eval_tok_s=val / num(r"^final_int5_zstd_roundtrip_exact .* time:([\d.]+)s"),
        sliding_eval_tok_s=val / num(r"^final_sliding_exact .* time:([\d.]+)s"),
        ttt_step_ms=1000 * float(ttt.group(1)) / int(ttt.group(2)) if ttt else None,
        lora_step_ms=1000 * float(lora.group(2)) / int(lora.group(1)) if lora else None,  # TTT_LORA_DOCS x L tokens
        export_s=num(r"export_time:([\d.]+)s"),
        gptq_calibration_ms=num(r"gptq_calibration:(\d+)ms", int),  # 1 GPU: all GPTQ_CALIB_SEQS on it
        startup_and_priming_s=wall_s - num(r"^eval_time:([\d.]+)s", float) - num(r"train_time:([\d.]+)s$"),
        val_tokens=val, wall_s=wall_s)


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else ROOT / "bench" / "out" / "gpu_check").resolve()
    random_shards(out / "data")
    env = dict(os.environ, **SCHEDULE, DATA_PATH=str(out / "data"), OUT_DIR=str(out), COMPILE="1",
               TOKENIZER_PATH=str(ROOT / "data" / "tokenizers" / "fineweb_1024_bpe.model"))
    log_path = out / "logs" / "gpu_check.txt"
    log_path.unlink(missing_ok=True)
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, str(ROOT / "train_gpt.py")], env=env, cwd=ROOT)
    if r.returncode:
        sys.exit(f"gpu_check: train_gpt.py failed ({r.returncode})")
    fig = figures(log_path.read_text(), time.perf_counter() - t0)
    (out / "gpu_check.json").write_text(json.dumps(fig, indent=2) + "\n")
    print("gpu_check (measured, 1 process):")
    for k, v in fig.items():
        print(f"  {k:<26} {v:,.1f}" if isinstance(v, float) else f"  {k:<26} {v}")
    print(f"-> {out / 'gpu_check.json'}")


if __name__ == "__main__":
    main()
