"""Peak GPU memory PER RANK of each phase of a run (8 ranks by default), before anyone pays for one.

Usage:  python tools/memory_estimate.py [--log train.log] [--world 8] [--detail] [--compiled]
Configuration: as tools/estimate_h100.py (its load_config: the script's defaults < environment
variables < the `hparams` JSON of --log); estimate_h100.py prints the same lines. ~15 s of CPU.

MEASURED: each phase runs train_gpt.py's own code (Trainer.step, collect_hessians, score_windows, lora_batch,
Adapters, phase_step, build_optimizers, Muon) eagerly on CPU on FAKE tensors (torch FakeTensorMode: the real
dispatch, shapes, dtypes and storages, no arithmetic) at the full per-rank shape: rank 0 of the world (the most
Muon matrices), the micro-batch TRAIN_BATCH_TOKENS / world / accum sequences (accum = 8 // world, as on CUDA),
EVAL_BATCH_SEQS windows, LoRA TTT_LORA_DOCS x E / W rows of W tokens at the eval context E (every step at the
whole window W; with warm-started A, every row slot's A alive), a phased TTT's global-pass step (eager only). A dispatch hook adds up the bytes of
every live tensor storage and keeps the peak: weights, grads, optimizer states, the EMA or priming's snapshot,
the Hessians, the validation tokens, the tensors autograd saves for backward, and the transients of the
logits, backward and the optimizer steps. Every optimizer step is a steady-state one (its states exist).
Autocast runs with CUDA's cast lists (CPU's lists differ: CPU autocast keeps rms_norm and pow in bf16, CUDA's
runs them in fp32; CUDA_AUTOCAST below). The collectives are identities (their buffers are not counted).
A phase's figure is the peak of such a run, plus what is alive there that the run lacks (the larger of the
EMA and the optimizer states in calibration, of the Hessians and the EMA in the standard eval; priming: the
training steps with the snapshot instead of the EMA, and the LoRA steps before AdamW has states). The fake
run allocates what a real one does: measure(fake=False) runs the same code on real CPU tensors, and the tests
compare the two on a small model, byte for byte. (Scaling a real run of 1-2 rows up linearly would not do: at
so few rows a step's peak can be set by row-independent parts, e.g. the optimizer step, not by backward.)

Not counted, the margin between the 72 GiB limit and an H100's 80 GB: the CUDA context, NCCL, cuBLAS and
FlashAttention workspaces (outside PyTorch's allocator or inside its kernels), and fragmentation (the script
sets expandable_segments). torch.compile (the run's default on CUDA) usually saves fewer activations than
eager (its partitioner recomputes pointwise ops in backward): the eager figure is an upper bound of that
part. --compiled estimates the compiled training and LoRA steps: the eager peak less eager's saved activations
plus those of the forward graph AOTAutograd's min-cut partitioner keeps, traced on CPU with inductor's
decompositions (~2 min; an estimate, not inductor's buffers).
"""
import argparse
import contextlib
import gc
import importlib.util
import os
import sys
import time
import weakref

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

GIB = 2 ** 30
LIMIT_GIB = 72.0  # 10% under an H100's 80 GB
WORLD = 8


