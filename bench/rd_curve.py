"""Rate-distortion curve of the export on the same trained weights: trains once in the configuration
given by the environment (run it through bench/bench_config.sh for the SPEC §9 bench; the trained EMA
weights are cached in OUT_DIR/trained_seed<SEED>.pt and reused; the calibration reads the training windows
Trainer.calibrate would), then exports them at a ladder of byte caps several ways -- prune: the export
before the rate-distortion allocation (GPTQ, then the globally cheapest +-1 symbols zeroed); rd: train_gpt.py's
export without LQER; lqer: train_gpt.py's export with LQER_RANK's factors among its candidates; rowmax: the
peer's int5 rule (clip at the row max, GPTQ, then prune); uniform: every step x one multiplier -- and scores each
reloaded artifact (standard eval, and the sliding eval at EVAL_STRIDE).
Usage: SCRIPT=bench/rd_curve.py CAPS=1.0,0.9,0.8,0.7,0.65 bash bench/bench_config.sh bench/out/rd
       (CAPS: fractions of the unconstrained size, or absolute byte counts; ARMS=prune,rd,lqer,rowmax,uniform;
       each arm's scores also go to OUT_DIR/logs/<arm>_<cap>_seed<seed>.txt for tools/significance.py;
       SKIP_PRE=1 skips the pre-quant evals, SLIDING=0 the sliding ones)
"""
import os, sys, time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import train_gpt as tg  # noqa: E402


