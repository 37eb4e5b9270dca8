"""Priming and compiled step time of a train_gpt.py, measured in one process on CPU or GPU.

Builds the run's model and Trainer from the environment (as train_gpt.py does), primes every graph
(Trainer.prime), prints the graphs compiled and the seconds, then times compiled training steps of each
phase the defaults reach (plain, recurrent, recurrent + QAT) after priming, without training the
model (each step is undone), and LoRA TTT steps (one adapting, one scoring) of each window shape. Used for issue 33's before/after figures:

    git show 2ba0940:train_gpt.py > /tmp/before.py
    TRAIN_SCRIPT=/tmp/before.py TORCHINDUCTOR_CACHE_DIR=$(mktemp -d) bash bench/priming.sh
    COMPILE_CACHE_DIR=bench/out/cache bash bench/priming.sh      # twice: cold, then warm

Usage: [TRAIN_SCRIPT=train_gpt.py] python3 bench/priming.py   (the environment as for the script; STEPS timed per phase)
"""
import importlib.util
import json
import os
import statistics
import sys
import time


def load(path):
    spec = importlib.util.spec_from_file_location("train_gpt", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["train_gpt"] = mod
    spec.loader.exec_module(mod)
    return mod


def main():
    script = os.environ.get("TRAIN_SCRIPT", "train_gpt.py")
    tg = load(script)
    h = tg.Hyperparameters.from_env()
    rt = tg.setup(h)
    tg.load_tokenizer(h)
    model = tg.GPT(h).to(rt.device)
    trainer = tg.Trainer(h, rt, model)
    t0 = time.perf_counter()
    trainer.prime()
    tg.sync(rt.device)
    prime_s = time.perf_counter() - t0
    graphs = tg.compiled_graphs()
    steps = int(os.environ.get("STEPS", "5"))
    times = {}
    snapshot = {k: v.clone() for k, v in model.state_dict().items()}
    phases = [("plain", False, False), ("recurrent", True, False), ("recurrent_qat", True, True)]
    for name, recur, qat in phases:
        if recur and not model.recur_layers:
            continue
        model.recur = recur
        ms = []
        for _ in range(steps + 1):
            t = time.perf_counter()
            trainer.step(*trainer.batch(), 1.0, 0, qat)
            tg.sync(rt.device)
            ms.append(1000 * (time.perf_counter() - t))
        tg.set_qat(model, False)
        times[name] = statistics.median(ms[1:])
    model.recur = tg.recur_at_end(h)
    L = h.train_seq_len
    x, y = trainer.loader.batch(1, 0, 1)
    toks = tg.torch.cat([x[0], y[0, -1:]]).to(rt.device)
    lora = {}
    for W in tg.lora_shapes(L) if h.ttt_enabled else ():  # ms per LoRA step (adapting, then scoring), each shape
        rows = h.ttt_lora_docs * L // W
        ms = []
        for _ in range(steps + 1):
            t = time.perf_counter()
            tg.lora_batch(trainer.run_model, model, toks, tg.torch.zeros(L, device=rt.device), [(0, W, 0)], W, rows, 2,
                          h.ttt_lora_chunk, tg.Adapters(model, h, rows), h, lambda k: True)
            tg.sync(rt.device)
            ms.append(1000 * (time.perf_counter() - t) / 2)
        lora[W] = round(statistics.median(ms[1:]), 1)
    model.load_state_dict(snapshot)
    out = dict(script=script, priming_s=round(prime_s, 1),
               graphs=graphs, graphs_after_steps=tg.compiled_graphs(),
               step_ms={k: round(v, 1) for k, v in times.items()}, lora_step_ms=lora)
    print("priming_bench " + json.dumps(out), flush=True)
    os._exit(0)


if __name__ == "__main__":
    main()