def load_tg():
    """train_gpt.py as a module (the one already loaded, e.g. by the tests, when it is that file)."""
    path = os.path.join(ROOT, "train_gpt.py")
    mod = sys.modules.get("train_gpt")
    if mod is not None and os.path.abspath(getattr(mod, "__file__", "")) == path:
        return mod
    spec = importlib.util.spec_from_file_location("train_gpt", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["train_gpt"] = mod  # dataclasses look their module up here
    spec.loader.exec_module(mod)
    return mod


def hparams(tg, cfg):
    """train_gpt's Hyperparameters from an estimate_h100 config (the fields it has; the rest: defaults)."""
    from dataclasses import fields
    names = {f.name for f in fields(tg.Hyperparameters)}
    return tg.Hyperparameters(**{k: v for k, v in cfg.items() if k in names}, compile=0)


def accum_steps(cfg, world):
    return cfg.get("grad_accum_steps") or (8 // world if 8 % world == 0 else 1)


def train_rows(cfg, world):
    """Sequences of one micro-batch on one rank."""
    return max(1, cfg["train_batch_tokens"] // (world * accum_steps(cfg, world) * cfg["train_seq_len"]))


def eval_len(cfg):
    """The eval context (train_gpt's eval_context)."""
    return cfg.get("eval_seq_len") or cfg["train_seq_len"]


def lora_rows(cfg, W):
    return cfg["ttt_lora_docs"] * eval_len(cfg) // W


def calib_rows(cfg, world):
    """collect_hessians' forward batch on one rank: its share of GPTQ_CALIB_SEQS, split by EVAL_BATCH_SEQS."""
    return max(1, min(cfg["eval_batch_seqs"], cfg["gptq_calib_seqs"] // world))


# ----------------------------------------------------------------------------- the measuring machinery

def _dispatch_mode():
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    device_of = torch.ops.prim.device.default

    class LiveBytes(TorchDispatchMode):
        """Bytes of every tensor storage created (and still alive) while active, and their peak."""

        def __init__(self):
            super().__init__()
            self.live = self.peak = self.step_temporaries = 0
            self.sizes, self.refs = {}, {}

        def _free(self, key):
            self.live -= self.sizes.pop(key, 0)
            self.refs.pop(key, None)

        def track(self, t):
            s = t.untyped_storage()
            key, n = s._cdata, s.nbytes()
            old = self.sizes.get(key)
            if old is None:
                self.refs[key] = weakref.ref(s, lambda _, k=key: self._free(k))
            self.live += n - (old or 0)
            self.sizes[key] = n

        def reset_peak(self):
            self.peak = self.live

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is device_of:  # a fake tensor's device (2/3 of all calls): what FakeTensor answers
                return getattr(args[0], "fake_device", None) or func(*args)
            out = func(*args, **(kwargs or {}))
            for t in (out if isinstance(out, (tuple, list)) else (out,)):
                if isinstance(t, torch.Tensor):
                    self.track(t)
            self.peak = max(self.peak, self.live)
            return out

    return LiveBytes


# torch's AutocastCUDA policies for the ops that CPU autocast leaves alone (AutocastCUDA kernels, none for
# AutocastCPU): registered for AutocastCPU while measuring, so that CPU autocast casts as CUDA's does (e.g.
# rms_norm and pow in fp32: the q/k norms and the MLP's square save fp32 tensors on CUDA, bf16 on CPU).
CUDA_AUTOCAST = {
    "fp32": "acos asin cosh erfinv exp expm1 log log10 log2 log1p reciprocal rsqrt sinh tan pow.Scalar pow.Tensor_Scalar "
            "pow.Tensor_Tensor softplus layer_norm native_layer_norm group_norm frobenius_norm.dim nuclear_norm "
            "nuclear_norm.dim cosine_similarity dist pdist renorm logsumexp rms_norm",
    "fp32_set_opt_dtype": "softmax.int log_softmax.int cumprod cumsum linalg_vector_norm sum sum.dim_IntList",
    "promote": "addcdiv addcmul atan2 cross dot tensordot scatter_add index_put",
}


@contextlib.contextmanager
def cuda_autocast_lists():
    """CPU autocast with CUDA's cast policies (CUDA_AUTOCAST) for as long as the context lasts."""
    import torch
    from torch.utils._pytree import tree_leaves, tree_map
    guard = lambda: torch._C._ExcludeDispatchKeyGuard(torch._C.DispatchKeySet(torch._C.DispatchKey.AutocastCPU))  # noqa: E731
    low = (torch.bfloat16, torch.float16)

    def kernel(op, policy):
        args_schema = op._schema.arguments
        at = next((i for i, a in enumerate(args_schema) if a.name == "dtype"), None)

        def run(*args, **kw):
            floats = [t for t in tree_leaves((args, kw))
                      if isinstance(t, torch.Tensor) and t.dtype in low + (torch.float32,)]
            if policy == "fp32_set_opt_dtype":  # the output dtype fp32 unless given
                if floats and floats[0] is args[0] and at is not None:
                    if at < len(args) and not args_schema[at].kwarg_only:
                        args = (*args[:at], torch.float32 if args[at] is None else args[at], *args[at + 1:])
                    elif kw.get("dtype") is None:
                        kw = {**kw, "dtype": torch.float32}
            elif policy == "fp32" or any(t.dtype == torch.float32 for t in floats):  # promote: the widest
                cast = lambda t: t.float() if isinstance(t, torch.Tensor) and t.dtype in low else t  # noqa: E731
                args, kw = tree_map(cast, args), tree_map(cast, kw)
            with guard():
                return op(*args, **kw)
        return run

    lib = torch.library.Library("aten", "IMPL")
    try:
        for policy, names in CUDA_AUTOCAST.items():
            for name in names.split():
                base, _, overload = name.partition(".")
                if not torch._C._dispatch_has_kernel_for_dispatch_key(f"aten::{name}", "AutocastCPU") and \
                        torch._C._dispatch_has_kernel_for_dispatch_key(f"aten::{name}", "AutocastCUDA"):
                    op = getattr(getattr(torch.ops.aten, base), overload or "default")
                    lib.impl(name, kernel(op, policy), "AutocastCPU")
        yield
    finally:
        lib._destroy()


@contextlib.contextmanager
def simulated(tg, fake=True):
    """FakeTensorMode (or real CPU tensors) + the live-bytes counter. The collectives are identities (one
    rank of the world runs alone), the train loader yields token ids, and AdamW runs its foreach
    implementation as on CUDA (CPU's default is a per-tensor loop), its states created with it (as after
    its first step: every step measured is a steady-state one). Attention runs as CUDA runs it: CPU's SDPA
    without a mask saves what FlashAttention-3 saves (the output and its log-sum-exp), and FlashAttention-3's
    varlen call for isolated documents (DOC_ISOLATION) allocates the same plus a few KB of boundaries, where
    CPU's masked SDPA would build (B,1,T,T) masks no GPU run holds: document_layout gives none here."""
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode

    class Loader:
        def __init__(self, pattern, seq_len, seed):
            self.seq_len, self.pos = seq_len, 0

        def batch(self, seqs, rank, world):
            x = torch.zeros(seqs * (rank + 1) // world - seqs * rank // world, self.seq_len, dtype=torch.long)
            return x, x

    adamw = torch.optim.AdamW
    counter = _dispatch_mode()()

    class AdamW(adamw):
        def __init__(self, params, *args, foreach=None, fused=None, **kw):
            super().__init__(params, *args, foreach=not fused if foreach is None else foreach, fused=fused, **kw)
            with torch.no_grad():
                for p in (p for g in self.param_groups for p in g["params"]):
                    p.grad = torch.zeros_like(p)
                self.step()
            self.zero_grad(set_to_none=True)

        def step(self, closure=None):  # counter.step_temporaries: what the last step allocated on top (temporaries)
            before, top = counter.live, counter.peak
            counter.reset_peak()
            try:
                return super().step(closure)
            finally:
                counter.step_temporaries = counter.peak - before
                counter.peak = max(top, counter.peak)

    saved = tg.all_reduce, tg.TrainLoader, tg.document_layout
    tg.all_reduce, tg.TrainLoader, torch.optim.AdamW = (lambda t, world, op=None: t), Loader, AdamW
    tg.document_layout = lambda ids, allow_fa3=True: None
    try:
        with cuda_autocast_lists(), (FakeTensorMode() if fake else contextlib.nullcontext()), counter:
            yield counter
    finally:
        tg.all_reduce, tg.TrainLoader, tg.document_layout = saved
        torch.optim.AdamW = adamw


def recurrence_states(tg, h):
    """Trainer.prime's: the recurrence states training runs in."""
    if tg.parse_recur(h.recur_layers, h.num_layers) and 0 < h.recur_start_frac < 1:
        return [False, True]
    return [tg.recur_at_end(h)]


def train_phases(tg, h):
    """(phase, recurrent, QAT) of every training step the run takes (Trainer.prime primes them all)."""
    return [("train step" + " + QAT" * q + " + recurrence" * r, r, q)
            for q in (False, True) for r in recurrence_states(tg, h)]


GROUPS = ("train", "calibration", "eval", "lora")


@contextlib.contextmanager
def saved_bytes(counter, out, key):
    """out[key]: bytes of the storages autograd saves for backward inside the context, less those alive before it
    (weights, adapters: counted already)."""
    import torch
    before, seen = dict(counter.refs), {}

    def pack(t):
        s = t.untyped_storage()
        if counter.refs.get(s._cdata) is not before.get(s._cdata, False):
            seen[s._cdata] = s.nbytes()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield
    out[key] = sum(seen.values())


def measure(tg, cfg, world=WORLD, fake=True, rows=None, groups=GROUPS):
    """One simulated process of rank 0 runs the phases of `groups`: ({phase: peak bytes alive on the rank},
    {part: bytes}). rows: every batch that many rows (sequences, windows, LoRA rows), not the configuration's."""
    import torch
    h = hparams(tg, cfg)
    L, n = h.train_seq_len, cfg["val_tokens"]
    peak, part = {}, {}
    with simulated(tg, fake) as c:
        model = tg.GPT(h)
        part["weights"] = c.live
        rt = tg.Runtime(0, world, torch.device("cpu"), 1 if rows else accum_steps(cfg, world), False, tg.Logger(None))
        if rows:
            h.train_batch_tokens = rows * world * L
        tr = tg.Trainer(h, rt, model)
        tr.optimizers = tg.build_optimizers(model, h, rt.rank, world, fused=True)  # as on CUDA
        gc.collect()  # the optimizers Trainer built for CPU
        for p in tr.params:  # Muon's momentum buffers (rank 0: the most matrices), as after any step
            p.grad = torch.zeros_like(p)
        tr.optimizers[0].step()
        model.zero_grad(set_to_none=True)
        part["states"] = c.live - part["weights"]
        base = c.live
        snapshot = {k: v.clone() for k, v in model.state_dict().items()}  # Trainer.prime's
        part["snapshot"] = c.live - base
        del snapshot
        base = c.live
        ema = [p.detach().float().clone() for p in tr.params]  # Trainer.train's
        part["ema"] = c.live - base
        x, y = tr.batch()
        for name, recur, qat in train_phases(tg, h) if "train" in groups else ():
            model.recur = recur
            c.reset_peak()
            with saved_bytes(c, part, f"saved {name}"):
                tr.step(x, y, 1.0, 1, qat)
            with torch.no_grad():
                torch._foreach_lerp_(ema, [p.detach() for p in tr.params], 0.01)
            tg.set_qat(model, False)
            peak[name] = c.peak
        del ema, x, y
        model.recur = tg.recur_at_end(h)  # the evaluated model (and the EMA's Hessians)
        if "calibration" in groups:
            b = rows or calib_rows(cfg, world)
            xc, yc = tr.loader.batch(b * world, 0, world)
            c.reset_peak()
            hs = tg.collect_hessians(model, xc, yc, b, world)
            peak["gptq calibration"] = c.peak
            part["hessians"] = sum(t.untyped_storage().nbytes() for t in hs.values())
            del hs, xc, yc
        base = c.live
        tokens = torch.zeros(n + 1, dtype=torch.long)  # main's val_tokens and val_bytes (int64), on the device
        nbytes = torch.zeros(n, dtype=torch.long)
        part["data"] = c.live - base
        b = rows or cfg["eval_batch_seqs"]
        model.eval()
        sliding_nll = torch.zeros(n)
        windows = (("standard eval", L, L), ("sliding eval", tg.eval_context(h), cfg["eval_stride"]))
        for name, T, stride in windows if "eval" in groups else ():
            plan = tg.window_plan(0, min(n, T + stride * b), T, stride)[:b]  # one batch; the output spans the stream
            sliding_nll = None
            c.reset_peak()
            with torch.inference_mode():
                sliding_nll = tg.score_windows(model, tokens, plan, T, b, 0, n, 0, 1, torch.device("cpu"))
            peak[name] = c.peak
        part["output"] = sliding_nll.untyped_storage().nbytes()  # main keeps it through the TTT
        base = c.live
        nll = torch.zeros(n)  # eval_lora's
        part["nll"] = c.live - base
        E = tg.eval_context(h)
        adapters = tg.Adapters(model, h, rows or lora_rows(cfg, tg.lora_shapes(E)[0]))
        if h.ttt_lora_warm_a:  # every slot's trained A, kept between batches
            adapters.a = [a.clone() for a in adapters.a]
        part["init"] = c.live - base - part["nll"]
        lora_on = "lora" in groups and cfg["ttt_enabled"] and cfg["ttt_mode"] == "lora"
        for W in tg.lora_shapes(E) if lora_on else ():
            R = rows or lora_rows(cfg, W)
            chunk = h.ttt_lora_chunk  # a segment whose chunks end W and W + chunk tokens after its document's
            spans = [(i * W + W - chunk, i * W + W + chunk, i * W) for i in range(R)]  # start: both steps at width W
            c.reset_peak()  # 2 steps: an adapting one (AdamW's states alive: steady state), a scoring one
            with saved_bytes(c, part, f"saved lora ttt window {W}"):
                tg.lora_batch(model, model, tokens, nll, spans, W, R, 2, h.ttt_lora_chunk, adapters, h, lambda k: True)
            peak[f"lora ttt window {W}"] = c.peak
            part[f"adapters {W}"] = R * sum(a.numel() + a.size(-1) * o for a, o in zip(adapters.init, adapters.outs)) * 4
            part[f"adamw temporaries {W}"] = c.step_temporaries
        if lora_on and h.ttt_phases > 0:  # a phase's global pass: 2 SGD steps (the second with momentum buffers)
            params = list(model.parameters())
            opt = torch.optim.SGD(params, lr=0.0, momentum=h.ttt_phase_momentum)
            ids = torch.zeros(rows or tg.phase_rows(h, world), E, dtype=torch.long)
            model.train()
            c.reset_peak()
            for _ in range(2):
                tg.phase_step(model, params, opt, ids, ids, 1)
            peak["ttt global pass"] = c.peak
            del opt, ids
        del tokens, nbytes, nll, adapters, sliding_nll
    return peak, part


class _Traced(Exception):
    pass


def compiled_saved(tg, cfg, world=WORLD, phases_wanted=None):
    """{phase: bytes torch.compile's forward graph keeps for backward} for the training and LoRA phases:
    AOTAutograd traced on fake tensors (no Dynamo, no inductor codegen) with inductor's decompositions and the
    min-cut partitioner inductor partitions with, under the same bf16 autocast lists. Slow (~10 s a graph)."""
    import torch
    from torch._functorch.aot_autograd import aot_function
    from torch._functorch.partitioners import min_cut_rematerialization_partition
    from torch._inductor.decomposition import select_decomp_table
    from torch._subclasses.fake_tensor import FakeTensorMode

    def saved(fn, inputs):
        got = {}

        def fw(gm, _):
            nodes = list(gm.graph.nodes)
            vals = lambda ns: [n.meta.get("val") for n in ns if isinstance(n.meta.get("val"), torch.Tensor)]  # noqa: E731
            given = {v.untyped_storage()._cdata for v in vals(n for n in nodes if n.op == "placeholder")}
            outs = [n for n in nodes if n.op == "output"][0].args[0]  # (the user output, then what backward reads)
            kept = {v.untyped_storage()._cdata: v.untyped_storage().nbytes()
                    for v in vals(o for o in outs[1:] if hasattr(o, "meta"))}
            got["bytes"] = sum(b for k, b in kept.items() if k not in given)
            raise _Traced
        try:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                aot_function(fn, fw_compiler=fw, bw_compiler=fw, partition_fn=min_cut_rematerialization_partition,
                             decompositions=select_decomp_table())(*inputs)
        except _Traced:
            pass
        return got["bytes"]

    h = hparams(tg, cfg)
    L, out = h.train_seq_len, {}
    with cuda_autocast_lists():
        for name, recur, qat in train_phases(tg, h):
            if phases_wanted is None or name in phases_wanted:
                with FakeTensorMode():
                    model = tg.GPT(h)
                    model.recur = recur
                    tg.set_qat(model, qat)
                    ids = torch.zeros(train_rows(cfg, world), L, dtype=torch.long)
                state = {**dict(model.named_parameters()), **dict(model.named_buffers())}
                out[name] = saved(lambda i, t, *ts: torch.func.functional_call(model, dict(zip(state, ts)), (i, t)),
                                  (ids, ids, *state.values()))
        lora_on = cfg["ttt_enabled"] and cfg["ttt_mode"] == "lora"
        for W in tg.lora_shapes(tg.eval_context(h)) if lora_on else ():
            name = f"lora ttt window {W}"
            if phases_wanted is None or name in phases_wanted:
                with FakeTensorMode():
                    model = tg.GPT(h)
                    model.recur = tg.recur_at_end(h)
                    lora = tg.Adapters(model, h, lora_rows(cfg, W))
                    adapters = lora.attach(lora_rows(cfg, W))
                    tg.set_trainable(model, [])
                    ids = torch.zeros(lora_rows(cfg, W), W, dtype=torch.long)
                state, mods = {**dict(model.named_parameters()), **dict(model.named_buffers())}, lora.mods

                def f(i, t, *ts, state=state, mods=mods, model=model, scale=lora.scale):
                    ab = iter(ts[len(state):])
                    for m in mods:
                        m.lora = (next(ab), next(ab), scale)
                    return torch.func.functional_call(model, dict(zip(state, ts)), (i, t), {"reduce": False})
                out[name] = saved(f, (ids, ids, *state.values(), *adapters))
    return out


def phases(cfg, world=WORLD, tg=None):
    """[(phase, bytes per rank, 'measured'|'arithmetic', detail)] for the configuration."""
    tg = tg or load_tg()
    return compose(tg, cfg, world, *measure(tg, cfg, world))


def compose(tg, cfg, world, peak, part):
    """Each phase's figure from the measured peaks and parts (see phases)."""
    h = hparams(tg, cfg)
    gib = lambda b: f"{b / GIB:.2f}"  # noqa: E731
    resident = part["weights"] + part["states"]
    out = []
    for name, _, _ in train_phases(tg, h):
        out.append((name, peak[name], "measured",
                    f"weights {gib(part['weights'])} + optimizer states {gib(part['states'])} + EMA {gib(part['ema'])}"
                    f" + the step {gib(peak[name] - resident - part['ema'])} (saved activations"
                    f" {gib(part[f'saved {name}'])}, grads, backward and optimizer transients);"
                    f" {train_rows(cfg, world)} x {h.train_seq_len} tokens"))
    loras = [k for k in peak if k.startswith("lora ttt")]
    # priming: the training steps with the state_dict snapshot instead of the EMA; then, the optimizers' states
    # alive, the sliding eval and per LoRA shape a 2-step batch on one training window
    prime = [peak[k] - part["ema"] + part["snapshot"] for k, _, _ in train_phases(tg, h)]
    prime += [peak["sliding eval"] - part["data"] + part["snapshot"]]
    # (priming's one adapting step per shape runs before AdamW has states: 2 x the adapters less)
    prime += [peak[k] - part["data"] - part["output"] - part["nll"] - 2 * part[f"adapters {k.rsplit(' ', 1)[1]}"]
              + part["snapshot"] for k in loras]
    out.append(("priming", max(prime), "measured",
                f"the largest of: the training steps with the snapshot {gib(part['snapshot'])} for the EMA; the sliding"
                " eval and each LoRA shape's adapting step (without AdamW's states yet) with the snapshot and without"
                " the validation data"))
    cal = peak["gptq calibration"] + max(0, part["ema"] - part["states"])
    out.append(("gptq calibration", cal, "measured",
                f"weights {gib(part['weights'])} + the larger of the optimizer states {gib(part['states'])} (after"
                f" training) and the EMA {gib(part['ema'])} (Trainer.train's timing run) + Hessians {gib(part['hessians'])}"
                f" + the forward {gib(peak['gptq calibration'] - resident - part['hessians'])};"
                f" {calib_rows(cfg, world)} x {h.train_seq_len} tokens"))
    extra = max(part["hessians"], part["ema"])  # alive in the pre-quant eval / VAL_LOSS_EVERY's evals in training
    for name in ("standard eval", "sliding eval"):
        standard = name == "standard eval"
        out.append((name, peak[name] + extra * standard, "measured",
                    f"weights {gib(part['weights'])} + optimizer states {gib(part['states'])}"
                    + (f" + the larger of the Hessians (pre-quant eval) and the EMA (evals in training) {gib(extra)}"
                       if standard else "") +
                    f" + validation tokens/bytes {gib(part['data'])} + one batch {gib(peak[name] - resident - part['data'])}"
                    f" (with its per-target output over the stream); {cfg['eval_batch_seqs']} x {h.train_seq_len} tokens"))
    for name in loras:
        W = int(name.rsplit(" ", 1)[1])
        fixed = resident + part["data"] + part["output"] + part["nll"] + part["init"]
        out.append((name, peak[name], "measured",
                    f"weights {gib(part['weights'])} + optimizer states {gib(part['states'])} + validation data, nll and"
                    f" adapter init {gib(fixed - resident)} + the adapting step {gib(peak[name] - fixed)} (adapters"
                    f" {gib(part[f'adapters {W}'])} fp32, x4 with their grads and AdamW's 2 states, + saved activations"
                    f" {gib(part[f'saved {name}'])} + backward transients); AdamW's foreach step adds"
                    f" {gib(part[f'adamw temporaries {W}'])} of temporaries, after backward (not at the peak);"
                    f" {lora_rows(cfg, W)} rows x {W} tokens"))
    if "ttt global pass" in peak:
        out.append(("ttt global pass", peak["ttt global pass"], "measured",
                    f"weights {gib(part['weights'])} + optimizer states {gib(part['states'])} + validation data and nll"
                    f" + SGD's momentum (a copy of the weights) + the step (saved activations, grads, backward"
                    f" transients); {tg.phase_rows(h, world)} rows x {tg.eval_context(h)} tokens"))
    return out


def report_lines(results, limit_gib=LIMIT_GIB):
    lines = [f"peak memory {name}: {b / GIB:.1f} GiB per rank ({kind})" for name, b, kind, _ in results]
    worst = max(results, key=lambda r: r[1])
    over = [name for name, b, _, _ in results if b / GIB > limit_gib]
    lines.append(f"every phase <= {limit_gib:g} GiB per rank: " + (
        f"yes (largest: {worst[0]}, {worst[1] / GIB:.1f} GiB)" if not over else f"NO: {', '.join(over)} over"))
    return lines


def header(cfg, world):
    L = cfg["train_seq_len"]
    windows = "/".join(str(lora_rows(cfg, W)) for W in sorted({max(1, L // 4), max(1, L // 2), L}))
    return [
        f"PEAK MEMORY per rank, {world} ranks of an H100 80 GB (limit {LIMIT_GIB:g} GiB): train_gpt.py's own code run"
        " eagerly on CPU on fake tensors at the full per-rank shape; every live tensor storage counted",
        f"  shapes: micro-batch {train_rows(cfg, world)} x {L} (accum {accum_steps(cfg, world)}); eval"
        f" {cfg['eval_batch_seqs']} windows; GPTQ {calib_rows(cfg, world)} sequences; LoRA rank {cfg['ttt_lora_rank']},"
        f" {cfg['ttt_lora_docs']} docs x L/W = {windows} rows; rank 0 (the most Muon matrices)",
        "  assumed: bf16 autocast with CUDA's cast lists; fused AdamW in training, foreach AdamW in LoRA TTT (CUDA's"
        " defaults); every step a steady-state one (optimizer states exist); the collectives' buffers not counted",
        "  not counted (the margin to 80 GB): the CUDA context, NCCL/cuBLAS/FlashAttention workspaces, fragmentation",
        "  saved activations are eager's: an upper bound of torch.compile's (its partitioner recomputes pointwise"
        " ops; --compiled estimates it)",
    ] + (["  TTT_MODE=chunk: its TTT steps are not estimated here"] if cfg["ttt_enabled"] and cfg["ttt_mode"] != "lora" else [])


def memory_report(cfg, world=WORLD, detail=False, compiled=False, out=print):
    """Prints the header, (detail: each phase's parts,) one line per phase and the verdict; returns the phases."""
    t0 = time.perf_counter()
    tg = load_tg()
    peak, part = measure(tg, cfg, world)
    results = compose(tg, cfg, world, peak, part)
    for line in header(cfg, world):
        out(line)
    if detail:
        for name, _, _, d in results:
            out(f"  {name}: {d}")
    if compiled:
        cs = compiled_saved(tg, cfg, world)
        out("  torch.compile estimates (the eager peak - eager's saved activations + the compiled graph's, AOTAutograd's"
            " min-cut partition traced on CPU; not a measurement of inductor's buffers):")
        for name, b in cs.items():
            out(f"  compiled estimate {name}: {(peak[name] - part['saved ' + name] + b) / GIB:.1f} GiB per rank"
                f" (saved activations {part['saved ' + name] / GIB:.1f} eager, {b / GIB:.1f} compiled)")
    out(f"  ({time.perf_counter() - t0:.1f} s to measure)")
    for line in report_lines(results):
        out(line)
    return results


def main(argv=None):
    from estimate_h100 import load_config
    from logparse import parse_log
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--log", help="read the configuration from this log's hparams line")
    ap.add_argument("--world", type=int, default=WORLD, help="ranks (GPUs)")
    ap.add_argument("--detail", action="store_true", help="each phase's parts")
    ap.add_argument("--compiled", action="store_true",
                    help="also estimate the training and LoRA phases with torch.compile's saved activations (~2 min)")
    args = ap.parse_args(argv)
    hp = parse_log(args.log)["hparams"] if args.log else None
    memory_report(load_config(hparams=hp), args.world, args.detail, args.compiled)
    return 0


if __name__ == "__main__":
    sys.exit(main())