def trained(h, rt):
    """(model, EMA state, calibration inputs and targets, steps) -- from the cache when it exists."""
    cache = Path(h.out_dir) / f"trained_seed{h.seed}.pt"
    model = tg.GPT(h)
    if cache.is_file():
        c = torch.load(cache)
        model.load_state_dict(c["state"])
        model.recur = bool(model.recur_layers and model.recur_on.item())  # as the trained model left it
        steps = c["steps"]
    else:
        trainer = tg.Trainer(h, rt, model)
        steps, _ = trainer.train(trainer.prime())  # ends with the EMA weights
        torch.save(dict(state=model.state_dict(), steps=steps), cache)
    loader = tg.TrainLoader(os.path.join(h.data_path, "fineweb_train_*.bin"), h.train_seq_len, h.seed)
    loader.pos = steps * (h.train_batch_tokens // h.train_seq_len)  # the windows Trainer.calibrate reads next
    x, y = loader.batch(h.gptq_calib_seqs, 0, 1)
    return model, {k: v.detach().clone() for k, v in model.state_dict().items()}, x, y, steps


def prune_to_fit(qstate: dict, hs: dict, budget: int) -> tuple[bytes, int]:
    """The export before the rate-distortion allocation: the globally cheapest +-1 symbols (cost
    scale^2 x diag(H), 1 for tables) zeroed, the fewest that fit (bisection over real packs)."""
    names = [n for n, e in qstate.items() if e[0] == "q"]
    cost, where = [], []
    for k, n in enumerate(names):
        q, scale = qstate[n][1], qstate[n][2].float()
        hd = torch.diag(hs[n]).float() if n in hs else torch.ones(q.size(1))
        idx = (q.abs() == 1).flatten().nonzero().squeeze(1)
        cost.append((scale[:, None] ** 2 * hd).flatten()[idx])
        where += [(k, i) for i in idx.tolist()]
    order = torch.cat(cost).argsort(stable=True).tolist()

    def pack(n):
        out = dict(qstate)
        zero = {}
        for j in order[:n]:
            zero.setdefault(where[j][0], []).append(where[j][1])
        for k, idx in zero.items():
            q = out[names[k]][1].clone()
            q.view(-1)[torch.tensor(idx)] = 0
            out[names[k]] = out[names[k]][:1] + (q,) + out[names[k]][2:]
        return tg.pack_artifact(out)

    lo, hi = 0, len(order)
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if len(pack(mid)) <= budget else (mid + 1, hi)
    blob = pack(lo)
    if len(blob) > budget:
        raise tg.RunError("cannot fit by pruning")
    return blob, lo


def uniform_to_fit(state: dict, qmax: dict, hs: dict, budget: int) -> tuple[bytes, float]:
    """Every quantized tensor's least-error step x one multiplier m (GPTQ at it, nothing zeroed): the
    smallest m found whose pack fits (bisection over real packs; bytes fall as m grows)."""
    lo, hi = 1.0, 4.0
    for _ in range(10):
        mid = (lo + hi) / 2
        fits = len(tg.pack_artifact(tg.quantize_state(state, qmax, hs, steps={n: mid for n in qmax}))) <= budget
        lo, hi = (lo, mid) if fits else (mid, hi)
    blob = tg.pack_artifact(tg.quantize_state(state, qmax, hs, steps={n: hi for n in qmax}))
    if len(blob) > budget:
        raise tg.RunError(f"cannot fit at a uniform step x {hi:.2f}")
    return blob, hi


def row_max_state(state: dict, qmax: dict, hs: dict) -> dict:
    """The peer's int5 rule: the clip at each row's max, GPTQ at that step."""
    out = {}
    for n, t in state.items():
        t = t.float()
        if n not in qmax:
            out[n] = ("raw", t)
            continue
        scale = (t.abs().amax(1) / qmax[n]).clamp_min(tg.SCALE_EPS).half()
        q = tg.gptq_int5(t, hs[n], scale, qmax=qmax[n]) if n in hs else torch.clamp(
            torch.round(t / scale.float()[:, None]), -qmax[n], qmax[n]).to(torch.int8)
        out[n] = ("q", q, scale, qmax[n])
    return out


def main() -> None:
    h = tg.Hyperparameters.from_env()
    h.ttt_enabled = 0
    rt = tg.setup(h)
    val_tokens, val_bytes = tg.load_data(h, rt)
    model, state, x, y, steps = trained(h, rt)
    if os.environ.get("TRAIN_ONLY"):
        return
    t0 = time.perf_counter()
    hs = tg.collect_hessians(model, x, y, h.eval_batch_seqs, 1)
    print(f"calibration {time.perf_counter() - t0:.1f}s (Hessians and sensitivities of {x.size(0)} training windows)")
    qmax = tg.quantized_names(model)
    code = len((ROOT / "train_gpt.py").read_bytes())
    L = h.train_seq_len

    def evaluate(blob: bytes, log_name: str | None = None) -> tuple[float, float]:
        """(roundtrip, sliding) bpb of the artifact; with log_name, both (and their val_loss) also go to
        OUT_DIR/logs/<log_name>.txt as train_gpt.py logs them, for tools/significance.py."""
        model.load_state_dict(tg.unpack_artifact(blob))
        std = tg.bpb(tg.eval_sliding(model, val_tokens, L, L, h.eval_batch_seqs, 0, 1, rt.device), val_bytes)
        sl = (float("nan"),) * 2 if os.environ.get("SLIDING", "1") == "0" else \
            tg.bpb(tg.eval_sliding(model, val_tokens, L, h.eval_stride, h.eval_batch_seqs, 0, 1, rt.device), val_bytes)
        if log_name:
            (Path(h.out_dir) / "logs" / f"{log_name}.txt").write_text(
                f"final_int5_zstd_roundtrip_exact val_loss:{std[0]:.8f} val_bpb:{std[1]:.8f}\n"
                f"final_sliding_exact val_loss:{sl[0]:.8f} val_bpb:{sl[1]:.8f}\n")
        return std[1], sl[1]

    pre = (float("nan"),) * 2 if os.environ.get("SKIP_PRE") else \
        evaluate(tg.pack_artifact({n: ("raw", t.float()) for n, t in state.items()}, 3))
    today = tg.quantize_state(state, qmax, hs)
    full = len(tg.pack_artifact(today))
    print(f"seed {h.seed}, {steps} steps, code {code:,} bytes; pre-quant (fp32 weights) standard {pre[0]:.5f} sliding {pre[1]:.5f}")
    print(f"unconstrained export: {code + full:,} bytes in all")
    caps = [float(c) for c in os.environ.get("CAPS", "1.0,0.9,0.8,0.7,0.65").split(",")]
    rowmax = row_max_state(state, qmax, hs)
    print("| arm | cap (total bytes) | bytes_total | roundtrip | sliding | note |")
    print("|---|---|---|---|---|---|")
    for c in caps:
        cap = int(c) if c > 10 else int(code + c * full)
        for arm in os.environ.get("ARMS", "prune,rd,rowmax").split(","):
            t0 = time.perf_counter()
            try:
                if arm in ("rd", "lqer"):
                    blob, info = tg.export_within_cap(state, qmax, code, hs, cap, lambda m: None, h.lqer_rank if arm == "lqer" else 0)
                    chosen = info["steps"]
                    note = (f"{sum(m != 1.0 for m in chosen.values())} of {len(qmax)} tensors at other steps, "
                            f"{len(info['lqer'])} with LQER factors, {info['pruned_frac']:.2%} zeroed, {info['packs']} packs")
                    if chosen:
                        note += ", steps x " + " ".join(f"{n.replace('.weight', '')}:{m:.2f}" for n, m in chosen.items() if m != 1.0)
                elif arm == "uniform":
                    blob, m = uniform_to_fit(state, qmax, hs, cap - code)
                    note = f"every step x {m:.3f}"
                else:
                    blob, n = prune_to_fit(today if arm == "prune" else rowmax, hs, cap - code)
                    note = f"{n:,} +-1 symbols zeroed"
            except tg.RunError as e:
                print(f"| {arm} | {cap:,} | - | - | - | {e} |", flush=True)
                continue
            note += f", {time.perf_counter() - t0:.1f}s"
            r = evaluate(blob, f"{arm}_{cap}_seed{h.seed}")
            print(f"| {arm} | {cap:,} | {code + len(blob):,} | {r[0]:.5f} | {r[1]:.5f} | {note} |", flush=True)


if __name__ == "__main__":
    main()
