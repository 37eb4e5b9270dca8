"""Run by test_distributed under torchrun (2 ranks, gloo): score-first TTT whose budget guard fires
mid-stream while each rank's clock runs at its own speed (chunked TTT; or, given `phased BUDGET`, phased LoRA
TTT whose global pass the guard stops). Writes OUT/rank{r}.json."""
import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import load_tg  # noqa: E402
from test_ttt import SHAPE, chunk_ttt, make_setup  # noqa: E402
from test_model import small_model  # noqa: E402

tg = load_tg()
dist.init_process_group("gloo")
rank = dist.get_rank()
h, tokens = make_setup(tg, n=1200)  # 10 chunks of 128 targets
model = small_model(tg, **{k: getattr(h, k) for k in SHAPE})
ticks = [0.0]


def clock():  # rank 0: 1 s per reading, rank 1: 3 s
    ticks[0] += 1.0 + 2.0 * rank
    return ticks[0]


logs = []
if sys.argv[2:3] == ["phased"]:  # phased LoRA TTT: rank 1's clock also starts 1,000 s later; the pass must stop alike
    from test_ttt import L, LENGTHS, doc_tokens  # noqa: E402
    ticks[0] = 1000.0 * rank
    tokens = doc_tokens(LENGTHS * 2)
    h = tg.Hyperparameters(**{**SHAPE, **dict(ttt_lora_chunk=6, ttt_lora_docs=2, ttt_lora_rank=4, ttt_lora_alpha=4.0,
                                              ttt_log_every=0, ttt_phases=1, ttt_phase_docs=6, ttt_phase_batch_tokens=L)})
    nll = tg.eval_lora(model, model, tokens, h, rank, 2, torch.device("cpu"), clock, logs.append, budget=float(sys.argv[3]))
    chunks = 0
else:
    nll = chunk_ttt().eval_ttt(model, model, tokens, h, rank, 2, torch.device("cpu"), torch.ones(1200), clock, logs.append, budget=60.0)
    chunks = 10
Path(sys.argv[1], f"rank{rank}.json").write_text(json.dumps(dict(logs=logs, chunks=chunks, nll=nll.tolist())))
dist.barrier()  # both ranks have written their results
os._exit(0)  # skip gloo's teardown: it rarely aborts at exit ("terminate called"), failing a passed run
