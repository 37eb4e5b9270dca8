"""Issue 35's bench: the frontier's TTT levers, one added at a time, on saved artifacts, paired by seed.

For each bench run folder (its final_model.int5.ptz and its log's hparams line give the model), the reloaded
artifact is scored by the sliding window and by per-document LoRA TTT under each arm's settings. The arms
are cumulative, in the issue's order but for the last two:
  today     the settings before issue 35 (rank 64 on every matrix and the head, alpha = rank, AdamW lr 2e-4,
            betas (0, 0.999), WD 0.5, chunks of 128, fresh adapters per batch, the training context)
  phased    + one phase: the 27 longest documents (5% of the 543, as 2,500 of 50,000; 29% of the tokens)
            scored, then a global SGD pass over them (lr 0.001, momentum 0.9, 1,024 tokens a step)
  warm_a    + LoRA's A kept across documents (B re-zeroed)
  frontier  + rank 80, alpha 144, adapters on q, v, o, mlp, head (k off), AdamW lr 8e-5, betas (0, 0.99),
            WD 2.0, chunks of 48
  context   + evaluation context 320 against training at 256 (the sliding eval too)
  schedule  + chunks of 8 for batches of documents <= 256 tokens, 24 for <= 2,000 (PR #2014); last, being the
            costliest (at the bench's 256-token context every batch is "short": chunks of 24 or 8 throughout)
Every arm writes a mini-log per seed (an hparams line, its sliding and its TTT score lines, as train_gpt.py
prints them) under OUT/<arm>/, so tools/significance.py compares arms paired by seed, and prints its TTT gain
over its own sliding score and the TTT's seconds.
Usage: [ARMS=today,phased,...] python3 bench/ttt_levers.py OUT RUN_DIR [RUN_DIR ...]"""
import json, os, sys
from dataclasses import asdict
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
import train_gpt as tg  # noqa: E402
from ttt_modes import run_hparams  # noqa: E402
from ttt_sweep import validation  # noqa: E402

STEPS = [
    ("today", dict(ttt_lora_rank=64, ttt_lora_alpha=64.0, ttt_lora_targets="all", ttt_lora_warm_a=0, ttt_lora_lr=2e-4,
                   ttt_lora_beta2=0.999, ttt_lora_wd=0.5, ttt_lora_chunk=128, ttt_lora_chunk_schedule="", ttt_phases=0,
                   eval_seq_len=0)),
    ("phased", dict(ttt_phases=1, ttt_phase_docs=27, ttt_phase_lr=0.001, ttt_phase_momentum=0.9, ttt_phase_batch_tokens=1024)),
    ("warm_a", dict(ttt_lora_warm_a=1)),
    ("frontier", dict(ttt_lora_rank=80, ttt_lora_alpha=144.0, ttt_lora_targets="q,v,o,mlp,head", ttt_lora_lr=8e-5,
                      ttt_lora_beta2=0.99, ttt_lora_wd=2.0, ttt_lora_chunk=48)),
    ("context", dict(eval_seq_len=320)),
    ("schedule", dict(ttt_lora_chunk_schedule="256:8,2000:24")),
]


def arm_settings(arm: str) -> dict:
    """The settings of `arm`: every step's up to and including its own."""
    names = [name for name, _ in STEPS]
    out = {}
    for name, step in STEPS[:names.index(arm) + 1]:
        out.update(step)
    return out


def score(run_dir: Path, h, val, nbytes, sliding: dict) -> tuple[float, float, float, float, float]:
    """(sliding loss, sliding bpb, TTT loss, TTT bpb, TTT seconds) of a freshly reloaded artifact under h;
    `sliding` caches the sliding scores by context."""
    dev = torch.device("cpu")
    E = tg.eval_context(h)
    model = tg.load_artifact_into(tg.GPT(h), run_dir / "final_model.int5.ptz").to(dev)
    if E not in sliding:
        sliding[E] = tg.bpb(tg.eval_sliding(model, val, E, h.eval_stride, h.eval_batch_seqs, 0, 1, dev), nbytes)
    clock = tg.make_clock()
    nll = tg.eval_lora(model, model, val, h, 0, 1, dev, clock, log=print, budget=float("inf"))
    return (*sliding[E], *tg.bpb(nll, nbytes), clock())


def main(out: Path, runs: list[str]) -> None:
    arms = os.environ.get("ARMS", ",".join(name for name, _ in STEPS)).split(",")
    for run in map(Path, runs):
        val, nbytes = validation(run_hparams(run))
        sliding = {}
        for arm in arms:
            h = run_hparams(run)
            for k, v in arm_settings(arm).items():
                setattr(h, k, v)
            h.ttt_log_every = 0
            sl_loss, sl_bpb, loss, b, secs = score(run, h, val, nbytes, sliding)
            (out / arm).mkdir(parents=True, exist_ok=True)
            (out / arm / f"seed{h.seed}.txt").write_text(
                f"hparams {json.dumps(asdict(h))}\nfinal_sliding_exact val_loss:{sl_loss:.8f} val_bpb:{sl_bpb:.8f}\n"
                f"legal_ttt_exact val_loss:{loss:.8f} val_bpb:{b:.8f} time:{secs:.1f}s\n")
            print(f"{run} {arm}: sliding {sl_bpb:.5f} ttt {b:.5f} gain {sl_bpb - b:+.5f} ({secs:.0f} s)", flush=True)


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    main(Path(sys.argv[1]), sys.argv[2:])
