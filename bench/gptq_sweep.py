"""GPTQ settings on the same trained weights: trains once in the configuration given by the
environment (run it through bench/bench_config.sh), caches the EMA weights and Hessians in
OUT_DIR/ema_hessians.pt (reused when present), then exports them with several GPTQ
settings and evaluates each reloaded artifact (standard eval, stride = seq len).
Usage: SCRIPT=bench/gptq_sweep.py bash bench/bench_config.sh bench/out/sweep
"""
import os, sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import train_gpt as tg  # noqa: E402


def export(state, names, hs, damp=0.01, fracs=tg.CLIP_FRACS, full_h=False, table_fracs=tg.CLIP_FRACS):
    """quantize_state's int5 with GPTQ at the given damping and clip grid (`fracs`; lookup
    tables round to nearest over `table_fracs`); full_h picks each row's clip by e^T H e of its
    round-to-nearest error instead of the diag(H)-weighted sum."""
    out = {}
    for n, t in state.items():
        t = t.float()
        if n not in names:
            out[n] = ("raw", t)
        elif n not in hs:
            out[n] = ("q", *tg.quantize_int5(t, None, table_fracs), 15)
        else:
            H = hs[n].float()
            scale = clip_full_h(t, H, fracs) if full_h else tg.quantize_int5(t, torch.diag(H), fracs)[1]
            out[n] = ("q", tg.gptq_int5(t, H, scale, damp=damp), scale, 15)
    return out


def gptq_aware(state, names, hs, fracs=tg.GPTQ_CLIP_FRACS, refit=False):
    """train_gpt.py's export, except that each row's clip is chosen after GPTQ: GPTQ runs at
    every clip fraction (rows are independent) and each row keeps the one with the least
    e^T H e. refit: then each row's scale is refitted to q^T H w / q^T H q (fp16) and GPTQ
    runs once more at that scale."""
    out = tg.quantize_state(state, names, hs)
    for n in (n for n in hs if ":" not in n):  # the Hessians, not the sensitivities
        w, H = state[n].float(), hs[n].float()
        fr = torch.tensor(fracs)
        scale = (w.abs().amax(1)[None] * fr[:, None] / 15).clamp_min(tg.SCALE_EPS).half()  # (K,R)
        K, R = scale.shape
        q = tg.gptq_int5(w.repeat(K, 1), H, scale.flatten()).view(K, R, -1).float()
        e = q * scale.float()[..., None] - w[None]
        best = ((e @ H) * e).sum(-1).argmin(0)
        q, sc = q[best, torch.arange(R)], scale[best, torch.arange(R)]
        if refit:
            sc = (((q @ H) * w).sum(1) / ((q @ H) * q).sum(1).clamp_min(1e-12)).clamp_min(tg.SCALE_EPS).half()
            q = tg.gptq_int5(w, H, sc).float()
        out[n] = ("q", q.to(torch.int8), sc, 15)
    return out


def clip_full_h(w, H, fracs):
    fr = torch.tensor(fracs)
    scale = (w.abs().amax(1)[None] * fr[:, None] / 15).clamp_min(tg.SCALE_EPS).half().float()
    e = torch.clamp(torch.round(w[None] / scale[..., None]), -15, 15) * scale[..., None] - w[None]
    best = ((e @ H) * e).sum(-1).argmin(0)
    return scale[best, torch.arange(w.size(0))].half()


def main() -> None:
    h = tg.Hyperparameters.from_env()
    h.ttt_enabled = 0
    rt = tg.setup(h)
    val_tokens, val_bytes = tg.load_data(h, rt)
    model = tg.GPT(h).to(rt.device)
    cache = Path(h.out_dir) / "ema_hessians.pt"
    if cache.exists():
        state, hs = torch.load(cache)
        model.recur = bool(model.recur_layers and state.get("recur_on", torch.ones(1)).item())  # as trained
    else:
        trainer = tg.Trainer(h, rt, model)
        trainer.train(trainer.prime())  # ends with the EMA weights
        hs, _ = trainer.calibrate()
        state = {k: v.clone() for k, v in model.state_dict().items()}
        torch.save((state, hs), cache)
    names = tg.quantized_names(model)

    def evaluate(q) -> tuple[float, int]:
        blob = tg.pack_artifact(q)
        model.load_state_dict(tg.unpack_artifact(blob))
        L = h.train_seq_len
        return tg.bpb(tg.eval_sliding(model, val_tokens, L, L, h.eval_batch_seqs, 0, 1, rt.device), val_bytes)[1], len(blob)

    pre, _ = evaluate({n: ("raw", t.float()) for n, t in state.items()})
    print(f"pre-quant EMA: {pre:.5f}")
    fine = tuple(1.0 - 0.05 * i for i in range(11))
    variants = [("first GPTQ (damp 0.01, 5 clips)", {}), ("damp 0.003", dict(damp=0.003)),
                ("damp 0.03", dict(damp=0.03)), ("damp 0.1", dict(damp=0.1)),
                ("11 clips 1.0..0.5 (tables too)", dict(fracs=fine, table_fracs=fine)), ("clip by full e^T H e", dict(full_h=True)),
                ("11 clips + full e^T H e (tables too)", dict(fracs=fine, full_h=True, table_fracs=fine)),
                ("damp 0.05 + 11 clips (tables too)", dict(damp=0.05, fracs=fine, table_fracs=fine)),
                ("damp 0.1 + 11 clips (tables too)", dict(damp=0.1, fracs=fine, table_fracs=fine)),
                ("train_gpt.py's export (damp 0.05, 11 clips, tables 5)", "default"),
                ("clip chosen after GPTQ (least e^T H e of GPTQ's own error)", "aware"),
                ("clip chosen after GPTQ + H-weighted scale refit + GPTQ again", "refit")]
    only = os.environ.get("VARIANTS")
    print("| GPTQ setting | bytes (zstd 16) | roundtrip | gap |\n|---|---|---|---|")
    for i, (label, kw) in enumerate(variants):
        if only and str(i) not in only.split(","):
            continue
        q = (tg.quantize_state(state, names, hs) if kw == "default" else gptq_aware(state, names, hs, refit=kw == "refit")
             if kw in ("aware", "refit") else export(state, names, hs, **kw))
        r, nb = evaluate(q)
        print(f"| {label} | {nb:,} | {r:.5f} | {r - pre:+.5f} |", flush=True)


if __name__ == "__main__":
    main()
