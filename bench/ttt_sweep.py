"""Evaluation of a saved artifact. As a script: a TTT settings sweep that reloads
final_model.int5.ptz (from a bench run's OUT_DIR) and runs chunked TTT (bench/chunk_ttt.py) once per
setting, printing the legal TTT val_bpb. `evaluate` also serves bench/ladder.py --val.
Usage: python3 bench/ttt_sweep.py OUT_DIR/final_model.int5.ptz LR,BATCH_SEQS,EPOCHS [...]
The model shape comes from the usual env vars (defaults: the SPEC §9 bench shape)."""
import os, sys, time
from pathlib import Path
from types import SimpleNamespace

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import train_gpt as tg  # noqa: E402
from chunk_ttt import chunk_hparams, eval_ttt  # noqa: E402

BENCH_SHAPE = dict(NUM_LAYERS="11", MODEL_DIM="128", NUM_HEADS="4", NUM_KV_HEADS="4", MLP_HIDDEN="384",
                   BIGRAM_BUCKETS="1024", BIGRAM_DIM="32", TRAIN_SEQ_LEN="256")


def setup(val_glob: str | None = None):
    """Bench-shape hyperparameters, the validation tokens and their per-target byte counts."""
    shared = ROOT.parent / "shared" / "data"
    env = {**BENCH_SHAPE, "DATA_PATH": str(shared / "datasets" / "bench_sp1024"),
           "TOKENIZER_PATH": str(shared / "tokenizers" / "fineweb_1024_bpe.model"), **os.environ,
           "TTT_LOG_EVERY": "0"}
    h = chunk_hparams(tg.Hyperparameters.from_env(env), env)  # with the chunked arm's TTT_LR, TTT_BATCH_SEQS, ...
    return (h, *validation(h, val_glob))


def validation(h, val_glob: str | None = None):
    """h's validation tokens (or val_glob's) and the bytes of each of their targets, as train_gpt.py scores them
    (its load_data: a byte sidecar beside the shards wins); gives h its vocabulary and that vocabulary's settings."""
    sp = tg.load_tokenizer(h)
    tg.apply_vocab_settings(h)
    if val_glob is None:
        return tg.load_data(h, SimpleNamespace(log=lambda msg: None, device=torch.device("cpu")))
    if tg.is_caseops(sp):
        sys.exit(f"{h.tokenizer_path} is a CaseOps tokenizer: score it from DATA_PATH, whose byte sidecar counts its bytes")
    val = tg.load_validation(val_glob, h.train_seq_len)
    return val, tg.target_bytes(val, tg.build_byte_luts(sp))


def ttt_score(artifact: str, h, val, nbytes) -> tuple[float, float]:
    """Legal TTT val_bpb of a freshly reloaded artifact at h's TTT settings, and its seconds."""
    dev = torch.device("cpu")
    model, clock = tg.load_artifact_into(tg.GPT(h), Path(artifact)).to(dev), tg.make_clock()
    nll = eval_ttt(model, model, val, h, 0, 1, dev, nbytes, clock, log=print, budget=float("inf"))
    return tg.bpb(nll, nbytes)[1], clock()


def evaluate(artifact: str, h, val, nbytes, ttt: bool = True) -> dict:
    """Standard, sliding and (optionally) legal TTT val_bpb of the reloaded artifact, with times."""
    dev, L, out = torch.device("cpu"), h.train_seq_len, {}
    model = tg.load_artifact_into(tg.GPT(h), Path(artifact)).to(dev)
    for key, stride in (("roundtrip", L), ("sliding", h.eval_stride)):
        t0 = time.perf_counter()
        out[key] = tg.bpb(tg.eval_sliding(model, val, L, stride, h.eval_batch_seqs, 0, 1, dev), nbytes)[1]
        out[key + "_s"] = time.perf_counter() - t0
    if ttt:
        out["ttt"], out["ttt_s"] = ttt_score(artifact, h, val, nbytes)
    return out


def main(artifact: str, settings: list[str]) -> None:
    h, val, nbytes = setup()
    sl = evaluate(artifact, h, val, nbytes, ttt=False)["sliding"]
    print(f"sliding val_bpb {sl:.5f}", flush=True)
    print("| TTT_LR | TTT_BATCH_SEQS | TTT_EPOCHS | legal TTT val_bpb | gain | seconds |\n|---|---|---|---|---|---|")
    for s in settings:
        lr, bs, ep = s.split(",")
        h.ttt_lr, h.ttt_batch_seqs, h.ttt_epochs = float(lr), int(bs), int(ep)
        v, secs = ttt_score(artifact, h, val, nbytes)
        print(f"| {lr} | {bs} | {ep} | {v:.5f} | {sl - v:+.5f} | {secs:.0f} |", flush=True)


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2:])
