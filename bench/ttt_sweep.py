"""TTT settings sweep on a saved artifact: reloads final_model.int5.ptz (from a bench run's
OUT_DIR) and runs train_gpt.eval_ttt once per setting, printing the legal TTT val_bpb.
Usage: python3 bench/ttt_sweep.py OUT_DIR/final_model.int5.ptz LR,BATCH_SEQS,EPOCHS [...]
The model shape comes from the usual env vars (defaults: the SPEC §9 bench shape)."""
import os, sys, time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import train_gpt as tg  # noqa: E402

BENCH_SHAPE = dict(NUM_LAYERS="11", MODEL_DIM="128", NUM_HEADS="4", NUM_KV_HEADS="4", MLP_HIDDEN="384",
                   BIGRAM_BUCKETS="1024", BIGRAM_DIM="32", TRAIN_SEQ_LEN="256")


def main(artifact: str, settings: list[str]) -> None:
    import sentencepiece as spm
    shared = ROOT.parent / "shared" / "data"
    env = {**BENCH_SHAPE, "DATA_PATH": str(shared / "datasets" / "bench_sp1024"),
           "TOKENIZER_PATH": str(shared / "tokenizers" / "fineweb_1024_bpe.model"), **os.environ,
           "TTT_LOG_EVERY": "0"}
    h = tg.Hyperparameters.from_env(env)
    dev = torch.device("cpu")
    luts = tg.build_byte_luts(spm.SentencePieceProcessor(model_file=h.tokenizer_path), h.vocab_size)
    val = tg.load_validation(os.path.join(h.data_path, "fineweb_val_*.bin"), h.train_seq_len)
    nbytes = tg.target_bytes(val, luts)[:-1]
    model = tg.load_artifact_model(Path(artifact), h, dev)
    t0 = time.perf_counter()
    sl = tg.bpb(tg.eval_sliding(model, val, h.train_seq_len, h.eval_stride, h.eval_batch_seqs, 0, 1, dev), nbytes)[1]
    print(f"sliding val_bpb {sl:.5f} ({time.perf_counter() - t0:.0f} s)", flush=True)
    print("| TTT_LR | TTT_BATCH_SEQS | TTT_EPOCHS | legal TTT val_bpb | gain | seconds |\n|---|---|---|---|---|---|")
    for s in settings:
        lr, bs, ep = s.split(",")
        h.ttt_lr, h.ttt_batch_seqs, h.ttt_epochs = float(lr), int(bs), int(ep)
        m = tg.load_artifact_model(Path(artifact), h, dev)
        clock = tg.make_clock()
        nll = tg.eval_ttt(m, m, val, h, 0, 1, dev, nbytes, clock, log=print, budget=float("inf"))
        v = tg.bpb(nll, nbytes)[1]
        print(f"| {lr} | {bs} | {ep} | {v:.5f} | {sl - v:+.5f} | {clock():.0f} |", flush=True)


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2:])
