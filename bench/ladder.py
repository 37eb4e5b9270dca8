"""Bench ladder: runs the SPEC §9 bench configuration (bench/bench_config.sh) and prints one
table row per run: pre-quant, roundtrip, quant gap, sliding, TTT, TTT gain, throughput, bytes.
Usage: python3 bench/ladder.py [--val PATH_TO_VAL_SHARD ...] [--log EXISTING_LOG ...]
--val adds a row: the first run's artifact, reloaded and evaluated (standard, sliding, TTT at
the defaults) on the given validation shard(s); no retraining, about 5 min on the CPU here."""
import argparse, os, re, subprocess, sys, tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
from logparse import parse_log  # noqa: E402
sys.path.insert(0, str(ROOT / "bench"))

BENCH = ROOT.parent / "shared" / "data" / "datasets" / "bench_sp1024"


def run(label, data_path):
    out = Path(tempfile.mkdtemp(prefix="ladder_"))
    env = dict(os.environ, DATA_PATH=str(data_path), RUN_ID=label)
    subprocess.run(["bash", str(ROOT / "bench" / "bench_config.sh"), str(out)], env=env, check=True)
    return out / "logs" / f"{label}.txt"


def row(label, path):
    log = parse_log(path)
    text = Path(path).read_text()
    hp = log["hparams"]
    pre = log["val"][-1][2] if log["val"] else float("nan")
    rt, sl, tt = (log[k][1] if log[k] else float("nan") for k in ("roundtrip", "sliding", "ttt_final"))
    step, _, ms = log["train"][-1]
    ev = re.search(r"final_sliding_exact .* time:([\d.]+)s eval_time:([\d.]+)s", text)
    ttt_s = re.findall(r"ttt_chunk \[\d+/\d+\] bpb=\S+ time=([\d.]+)s", text)
    total = re.search(r"^eval_time:([\d.]+)s", text, re.M)
    return (f"| {label} | {pre:.4f} | {rt:.4f} | {rt - pre:+.4f} | {sl:.4f} | {tt:.4f} | {sl - tt:+.4f} | "
            f"{hp['train_batch_tokens'] * step / (ms / 1000):,.0f} | {log['val_tokens'] / float(ev.group(1)) if log['val_tokens'] and ev else float('nan'):,.0f} | "
            f"{float(ttt_s[-1]) - float(ev.group(2)) if ttt_s and ev else float('nan'):.0f} | "
            f"{float(total.group(1)) if total else float('nan'):.0f} | {log['artifact'].get('bytes_total', 0):,} |")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--val", nargs="*", default=[], help="extra validation shard(s) for a second run")
    ap.add_argument("--log", nargs="*", default=[], help="tabulate existing logs instead of running")
    a = ap.parse_args()
    logs = [(Path(p).stem, p) for p in a.log] or [("bench", run("bench", BENCH))]
    extra = []
    if missing := [v for v in a.val if not Path(v).is_file()]:
        sys.exit(f"error: validation shard not found: {missing[0]}")
    if a.val:
        from ttt_sweep import evaluate, setup
        artifact = Path(logs[0][1]).resolve().parents[1] / "final_model.int5.ptz"
        if not artifact.is_file():
            sys.exit(f"error: --val needs the artifact next to the log: {artifact} not found")
        d = Path(tempfile.mkdtemp(prefix="ladder_val_"))
        for i, v in enumerate(a.val):
            (d / f"fineweb_val_{i:06d}.bin").symlink_to(Path(v).resolve())
        h, val, nbytes = setup(str(d / "fineweb_val_*.bin"))
        r = evaluate(str(artifact), h, val, nbytes)
        extra.append(f"| val2 ({val.numel():,} tokens) | – | {r['roundtrip']:.4f} | – | {r['sliding']:.4f} | "
                     f"{r['ttt']:.4f} | {r['sliding'] - r['ttt']:+.4f} | – | {val.numel() / r['sliding_s']:,.0f} | "
                     f"{r['ttt_s']:.0f} | {r['roundtrip_s'] + r['sliding_s'] + r['ttt_s']:.0f} | – |")
    print("| run | pre-quant | roundtrip | quant gap | sliding | TTT | TTT gain | train tok/s | sliding eval tok/s | TTT s | eval s | bytes_total |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for label, p in logs:
        print(row(label, p))
    print("\n".join(extra))


if __name__ == "__main__":
    main()
