"""Run by test_distributed under torchrun (2 ranks, gloo): score-first TTT whose budget guard fires
mid-stream while each rank's clock runs at its own speed. Writes OUT/rank{r}.json."""
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
nll = chunk_ttt().eval_ttt(model, model, tokens, h, rank, 2, torch.device("cpu"), torch.ones(1200), clock, logs.append, budget=60.0)
Path(sys.argv[1], f"rank{rank}.json").write_text(json.dumps(dict(logs=logs, chunks=10, nll=nll.tolist())))
dist.barrier()  # both ranks have written their results
os._exit(0)  # skip gloo's teardown: it rarely aborts at exit ("terminate called"), failing a passed run
