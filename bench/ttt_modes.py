"""Issue 20's bench: the score-first TTT modes on saved artifacts, paired by seed.

For each bench run folder (its final_model.int5.ptz and its log's hparams line give the model),
the reloaded artifact is scored five ways: the stride sliding window; chunked TTT (bench/chunk_ttt.py) at
TTT_CHUNK_TOKENS; chunked TTT with chunks small enough for >= 100 of them (closer to a full run's
1,893); doc-isolated scoring alone (LoRA TTT with TTT_EPOCHS=0); per-document LoRA TTT.
Every arm writes a mini-log per seed (an hparams line and its final-score line, as train_gpt.py
prints them) under OUT/<arm>/, so tools/significance.py compares arms paired by seed.
Usage: PYTHONPATH=bench/fp32 [ARMS=sliding,chunk,...] python3 bench/ttt_modes.py OUT RUN_DIR [RUN_DIR ...]
Environment overrides apply to every arm's TTT settings (e.g. TTT_EPOCHS=1 TTT_LORA_RANK=16)."""
import glob, json, os, sys
from dataclasses import asdict, fields
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))
import train_gpt as tg  # noqa: E402
from logparse import parse_log  # noqa: E402
from ttt_sweep import validation  # noqa: E402
from chunk_ttt import chunk_hparams, eval_ttt  # noqa: E402


def run_hparams(run_dir: Path) -> "tg.Hyperparameters":
    """The run's own hyperparameters, then any TTT_* / EVAL_* environment override."""
    hp = parse_log(sorted(glob.glob(str(run_dir / "logs" / "*.txt")))[0])["hparams"]
    h = tg.Hyperparameters(**{f.name: hp[f.name] for f in fields(tg.Hyperparameters) if f.name in hp})
    for f in fields(h):
        v = os.environ.get(f.name.upper())
        if v is not None and f.name.startswith(("ttt_", "eval_")):
            setattr(h, f.name, type(f.default)(v))
    h.ttt_log_every, h.max_eval_seconds = 0, float("inf")
    tg.load_tokenizer(h)  # the vocabulary (a log's hparams line may say 0: the tokenizer's)
    return h


def score(arm: str, run_dir: Path, h, val, nbytes) -> tuple[float, float, float]:
    """(val_loss, val_bpb, seconds) of one arm on a freshly reloaded artifact (TTT moves weights)."""
    dev = torch.device("cpu")
    model, clock = tg.load_artifact_into(tg.GPT(h), run_dir / "final_model.int5.ptz").to(dev), tg.make_clock()
    n = val.numel() - 1
    if arm == "sliding":
        nll = tg.eval_sliding(model, val, h.train_seq_len, h.eval_stride, h.eval_batch_seqs, 0, 1, dev)
    elif arm.startswith("chunk"):
        h = chunk_hparams(h)  # TTT_LR, TTT_CHUNK_TOKENS, ... from the environment (the runs' logs may not hold them)
        if arm == "chunk_small":  # the largest whole-sequence chunk giving >= 100 chunks
            h.ttt_chunk_tokens = max(h.train_seq_len, n // 100 // h.train_seq_len * h.train_seq_len)
        nll = eval_ttt(model, model, val, h, 0, 1, dev, nbytes, clock, log=print)
    else:
        h.ttt_epochs = 0 if arm == "doc" else max(1, h.ttt_epochs)
        nll = tg.eval_lora(model, model, val, h, 0, 1, dev, clock, log=print)
    return (*tg.bpb(nll, nbytes), clock())


def main(out: Path, runs: list[str]) -> None:
    arms = os.environ.get("ARMS", "sliding,chunk,chunk_small,doc,lora").split(",")
    for run in map(Path, runs):
        val, nbytes = validation(run_hparams(run))
        for arm in arms:
            h = run_hparams(run)
            loss, b, secs = score(arm, run, h, val, nbytes)
            key = "final_sliding_exact" if arm == "sliding" else "legal_ttt_exact"
            (out / arm).mkdir(parents=True, exist_ok=True)
            (out / arm / f"seed{h.seed}.txt").write_text(
                f"hparams {json.dumps(asdict(h))}\n{key} val_loss:{loss:.8f} val_bpb:{b:.8f} time:{secs:.1f}s\n")
            print(f"{run} {arm}: val_loss {loss:.6f} val_bpb {b:.6f} ({secs:.0f} s, chunk tokens {h.ttt_chunk_tokens})", flush=True)


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    main(Path(sys.argv[1]), sys.argv[2:])
