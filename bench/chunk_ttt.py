"""Chunked score-first TTT, a bench arm against train_gpt.py's per-document LoRA TTT (bench/ttt_modes.py,
bench/ttt_sweep.py): each 32,768-token chunk of the validation stream is scored under inference_mode, then
(except for the last) AdamW adapts the MLP matrices on it (lr 4e-4, cosine over chunks, TTT_EPOCHS epochs of
8-sequence batches split over ranks in one fixed shape), with an eval-budget guard that stops adapting, never
scoring. It was train_gpt.py's TTT_MODE=chunk until 2026-12-04; it left the counted script (then held to 1,500 lines)
because LoRA TTT is the default and nothing but the benches used it.
Its settings (TTT_LR, TTT_GRAD_CLIP, TTT_CHUNK_TOKENS, TTT_BATCH_SEQS) ride on top of train_gpt.py's
hyperparameters: chunk_hparams(h)."""
import math
import os
import sys
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import train_gpt as tg  # noqa: E402

CHUNK_DEFAULTS = dict(ttt_lr=4e-4, ttt_grad_clip=1.0, ttt_chunk_tokens=32768, ttt_batch_seqs=8)


def chunk_hparams(h, env=os.environ, **over) -> SimpleNamespace:
    """train_gpt.py's hyperparameters h plus the chunked mode's, from the environment (TTT_LR, ...) or `over`."""
    extra = {k: type(v)(env.get(k.upper(), v)) for k, v in CHUNK_DEFAULTS.items()}
    return SimpleNamespace(**{**asdict(h), **extra, **over})


def ttt_keep_adapting(elapsed: float, adapt_avg: float, score_avg: float, chunks_left: int, budget: float) -> bool:
    """Adapt once more only if that and scoring every remaining chunk fit in the budget."""
    return elapsed + adapt_avg + 1.1 * score_avg * chunks_left <= budget


def ttt_params(model) -> list:
    """The MLP matrices, selected by module identity."""
    return [p for blk in model.blocks for p in (blk.mlp.up.weight, blk.mlp.down.weight)]


def ttt_batch_plan(lo: int, hi: int, seq_len: int, batch_seqs: int, rank: int, world: int):
    """This rank's share of each TTT step over the chunk's whole sequences, in one fixed shape: (starts,
    weights), each (steps, ceil(batch_seqs / world)). A weight is 1/(tokens in the step), 0 for padding,
    so gradients summed across ranks are the step's mean."""
    starts = list(range(lo, hi - seq_len + 1, seq_len))
    per = -(-batch_seqs // world)
    S, W = [], []
    for b in range(0, len(starts), batch_seqs):
        step = starts[b:b + batch_seqs]
        mine = step[rank::world]
        S.append(mine + [step[0]] * (per - len(mine)))
        W.append([1 / (len(step) * seq_len)] * len(mine) + [0.0] * (per - len(mine)))
    return torch.tensor(S, dtype=torch.long).view(-1, per), torch.tensor(W).view(-1, per)


def ttt_step(run_model, tokens, starts, weights, params, opt, h, world: int) -> None:
    idx = starts[:, None] + torch.arange(h.train_seq_len, device=tokens.device)
    with torch.autocast(tokens.device.type, dtype=torch.bfloat16):
        nll = run_model(tokens[idx], tokens[idx + 1], reduce=False)
    (nll.float().sum(1) * weights).sum().backward()
    tg.all_reduce_grads(params, world, mean=False)  # the weights already make it the global mean
    torch.nn.utils.clip_grad_norm_(params, h.ttt_grad_clip)
    opt.step()
    opt.zero_grad(set_to_none=True)


def eval_ttt(model, run_model, tokens: torch.Tensor, h, rank: int, world: int, device,
             nbytes: torch.Tensor, clock, log=print, budget: float | None = None) -> torch.Tensor:
    """Score-first TTT: for each chunk, score it under inference_mode, then (except for the last) adapt
    the MLP matrices on it. Returns per-target nll over the whole stream. One host sync per chunk;
    the budget decision's inputs are reduced (max) across ranks, so every rank decides alike."""
    L, C = h.train_seq_len, h.ttt_chunk_tokens
    n = tokens.numel() - 1
    n_chunks = math.ceil(n / C)
    budget = h.max_eval_seconds if budget is None else budget
    tokens, nbytes = tokens.to(device), nbytes.to(device)
    params = ttt_params(model)
    opt = torch.optim.AdamW(params, lr=h.ttt_lr, betas=(0.9, 0.95), weight_decay=0.0)
    nll = torch.zeros(n, device=device)
    sums = torch.zeros(2, dtype=torch.float64, device=device)  # running nll, bytes
    adapting, score_t, adapt_t, adapts, steps = h.ttt_epochs > 0, 0.0, 0.0, 0, 0
    for c in range(n_chunks):
        lo, hi = c * C, min(n, (c + 1) * C)
        tg.sync(device)
        t0 = clock()
        model.eval()
        with torch.inference_mode():
            nll[lo:hi] = tg.score_windows(run_model, tokens, tg.window_plan(lo, hi, L, h.eval_stride), L,
                                       h.eval_batch_seqs, lo, hi, rank, world, device)
        sums += torch.stack([nll[lo:hi].double().sum(), nbytes[lo:hi].double().sum()])
        tg.sync(device)
        t1 = clock()
        score_t += t1 - t0
        score_avg = score_t / (c + 1)  # before the first adaptation is timed: priced from scoring (fwd+bwd = 3 fwd)
        adapt_avg = adapt_t / adapts if adapts else 3 * h.ttt_epochs * h.eval_stride / L * score_avg
        stats = torch.cat([torch.tensor([t1, score_avg, adapt_avg], dtype=torch.float64, device=device), sums])
        elapsed, score_avg, adapt_avg, nll_sum, byte_sum = tg.all_reduce(stats, world, tg.dist.ReduceOp.MAX).tolist()
        last = c == n_chunks - 1
        if adapting and not last and not ttt_keep_adapting(elapsed, adapt_avg, score_avg, n_chunks - c - 1, budget):
            adapting = False
            log(f"ttt budget: stopped adapting at chunk {c}/{n_chunks}, elapsed {elapsed:.1f}s; scoring the rest")
        if adapting and not last:
            lr = h.ttt_lr * 0.5 * (1 + math.cos(math.pi * c / max(1, n_chunks - 2)))
            for g in opt.param_groups:
                g["lr"] = lr
            starts, weights = (t.to(device) for t in ttt_batch_plan(lo, hi, L, h.ttt_batch_seqs, rank, world))
            model.train()
            tg.set_trainable(model, params)
            for _ in range(h.ttt_epochs):
                for s, w in zip(starts, weights):
                    ttt_step(run_model, tokens, s, w, params, opt, h, world)
                steps += len(starts)
            tg.set_trainable(model, None)
            tg.sync(device)
            adapt_t, adapts = adapt_t + clock() - t1, adapts + 1
        if h.ttt_log_every > 0 and ((c + 1) % h.ttt_log_every == 0 or last):
            log(f"ttt_chunk [{c + 1}/{n_chunks}] bpb={nll_sum / (math.log(2) * byte_sum):.4f} time={elapsed:.1f}s")
    log(f"ttt adapted {adapts}/{n_chunks} chunks: scoring {score_t:.1f}s, adapting {adapt_t:.1f}s in {steps} steps")
    return nll
