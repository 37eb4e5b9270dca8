"""Export A/B on the same trained weights: trains once in the configuration given by the
environment (run it through bench/bench_config.sh for the SPEC §9 bench), then exports the
EMA weights several ways and evaluates each reloaded artifact (standard eval, stride = seq len).
Usage: SCRIPT=bench/export_ab.py bash bench/bench_config.sh bench/out/ab
"""
import os, sys, time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import train_gpt as tg  # noqa: E402


def main() -> None:
    h = tg.Hyperparameters.from_env()
    h.ttt_enabled = 0
    rt = tg.setup(h)
    val_tokens, val_bytes = tg.load_data(h, rt)
    model = tg.GPT(h)
    trainer = tg.Trainer(h, rt, model)
    steps, ms = trainer.train(trainer.prime())  # ends with the EMA weights
    hs, _ = trainer.calibrate()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    names = tg.quantized_names(model)
    code = len((ROOT / "train_gpt.py").read_bytes())

    def evaluate(blob: bytes) -> float:
        model.load_state_dict(tg.unpack_artifact(blob))
        L = h.train_seq_len
        return tg.bpb(tg.eval_sliding(model, val_tokens, L, L, h.eval_batch_seqs, 0, 1, rt.device), val_bytes)[1]

    pre = evaluate(tg.pack_artifact({n: ("raw", t.float()) for n, t in state.items()}, 3))
    weighted = {n: ("q", *tg.quantize_int5(t.float(), torch.diag(hs[n]) if n in hs else None), 15)
                if n in names else ("raw", t.float()) for n, t in state.items()}
    rows = [("RTN, MSE clip, no prune", tg.quantize_state(state, names)),  # the 15% magnitude-prune arm left with PRUNE_PCT
            ("RTN, diag(H)-weighted clip, no prune", weighted),
            ("GPTQ, diag(H)-weighted clip, no prune (default)", tg.quantize_state(state, names, hs))]
    print(f"pre-quant EMA (fp32 weights): {pre:.5f} after {steps} steps")
    print("| export of the same weights | bytes at zstd 16 / 19 / 22 | smallest | pruned | roundtrip | gap |")
    print("|---|---|---|---|---|---|")
    sizes_by_row = []
    for label, q in rows:
        sizes = {int(lv): tg.pack_artifact(q, int(lv)) for lv in os.environ.get("ZSTD_LEVELS", "16,19,22").split(",")}  # compare levels
        blob = min(sizes.values(), key=len)
        sizes = {lv: len(b) for lv, b in sizes.items()}
        sizes_by_row.append(sizes)
        sz = " / ".join(f"{sizes[lv]:,}" for lv in sorted(sizes))
        r = evaluate(blob)
        print(f"| {label} | {sz} | {len(blob):,} | 0 | {r:.5f} | {r - pre:+.5f} |", flush=True)
    for label, model_bytes in (("RTN's zstd-22 bytes", sizes_by_row[0][22]),
                               ("5% under the default export", int(0.95 * len(blob)))):
        t0 = time.perf_counter()
        try:
            packed, info = tg.export_within_cap(state, names, code, hs, code + model_bytes, log=lambda m: None)
        except tg.RunError as e:
            print(f"| GPTQ + rate-distortion export at {label} ({model_bytes:,} + code) | {e} |")
            continue
        r = evaluate(packed)
        print(f"| GPTQ + rate-distortion export at {label} ({model_bytes:,} + code) | level {info['level']} | {len(packed):,} | "
              f"{info['pruned_frac']:.2%} of weights ({info['packs']} packs, {time.perf_counter() - t0:.1f}s) | {r:.5f} | {r - pre:+.5f} |")


if __name__ == "__main__":
    main()
