"""Full-size artifact figures on CPU: builds the default model (or any shape given by the
usual env vars), trains it STEPS steps on the bench corpus so the weights leave their init,
exports it as train_gpt.py does (Hessians from CALIB_SEQS training sequences, GPTQ, the
smallest zstd level; then again by the rate-distortion export under TIGHT_CAP, by default the cap less
50,000 bytes) and prints the size accounting, each table's share, and the CPU seconds of each stage. The
vocabulary's settings apply as in train_gpt.py; the code counted is train_gpt.py packed by tools/pack.py.
Usage: python3 bench/full_size_artifact.py   (STEPS=12 BENCH_SEQ_LEN=256 BENCH_BATCH=8192 CALIB_SEQS=16)"""
import os, sys, time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))
import train_gpt as tg  # noqa: E402
from pack import pack  # noqa: E402

shared = ROOT.parent / "shared" / "data"
os.environ.setdefault("DATA_PATH", str(shared / "datasets" / "bench_sp1024"))
os.environ.setdefault("TOKENIZER_PATH", str(ROOT / "data" / "tokenizers" / "fineweb_1024_bpe.model"))
h = tg.Hyperparameters.from_env()
tg.load_tokenizer(h)  # sets h.vocab_size
print(tg.apply_vocab_settings(h))
steps = int(os.environ.get("STEPS", 12))
seq, batch = int(os.environ.get("BENCH_SEQ_LEN", 256)), int(os.environ.get("BENCH_BATCH", 8192))
torch.manual_seed(0)
model = tg.GPT(h)
groups = {}
for name, p in model.named_parameters():
    g = name.split(".")[0] if not name.startswith("blocks") else "blocks." + ".".join(name.split(".")[2:4])
    groups[g] = groups.get(g, 0) + p.numel()
print(f"shape: layers {h.num_layers} dim {h.model_dim} heads {h.num_heads}/{h.num_kv_heads} mlp {h.mlp_hidden} "
      f"bigram {h.bigram_buckets}x{h.bigram_dim}")
for g, n in sorted(groups.items(), key=lambda kv: -kv[1]):
    print(f"  params {g:<24} {n:>12,}")
print(f"  params {'TOTAL':<24} {sum(groups.values()):>12,}")

opts = tg.build_optimizers(model, h, 0, 1, fused=False)
loader = tg.TrainLoader(os.path.join(h.data_path, "fineweb_train_*.bin"), seq, h.seed)
t0 = time.perf_counter()
for step in range(steps):
    x, y = loader.batch(batch // seq, 0, 1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(x, y)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), h.grad_clip_norm)
    for o in opts:
        o.step()
    model.zero_grad(set_to_none=True)
    print(f"  train step {step + 1}/{steps} loss {loss.item():.4f} ({time.perf_counter() - t0:.0f}s)", flush=True)

names = tg.quantized_names(model)
code = len(pack((ROOT / "train_gpt.py").read_bytes(), "train_gpt.py"))  # what a record counts
calib = int(os.environ.get("CALIB_SEQS", 16))
t0 = time.perf_counter()
x, y = loader.batch(calib, 0, 1)
hs = tg.collect_hessians(model, x, y, 4, 1)
t_calib = time.perf_counter() - t0
t0 = time.perf_counter()
q = tg.quantize_state(model.state_dict(), names, hs)
t_gptq = time.perf_counter() - t0
t0 = time.perf_counter()
sizes = {int(lv): tg.pack_artifact(q, int(lv)) for lv in os.environ.get("ZSTD_LEVELS", "16,19,22").split(",")}  # compare levels
blob = min(sizes.values(), key=len)
sizes = {lv: len(b) for lv, b in sizes.items()}
t_pack = time.perf_counter() - t0


def order0_bits(a: np.ndarray) -> float:
    """The order-0 entropy of one tensor's symbols, in bits (all of them)."""
    c = np.bincount(a.ravel().astype(np.int64) - int(a.min()))
    pn = c[c > 0] / a.size
    return float(-(pn * np.log2(pn)).sum()) * a.size


syms = np.concatenate([q[n][1].numpy().ravel() for n in names])
entropy_bits = sum(order0_bits(q[n][1].numpy()) for n in names) / syms.size  # per tensor: levels may differ
raw = sum(t[1].numel() * 4 for t in q.values() if t[0] == "raw")
scales = sum(q[n][2].numel() * 2 for n in names)
bound = syms.size * entropy_bits / 8 + scales + raw
print(f"calibration: {calib} x {seq} training tokens in {t_calib:.1f}s; GPTQ {t_gptq:.1f}s; "
      f"packing at zstd levels {sorted(sizes)} {t_pack:.1f}s (CPU)")
print("zstd levels: " + ", ".join(f"{lv}: {n:,}" for lv, n in sorted(sizes.items())))
print(f"int5 weights: {syms.size:,}  zero fraction {float((syms == 0).mean()):.3f}")
print(f"order-0 entropy (each tensor's own): {entropy_bits:.3f} bits/weight; entropy bound {bound:,.0f} bytes "
      f"(symbols + fp16 scales {scales:,} + fp32 vectors {raw:,})")
print(f"bytes_model {len(blob):,} (no pruning)  bits per quantized weight {8 * (len(blob) - scales - raw) / syms.size:.3f}  "
      f"bytes_model / entropy_bound {len(blob) / bound:.4f}")
print(f"bytes_code {code:,}  bytes_total {code + len(blob):,}  cap {tg.BYTE_CAP:,}  "
      f"{'fits' if code + len(blob) <= tg.BYTE_CAP else 'OVER'} (headroom {tg.BYTE_CAP - code - len(blob):,}"
      f" = {(tg.BYTE_CAP - code - len(blob)) / tg.BYTE_CAP:.2%})")
for n in sorted(names):  # what a smaller table would give back: its symbols' entropy (+ scales)
    if "table" in n or "emb" in n:
        print(f"  {n}: {tuple(q[n][1].shape)} ~{order0_bits(q[n][1].numpy()) / 8 + 2 * q[n][1].size(0):,.0f} bytes")
cap = int(os.environ.get("TIGHT_CAP", tg.BYTE_CAP - 50_000))
t0 = time.perf_counter()
blob2, info = tg.export_within_cap(model.state_dict(), names, code, hs, cap)
steps_used = sorted(info["steps"].values())
print(f"rate-distortion export under BYTE_CAP {cap:,}: bytes_total {code + len(blob2):,} "
      f"({cap - code - len(blob2):,} under it), {info['pruned_frac']:.3%} zeroed, "
      f"{sum(m != 1.0 for m in steps_used)} of {len(names)} tensors at other steps "
      f"(median x{steps_used[len(steps_used) // 2] if steps_used else 1.0:.2f}), {info['packs']} packs, "
      f"{time.perf_counter() - t0:.1f}s in all (CPU)")
path = Path(os.environ.get("TMPDIR", "/tmp")) / "full_size.int5.ptz"
tg.write_atomic(path, blob)
t0 = time.perf_counter()
tg.load_artifact_into(tg.GPT(h), path).to(torch.device("cpu"))
print(f"reload {time.perf_counter() - t0:.1f}s  (CPU, after {steps} training steps: not a full run)")
