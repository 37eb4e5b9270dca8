"""Parameter Golf (track 10min_16mb): 11-layer U-Net GPT with XSA and BigramHash, Muon,
late int5 QAT, int5 GPTQ + zstd artifact, sliding-window eval and score-first TTT.
Run: torchrun --standalone --nproc_per_node=8 train_gpt.py   (or python3 train_gpt.py)
Re-score an artifact without training: EVAL_ONLY=1 [ARTIFACT_PATH=...] torchrun ... train_gpt.py
A record runs (and the cap counts) this file packed by tools/pack.py: lines cost nothing, so it is written to be read."""
from __future__ import annotations

import glob, hashlib, importlib, json, math, os, shutil, struct, sys, time, traceback, uuid
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

BYTE_CAP = 16_000_000  # decimal bytes: code + compressed model

class RunError(Exception):
    """A bad input or a broken invariant: reported as one line, never a traceback."""
    shared = False  # True: every rank raises it alike, so rank 0 alone reports it

class SharedError(RunError):
    shared = True

# ----------------------------------------------------------------------------- hyperparameters
# Every knob is an environment variable named like the field, upper-cased (DATA_PATH, ...). The defaults
# are the 8xH100 configuration on the frontier's data: SentencePiece 8192 on CaseOps text (README).

@dataclass
class Hyperparameters:
    explicit: ClassVar[frozenset] = frozenset()  # the fields from_env read from the environment
    # data and run
    data_path: str = "./data/datasets/fineweb10B_sp8192_lossless_caps_caseops_v1_reserved"
    tokenizer_path: str = "./data/tokenizers/fineweb_8192_bpe_lossless_caps_caseops_v1_reserved.model"
    out_dir: str = "."
    run_id: str = ""
    seed: int = 1337
    vocab_size: int = 0  # 0: the tokenizer's
    # schedule
    iterations: int = 20000
    warmup_steps: int = 20  # priming steps, spread over the training states; undone; >= 2 per state compiled
    warmdown_iters: int = 0  # LR decay over the last N steps (0: WARMDOWN_FRAC of the run)
    warmdown_frac: float = 0.85  # PRs #1855, #2135
    min_lr: float = 0.1  # the LR floor, a fraction of the peak: the warmdown stops there (PRs #1787, #2135)
    max_wallclock_seconds: float = 600.0
    max_eval_seconds: float = 600.0
    train_batch_tokens: int = 786_432
    train_seq_len: int = 2048
    grad_accum_steps: int = 0  # 0: 8 // world_size on CUDA, 1 on CPU
    train_log_every: int = 100
    # model
    num_layers: int = 11
    model_dim: int = 512
    mlp_hidden: int = 1536  # by the vocabulary unless set (VOCAB_SETTINGS): sp1024's
    num_heads: int = 8
    num_kv_heads: int = 4
    bigram_buckets: int = 16384  # by the vocabulary unless set (VOCAB_SETTINGS): these and MLP_HIDDEN are sp1024's
    bigram_dim: int = 128
    ve_dim: int = 128
    ve_layers: int = 2  # value embeddings in the last N layers (by the vocabulary)
    xsa_last_n: int = -1  # XSA in the last N layers (-1: all)
    doc_isolation: int = 1  # attention, SmearGate and the bigram hash never cross a BOS (training and eval alike)
    parallel_from: int = 7  # two lanes from the first decoder layer >= this (-1: one lane)
    skip_gates: int = 1  # gated U-Net skips
    recur_layers: str = "4,5"  # consecutive layers run again (shared weights; the U-Net over all passes)...
    recur_passes: int = 2  # ...this many times in all...
    recur_start_frac: float = 0.5  # ...from this fraction of the (predicted) steps on
    rope_dims: int = 16
    rope_base: float = 10000.0
    logit_softcap: float = 30.0
    qk_gain_init: float = 5.0
    smear_window: int = 0  # SmearGate: 0, a static gate per channel; N > 0, a gate on each token's first N dims (PR #1797)
    attn_gate: int = 12  # each head's output gated by the first N dims of the attention input (0: no gate)
    # optimizers
    matrix_lr: float = 0.025
    embed_lr: float = 0.035
    scalar_lr: float = 0.025
    muon_momentum: float = 0.97
    muon_momentum_warmup_start: float = 0.92
    muon_momentum_warmup_steps: int = 1500
    muon_backend_steps: int = 5
    ns_coeffs: str = "polar"  # Newton-Schulz: "polar" (Polar Express, a tuple per iteration) or "quintic"
    muon_row_norm: int = 1  # MuonEq-R: rows normalised before Newton-Schulz
    weight_decay: float = 0.095  # the matrices' (Muon)
    embed_wd: float = 0.085
    scalar_wd: float = 0.02
    adam_beta2: float = 0.99  # the embeddings' and scalars' AdamW
    grad_clip_norm: float = 0.3
    ema_decay: float = 0.9965
    # quantization and artifact
    qat_threshold: float = 0.15  # late QAT once the warmdown's multiplier falls below this (MIN_LR or not)
    embed_bits: int = 5  # the tied embedding's bits (by the vocabulary)
    byte_cap: int = BYTE_CAP  # over it, the export coarsens steps where a byte costs the least loss
    lqer_rank: int = 4  # over the cap, a tensor may ship rank-N int4 factors of its quantization error (0: never)
    gptq_calib_seqs: int = 64  # training sequences for the Hessians (0: round to nearest)
    gptq_reserve_seconds: float = 2.0  # seconds of the training clock kept for them (at least 2x their primed time)
    # evaluation and TTT
    eval_stride: int = 64
    eval_batch_seqs: int = 32
    eval_seq_len: int = 0  # the sliding eval's and TTT's context (0: TRAIN_SEQ_LEN); longer extrapolates partial RoPE
    eval_margin_seconds: float = 15.0  # the TTT guard aims at MAX_EVAL_SECONDS minus this margin
    ttt_enabled: int = 1  # per-document LoRA TTT
    ttt_epochs: int = 3  # 0: scoring only
    ttt_log_every: int = 1
    ttt_lora_rank: int = 80
    ttt_lora_alpha: float = 144.0  # the adapters' output is scaled by alpha / rank (a new rank alone: a new scale)
    ttt_lora_targets: str = "q,v,o,mlp,head"  # of q, k, v, o, up, down, mlp, bigram, ve, head, all (lora_targets)
    ttt_lora_warm_a: int = 1  # a row slot keeps its trained A for its next document (B always starts at 0)
    ttt_lora_lr: float = 8e-5
    ttt_lora_beta2: float = 0.99  # AdamW's betas are (0, this)
    ttt_lora_wd: float = 2.0
    ttt_lora_chunk: int = 112  # tokens (by the vocabulary): the smallest multiple of 8 whose eval fits 540 s pessimistic (estimate_h100)
    ttt_lora_chunk_schedule: str = ""  # "N:C,...": a batch whose longest document has <= N tokens takes chunks of C
    ttt_lora_docs: int = 64  # documents per rank and batch at window E (x E/W at a window W; by the vocabulary)
    ttt_phases: int = 1  # phased TTT: TTT_PHASE_DOCS documents scored in this many groups, each then learnt (global pass)
    ttt_phase_docs: int = 2500  # the phases' documents, the longest first (TTT_EPOCHS=0: no global pass)
    ttt_phase_lr: float = 0.001  # the global pass: SGD, cosine to 0
    ttt_phase_momentum: float = 0.9
    ttt_phase_batch_tokens: int = 32768  # tokens a global-pass step, all ranks
    # machinery
    compile: int = -1  # -1: torch.compile on CUDA only
    compile_cache_dir: str = ""  # inductor's caches, kept across runs ("": OUT_DIR/compile_cache)
    flash_attn: int = 1  # FlashAttention-3 on CUDA when importable (0: SDPA)
    eval_only: int = 0  # 1: no training; re-evaluate ARTIFACT_PATH ("": OUT_DIR's artifact)
    artifact_path: str = ""
    # submission.json
    name: str = ""
    author: str = ""
    github_id: str = ""

    @classmethod
    def from_env(cls, env=os.environ) -> "Hyperparameters":
        kw = {}
        for f in fields(cls):
            v = env.get(f.name.upper())
            if v is not None:
                try:
                    kw[f.name] = type(f.default)(v)
                except ValueError:
                    raise RunError(f"{f.name.upper()}={v!r} is not a valid {type(f.default).__name__}")
        h = cls(**kw)
        h.explicit = frozenset(kw)
        return h

# Settings that follow the vocabulary unless their variable is set. A larger vocabulary's pieces hold much of
# what the bigram table and the value embeddings learn at sp1024, its embedding is where precision pays, its
# LoRA head's logits take memory, and its fewer validation tokens leave TTT room for smaller chunks. At 8192 the
# MLP takes the frontier's 4x width, and TTT larger chunks and fewer documents to pay for it in time and memory
# (docs/design.md, "Other vocabularies"). A tokenizer takes the row of
# the largest vocabulary not above its own (the first row below 1024); the first row is the defaults above.
VOCAB_SETTINGS = (  # literals: tools/estimate_h100.py reads them from this source
    (1024, {"embed_bits": 5, "bigram_buckets": 16384, "ve_layers": 2, "mlp_hidden": 1536, "ttt_lora_docs": 64, "ttt_lora_chunk": 112}),
    (4096, {"embed_bits": 7, "bigram_buckets": 4096, "ve_layers": 2, "mlp_hidden": 1536, "ttt_lora_docs": 48, "ttt_lora_chunk": 72}),
    (8192, {"embed_bits": 7, "bigram_buckets": 4096, "ve_layers": 0, "mlp_hidden": 2048, "ttt_lora_docs": 44, "ttt_lora_chunk": 88}),
)

def vocab_settings(vocab_size: int) -> dict:
    chosen = VOCAB_SETTINGS[0][1]
    for size, settings in VOCAB_SETTINGS:
        if vocab_size >= size:
            chosen = settings
    return chosen

def apply_vocab_settings(h: Hyperparameters) -> str:
    """Gives h its vocabulary's settings where the environment did not set them; returns them as a log line."""
    shown = []
    for name, value in vocab_settings(h.vocab_size).items():
        if name in h.explicit:
            shown.append(f"{name.upper()}={getattr(h, name)} (set)")
        else:
            setattr(h, name, value)
            shown.append(f"{name.upper()}={value}")
    return f"vocab settings ({h.vocab_size} pieces): " + " ".join(shown)

def eval_context(h: Hyperparameters) -> int:
    """The sliding eval's and TTT's context: EVAL_SEQ_LEN, else the training one."""
    return h.eval_seq_len or h.train_seq_len

# ----------------------------------------------------------------------------- data & metric
# Shards: 256 int32 header (magic, version, N) then N uint16 tokens. Training reads windows at
# random positions of all shards (diverse batches: PR #726 -> #1060 of the challenge's lineage).

SHARD_MAGIC, SHARD_VERSION = 20240520, 1
BOS_ID = 1  # SPEC: a document is [BOS] + its tokens (load_tokenizer checks the id)
VAL_PATTERN = "fineweb_val_[0-9]*.bin"  # validation tokens (fineweb_val_NNNNNN.bin)
SIDECAR_PATTERN = "fineweb_val_bytes_[0-9]*.bin"  # each validation token's original UTF-8 bytes (CaseOps data)
DATA_HINT = "(get the SP8192 CaseOps data with: python3 data/get_caseops.py; other routes: README)"

def shard_files(pattern: str) -> list[str]:
    files = sorted(glob.glob(pattern))
    if not files:
        raise RunError(f"no shard files match {pattern} {DATA_HINT}")
    return files

def check_shard(path: str) -> int:
    """Validates the header and size; returns the token count."""
    size = os.path.getsize(path)
    if size < 1024:
        raise RunError(f"corrupt shard {path}: {size} bytes is shorter than the 1024-byte header")
    header = np.fromfile(path, dtype="<i4", count=256)
    if header[0] != SHARD_MAGIC or header[1] != SHARD_VERSION:
        raise RunError(f"corrupt shard {path}: magic/version {header[0]}/{header[1]}, expected {SHARD_MAGIC}/{SHARD_VERSION}")
    n = int(header[2])
    if size != 1024 + 2 * n:
        raise RunError(f"corrupt shard {path}: header says {n} tokens but file is {size} bytes (expected {1024 + 2 * n})")
    return n

def load_shard(path: str) -> np.ndarray:
    n = check_shard(path)
    return np.fromfile(path, dtype="<u2", count=n, offset=1024)

class TrainLoader:
    """Windows of seq_len + 1 tokens at fixed positions of every (memory-mapped) train shard, in a
    seeded random order over all of them: each once before any repeats, a new order each epoch."""

    def __init__(self, pattern: str, seq_len: int, seed: int):
        sizes = {f: check_shard(f) for f in shard_files(pattern)}
        self.shards = [np.memmap(f, "<u2", "r", 1024, (n,)) if n else np.zeros(0, "<u2") for f, n in sizes.items()]
        counts = [max(0, (n - 1) // seq_len) for n in sizes.values()]
        if sum(counts) == 0:
            raise RunError(f"train shards {pattern} hold no window of TRAIN_SEQ_LEN={seq_len}+1 tokens")
        self.shard = np.repeat(np.arange(len(counts), dtype=np.int32), counts)
        self.start = np.concatenate([np.arange(c, dtype=np.int64) * seq_len for c in counts])
        self.seq_len = seq_len
        self.seed = seed
        self.pos = 0
        self.epoch = -1
        self.order = None

    def ids(self, n: int) -> np.ndarray:
        """The next n window indices of the stream."""
        out = []
        N = len(self.start)
        while n > 0:
            e, i = divmod(self.pos, N)
            if e != self.epoch:
                self.epoch, self.order = e, np.random.default_rng([self.seed, e]).permutation(N)
            k = min(n, N - i)
            out.append(self.order[i:i + k])
            self.pos, n = self.pos + k, n - k
        return np.concatenate(out)

    def batch(self, seqs: int, rank: int, world: int):
        """This rank's (inputs, targets): its contiguous share of the next `seqs` windows, so the
        global batch is the same for any world size."""
        ids = self.ids(seqs)[rank * seqs // world:(rank + 1) * seqs // world]
        w = torch.from_numpy(np.stack([self.shards[self.shard[j]][self.start[j]:self.start[j] + self.seq_len + 1]
                                       for j in ids]).astype(np.int64))
        return w[:, :-1], w[:, 1:]

def load_validation(pattern: str, seq_len: int) -> torch.Tensor:
    tokens = np.concatenate([load_shard(f) for f in shard_files(pattern)])
    usable = (len(tokens) - 1) // seq_len * seq_len
    if usable <= 0:
        raise RunError(f"validation split {pattern} has {len(tokens)} tokens, fewer than one sequence of {seq_len}+1")
    return torch.from_numpy(tokens[:usable + 1].astype(np.int64))

def load_sidecar(data_path: str, n: int) -> tuple[torch.Tensor, int] | None:
    """The first n values of the byte sidecar (fineweb_val_bytes_NNNNNN.bin beside each fineweb_val_NNNNNN.bin:
    each validation token's original UTF-8 bytes, BOS and CaseOps markers 0) and its shard count; None if
    DATA_PATH has none. A sidecar that does not match the validation shards, shard by shard, is an error."""
    sidecars = sorted(glob.glob(os.path.join(data_path, SIDECAR_PATTERN)))
    if not sidecars:
        return None
    vals = shard_files(os.path.join(data_path, VAL_PATTERN))
    names = [os.path.basename(f).replace("fineweb_val_", "fineweb_val_bytes_") for f in vals]
    if [os.path.basename(f) for f in sidecars] != names:
        raise RunError(f"byte sidecar in {data_path} does not match the validation shards: "
                       f"{len(sidecars)} fineweb_val_bytes_*.bin for {len(vals)} fineweb_val_*.bin, or other numbers")
    parts = []
    for val, side in zip(vals, sidecars):
        if check_shard(side) != check_shard(val):
            raise RunError(f"byte sidecar {side} holds {check_shard(side)} values for the {check_shard(val)} tokens of {val}")
        parts.append(load_shard(side))
    return torch.from_numpy(np.concatenate(parts)[:n].astype(np.int64)), len(sidecars)

def is_caseops(sp) -> bool:
    """Whether the tokenizer reserves the CaseOps markers U+E001..U+E004 (ids 4..7, data/caseops.py)."""
    return sp.vocab_size() > 7 and [sp.id_to_piece(i) for i in range(4, 8)] == [chr(c) for c in range(0xE001, 0xE005)]

def load_tokenizer(h: Hyperparameters):
    """The SentencePiece model; sets h.vocab_size to its size (a VOCAB_SIZE given that differs is an error)."""
    import sentencepiece as spm
    if not Path(h.tokenizer_path).is_file():
        raise RunError(f"tokenizer not found: {h.tokenizer_path} {DATA_HINT}")
    sp = spm.SentencePieceProcessor(model_file=h.tokenizer_path)
    if h.vocab_size not in (0, sp.vocab_size()):
        raise RunError(f"VOCAB_SIZE={h.vocab_size} but {h.tokenizer_path} has {sp.vocab_size()} pieces (unset VOCAB_SIZE to take the tokenizer's)")
    if sp.bos_id() != BOS_ID or sp.encode(" "):  # documents start with BOS = 1; the byte count needs spaces normalised
        raise RunError(f"{h.tokenizer_path}: BOS id {sp.bos_id()} (need 1) or spaces kept as pieces (need them collapsed, as the challenge's tokenizers do)")
    h.vocab_size = sp.vocab_size()
    return sp

def build_byte_luts(sp):
    """Per-token byte counts for val_bpb: (base_bytes, has_leading_space, is_boundary)."""
    vocab_size = sp.vocab_size()
    base = np.zeros(vocab_size, np.int64)
    space = np.zeros(vocab_size, bool)
    boundary = np.zeros(vocab_size, bool)
    for i in range(vocab_size):
        if sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i):
            boundary[i] = True
        elif sp.is_byte(i):
            base[i] = 1
        else:
            piece = sp.id_to_piece(i)
            if piece.startswith("\u2581"):
                space[i], piece = True, piece[1:]
            base[i] = len(piece.encode("utf-8"))
    return torch.from_numpy(base), torch.from_numpy(space), torch.from_numpy(boundary)

def target_bytes(tokens: torch.Tensor, luts) -> torch.Tensor:
    """Bytes of each target tokens[1:] given its previous token."""
    base, space, boundary = (t.to(tokens.device) for t in luts)
    prev, tgt = tokens[:-1], tokens[1:]
    return base[tgt] + (space[tgt] & ~boundary[prev]).long()

def bpb(nll: torch.Tensor, nbytes: torch.Tensor) -> tuple[float, float]:
    """(val_loss in nats per token, val_bpb) from per-target nll and bytes; float64 sums."""
    total = nll.double().sum().item()
    return total / nll.numel(), total / (math.log(2) * nbytes.double().sum().item())

# ----------------------------------------------------------------------------- int5 quantizer
# One code for QAT and export: per-row scale = clip/qmax (fp16), q in [-qmax, qmax] (qmax 15: int5), the
# clip chosen per row from a few fractions of the row max by reconstruction error (GPTQ: finer grid).

CLIP_FRACS = (1.0, 0.9, 0.8, 0.7, 0.6)  # QAT and lookup tables
GPTQ_CLIP_FRACS = tuple(1.0 - 0.05 * i for i in range(11))  # export only: 1.0, 0.95, ..., 0.5
GPTQ_DAMP = 0.05  # x mean diag(H); 0.05-0.1 beat 0.01 and 0.003 on the bench (bench/gptq_sweep.py)
SCALE_EPS = 1e-6

def quantize_int5(w: torch.Tensor, col_weight: torch.Tensor | None = None, fracs=CLIP_FRACS,
                  qmax: int = 15) -> tuple[torch.Tensor, torch.Tensor]:
    """Round to nearest at the per-row clip (a fraction of the row max) with the least error,
    each column's error weighted by col_weight (diag of the input Hessian; None: plain MSE)."""
    w = w.float()
    fracs = torch.tensor(fracs, device=w.device)
    scale = (w.abs().amax(1)[None] * fracs[:, None] / qmax).clamp_min(SCALE_EPS).half().float()  # (K,R)
    q = torch.clamp(torch.round(w[None] / scale[..., None]), -qmax, qmax)  # (K,R,C)
    err = (q * scale[..., None] - w[None]) ** 2
    best = (err if col_weight is None else err * col_weight.float()).sum(-1).argmin(0)  # (R,)
    rows = torch.arange(w.size(0), device=w.device)
    return q[best, rows].to(torch.int8), scale[best, rows].half()

def gptq_int5(w: torch.Tensor, H: torch.Tensor, scale: torch.Tensor, block: int = 128,
              damp: float = GPTQ_DAMP, qmax: int = 15) -> torch.Tensor:
    """GPTQ at fixed row scales: columns rounded in order of decreasing diag(H), each one's rounding error
    pushed onto the columns not yet rounded through the upper Cholesky factor of H^-1 (H = X^T X of the
    layer's input, damped). Returns the int5 codes."""
    W, H = w.detach().float().clone(), H.detach().double().clone()
    dead = torch.diag(H) == 0
    H[dead, dead], W[:, dead] = 1.0, 0.0
    H += damp * torch.diag(H).mean() * torch.eye(len(H), dtype=H.dtype)
    perm = torch.argsort(torch.diag(H), descending=True)
    W, H = W[:, perm], H[perm][:, perm]
    U = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True).float()
    if not torch.isfinite(U).all():
        raise ValueError("non-finite inverse-Hessian factor")
    s = scale.float()[:, None]
    Q = torch.zeros_like(W)
    for a in range(0, W.size(1), block):
        b = min(a + block, W.size(1))
        Wb, E = W[:, a:b].clone(), torch.zeros_like(W[:, a:b])
        for i in range(b - a):
            q = torch.clamp(torch.round(Wb[:, i:i + 1] / s), -qmax, qmax)
            Q[:, a + i:a + i + 1] = q
            E[:, i:i + 1] = (Wb[:, i:i + 1] - q * s) / U[a + i, a + i]
            Wb[:, i:] -= E[:, i:i + 1] * U[a + i, a + i:b]
        W[:, b:] -= E @ U[a:b, b:]
    return Q[:, torch.argsort(perm)].to(torch.int8)

def dequantize_int5(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return q.float() * scale.float()[:, None]

def fake_quant(w: torch.Tensor, qmax: int = 15) -> torch.Tensor:
    """Straight-through rounding: forward sees the shipped weights, backward is identity."""
    return w + (dequantize_int5(*quantize_int5(w.detach(), qmax=qmax)) - w).detach()

# ----------------------------------------------------------------------------- model

def rms_norm(x: torch.Tensor) -> torch.Tensor:
    return F.rms_norm(x, (x.size(-1),))

class QATMixin:
    """Late QAT: once `qat` is on (set_qat), the forward sees the weight rounded as exported (to +-qmax)."""

    def init_qat(self, qmax: int = 15) -> None:
        self.qat = False
        self.qmax = qmax

    def qweight(self) -> torch.Tensor:
        return fake_quant(self.weight, self.qmax) if self.qat else self.weight

class CastedLinear(QATMixin, nn.Linear):
    def __init__(self, fan_in: int, fan_out: int, zero_init: bool = False):
        super().__init__(fan_in, fan_out, bias=False)
        self.init_qat()
        self.lora = None  # TTT adapters (A, B, scale), a pair per row of the batch: Adapters
        if zero_init:
            nn.init.zeros_(self.weight)

    def forward(self, x):
        return lora_add(F.linear(x, self.qweight().to(x.dtype)), x, self.lora)

def lora_add(y: torch.Tensor, x: torch.Tensor, ab) -> torch.Tensor:
    """y + x A B s per row of the batch: A (rows, in, r), B (rows, r, out), s a scale; ab None: y."""
    return y if ab is None else y + (x @ ab[0].to(x.dtype)) @ ab[1].to(x.dtype) * ab[2]

class QEmbedding(QATMixin, nn.Embedding):
    def __init__(self, num: int, dim: int, std: float, qmax: int = 15):
        super().__init__(num, dim)
        self.init_qat(qmax)
        if std > 0:
            nn.init.normal_(self.weight, std=std)
        else:
            nn.init.zeros_(self.weight)

    def forward(self, ids):
        return F.embedding(ids, self.qweight())

def bigram_buckets(ids: torch.Tensor, buckets: int, isolated: bool = False) -> torch.Tensor:
    """Hash of (previous, current) token; position 0 of each sequence gets bucket B-1, and so does every BOS
    when documents are isolated (its previous token is another document's)."""
    h = torch.bitwise_xor(36313 * ids[..., 1:], 27191 * ids[..., :-1]) % (buckets - 1)
    b = torch.cat([torch.full_like(ids[..., :1], buckets - 1), h], -1)
    return torch.where(ids == BOS_ID, buckets - 1, b) if isolated else b

class BigramHash(nn.Module):
    def __init__(self, buckets: int, dim: int, model_dim: int, isolated: bool):
        super().__init__()
        self.buckets = buckets
        self.isolated = isolated
        self.table = QEmbedding(buckets, dim, 0.0)
        self.proj = CastedLinear(dim, model_dim)
        self.scale = nn.Parameter(torch.tensor(0.05))

    def forward(self, ids):
        return self.scale * self.proj(self.table(bigram_buckets(ids, self.buckets, self.isolated)))

def rope_tables(seq_len: int, rope_dims: int, base: float):
    inv = 1.0 / base ** (torch.arange(0, rope_dims, 2, dtype=torch.float32) / rope_dims)
    f = torch.outer(torch.arange(seq_len, dtype=torch.float32), inv)
    return f.cos(), f.sin()

def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotates the first 2*cos.size(-1) dims of x (B,T,H,D); the rest pass through."""
    h, T = cos.size(-1), x.size(1)
    c, s = cos[None, :T, None].to(x.dtype), sin[None, :T, None].to(x.dtype)
    x1, x2 = x[..., :h], x[..., h:2 * h]
    return torch.cat([x1 * c + x2 * s, x2 * c - x1 * s, x[..., 2 * h:]], -1)

try:  # FlashAttention-3 (Hopper): fixed-length rows, and documents packed end to end (varlen)
    from flash_attn_interface import flash_attn_func as flash_attn_3, flash_attn_varlen_func as flash_attn_3_varlen
except ImportError:
    flash_attn_3 = None
    flash_attn_3_varlen = None

def attention_kernel(device: torch.device, allow_fa3: bool = True) -> str:
    return "flash_attn_3" if allow_fa3 and flash_attn_3 is not None and device.type == "cuda" else "sdpa"

def document_layout(ids: torch.Tensor, allow_fa3: bool = True) -> torch.Tensor:
    """What attention needs to stay inside documents (each begins at a BOS; a row's first tokens continue one
    that began before it), for the kernel that runs: FlashAttention-3's varlen boundaries (int32 offsets of every
    document's first token in the flattened batch, then B*T), else SDPA's mask (B,1,T,T): causal and same-document."""
    B, T = ids.shape
    starts = ids == BOS_ID
    if attention_kernel(ids.device, allow_fa3) == "flash_attn_3":
        first = torch.arange(T, device=ids.device) == 0
        ends = torch.full((1,), B * T, dtype=torch.long, device=ids.device)
        return torch.cat([(starts | first).flatten().nonzero().flatten(), ends]).int()
    doc = torch.cumsum(starts.int(), -1)
    causal = torch.ones(T, T, dtype=torch.bool, device=ids.device).tril()
    return ((doc[:, :, None] == doc[:, None, :]) & causal)[:, None]

def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
                     allow_fa3: bool = True, docs: torch.Tensor | None = None) -> torch.Tensor:
    """Causal GQA attention on (B,T,H,D) tensors: FlashAttention-3 on CUDA when installed. Given `docs`
    (document_layout's, for the same kernel), a token attends only to its own document's earlier tokens."""
    B, T, H, D = q.shape
    if attention_kernel(q.device, allow_fa3) == "flash_attn_3":
        if docs is None:
            y = flash_attn_3(q, k, v, softmax_scale=scale, causal=True)
        else:
            flat = [t.reshape(B * T, t.size(2), D) for t in (q, k, v)]
            y = flash_attn_3_varlen(*flat, docs, docs, T, T, softmax_scale=scale, causal=True)
        y = y[0] if isinstance(y, tuple) else y  # some releases also return the LSE
        return y.view(B, T, H, D)
    y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=docs,
                                       is_causal=docs is None, scale=scale, enable_gqa=k.size(2) != q.size(2))
    return y.transpose(1, 2)

def exclusive_self_attention(y: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """XSA: remove from each head's output y (B,T,H,D) its component along the token's own
    value direction v (B,T,Hkv,D); head h uses KV head h // (H/Hkv)."""
    B, T, H, D = y.shape
    vn = F.normalize(v.float(), dim=-1).to(y.dtype).unsqueeze(3)  # (B,T,Hkv,1,D)
    y = y.view(B, T, v.size(2), H // v.size(2), D)
    return (y - (y * vn).sum(-1, keepdim=True) * vn).view(B, T, H, D)

ATTN_GATE_SCALE = 0.5  # PRs #1855, #2135

class Attention(nn.Module):
    def __init__(self, h: Hyperparameters, xsa: bool, use_ve: bool):
        super().__init__()
        d = h.model_dim
        self.nh = h.num_heads
        self.nkv = h.num_kv_heads
        self.hd = d // h.num_heads
        self.q = CastedLinear(d, d)
        self.k = CastedLinear(d, self.nkv * self.hd)
        self.v = CastedLinear(d, self.nkv * self.hd)
        self.proj = CastedLinear(d, d, zero_init=True)
        self.q_gain = nn.Parameter(torch.full((self.nh,), h.qk_gain_init))
        self.ve_gain = nn.Parameter(torch.tensor(1.0)) if use_ve else None
        self.gate_dims = h.attn_gate
        if h.attn_gate > 0:  # sparse output gate (PR #1787): 1/2 at init
            self.gate = nn.Parameter(torch.zeros(self.nh, h.attn_gate))
        self.xsa = xsa
        self.allow_fa3 = bool(h.flash_attn)

    def forward(self, x, cos, sin, ve=None, docs=None):
        B, T, _ = x.shape
        q = self.q(x).view(B, T, self.nh, self.hd)
        k = self.k(x).view(B, T, self.nkv, self.hd)
        v = self.v(x).view(B, T, self.nkv, self.hd)
        if ve is not None:
            v = v + (self.ve_gain * ve).view(B, T, self.nkv, self.hd).to(v.dtype)
        q = (apply_rope(rms_norm(q), cos, sin) * self.q_gain[:, None].to(v.dtype)).to(v.dtype)
        k = apply_rope(rms_norm(k), cos, sin).to(v.dtype)
        y = causal_attention(q, k, v, self.hd ** -0.5, self.allow_fa3, docs)
        if self.xsa:
            y = exclusive_self_attention(y, v)
        if self.gate_dims > 0:  # per head: sigmoid(ATTN_GATE_SCALE x W_h . x[:N])
            y = y * torch.sigmoid(ATTN_GATE_SCALE * x[..., :self.gate_dims] @ self.gate.T.to(x.dtype))[..., None]
        return self.proj(y.reshape(B, T, -1))

class MLP(nn.Module):
    def __init__(self, d: int, hidden: int):
        super().__init__()
        self.up = CastedLinear(d, hidden)
        self.down = CastedLinear(hidden, d, zero_init=True)

    def forward(self, x):
        return self.down(F.leaky_relu(self.up(x), 0.5).square())

class Block(nn.Module):
    def __init__(self, h: Hyperparameters, i: int):
        super().__init__()
        d = h.model_dim
        xsa_n = h.num_layers if h.xsa_last_n < 0 else h.xsa_last_n
        self.attn = Attention(h, xsa=i >= h.num_layers - xsa_n, use_ve=i >= h.num_layers - h.ve_layers)
        self.mlp = MLP(d, h.mlp_hidden)
        self.resid_mix = nn.Parameter(torch.stack([torch.ones(d), torch.zeros(d)]))
        self.attn_scale = nn.Parameter(torch.ones(d))
        self.mlp_scale = nn.Parameter(torch.ones(d))
        self.in_scale = 1.0 / math.sqrt(i + 1)

    def forward(self, x, x0, cos, sin, ve=None, lane=None, docs=None):
        """One residual stream; given `lane`, two (PR #1435): attention updates x, the MLP `lane`."""
        x = self.resid_mix[0] * x + self.resid_mix[1] * x0
        x = x + self.attn_scale * self.attn(rms_norm(x) * self.in_scale, cos, sin, ve, docs)
        y = x if lane is None else lane
        y = y + self.mlp_scale * self.mlp(rms_norm(y) * self.in_scale)
        return y if lane is None else (x, y)

def layer_plan(num_layers: int, recur: tuple[int, ...], passes: int) -> list[int]:
    """Layers in execution order: the `recur` layers run `passes` times in all, each repeat right after the last
    of them. The U-Net is laid over these passes (virtual layers: 13 = 6 encoder + 7 decoder for 4,5 twice)."""
    end = recur[-1] + 1 if recur else num_layers
    return [*range(end), *(recur * (passes - 1)), *range(end, num_layers)]

def parse_recur(spec: str, num_layers: int) -> tuple[int, ...]:
    try:
        r = tuple(int(t) for t in spec.replace(" ", "").split(",") if t)
    except ValueError:
        r = (-1,)
    if r and (r != tuple(range(r[0], r[0] + len(r))) or r[0] < 0 or r[-1] >= num_layers):
        raise RunError(f"RECUR_LAYERS={spec!r} must be consecutive layers in 0..{num_layers - 1}")
    return r

def unet_skip_plan(n_passes: int) -> list[tuple[int, int]]:
    """(decoder pass, encoder pass whose output it receives), by position in the layer plan."""
    enc = n_passes // 2
    return [(enc + j, enc - 1 - j) for j in range(min(enc, n_passes - enc))]

class GPT(nn.Module):
    def __init__(self, h: Hyperparameters):
        super().__init__()
        self.h = h
        d = h.model_dim
        self.tok_emb = QEmbedding(h.vocab_size, d, 0.005, 2 ** (h.embed_bits - 1) - 1)
        self.bigram = BigramHash(h.bigram_buckets, h.bigram_dim, d, bool(h.doc_isolation))
        if h.smear_window > 0:  # content-conditioned (PR #1797): x_t + lambda sigmoid(w . x_t[:N]) x_{t-1}; 0 at init
            self.smear_gate = nn.Parameter(torch.zeros(h.smear_window))
            self.smear_lambda = nn.Parameter(torch.zeros(()))
        else:  # static: lerp(x_t, x_{t-1}, sigmoid(g)) per channel
            self.smear_gate = nn.Parameter(torch.zeros(d))
        kv_dim = h.num_kv_heads * (d // h.num_heads)
        if h.ve_layers > 0:  # value embeddings: one table and projection shared by the last layers
            self.ve_table = QEmbedding(h.vocab_size, h.ve_dim, 0.01)
            self.ve_proj = CastedLinear(h.ve_dim, kv_dim)
            self.ve_scale = nn.Parameter(torch.tensor(0.1))
        self.blocks = nn.ModuleList(Block(h, i) for i in range(h.num_layers))
        self.recur_layers = parse_recur(h.recur_layers, h.num_layers)
        n_skip = len(unet_skip_plan(h.num_layers))  # slot e: encoder pass e's skip, with or without recurrence
        self.skip_weights = nn.Parameter(torch.ones(n_skip, d))
        self.skip_gates = nn.Parameter(torch.zeros(n_skip, d)) if h.skip_gates else None
        if 0 <= h.parallel_from < h.num_layers:  # the lanes' merge after the last layer: m*attention + (1-m)*MLP lane
            self.lane_merge = nn.Parameter(torch.tensor(0.5))
        self.lora = None  # the output head's TTT adapters
        self.recur = False  # switched on during training (a second compiled graph, primed)
        if self.recur_layers:  # ...and saved with the weights: the artifact says how it ran
            self.register_buffer("recur_on", torch.zeros(1))
        cos, sin = rope_tables(max(h.train_seq_len, eval_context(h)), h.rope_dims, h.rope_base)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    def forward(self, ids: torch.Tensor, targets: torch.Tensor, reduce: bool = True):
        emb = self.tok_emb.qweight()  # tied: fake-quantized once for the input and the logits
        x = self.hidden(ids, emb)
        nll = self.nll(lora_add(F.linear(x, emb.to(x.dtype)), x, self.lora), targets)
        return nll.mean() if reduce else nll

    def nll(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = self.h.logit_softcap * torch.tanh(logits.float() / self.h.logit_softcap)
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), reduction="none").view(targets.shape)

    def hidden(self, ids: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """The final-norm hidden state: the input of the tied embedding's output role."""
        x = rms_norm(F.embedding(ids, emb) + self.bigram(ids))
        x = self.smear(x, ids)
        x0 = x
        docs = document_layout(ids, self.blocks[0].attn.allow_fa3) if self.h.doc_isolation else None
        ve = self.ve_scale * self.ve_proj(self.ve_table(ids)) if self.h.ve_layers > 0 else None
        plan = layer_plan(len(self.blocks), self.recur_layers if self.recur else (), self.h.recur_passes)
        skips = []
        lane = None
        pf = self.h.parallel_from
        for p, i in enumerate(plan):
            blk, j = self.blocks[i], p - len(plan) // 2  # j >= 0: decoder
            if j >= 0 and skips:  # LIFO; with recurrence the innermost pairs (repeated passes) have no slot
                s, e = skips.pop(), len(skips)
                if e < self.skip_weights.size(0):  # a skip after the split feeds both lanes
                    x = self.add_skip(e, x, s)
                    lane = None if lane is None else self.add_skip(e, lane, s)
            if lane is None and j >= 0 and 0 <= pf <= i:
                lane = x
            out = blk(x, x0, self.rope_cos, self.rope_sin, ve if blk.attn.ve_gain is not None else None, lane, docs)
            x, lane = out if lane is not None else (out, None)
            if j < 0:
                skips.append(x)
        return rms_norm(x if lane is None else torch.lerp(lane, x, self.lane_merge.to(x.dtype)))

    def smear(self, x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """SmearGate: each token takes in some of the previous one (none at a BOS when documents are isolated)."""
        N = self.h.smear_window
        cur, prev = x[:, 1:], x[:, :-1]
        if N > 0:
            g = self.smear_lambda.to(x.dtype) * torch.sigmoid(cur[..., :N] @ self.smear_gate.to(x.dtype))[..., None]
        else:
            g = torch.sigmoid(self.smear_gate).to(x.dtype)
        if self.h.doc_isolation:
            g = g * (ids[:, 1:, None] != BOS_ID).to(x.dtype)
        mixed = cur + g * prev if N > 0 else torch.lerp(cur, prev, g)
        return torch.cat([x[:, :1], mixed], 1)

    def add_skip(self, e: int, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        s = self.skip_weights[e].to(x.dtype) * skip  # gated: lerp(s, x, sigmoid(g)), half-half at g = 0
        return x + s if self.skip_gates is None else torch.lerp(s, x, torch.sigmoid(self.skip_gates[e]).to(x.dtype))

def quantized_names(model: nn.Module) -> dict[str, int]:
    """State-dict name -> qmax of every weight that ships quantized (and sees QAT)."""
    return {n + ".weight": m.qmax for n, m in model.named_modules() if isinstance(m, QATMixin)}

def set_qat(model: nn.Module, on: bool) -> None:
    """QAT on or off for every quantized weight (outside the compiled graph: each state is its own graph)."""
    for m in model.modules():
        if isinstance(m, QATMixin):
            m.qat = on

# ----------------------------------------------------------------------------- optimizers

def all_reduce(t: torch.Tensor, world: int, op=None) -> torch.Tensor:
    """t reduced in place across the ranks (sum, or op) and returned; one process: t as is."""
    if world > 1:
        dist.all_reduce(t, op=op or dist.ReduceOp.SUM)
    return t

# Newton-Schulz iterations X <- a X + (b A + c A A) X, A = X X^T: the same quintic every time (Muon's), or Polar
# Express's tuple per iteration (Amsel et al. 2025, the coefficients PR #1787 runs; its first drives small singular
# values up fastest, the later ones settle them near 1).
NS_QUINTIC = (3.4445, -4.7750, 2.0315)
NS_POLAR = ((8.156554524902461, -22.48329292557795, 15.878769915207462),
            (4.042929935166739, -2.808917465908714, 0.5000178451051316),
            (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
            (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
            (2.3465413258596377, -1.7097828382687081, 0.42323551169305323))

def ns_coefficients(name: str, steps: int) -> list[tuple[float, float, float]]:
    """The (a, b, c) of each of `steps` iterations: NS_COEFFS "quintic", or "polar" (its first `steps` tuples)."""
    if name == "quintic":
        return [NS_QUINTIC] * steps
    if name == "polar" and steps <= len(NS_POLAR):
        return list(NS_POLAR[:steps])
    raise RunError(f"NS_COEFFS={name!r} with MUON_BACKEND_STEPS={steps}: need quintic, or polar with at most {len(NS_POLAR)} steps")

def newton_schulz(G: torch.Tensor, coeffs: list[tuple[float, float, float]]) -> torch.Tensor:
    """Orthogonalises a batch of matrices (B,R,C) in bf16, an iteration per (a, b, c) of coeffs. Eager: each
    iteration is three batched matmuls whose scaled sums baddbmm fuses, which is what a compiled graph would run
    (a graph per matrix shape would cost compile time and nothing else)."""
    X = G.bfloat16()
    tall = X.size(-2) > X.size(-1)
    if tall:
        X = X.mT
    X = X / (X.norm(dim=(-2, -1), keepdim=True) + 1e-7)
    for a, b, c in coeffs:
        A = torch.bmm(X, X.mT)
        B = torch.baddbmm(A, A, A, beta=b, alpha=c)  # b A + c A A
        X = torch.baddbmm(X, B, X, beta=a)  # a X + B X
    return X.mT if tall else X

def row_normalize(G: torch.Tensor) -> torch.Tensor:
    """MuonEq-R (PR #1260): each row of each matrix divided by its L2 norm."""
    return G / G.float().norm(dim=-1, keepdim=True).clamp_min(1e-7).to(G.dtype)

class Muon(torch.optim.Optimizer):
    """Momentum + Nesterov, orthogonalised update, decoupled weight decay. Matrices of one shape are
    batched; rank r orthogonalises every world-th of them, and one all-reduce shares the updates."""

    def __init__(self, params, lr, momentum, weight_decay, coeffs, rank=0, world=1, row_norm=False):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay))
        self.coeffs = coeffs
        self.rank = rank
        self.world = world
        self.row_norm = row_norm

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            ps = group["params"]
            lr = group["lr"]
            mom = group["momentum"]
            offs = np.cumsum([0] + [p.numel() for p in ps]).tolist()
            flat = torch.zeros(offs[-1], device=ps[0].device, dtype=torch.bfloat16)
            for shape in dict.fromkeys(tuple(p.shape) for p in ps):  # in order of first appearance: alike on every rank
                mine = [i for i, p in enumerate(ps) if tuple(p.shape) == shape][self.rank::self.world]
                if not mine:
                    continue
                gs = []
                for i in mine:
                    buf = self.state[ps[i]].setdefault("momentum_buffer", torch.zeros_like(ps[i]))
                    buf.mul_(mom).add_(ps[i].grad)
                    g = ps[i].grad.add(buf, alpha=mom)
                    gs.append(row_normalize(g) if self.row_norm else g)
                u = newton_schulz(torch.stack(gs), self.coeffs) * max(1.0, shape[0] / shape[1]) ** 0.5
                for k, i in enumerate(mine):
                    flat[offs[i]:offs[i + 1]] = u[k].flatten()
            all_reduce(flat, self.world)
            for i, p in enumerate(ps):
                p.mul_(1 - lr * group["weight_decay"]).add_(flat[offs[i]:offs[i + 1]].view_as(p).to(p.dtype), alpha=-lr)

def build_optimizers(model: GPT, h: Hyperparameters, rank: int, world: int, fused: bool):
    muon_ids = {id(m.weight) for m in model.modules() if isinstance(m, CastedLinear)}
    embed_ids = {id(m.weight) for m in model.modules() if isinstance(m, QEmbedding)}
    params = list(model.parameters())
    muon = Muon([p for p in params if id(p) in muon_ids], h.matrix_lr, h.muon_momentum, h.weight_decay,
                ns_coefficients(h.ns_coeffs, h.muon_backend_steps), rank, world, bool(h.muon_row_norm))
    adam = torch.optim.AdamW(
        [dict(params=[p for p in params if id(p) in embed_ids], lr=h.embed_lr, weight_decay=h.embed_wd),
         dict(params=[p for p in params if id(p) not in muon_ids | embed_ids], lr=h.scalar_lr, weight_decay=h.scalar_wd)],
        betas=(0.9, h.adam_beta2), eps=1e-8, fused=fused)
    for opt in (muon, adam):
        for g in opt.param_groups:
            g["base_lr"] = g["lr"]
    return [muon, adam]

def warmdown_steps(h: Hyperparameters, total_steps: int) -> int:
    return h.warmdown_iters if h.warmdown_iters > 0 else round(h.warmdown_frac * total_steps)

def lr_multiplier(step: int, total_steps: int, warmdown: int) -> float:
    """1 until the last `warmdown` steps, then linear to 0 at total_steps (the LR follows it down to MIN_LR)."""
    return 1.0 if warmdown <= 0 else max(0.0, min(1.0, (total_steps - step) / warmdown))

def predict_stop(step: int, elapsed_ms: float, plain_ms: float, qat_ms: float, wallclock_ms: float,
                 qat_steps: float, iterations: int, recur_frac: float = 1.0, recur_ratio: float = 1.0) -> int:
    """The step to stop at so training ends inside the wall clock, when the last `qat_steps`
    steps (inf: all from now) take qat_ms each and the others plain_ms; with recurrence still
    to come (recur_frac < 1), steps from recur_frac x stop on take recur_ratio x longer."""
    left = wallclock_ms - elapsed_ms
    if left >= qat_steps * qat_ms:
        n = qat_steps + (left - qat_steps * qat_ms) // plain_ms
    else:
        n = left // qat_ms
    stop = int(min(iterations, step + max(0, n)))
    for _ in range(64 if recur_frac < 1 else 0):  # fixed point: the switch step moves with the stop
        sw = max(step, math.ceil(recur_frac * stop))
        nq = sw - max(step, min(sw, stop - qat_steps))  # QAT steps before the switch
        new = predict_stop(sw, elapsed_ms + (sw - step - nq) * plain_ms + nq * qat_ms, plain_ms * recur_ratio,
                           qat_ms * recur_ratio, wallclock_ms, qat_steps, iterations)
        if new == stop:
            break
        stop = new
    return stop

def all_reduce_grads(params: list[torch.Tensor], world: int, mean: bool = True) -> None:
    """Averages (or sums) gradients across ranks with one flat all-reduce; no grad = 0."""
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    if world > 1:
        flat = all_reduce(torch.cat([p.grad.flatten() for p in params]), world) / (world if mean else 1)
        for p, g in zip(params, flat.split([p.numel() for p in params])):
            p.grad = g.view_as(p)

# ----------------------------------------------------------------------------- artifact
# Every QAT module weight is rounded to +-qmax per row (int5, the tied embedding at EMBED_BITS): GPTQ
# (clips chosen by diag(H)-weighted error) where a Hessian of its input was collected, round-to-nearest
# for lookup tables; the rest stays fp32. A self-describing container (magic, JSON header, raw
# little-endian arrays; no pickle), compressed by zstd. Over the cap, a rate-distortion allocation
# coarsens each tensor's step (or zeroes its cheapest +-1 symbols) where a byte costs the least loss.
# Written atomically; loads validate.

ARTIFACT_MAGIC = b"PGQNT\x00\x00\x02"
ZSTD_LEVEL = 16  # won every measurement of 16, 19 and 22 (bench/export_ab.py, bench/full_size_artifact.py)
RD_STEPS = tuple(1.1 ** k for k in range(-2, 21))  # the ladder: step x 0.83 .. 6.7 over the least-error clip's...
RD_PRUNE = (0.0, 0.5, 1.0)  # ...each with this share of its +-1 symbols zeroed, cheapest first
LQER_QMAX = 7  # LQER's factors (LQER_RANK): int4 codes, A's per column and B's per row, fp16 scales...
LQER_CLIP_FRACS = tuple(0.75 ** k for k in range(13))  # ...each clipped at the least weighted error, down to 3% of its max

def quantize_state(state: dict, qmax: dict, hessians: dict | None = None, log=print, steps: dict | None = None) -> dict:
    """name -> ('q', codes, scale, qmax) or ('raw', fp32 tensor); `steps`: name -> a multiplier of its row
    steps. A matrix whose Hessian is not finite or cannot be factored is rounded to nearest (the log says so)."""
    out = {}
    for name, t in state.items():
        t = t.detach().float().cpu()
        if name not in qmax:
            out[name] = ("raw", t)
            continue
        H = (hessians or {}).get(name)
        L = qmax[name]
        m = (steps or {}).get(name, 1.0)
        why = None if H is None or torch.isfinite(H).all() else "non-finite Hessian"
        hd = torch.diag(H.cpu()) if H is not None and not why else None
        scale = (quantize_int5(t, hd, CLIP_FRACS if hd is None else GPTQ_CLIP_FRACS, L)[1].float() * m).half()
        q = torch.clamp(torch.round(t / scale.float()[:, None]), -L, L).to(torch.int8)  # kept should GPTQ fail
        if hd is not None:
            try:
                q = gptq_int5(t, H.cpu(), scale, qmax=L)
            except (ValueError, torch.linalg.LinAlgError) as e:
                why = one_line(e, trace=False)
        if why:
            log(f"gptq fallback: {name} rounded to nearest ({why})")
        out[name] = ("q", q, scale, L)
    return out

def pack_artifact(qstate: dict, level: int = ZSTD_LEVEL) -> bytes:
    """The container as one zstd frame."""
    import zstandard
    arrays = []
    qmax = {}
    lqer = []
    for name, entry in qstate.items():
        if entry[0] == "q":
            qmax[name] = entry[3]
            arrays.append((name + ".q", (entry[1].numpy().astype(np.int16) + entry[3]).astype(np.uint8)))
            arrays.append((name + ".scale", entry[2].numpy().astype("<f2")))
            if len(entry) > 4:  # LQER factors: A's codes (rows, r) and column scales, B's codes (r, cols) and row scales
                lqer.append(name)
                qa, sa, qb, sb = entry[4]
                for part, codes, scale in ((".lqa", qa, sa), (".lqb", qb, sb)):
                    arrays.append((name + part, (codes.numpy().astype(np.int16) + LQER_QMAX).astype(np.uint8)))
                    arrays.append((name + part + "_scale", scale.numpy().astype("<f2")))
        else:
            arrays.append((name, entry[1].numpy().astype("<f4")))
    arrays.sort(key=lambda a: not a[0].endswith(".q"))  # the symbols together compress best
    header = json.dumps({"qmax": qmax, "lqer": lqer, "arrays": [[n, a.dtype.str, list(a.shape)] for n, a in arrays]}).encode()
    blob = ARTIFACT_MAGIC + struct.pack("<I", len(header)) + header + b"".join(a.tobytes() for _, a in arrays)
    return zstandard.ZstdCompressor(level=level, write_checksum=True).compress(blob)

def unpack_artifact(data: bytes) -> dict:
    """Inverse of pack_artifact -> name -> fp32 tensor. Raises RunError on any corruption."""
    import zstandard
    try:
        blob = zstandard.ZstdDecompressor().decompress(data)
    except zstandard.ZstdError as e:
        raise RunError(f"artifact is not a complete zstd stream ({e})")
    if not blob.startswith(ARTIFACT_MAGIC):
        raise RunError("artifact has no container header of this version (wrong file?)")
    try:
        (hlen,) = struct.unpack_from("<I", blob, len(ARTIFACT_MAGIC))
        start = len(ARTIFACT_MAGIC) + 4
        header = json.loads(blob[start:start + hlen])
        off = start + hlen
        arrays = {}
        for name, dtype, shape in header["arrays"]:
            dt = np.dtype(dtype)
            if dt.str not in ("|u1", "<f2", "<f4"):
                raise ValueError(f"dtype {dtype}")
            n = int(np.prod(shape)) * dt.itemsize
            if off + n > len(blob):
                raise ValueError("truncated payload")
            arrays[name] = np.frombuffer(blob, dt, count=n // dt.itemsize, offset=off).reshape(shape)
            off += n
        if off != len(blob):
            raise ValueError(f"{len(blob) - off} trailing bytes")
        out = {}
        for name, qmax in header["qmax"].items():
            q = torch.from_numpy(arrays.pop(name + ".q").astype(np.int16) - qmax)
            out[name] = dequantize_int5(q, torch.from_numpy(arrays.pop(name + ".scale").copy()))
        for name in header.get("lqer", []):  # (containers before LQER have no such list)
            a, sa, b, sb = (torch.from_numpy(arrays.pop(name + part).astype(np.float32))
                            for part in (".lqa", ".lqa_scale", ".lqb", ".lqb_scale"))
            if (a.size(0), b.size(1)) != tuple(out[name].shape) or not a.size(1) == b.size(0) == len(sa) == len(sb):
                raise ValueError(f"LQER factors of {name} do not fit it")
            out[name] = out[name] + lqer_product((a - LQER_QMAX, sa, b - LQER_QMAX, sb))
        out.update({n: torch.from_numpy(a.astype(np.float32)) for n, a in arrays.items()})
        return out
    except (ValueError, KeyError, TypeError, struct.error) as e:
        raise RunError(f"corrupt artifact container: {e}")

def collect_hessians(model: GPT, seqs: torch.Tensor, targets: torch.Tensor, batch: int, world: int) -> dict:
    """Per token, over the calibration sequences of all ranks: name -> X^T X of each quantized matrix's input
    (every CastedLinear's; the final-norm hidden state for the tied embedding), and name + ":g" -> the mean
    squared loss gradient of each output unit (a table: of each entry), for the export's allocation."""
    hs = {}
    hooks = []
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False

    def add(name, x, ids=None, rows=0):
        with torch.autocast(x.device.type, enabled=False):  # fp32 sums, not bf16/TF32
            x = x.detach().float().reshape(-1, x.size(-1))
            if ids is not None:  # a table: squared gradients summed per entry
                x = torch.zeros(rows, x.size(1), device=x.device).index_add_(0, ids, x * x)
            elif name.endswith(":g"):  # an output: squared gradients summed per unit
                x = (x * x).sum(0)
            else:
                x = x.T @ x
            hs[name] = hs.get(name, 0) + x

    def on_forward(mod, args, out, name):  # a matrix's input now, the output's gradient when it comes
        ids = args[0].reshape(-1) if isinstance(mod, QEmbedding) else None
        if ids is None:
            add(name, args[0])
        out.register_hook(lambda g: add(name + ":g", g, ids, mod.weight.size(0)))

    try:
        for name, m in model.named_modules():
            if isinstance(m, QATMixin):  # (the tied embedding's input role is not seen)
                hooks.append(m.register_forward_hook(lambda mod, args, out, n=name + ".weight": on_forward(mod, args, out, n)))
        model.eval()
        params = [m.weight for m in model.modules() if isinstance(m, QEmbedding)]  # every output's gradient, no weight's
        for xb, yb in zip(seqs.split(batch), targets.split(batch)):
            with torch.enable_grad(), torch.autocast(seqs.device.type, dtype=torch.bfloat16):
                x = model.hidden(xb, model.tok_emb.weight)
                add("tok_emb.weight", x)
                logits = F.linear(x, model.tok_emb.weight.to(x.dtype))
                logits.register_hook(lambda g: add("tok_emb.weight:g", g))
                torch.autograd.grad(model.nll(logits, yb).sum(), params, allow_unused=True)
    finally:
        for hk in hooks:
            hk.remove()
        torch.backends.cuda.matmul.allow_tf32 = tf32
    for name in sorted(hs):
        all_reduce(hs[name], world).div_(seqs.numel() * world)
    return hs

def rd_weight(name: str, w: torch.Tensor, hessians: dict | None) -> torch.Tensor | None:
    """Each entry's loss per squared error (empirical Fisher): output's mean squared gradient x diag(H), a table's own."""
    g, H = (hessians or {}).get(name + ":g"), (hessians or {}).get(name)
    if g is not None and H is not None:
        g = g[:, None] * torch.diag(H)
    return g.float().to(w.device) if g is not None and torch.isfinite(g).all() and (g >= 0).all() else None  # None: unusable

def zero_cost(q: torch.Tensor, s: torch.Tensor, w: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The loss each +-1 symbol's zeroing adds (flat, over those symbols), and their flat positions."""
    ones = (q.abs() == 1).flatten().nonzero().squeeze(1)
    return (weight * (w * w - (q * s - w) ** 2) / 2).flatten()[ones], ones

def entropy_bits(codes: torch.Tensor, qmax: int) -> torch.Tensor:
    """Order-0 entropy, in bits, of symmetric integer codes in [-qmax, qmax]."""
    c = torch.bincount((codes + qmax).flatten().long(), minlength=2 * qmax + 1)
    return -(c * torch.where(c > 0, c / c.sum(), 1).log2()).sum()

def low_rank(M: torch.Tensor, rank: int, iters: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """M ~ L R with L (rows, rank), R (rank, cols), each carrying the square root of the singular values: subspace
    iteration from a fixed start (the same factors every run), then an exact SVD of the small projection."""
    start = torch.randn(M.size(1), rank + 4, generator=torch.Generator().manual_seed(0)).to(M)
    Q = torch.linalg.qr(M @ start).Q
    for _ in range(iters):
        Q = torch.linalg.qr(M @ (M.T @ Q)).Q
    U, S, Vh = torch.linalg.svd(Q.T @ M, full_matrices=False)
    root = S[:rank].sqrt()
    return (Q @ U[:, :rank]) * root, root[:, None] * Vh[:rank]

def lqer_factors(E: torch.Tensor, weight: torch.Tensor, rank: int) -> tuple[torch.Tensor, ...]:
    """LQER (PR #1797): rank-`rank` factors A B of a quantization error E, as int4 codes and scales (A codes
    (rows, r), A's column scales, B codes (r, cols), B's row scales). They minimise the loss-weighted error
    sum w_ij (E - A B)_ij^2 exactly for a matrix, whose weight is a product r_i c_j (rd_weight); a table's
    per-entry weight is taken as the product of its row and column means."""
    r = weight.mean(1)
    c = weight.mean(0) / weight.mean().clamp_min(1e-30)
    r, c = (v.clamp_min(1e-6 * float(v.max().clamp_min(1e-30))).sqrt() for v in (r, c))
    A, B = low_rank(E.float() * r[:, None] * c, rank)
    qa, sa = quantize_int5((A / r[:, None]).T, r * r, LQER_CLIP_FRACS, LQER_QMAX)  # clipped where it costs least:
    qb, sb = quantize_int5(B / c, c * c, LQER_CLIP_FRACS, LQER_QMAX)  # rows that weigh little may be large
    return qa.T, sa, qb, sb

def lqer_product(factors) -> torch.Tensor:
    """A B from lqer_factors' codes and scales."""
    qa, sa, qb, sb = factors
    return (qa.float() * sa.float()) @ (qb.float() * sb.float()[:, None])

def lqer_bits(factors) -> torch.Tensor:
    qa, sa, qb, sb = factors
    return entropy_bits(qa, LQER_QMAX) + entropy_bits(qb, LQER_QMAX) + 16 * (len(sa) + len(sb))

def rd_ladder(w: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, qmax: int, lqer_rank: int = 0) -> torch.Tensor:
    """(bits, loss) of each candidate for one tensor -- rounded to nearest at its row steps x each of RD_STEPS,
    then each share of RD_PRUNE of its +-1 symbols zeroed where that costs least; with LQER_RANK, then each step
    again, nothing zeroed, plus its error's LQER factors (a tensor too small for them: never chosen) -- as (candidates, 2)."""
    w = w.float()
    out = []
    lqer = []
    for m in RD_STEPS:
        s = (scale.float() * m).half().float().to(w.device)[:, None]
        q = torch.clamp(torch.round(w / s), -qmax, qmax)
        cost, ones = zero_cost(q, s, w, weight)
        cost, order = cost.double().sort()
        err = (weight * (q * s - w) ** 2).sum().double() / 2  # before any zeroing: once per step
        for share in RD_PRUNE:
            k = round(share * len(cost))
            bits = entropy_bits(q.flatten().index_fill(0, ones[order[:k]], 0), qmax)
            out.append(torch.stack([bits.double(), err + cost[:k].sum()]))
        if lqer_rank > 0 and 2 * lqer_rank > min(w.shape):
            lqer.append(torch.tensor([0.0, math.inf], dtype=torch.float64, device=w.device))
        elif lqer_rank > 0:
            f = lqer_factors(w - q * s, weight, lqer_rank)
            e = (weight * (q * s + lqer_product(f).to(w.device) - w) ** 2).sum().double() / 2
            unzeroed = out[-len(RD_PRUNE)][0]  # this step's first candidate's bits: RD_PRUNE[0] = 0 zeroes nothing
            lqer.append(torch.stack([unzeroed + lqer_bits(f), e]))
    return torch.stack(out + lqer).cpu()

def export_within_cap(state: dict, qmax: dict, code_bytes: int, hessians: dict | None = None,
                      cap: int = BYTE_CAP, log=print, lqer_rank: int = 0) -> tuple[bytes, dict]:
    """Quantizes and packs; over the cap, one Lagrange multiplier picks each tensor's candidate of its ladder (rd_ladder)
    for the least loss within an aim in predicted bytes (the candidates' entropy + the rest of the first pack), realised
    by packing (GPTQ at the chosen steps, LQER factors of GPTQ's own error); the aim is bisected over <= 6 more packs
    towards 0-0.2% under the cap."""
    qstate = quantize_state(state, qmax, hessians, log)
    blob = pack_artifact(qstate)
    budget = cap - code_bytes
    names = sorted(qmax)
    info = dict(level=ZSTD_LEVEL, pruned=0, pruned_frac=0.0, packs=1, steps={}, lqer=[])
    if len(blob) <= budget:
        return blob, info
    weight = {n: rd_weight(n, state[n], hessians) for n in names}
    typical = torch.tensor([float(v.mean()) for v in weight.values() if v is not None] or [1.0]).median()
    weight = {n: torch.full_like(state[n].float(), float(typical)) if v is None else v for n, v in weight.items()}
    ladder = torch.stack([rd_ladder(state[n], weight[n], qstate[n][2], qmax[n], lqer_rank) for n in names])  # (T, K, 2)
    plain = len(RD_STEPS) * len(RD_PRUNE)  # the candidates from here on add LQER factors (rd_ladder)
    fixed = len(blob) - float(ladder[:, RD_STEPS.index(1.0) * len(RD_PRUNE), 0].sum()) / 8  # today's candidate: the rest
    aim = 0.999 * budget
    fit_aim = 0.0
    over_aim = None
    best = None
    cache = {(n, 1.0): qstate[n] for n in names}

    for _ in range(6):
        lo, hi = -100.0, 30.0  # log2 of the multiplier lambda (loss per bit); each tensor picks its least loss + lambda x bits
        for _ in range(60):
            mid = (lo + hi) / 2
            pick = (ladder[..., 1] + 2.0 ** mid * ladder[..., 0]).argmin(1)
            lo, hi = (lo, mid) if fixed + float(ladder[..., 0].gather(1, pick[:, None]).sum()) / 8 <= aim else (mid, hi)
        pick = (ladder[..., 1] + 2.0 ** hi * ladder[..., 0]).argmin(1)
        out = dict(qstate)
        zeroed = {}
        steps = {n: RD_STEPS[k // len(RD_PRUNE) if k < plain else k - plain] for n, k in zip(names, pick.tolist())}
        for n, k in zip(names, pick.tolist()):
            if (n, steps[n]) not in cache:
                cache[n, steps[n]] = quantize_state({n: state[n]}, qmax, hessians, log, steps)[n]
            _, q, scale, L = cache[n, steps[n]]
            w = state[n].float().cpu()
            cost, ones = zero_cost(q, scale.float()[:, None], w, weight[n].cpu())
            zeroed[n] = ones[cost.argsort(stable=True)[:round(RD_PRUNE[k % len(RD_PRUNE)] * len(ones)) if k < plain else 0]]
            out[n] = ("q", q.flatten().index_fill(0, zeroed[n], 0).view_as(q), scale, L)
            if k >= plain:
                if (n, steps[n], "lqer") not in cache:
                    cache[n, steps[n], "lqer"] = lqer_factors(w - dequantize_int5(q, scale), weight[n].cpu(), lqer_rank)
                out[n] = out[n] + (cache[n, steps[n], "lqer"],)
        blob = pack_artifact(out)
        pruned = sum(len(z) for z in zeroed.values())
        info.update(packs=info["packs"] + 1, steps=steps, pruned=pruned, pruned_frac=pruned / sum(state[n].numel() for n in names),
                    lqer=[n for n in names if len(out[n]) > 4])
        if len(blob) <= budget and (best is None or len(blob) > len(best[0])):
            best = blob, dict(info)
        if 0.998 * budget <= len(blob) <= budget:
            break
        fit_aim, over_aim = (aim, over_aim) if len(blob) <= budget else (fit_aim, aim)
        aim = (fit_aim + over_aim) / 2 if over_aim and fit_aim else aim * 0.999 * budget / len(blob)
    if best is None:
        raise RunError(f"artifact cannot fit: {code_bytes + len(blob)} bytes > cap {cap} after {info['packs']} packs")
    return best[0], dict(best[1], packs=info["packs"])

def write_atomic(path: Path, data: bytes) -> None:
    """Writes via a temporary file renamed into place: the file is whole or absent."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        if tmp.is_file():
            tmp.unlink()
        raise RunError(f"cannot write {path}: {e}")

def load_artifact_into(model: GPT, path: Path) -> GPT:
    """Replaces the model's weights by the artifact's, in place (compiled graphs stay valid); the recurrence
    runs as it did when the artifact was made."""
    state = unpack_artifact(path.read_bytes())
    expected = model.state_dict()
    if set(state) != set(expected) or any(state[k].shape != expected[k].shape for k in state):
        raise RunError(f"artifact {path} does not match the model configuration")
    model.load_state_dict(state)
    model.recur = bool(model.recur_layers and model.recur_on.item())
    return model

def recur_at_end(h: Hyperparameters) -> bool:
    """Whether the run switches its recurrence on (a run that stops early may not)."""
    return bool(parse_recur(h.recur_layers, h.num_layers)) and h.recur_start_frac < 1

def qat_before_switch(h: Hyperparameters) -> bool:
    """Whether QAT can start before the recurrence switches on: the LR multiplier falls below QAT_THRESHOLD
    at 1 - threshold x (warmdown's share of the run), the switch comes at RECUR_START_FRAC of the run."""
    if h.warmdown_iters > 0 and h.max_wallclock_seconds > 0:
        return True  # the run's length, and so the warmdown's share of it, is known only while it runs
    share = h.warmdown_iters / h.iterations if h.warmdown_iters > 0 else h.warmdown_frac
    return 1 - h.qat_threshold * share < h.recur_start_frac  # a warmdown longer than the run starts below 1

def training_phases(h: Hyperparameters) -> list[tuple[bool, bool]]:
    """The (recurrent, QAT) states the training loop reaches under its schedule, each a compiled graph: plain,
    recurrent once the recurrence switches on mid-run, and QAT in the state the run ends in (QAT without the
    recurrence too where QAT can start first)."""
    if not (parse_recur(h.recur_layers, h.num_layers) and 0 < h.recur_start_frac < 1):
        r = recur_at_end(h)
        return [(r, False), (r, True)]
    if qat_before_switch(h):
        return [(False, False), (False, True), (True, False), (True, True)]
    return [(False, False), (True, False), (True, True)]

# ----------------------------------------------------------------------------- evaluation & TTT
# Target j is token j+1 predicted from tokens <= j. A window ending at e feeds tokens
# [e-L, e) and scores targets [s, e); windows tile a target range so each is scored once.

def window_plan(lo: int, hi: int, seq_len: int, stride: int) -> list[tuple[int, int]]:
    """(end, score_from) windows scoring targets [lo, hi) exactly once, each with >= L-stride
    context (the first window of the stream scores all its targets)."""
    plan = []
    e = lo
    while e < hi:
        end = min(hi, max(e + stride, seq_len))
        plan.append((end, e))
        e = end
    return plan

def score_windows(model, tokens: torch.Tensor, plan, seq_len: int, batch_seqs: int,
                  lo: int, hi: int, rank: int, world: int, device) -> torch.Tensor:
    """Per-target nll for targets [lo, hi), summed across ranks (each rank scores a share).
    Every batch holds exactly batch_seqs windows (one compiled shape); pads score nothing."""
    out = torch.zeros(hi - lo, device=device)
    mine = plan[rank::world]
    if mine:
        pad = [(mine[-1][0], mine[-1][0])] * (-len(mine) % batch_seqs)
        wins = torch.tensor(mine + pad, device=device).view(-1, batch_seqs, 2)  # (end, score_from)
        ar = torch.arange(seq_len, device=device)
        toks = tokens.to(device)  # no copy when the caller keeps tokens on the device
        for w in wins:
            idx = w[:, :1] - seq_len + ar  # target index of each window position
            with torch.autocast(device.type, dtype=torch.bfloat16):
                nll = model(toks[idx], toks[idx + 1], reduce=False).float()
            keep = idx >= w[:, 1:]
            out.index_put_(((idx - lo).clamp_min(0).flatten(),), (nll * keep).flatten(), accumulate=True)
    return all_reduce(out, world)

def eval_sliding(model, tokens, seq_len, stride, batch_seqs, rank, world, device) -> torch.Tensor:
    n = tokens.numel() - 1
    model.eval()
    with torch.inference_mode():
        return score_windows(model, tokens, window_plan(0, n, seq_len, stride), seq_len, batch_seqs, 0, n, rank, world, device)

def set_trainable(model: GPT, params: list | None) -> None:
    """Only `params` get gradients (None: all)."""
    chosen = {id(p) for p in (model.parameters() if params is None else params)}
    for p in model.parameters():
        p.requires_grad_(id(p) in chosen)

def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)

def reduce_max(rt, *values: float) -> list[float]:
    """The largest of each value over the ranks: inputs every rank decides on alike."""
    return all_reduce(torch.tensor(values, dtype=torch.float64, device=rt.device), rt.world, dist.ReduceOp.MAX).tolist()

def doc_spans(tokens: torch.Tensor, n: int, bos: int = BOS_ID) -> list[tuple[int, int]]:
    """Each document's targets [lo, hi): inputs from its BOS (or the stream's start) on; its
    last target is the next document's BOS. Every target 0..n-1 lies in exactly one span."""
    starts = [0] + ((tokens[1:n] == bos).nonzero().flatten() + 1).tolist()  # SPEC: a document is [BOS] + tokens
    return list(zip(starts, starts[1:] + [n]))

def lora_shapes(seq_len: int) -> list[int]:
    return sorted({max(1, seq_len // 4), max(1, seq_len // 2), seq_len})

def lora_batches(spans, seq_len: int, docs: int, world: int) -> list[tuple[int, int, list]]:
    """Documents cut into segments (lo, hi, start) of <= 4L targets (start: the document's), longest
    first, in global batches of one shape (W, R, segments): W the smallest of lora_shapes holding every
    window, R = docs * L / W rows per rank (every shape: the same tokens per step); rank r takes [r::world].
    L here is the evaluation context (eval_context)."""
    segs = [(a, min(a + 4 * seq_len, hi), lo) for lo, hi in spans for a in range(lo, hi, 4 * seq_len)]

    def window(seg) -> int:  # the smallest shape holding the segment's last window (from its document's start)
        return next((w for w in lora_shapes(seq_len) if w >= seg[1] - seg[2]), seq_len)

    order = sorted(segs, key=lambda s: (-window(s), s[0] - s[1]))
    out = []
    i = 0
    while i < len(order):
        W = window(order[i])  # docs >= 1 and W <= L: R >= 1
        out.append((W, docs * seq_len // W, [s for s in order[i:i + docs * seq_len // W * world] if window(s) == W]))
        i += len(out[-1][2])
    return out

def parse_chunk_schedule(spec: str) -> list[tuple[int, int]]:
    """TTT_LORA_CHUNK_SCHEDULE "N:C,...": (N, C) pairs, smallest N first (PR #2014's short-document chunks)."""
    try:
        pairs = sorted((int(n), int(c)) for n, c in (p.split(":") for p in spec.replace(" ", "").split(",") if p))
    except ValueError:
        pairs = [(0, 0)]
    if any(min(n, c) < 1 for n, c in pairs):
        raise RunError(f"TTT_LORA_CHUNK_SCHEDULE={spec!r} must be 'N:C,...' with N, C >= 1 (tokens)")
    return pairs

def batch_chunk(length: int, default: int, schedule: list[tuple[int, int]]) -> int:
    """The chunk of a batch whose longest document (to its segment's end) has `length` tokens: C of the
    smallest N >= length in the schedule, else TTT_LORA_CHUNK."""
    return next((c for n, c in schedule if length <= n), default)

LORA_ROLES = {"q": "attn.q", "k": "attn.k", "v": "attn.v", "o": "attn.proj", "up": "mlp.up", "down": "mlp.down",
              "bigram": "bigram.proj", "ve": "ve_proj"}  # TTT_LORA_TARGETS' names -> the CastedLinear they adapt

def lora_targets(spec: str) -> frozenset:
    """TTT_LORA_TARGETS: comma-separated q, k, v, o (attention's output projection), up, down, mlp (both),
    bigram, ve (the tables' projections), head (the tied output head), or all."""
    names = set()
    for t in spec.replace(" ", "").split(","):
        if t == "all":
            names |= {*LORA_ROLES, "head"}
        elif t == "mlp":
            names |= {"up", "down"}
        elif t in LORA_ROLES or t == "head":
            names.add(t)
        elif t:
            raise RunError(f"TTT_LORA_TARGETS={spec!r}: unknown target {t!r} (q, k, v, o, up, down, mlp, bigram, ve, head, all)")
    if not names:
        raise RunError(f"TTT_LORA_TARGETS={spec!r} names no target")
    return frozenset(names)

def lora_modules(model: GPT, targets: frozenset) -> list[nn.Module]:
    """What TTT adapters attach to, in model order: the targets' CastedLinears, then (head) the model itself."""
    roles = {LORA_ROLES[t] for t in targets if t in LORA_ROLES}
    mods = [m for name, m in model.named_modules()
            if isinstance(m, CastedLinear) and (".".join(name.split(".")[2:]) if name.startswith("blocks.") else name) in roles]
    return mods + ([model] if "head" in targets else [])

def mark_varying(tensors, dims: tuple[int, ...]) -> None:
    """Marks the sizes LoRA TTT varies between batches (rows, window) as dynamic for torch.compile, so one graph
    serves every batch shape; every other size stays static. A size of 1 is left alone (compiled apart)."""
    for t in tensors:
        for d in dims:
            if t.size(d) > 1:
                torch._dynamo.mark_dynamic(t, d)

class Adapters:
    """TTT's LoRA adapters on TTT_LORA_TARGETS, their output scaled by alpha / rank: per row of a batch an A
    (in, r) and a B (r, out). B is zero at the start of every batch. A starts alike for every row (uniform
    +-1/sqrt(in), a fixed seed); with TTT_LORA_WARM_A (PR #1767) a row slot keeps the A it trained for the
    document it takes in the next batch on its rank, and A returns to its init at each phase (reset)."""

    def __init__(self, model: GPT, h: Hyperparameters, rows: int):
        self.mods = lora_modules(model, lora_targets(h.ttt_lora_targets))
        self.scale = h.ttt_lora_alpha / h.ttt_lora_rank
        self.warm = bool(h.ttt_lora_warm_a)
        self.rows = rows
        g = torch.Generator().manual_seed(0)
        dev = model.rope_cos.device
        shapes = [(m.in_features, m.out_features) if m is not model else (h.model_dim, h.vocab_size) for m in self.mods]
        self.init = [((torch.rand(i, h.ttt_lora_rank, generator=g) * 2 - 1) / i ** 0.5).to(dev) for i, _ in shapes]
        self.outs = [o for _, o in shapes]
        self.reset()

    def reset(self) -> None:
        """Every row slot's A back to the init."""
        self.a = [a.expand(self.rows, *a.shape) for a in self.init]

    def attach(self, rows: int) -> list[torch.Tensor]:
        """Trainable adapters for `rows` documents on their modules, returned."""
        params = []
        for m, a, o in zip(self.mods, self.a, self.outs):
            A = a[:rows].clone().requires_grad_()
            B = torch.zeros(rows, a.size(-1), o, device=a.device, requires_grad=True)
            m.lora = (A, B, self.scale)
            params += [A, B]
        mark_varying(params, (0,))
        return params

    def detach(self) -> None:
        """Removes the adapters; with warm A, each slot's trained A stays for the next batch."""
        for i, m in enumerate(self.mods):
            if self.warm:
                trained = m.lora[0].detach()
                self.a[i] = torch.cat([trained, self.a[i][trained.size(0):]])
            m.lora = None

def lora_widths(spans, W: int, K: int, c: int) -> list[int]:
    """The window of each step k < K: the widest any row needs to reach its chunk's end from its document's
    start, at most W, at least min(2, W) (a size of 1 compiles apart). Short documents' early chunks need little."""
    widths = []
    for k in range(K):
        reach = [min(W, a - d + min(b - a, (k + 1) * c)) for a, b, d in spans]
        widths.append(max([min(2, W)] + reach))
    return widths

def lora_batch(run_model, model: GPT, tokens, nll, spans, W: int, R: int, K: int, c: int, adapters: Adapters,
               h: Hyperparameters, adapt) -> None:
    """Chunks 0..K-1 of c targets of R segments (padded with empty ones), a step each: each row's chunk scored in a
    window of its document's last w <= W tokens (lora_widths: every row's whole document while it fits), then,
    while adapt(k), one AdamW step on the chunks' loss (not a segment's last)."""
    n = nll.numel()
    dev = tokens.device
    lo, m, s0 = torch.tensor([[a, b - a, d] for a, b, d in spans] + [[0, 0, 0]] * (R - len(spans)), device=dev).T
    opt = torch.optim.AdamW(adapters.attach(R), lr=h.ttt_lora_lr, betas=(0.0, h.ttt_lora_beta2), weight_decay=h.ttt_lora_wd)
    model.train()
    set_trainable(model, [])  # the adapters alone get gradients
    for k, w in enumerate(lora_widths(spans, W, K, c)):
        t0 = lo + k * c  # this chunk's targets [t0, t1); empty once done
        t1 = lo + torch.clamp(m, max=(k + 1) * c)
        idx = torch.maximum(s0, t1 - w)[:, None] + torch.arange(w, device=dev)  # the window's target indices
        keep = (idx >= t0[:, None]) & (idx < t1[:, None])
        ids = idx.clamp(max=n - 1)
        adapting = k + 1 < K and adapt(k)  # K: the global batch's; a row without a later chunk weighs 0
        inputs = tokens[ids]
        targets = tokens[ids + 1]
        mark_varying((inputs, targets), (0, 1))
        with torch.set_grad_enabled(adapting), torch.autocast(dev.type, dtype=torch.bfloat16):
            out = run_model(inputs, targets, reduce=False).float()  # scoring only: no autograd graph
        nll.index_put_((ids.flatten(),), torch.where(keep, out.detach(), 0.0).flatten(), accumulate=True)
        if adapting:
            train = keep & ((k + 1) * c < m)[:, None]
            ((out * train).sum(1) / train.sum(1).clamp_min(1)).sum().backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        del out  # this step's autograd graph (if any) is freed before the next step runs
    adapters.detach()
    set_trainable(model, None)

def phase_groups(spans, phases: int, prefix_docs: int) -> tuple[list[list], list]:
    """Phased TTT's documents (PRs #1610, #1626): in TTT's order (longest first, then by position), the first
    TTT_PHASE_DOCS cut into TTT_PHASES groups of equal counts, and the rest. No phase: ([], every document)."""
    order = sorted(spans, key=lambda s: (s[0] - s[1], s[0]))
    p = min(prefix_docs, len(order)) if phases > 0 else 0
    cuts = [p * i // max(1, phases) for i in range(phases + 1)]
    return [order[a:b] for a, b in zip(cuts, cuts[1:]) if b > a], order[p:]

def phase_rows(h: Hyperparameters, world: int) -> int:
    """Rows of the eval context per rank in each step of a phase's global pass."""
    return max(1, h.ttt_phase_batch_tokens // (eval_context(h) * world))

PHASE_CLIP_NORM = 1.0  # the global pass's gradient clip (PR #2135's)

def phase_step(run_model, params: list, opt, x: torch.Tensor, y: torch.Tensor, world: int) -> None:
    """One step of a phase's global pass: the base model's loss on this rank's rows, gradients averaged."""
    with torch.autocast(x.device.type, dtype=torch.bfloat16):
        loss = run_model(x, y)
    loss.backward()
    all_reduce_grads(params, world)
    torch.nn.utils.clip_grad_norm_(params, PHASE_CLIP_NORM)
    opt.step()
    opt.zero_grad(set_to_none=True)

def global_pass(run_model, model: GPT, tokens: torch.Tensor, docs, h: Hyperparameters, rank: int, world: int,
                may_step) -> tuple[int, int]:
    """A phase's global pass over documents already scored: their inputs and targets end to end (in position
    order), cut into sequences of the eval context, one SGD step (momentum, cosine LR to 0, no weight decay) per
    TTT_PHASE_BATCH_TOKENS, every rank on its rows; the tail short of a whole step is left out. Every weight
    of the base model learns. Stops early once may_step(step) is False. Returns (steps taken, steps)."""
    E = eval_context(h)
    rows = phase_rows(h, world)
    x = torch.cat([tokens[lo:hi] for lo, hi in sorted(docs)])
    y = torch.cat([tokens[lo + 1:hi + 1] for lo, hi in sorted(docs)])
    steps = x.numel() // (E * rows * world)
    x = x[:steps * world * rows * E].view(steps, world, rows, E)
    y = y[:steps * world * rows * E].view(steps, world, rows, E)
    params = list(model.parameters())
    opt = torch.optim.SGD(params, lr=h.ttt_phase_lr, momentum=h.ttt_phase_momentum)
    model.train()
    set_trainable(model, None)
    for s in range(steps):
        if not may_step(s):
            return s, steps
        for g in opt.param_groups:
            g["lr"] = h.ttt_phase_lr * 0.5 * (1 + math.cos(math.pi * s / steps))
        phase_step(run_model, params, opt, x[s, rank], y[s, rank], world)
    return steps, steps

class LoraGuard:
    """The LoRA TTT budget guard: every 8th step of a batch it reads the clock (the slowest rank's) and stops
    adapting for good once adapting 8 more steps and scoring all the rest would pass the budget. A phase's
    global pass goes on while its next step and every LoRA step left, adapting, fit."""

    def __init__(self, steps_before: list[int], budget: float, clock, world: int, device, log, enabled: bool):
        self.steps_before = steps_before  # LoRA steps before each batch, and in all (the last)
        self.budget = budget
        self.clock = clock
        self.log = log
        self.world = world
        self.device = device
        self.adapting = enabled  # False for good once the guard fires
        self.adapted = 0  # steps that adapted
        self.t_start = clock()  # when TTT started
        self.t_passes = 0.0  # seconds in global passes: not LoRA steps

    def read(self, done: int, since: float = 0.0) -> tuple[float, float, float]:
        """(elapsed, seconds per LoRA step so far, seconds since this rank's `since`): each the slowest rank's,
        so alike on every rank."""
        sync(self.device)
        now = self.clock()
        t = torch.tensor([now, (now - self.t_start - self.t_passes) / max(1, done), now - since], dtype=torch.float64,
                         device=self.device)
        elapsed, rate, took = all_reduce(t, self.world, dist.ReduceOp.MAX).tolist()
        return elapsed, rate, took

    def __call__(self, b: int, k: int) -> bool:  # called alike on every rank: whether step k of batch b adapts
        done = self.steps_before[b] + k
        total = self.steps_before[-1]
        if self.adapting and k % 8 == 0 and done:
            elapsed, rate, _ = self.read(done)  # s per adapting step; scoring: half
            if elapsed + 8 * rate + 0.5 * rate * (total - done) > self.budget:
                self.adapting = False
                self.log(f"ttt budget: stopped adapting at batch {b + 1}/{len(self.steps_before) - 1} step {k}, "
                         f"elapsed {elapsed:.1f}s; scoring the rest")
        self.adapted += self.adapting
        return self.adapting

    def pass_step(self, b: int, t0: float, s: int) -> bool:
        """Before step s of a global pass begun at this rank's t0, ahead of batch b: whether it runs (every input
        reduced across ranks: all decide alike)."""
        done = self.steps_before[b]
        elapsed, rate, took = self.read(done, t0)
        per_step = took / s if s else 0.0
        if self.adapting and elapsed + per_step + rate * (self.steps_before[-1] - done) <= self.budget:
            return True
        self.log(f"ttt budget: global pass stopped at step {s}, elapsed {elapsed:.1f}s")
        return False

def eval_lora(model: GPT, run_model, tokens: torch.Tensor, h: Hyperparameters, rank: int, world: int, device,
              clock, log=print, budget: float | None = None) -> torch.Tensor:
    """Per-document score-first LoRA TTT: each document scored alone (context from itself only, its last
    eval_context tokens), chunk by chunk, by adapters trained on its earlier chunks only (and, warm-started, on
    documents scored before it). Phased: after each phase's documents are scored, the base model takes a
    global pass over every document scored so far. The guard's inputs are reduced (max) across ranks: all
    stop alike. Returns per-target nll."""
    n = tokens.numel() - 1
    E = eval_context(h)
    budget = h.max_eval_seconds if budget is None else budget
    schedule = parse_chunk_schedule(h.ttt_lora_chunk_schedule)
    phases, rest = phase_groups(doc_spans(tokens, n), h.ttt_phases, h.ttt_phase_docs)
    plan = []  # (group, W, R, chunk, segments): the phases' batches, then the rest's
    for g, docs in enumerate(phases + [rest]):
        for W, R, segs in lora_batches(docs, E, h.ttt_lora_docs, world):
            plan.append((g, W, R, batch_chunk(max(hi - start for _, hi, start in segs), h.ttt_lora_chunk, schedule), segs))
    tokens = tokens.to(device)
    before = np.cumsum([0] + [-(-(segs[0][1] - segs[0][0]) // c) for _, _, _, c, segs in plan]).tolist()  # steps
    nll = torch.zeros(n, device=device)
    adapters = Adapters(model, h, h.ttt_lora_docs * E // lora_shapes(E)[0])
    guard = LoraGuard(before, budget, clock, world, device, log, h.ttt_epochs > 0)
    for b, (g, W, R, c, segs) in enumerate(plan):
        lora_batch(run_model, model, tokens, nll, segs[rank::world], W, R, before[b + 1] - before[b], c, adapters, h,
                   lambda k: guard(b, k))
        if h.ttt_log_every > 0 and ((b + 1) % h.ttt_log_every == 0 or b == len(plan) - 1):
            log(f"ttt_lora [{b + 1}/{len(plan)}] window {W} rows {R} chunk {c} steps {before[b + 1] - before[b]} time={clock():.1f}s")
        if g < len(phases) and b + 1 < len(plan) and plan[b + 1][0] > g and h.ttt_epochs > 0:  # a phase scored, documents left
            t0 = clock()
            scored = [d for docs in phases[:g + 1] for d in docs]
            took, steps = global_pass(run_model, model, tokens, scored, h, rank, world, lambda s: guard.pass_step(b + 1, t0, s))
            guard.t_passes += clock() - t0
            adapters.reset()
            log(f"ttt phase {g + 1}/{len(phases)}: {len(scored)} documents scored; global pass {took}/{steps} steps "
                f"of {phase_rows(h, world) * world} x {E} tokens, {clock() - t0:.1f}s")
    log(f"ttt lora: {len(plan)} batches, {before[-1]} steps, {guard.adapted} adapting, {clock() - guard.t_start:.1f}s")
    return all_reduce(nll, world)  # each rank scored its own documents

# ----------------------------------------------------------------------------- main
# Phases: setup -> prime (compile every graph on training tokens, then undo) -> train (the
# 600 s clock) -> EMA eval, export, reload, standard/sliding/TTT eval (the eval clock) -> record.

class Logger:
    def __init__(self, path: Path | None):
        self.path = path
        if path:
            path.write_text("")  # a new log each run (its folder exists: preflight)

    def __call__(self, msg: str) -> None:
        if self.path:
            print(msg, flush=True)
            with open(self.path, "a") as f:
                f.write(msg + "\n")

def make_clock():
    """Seconds since this call."""
    return lambda t0=time.perf_counter(): time.perf_counter() - t0

def packed_source_sha(code: bytes) -> str:
    """The sha256 of the readable source that tools/pack.py names in a packed script's first line ("": not packed)."""
    first = code.split(b"\n", 1)[0].decode("ascii", "replace")
    marker = "packed by tools/pack.py (source sha256 "
    return first.split(marker, 1)[1][:64] if marker in first else ""

def compiled_graphs() -> int:
    return torch._dynamo.utils.counters["stats"]["unique_graphs"]

def compile_counts() -> tuple[int, int, int]:
    """(graphs compiled, FX-graph cache hits, misses) so far: a warm COMPILE_CACHE_DIR hits, a cold one misses."""
    c = torch._dynamo.utils.counters["inductor"]
    return compiled_graphs(), c["fxgraph_cache_hit"], c["fxgraph_cache_miss"]

@dataclass
class Runtime:
    rank: int
    world: int
    device: torch.device
    accum: int  # micro-batches per step
    compile: bool
    log: Logger

def log_memory(rt: Runtime, phase: str) -> None:
    """On CUDA: the phase's peak memory since the last call (the largest rank's), then a fresh peak."""
    if rt.device.type == "cuda":
        allocated, reserved = reduce_max(rt, torch.cuda.max_memory_allocated(), torch.cuda.max_memory_reserved())
        rt.log(f"peak memory {phase}: {allocated / 2**30:.2f} GiB allocated, {reserved / 2**30:.2f} GiB reserved")
        torch.cuda.reset_peak_memory_stats()

def shared_outcome(rt: Runtime, fn, rank0_only: bool = False):
    """fn() on every rank (or rank 0 only; its value is shared); an exception of any type on any
    rank becomes the same SharedError on every rank: no rank is left waiting in a collective."""
    out = None
    err = None
    if rt.rank == 0 or not rank0_only:
        try:
            out = fn()
        except Exception as e:
            err = one_line(e)
    if rt.world > 1:
        got = [None] * rt.world
        dist.all_gather_object(got, (err, out if rank0_only and rt.rank == 0 else None))
        err = next((e for e, _ in got if e), None)
        out = got[0][1] if rank0_only else out
    if err:
        raise SharedError(err)
    return out

def one_line(e: Exception, trace: bool = True) -> str:
    """An exception in one line: ours as it is; another as its type and its message's first line, its traceback
    printed (unless trace=False)."""
    if isinstance(e, RunError):
        return str(e)
    if trace:
        traceback.print_exc()
    return f"{type(e).__name__}: {(str(e) or '?').splitlines()[0][:200]}"

def preflight(h: Hyperparameters, world: int, accum: int) -> None:
    """What the run needs, checked on every rank before any work, so a problem costs seconds."""
    for pkg in ("sentencepiece", "zstandard"):
        try:
            importlib.import_module(pkg)
        except ImportError as e:
            raise RunError(f"missing package {pkg} ({e}): pip install -r requirements.txt")
    L, wall = h.train_seq_len, h.max_wallclock_seconds
    E = eval_context(h)
    chunks = [h.ttt_lora_chunk] + [c for _, c in parse_chunk_schedule(h.ttt_lora_chunk_schedule)]
    lora_targets(h.ttt_lora_targets)
    ns_coefficients(h.ns_coeffs, h.muon_backend_steps)
    for bad, msg in [
        (h.train_batch_tokens % (world * accum * L), f"TRAIN_BATCH_TOKENS={h.train_batch_tokens} does not split into {world} ranks x {accum} micro-batches of TRAIN_SEQ_LEN={L}"),
        (h.gptq_calib_seqs % world, f"GPTQ_CALIB_SEQS={h.gptq_calib_seqs} does not split into {world} ranks"),
        (0 < wall <= h.gptq_reserve_seconds and h.gptq_calib_seqs > 0, f"GPTQ_RESERVE_SECONDS={h.gptq_reserve_seconds} leaves no training time in MAX_WALLCLOCK_SECONDS={wall}"),
        (h.eval_seq_len < 0 or not E >= h.eval_stride > 0 or not 2 <= h.embed_bits <= 8, "need EVAL_SEQ_LEN >= 0, 0 < EVAL_STRIDE <= the eval context, and 2 <= EMBED_BITS <= 8"),
        (min(h.ttt_lora_rank, h.ttt_lora_chunk, h.ttt_lora_docs) < 1 or max(chunks) > E, f"need TTT_LORA_RANK, _DOCS >= 1 and 1 <= TTT_LORA_CHUNK (and the schedule's chunks) <= the eval context {E}"),
        (min(h.ttt_phases, h.ttt_phase_docs) < 0 or h.ttt_phase_batch_tokens < 1, "need TTT_PHASES, TTT_PHASE_DOCS >= 0 and TTT_PHASE_BATCH_TOKENS >= 1"),
        (h.ttt_lora_alpha <= 0 or not 0 <= h.ttt_lora_beta2 < 1, "need TTT_LORA_ALPHA > 0 and 0 <= TTT_LORA_BETA2 < 1"),
        (h.ttt_phase_lr < 0 or not 0 <= h.ttt_phase_momentum < 1, "need TTT_PHASE_LR >= 0 and 0 <= TTT_PHASE_MOMENTUM < 1"),
        (not 0 <= h.qat_threshold <= 1, f"need 0 <= QAT_THRESHOLD={h.qat_threshold:g} <= 1 (a fraction of the peak LR)"),
        (not 0 <= h.eval_margin_seconds < h.max_eval_seconds, f"need 0 <= EVAL_MARGIN_SECONDS={h.eval_margin_seconds:g} < MAX_EVAL_SECONDS={h.max_eval_seconds:g}"),
        (h.artifact_path and not h.eval_only, f"ARTIFACT_PATH={h.artifact_path!r} is read by EVAL_ONLY=1 alone (a training run writes OUT_DIR's artifact)"),
        (not (h.warmdown_iters > 0 or 0 < h.warmdown_frac <= 1) or h.parallel_from < -1, "need WARMDOWN_ITERS > 0 or 0 < WARMDOWN_FRAC <= 1, and PARALLEL_FROM >= -1"),
        (not 0 <= h.min_lr <= 1 or not 0 <= h.adam_beta2 < 1, f"need 0 <= MIN_LR={h.min_lr:g} <= 1 (a fraction of the peak LR) and 0 <= ADAM_BETA2 < 1"),
        (not 0 <= h.smear_window <= h.model_dim or not 0 <= h.attn_gate <= h.model_dim or h.doc_isolation not in (0, 1),
         f"need 0 <= SMEAR_WINDOW, ATTN_GATE <= MODEL_DIM={h.model_dim} and DOC_ISOLATION 0 or 1"),
        (h.lqer_rank < 0, f"need LQER_RANK >= 0 (0: no LQER factors), not {h.lqer_rank}"),
        (h.recur_passes < 2, f"need RECUR_PASSES >= 2 (RECUR_LAYERS=\"\": no recurrence), not {h.recur_passes}")]:
        if bad:
            raise RunError(msg)
    parse_recur(h.recur_layers, h.num_layers)
    probe = Path(h.out_dir) / "logs" / f".probe_{os.getpid()}"
    try:
        probe.parent.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"x")
        probe.unlink()
    except OSError as e:
        raise RunError(f"OUT_DIR {h.out_dir} is not writable ({e})")
    if shutil.disk_usage(h.out_dir).free < 3 * h.byte_cap:
        raise RunError(f"OUT_DIR {h.out_dir} has {shutil.disk_usage(h.out_dir).free} bytes free, fewer than 3 x BYTE_CAP")

def use_compile_cache(h: Hyperparameters) -> Path:
    """Points inductor's on-disk caches (FX graphs, AOT-autograd graphs, kernels) at COMPILE_CACHE_DIR, so a
    later run on this node (another seed, EVAL_ONLY=1) loads what this one compiled. An entry is keyed by a
    hash of its graph, input shapes, torch version, compiler config and device: another configuration's or
    an older script's entries are never used for a graph they do not match."""
    default = os.environ.get("TORCHINDUCTOR_CACHE_DIR") or Path(h.out_dir) / "compile_cache"  # a user's own wins
    cache = Path(h.compile_cache_dir or default).resolve()
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunError(f"COMPILE_CACHE_DIR {cache} cannot be made ({e})")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache)
    return cache

def fullgraph_error(fn, *args) -> str | None:
    """None if fn(*args) compiles as one graph and runs forward and backward, else why not (one line)."""
    try:
        out = torch.compile(fn, fullgraph=True, dynamic=False)(*args)
        if out.requires_grad:
            out.float().sum().backward()
    except Exception as e:
        return one_line(e, trace=False)

def setup(h: Hyperparameters) -> Runtime:
    distributed = "RANK" in os.environ
    rank, world = (int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])) if distributed else (0, 1)
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if distributed:
        dist.init_process_group("nccl" if cuda else "gloo", device_id=device if cuda else None)
    h.run_id = h.run_id or uuid.uuid4().hex[:8]
    accum = h.grad_accum_steps or (8 // world if cuda and 8 % world == 0 else 1)
    rt = Runtime(rank, world, device, accum, h.compile == 1 or (h.compile < 0 and cuda), Logger(None))
    shared_outcome(rt, lambda: preflight(h, world, accum))
    shared_outcome(rt, lambda: load_tokenizer(h))  # sets VOCAB_SIZE, and with it the settings that follow it
    vocab_line = apply_vocab_settings(h)
    if rt.compile:  # before anything compiles
        shared_outcome(rt, lambda: use_compile_cache(h))
    log_name = f"{h.run_id}.reeval.txt" if h.eval_only else f"{h.run_id}.txt"  # never the training run's log
    rt.log = log = Logger(Path(h.out_dir) / "logs" / log_name if rank == 0 else None)
    log("hparams " + json.dumps(asdict(h)))
    log(vocab_line)
    if rt.compile and attention_kernel(device, bool(h.flash_attn)) == "flash_attn_3":
        q = torch.zeros(1, 128, 2, 64, device=device, dtype=torch.bfloat16, requires_grad=True)
        ids = torch.where(torch.arange(128, device=device) % 48 == 0, BOS_ID, 5)[None]  # three documents (DOC_ISOLATION)
        if h.doc_isolation:  # the varlen boundaries are a data-dependent shape inside the graph
            torch._dynamo.config.capture_dynamic_output_shape_ops = True
        layout = (lambda: document_layout(ids)) if h.doc_isolation else (lambda: None)
        why = fullgraph_error(lambda t: causal_attention(t, t, t, 0.125, True, layout()), q)  # forward and backward, as training runs it
        if reduce_max(rt, float(why is not None))[0]:  # any rank: all fall back alike
            h.flash_attn = 0
            log(f"flash_attn_3 does not trace under torch.compile(fullgraph=True) ({why or 'on another rank'}); using SDPA")
    log(f"world_size:{world} grad_accum:{rt.accum} device:{torch.cuda.get_device_name(device) if cuda else 'cpu'} "
        f"compile:{rt.compile} attention:{attention_kernel(device, bool(h.flash_attn))}"
        + (f" alloc_conf:{os.environ.get('PYTORCH_ALLOC_CONF') or os.environ.get('PYTORCH_CUDA_ALLOC_CONF')}" if cuda else ""))
    torch.manual_seed(h.seed)
    np.random.seed(h.seed)
    return rt

def load_data(h: Hyperparameters, rt: Runtime):
    """Validation tokens and their target bytes (the byte sidecar's when DATA_PATH has one, else counted from
    the tokenizer's pieces), on the device."""
    sp = load_tokenizer(h)
    val_tokens = load_validation(os.path.join(h.data_path, VAL_PATTERN), h.train_seq_len)
    if int(val_tokens.max()) >= h.vocab_size:
        raise RunError(f"validation token id {int(val_tokens.max())} >= VOCAB_SIZE {h.vocab_size}")
    if val_tokens.numel() <= eval_context(h):
        raise RunError(f"validation split has {val_tokens.numel()} tokens, fewer than one window of EVAL_SEQ_LEN={eval_context(h)}+1")
    sidecar = load_sidecar(h.data_path, val_tokens.numel())
    if sidecar is None and is_caseops(sp):
        raise RunError(f"{h.tokenizer_path} is a CaseOps tokenizer, and {h.data_path} has no byte sidecar (fineweb_val_bytes_*.bin, "
                       f"written by data/prepare_text.py --caseops): its pieces' bytes are not the text's")
    if sidecar is None:
        val_bytes = target_bytes(val_tokens, build_byte_luts(sp))
        source = "tokenizer's pieces"
    else:
        nbytes, shards = sidecar
        bos_bytes = int(nbytes[val_tokens == sp.bos_id()].sum())
        if bos_bytes:
            raise RunError(f"byte sidecar in {h.data_path} does not match its tokens: {bos_bytes} bytes on BOS tokens (must be 0)")
        val_bytes = nbytes[1:]
        source = f"sidecar: {shards} fineweb_val_bytes shard{'s' * (shards > 1)}"
    docs = int((val_tokens == sp.bos_id()).sum())
    rt.log(f"vocab:{h.vocab_size} val_tokens:{val_tokens.numel()} val_docs:{docs} val_bytes:{int(val_bytes.sum())} (from the {source})")
    return val_tokens.to(rt.device), val_bytes.to(rt.device)

class Trainer:
    """The compiled training step, the priming of every graph, and the wall-clocked loop."""

    def __init__(self, h: Hyperparameters, rt: Runtime, model: GPT):
        self.h = h
        self.rt = rt
        self.model = model
        self.params = list(model.parameters())
        self.optimizers = build_optimizers(model, h, rt.rank, rt.world, fused=rt.device.type == "cuda")
        if rt.compile:  # graphs of GPT.forward: <= 4 training states, scoring, LoRA TTT's 2 (+ what a short run adds)
            torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 16)
        # static shapes, but for the sizes LoRA TTT marks as varying (mark_varying): one graph for all its batches
        self.run_model = torch.compile(model, fullgraph=True, dynamic=False) if rt.compile else model
        self.primed = set()  # ("train", recurrent, qat) and ("eval", recurrent): the states whose graphs priming ran
        self.graphs_primed = 0  # graphs compiled when priming ended
        self.loader = TrainLoader(os.path.join(h.data_path, "fineweb_train_*.bin"), h.train_seq_len, h.seed)

    def batch(self):
        return self.loader.batch(self.h.train_batch_tokens // self.h.train_seq_len, self.rt.rank, self.rt.world)

    def step(self, x, y, mult: float, step: int, qat: bool) -> torch.Tensor:
        h, rt = self.h, self.rt
        self.model.train()
        if qat:  # QAT is switched off explicitly (set_qat(model, False)) wherever it ends
            set_qat(self.model, True)
        frac = min(1.0, step / max(1, h.muon_momentum_warmup_steps))
        for g in self.optimizers[0].param_groups:
            g["momentum"] = (1 - frac) * h.muon_momentum_warmup_start + frac * h.muon_momentum
        for opt in self.optimizers:
            for g in opt.param_groups:
                g["lr"] = g["base_lr"] * mult
        total = torch.zeros((), device=rt.device)
        for xm, ym in zip(x.chunk(rt.accum), y.chunk(rt.accum)):
            with torch.autocast(rt.device.type, dtype=torch.bfloat16):
                loss = self.run_model(xm.to(rt.device, non_blocking=True), ym.to(rt.device, non_blocking=True))
            (loss / rt.accum).backward()
            total += loss.detach() / rt.accum
        all_reduce_grads(self.params, rt.world)
        torch.nn.utils.clip_grad_norm_(self.params, h.grad_clip_norm)
        for opt in self.optimizers:
            opt.step()
        self.model.zero_grad(set_to_none=True)
        return total

    def elapsed_ms(self, t0: float) -> float:
        """Training time so far: one clock for all ranks (the slowest); syncs the device."""
        sync(self.rt.device)
        return reduce_max(self.rt, 1000 * (time.perf_counter() - t0))[0]

    def prime(self, train: bool = True) -> tuple[float, float]:
        """Runs every graph the run will need on training tokens, then undoes it: weights and optimizer state
        (train() rewinds the loader). Training: each (recurrent, QAT) state its schedule reaches
        (training_phases); evaluation: scoring, the LoRA TTT steps and (phased TTT) a global-pass step in the state
        training ends in (EVAL_ONLY: the artifact's). Returns the measured QAT / plain and recurrent / plain step-time ratios. On CUDA each
        part's peak memory is logged."""
        h, rt, model = self.h, self.rt, self.model
        recur_before = model.recur
        t_start = time.perf_counter()
        before = compile_counts()  # the FlashAttention-3 probe's graph is not priming's
        phases = training_phases(h) if train else []
        n = max(h.warmup_steps, 2 * len(phases) if rt.compile else 0) if train else 0
        if n == 0 and not rt.compile:
            return 1.0, 1.0
        snapshot = ({k: v.clone() for k, v in model.state_dict().items()},
                    [{"state": {}, "param_groups": o.state_dict()["param_groups"]} for o in self.optimizers])
        times = {ph: [] for ph in phases}
        for i in range(n):
            recurrent, qat = phases[i * len(phases) // n]
            model.recur = recurrent
            set_qat(model, qat)  # step() switches QAT on, never off
            t0 = time.perf_counter()
            self.step(*self.batch(), 1.0, 0, qat)
            times[recurrent, qat].append(self.elapsed_ms(t0))
        set_qat(model, False)
        if n:
            log_memory(rt, "priming: training steps")
        sync(rt.device)
        t_scoring = time.perf_counter()
        E = eval_context(h)
        x, y = self.loader.batch(-(-(E * phase_rows(h, rt.world) + 1) // h.train_seq_len), 0, 1)
        toks = torch.cat([x.flatten(), y[-1, -1:]]).to(rt.device)  # training windows end to end: >= the eval shapes
        model.recur = recur_at_end(h) if train else recur_before
        for T in sorted({h.train_seq_len, E}):  # the standard eval's windows, and the sliding eval's and TTT's
            eval_sliding(self.run_model, toks[:T + 1], T, T, h.eval_batch_seqs, 0, 1, rt.device)
        log_memory(rt, "priming: sliding eval")
        sync(rt.device)
        t_lora = time.perf_counter()
        for W in lora_shapes(E) if h.ttt_enabled else ():  # an adapting step, then a scoring one: one graph each for every shape
            rows = h.ttt_lora_docs * E // W
            lora_batch(self.run_model, model, toks[:E + 1], torch.zeros(E, device=rt.device), [(0, W, 0)], W, rows, 2,
                       h.ttt_lora_chunk, Adapters(model, h, rows), h, lambda k: True)
            log_memory(rt, f"priming: lora ttt window {W}, {rows} rows")
        if h.ttt_enabled and h.ttt_phases > 0 and h.ttt_epochs > 0:  # a phase's global-pass step (undone below)
            params = list(model.parameters())
            rows = phase_rows(h, rt.world)
            model.train()
            phase_step(self.run_model, params, torch.optim.SGD(params, lr=0.0, momentum=h.ttt_phase_momentum),
                       toks[:rows * E].view(rows, E), toks[1:rows * E + 1].view(rows, E), rt.world)
            log_memory(rt, f"priming: ttt global pass, {rows} rows")
        self.primed = {("train", *ph) for ph in phases} | {("eval", model.recur)}
        model.recur = recur_before
        model.load_state_dict(snapshot[0])
        for opt, sd in zip(self.optimizers, snapshot[1]):
            opt.load_state_dict(sd)
        sync(rt.device)
        t_end = time.perf_counter()
        parts = f"training {t_scoring - t_start:.1f}s, scoring {t_lora - t_scoring:.1f}s, lora ttt {t_end - t_lora:.1f}s"
        self.graphs_primed = compiled_graphs()  # what compiles from here on is a recompile (the log counts them)
        graphs, hits, misses = (now - then for now, then in zip(compile_counts(), before))
        cache = f"compile cache {os.environ.get('TORCHINDUCTOR_CACHE_DIR')}: {hits} hits, {misses} misses"
        done = f"{graphs} graphs compiled in {t_end - t_start:.1f}s: {parts} ({cache if rt.compile else 'eager'})"
        if not train:
            rt.log(f"priming: the evaluation graphs run and undone, {done}")
            return 1.0, 1.0
        best = {ph: min(times[ph][1:] or [math.nan]) for ph in phases}
        r = recur_at_end(h)  # the QAT ratio of the end state; the recurrence ratio of plain steps
        switched = (False, False) in best and (True, False) in best
        ratios = [best[r, True] / best[r, False], best[True, False] / best[False, False] if switched else 1.0]
        ratios = [1.0 if math.isnan(x) else max(1.0, x) for x in ratios]  # nan: a phase primed once, untimed
        rt.log(f"priming: {n} steps run and undone, {done}, qat/plain step time {ratios[0]:.2f}, recurrent/plain {ratios[1]:.2f}")
        return ratios[0], ratios[1]

    def unprimed(self, key: tuple, what: str) -> None:
        """Logs, once, that a state priming did not run compiles now (a run that ended outside its schedule)."""
        if self.rt.compile and key not in self.primed:
            self.primed.add(key)
            self.rt.log(f"compiling now: {what} (not primed: the run left its schedule)")

    def train(self, ratios: tuple[float, float]) -> tuple[int, float]:
        """The timed loop; leaves the EMA weights in the model; returns (steps, training ms)."""
        h, rt, log, model = self.h, self.rt, self.rt.log, self.model
        qat_ratio, recur_ratio = ratios
        ema = [p.detach().float().clone() for p in self.params]
        timed = self.calibrate()[1] if h.max_wallclock_seconds > 0 and h.gptq_calib_seqs > 0 else 0.0
        self.loader.pos = 0  # the windows priming and that timing (its first, slowest run) read are undone
        reserve = max(h.gptq_reserve_seconds, 2e-3 * timed) if h.gptq_calib_seqs > 0 else 0.0
        if h.max_wallclock_seconds > 0:
            log(f"training clock: {h.max_wallclock_seconds - reserve:.1f}s, {reserve:.1f}s kept for GPTQ calibration (timed: {timed:.0f}ms)")
        wall_ms = 1000 * (h.max_wallclock_seconds - reserve)
        stop_at = h.iterations
        step = 0
        qat_from = None
        qat_at_ms = 0.0
        recur_from = None
        recur_at_ms = 0.0
        switch = recur_at_end(h)
        sync(rt.device)
        t0 = time.perf_counter()
        while step < stop_at:
            if switch and recur_from is None and step >= min(h.recur_start_frac * stop_at, stop_at - 1):
                model.recur = True
                recur_from = step
                recur_at_ms = self.elapsed_ms(t0)
                log(f"recurrence: layers {model.recur_layers}, {h.recur_passes} passes, from step {step}")
            mult = lr_multiplier(step, stop_at, warmdown_steps(h, stop_at))
            if qat_from is None and mult < h.qat_threshold:  # before MIN_LR's floor: QAT starts as it did without one
                qat_from, qat_at_ms = step, self.elapsed_ms(t0)
                log(f"qat: round-to-nearest on at step {step} (lr multiplier {mult:.3f})")
                self.unprimed(("train", model.recur, True), "the QAT step without the recurrence")
            loss = self.step(*self.batch(), max(mult, h.min_lr), step, qat_from is not None)
            with torch.no_grad():
                d = min(h.ema_decay, (1 + step) / (10 + step))
                torch._foreach_lerp_(ema, [p.detach() for p in self.params], 1 - d)
            step += 1
            log_now = step <= 10 or step % h.train_log_every == 0 or step == stop_at
            slower = step % 10 == 0 and (qat_from is not None or (recur_from is not None and step - recur_from <= 50))
            if log_now or slower:  # QAT and recurrent steps are slower: re-predict
                elapsed = self.elapsed_ms(t0)
                if h.max_wallclock_seconds > 0:  # plain: the mean non-QAT step since the recurrence switch
                    a, a_ms = (recur_from, recur_at_ms) if recur_from is not None else (0, 0.0)
                    b, b_ms = (qat_from, qat_at_ms) if qat_from is not None else (step, elapsed)
                    plain = (b_ms - a_ms) / (b - a) if b > a else elapsed / step
                    if qat_from is not None:  # QAT steps since the later of QAT on / recurrence on
                        c, c_ms = max((qat_from, qat_at_ms), (recur_from or 0, recur_at_ms))
                        qat_ms = (elapsed - c_ms) / (step - c)
                    else:
                        qat_ms = plain * qat_ratio
                    pending = switch and recur_from is None
                    qat_steps = math.ceil(h.qat_threshold * warmdown_steps(h, stop_at))
                    stop_at = predict_stop(step, elapsed, plain, qat_ms, wall_ms,
                                           math.inf if qat_from is not None else qat_steps, h.iterations,
                                           h.recur_start_frac if pending else 1.0, recur_ratio)
            if log_now:
                loss_v = all_reduce(loss, rt.world).item() / rt.world
                if not math.isfinite(loss_v):
                    raise SharedError(f"non-finite training loss at step {step}")
                log(f"step:{step}/{stop_at} train_loss:{loss_v:.4f} train_time:{elapsed:.0f}ms step_avg:{elapsed / step:.2f}ms")
        set_qat(self.model, False)
        if model.recur != switch:
            log(f"WARNING: training stopped at step {step} before the recurrence switched on; it stays off (lower RECUR_START_FRAC)")
            self.unprimed(("eval", model.recur), "the evaluation graphs without the recurrence")
        if model.recur_layers:
            model.recur_on.fill_(float(model.recur))
        ms = self.elapsed_ms(t0)
        with torch.no_grad():
            torch._foreach_copy_(self.params, ema)
        return step, ms

    def calibrate(self) -> tuple[dict | None, float]:
        """GPTQ Hessians of the (EMA) model on the next training windows; (hessians, ms)."""
        h, rt = self.h, self.rt
        if h.gptq_calib_seqs <= 0:
            return None, 0.0
        t0 = time.perf_counter()
        x, y = self.loader.batch(h.gptq_calib_seqs, rt.rank, rt.world)
        hs = collect_hessians(self.model, x.to(rt.device), y.to(rt.device), h.eval_batch_seqs, rt.world)
        return hs, self.elapsed_ms(t0)

def export(h: Hyperparameters, rt: Runtime, model: GPT, artifact: Path, code_bytes: int,
           hessians: dict | None) -> tuple[int, dict]:
    """Rank 0 writes the artifact (within the cap or not at all); every rank learns the outcome."""
    def write() -> tuple[int, dict]:
        blob, info = export_within_cap(model.state_dict(), quantized_names(model), code_bytes, hessians, h.byte_cap, rt.log,
                                       h.lqer_rank)
        write_atomic(artifact, blob)
        return len(blob), dict(info, sha256=hashlib.sha256(blob).hexdigest())
    return shared_outcome(rt, write, rank0_only=True)

def scored(log, name: str, loss_bpb: tuple[float, float], extra: str = "") -> tuple[float, float]:
    """Logs a final score; a non-finite one is an error (never a record of that score)."""
    loss, b = loss_bpb
    if not (math.isfinite(loss) and math.isfinite(b)):
        raise SharedError(f"{name} is not finite (val_loss {loss}, val_bpb {b})")
    log(f"{name} val_loss:{loss:.8f} val_bpb:{b:.8f}{extra}")
    return loss, b

class Record:
    """submission.json and train.log, each written whole by rank 0 as soon as there is a score and again when
    it changes; `status` says which score it is ("final", or provisional: TTT has not finished)."""

    def __init__(self, h: Hyperparameters, rt: Runtime):
        self.h = h
        self.rt = rt
        self.fields = {}  # the results so far
        self.violations = []  # broken rules: the run fails, the record says so
        self.device = torch.cuda.get_device_name(rt.device) if rt.device.type == "cuda" else "cpu"  # read while CUDA is sound

    def violate(self, msg: str) -> None:
        self.violations.append(msg)
        self.rt.log("error: " + msg)

    def write(self, status: str, collective: bool = True, **fields) -> None:
        """collective=False: rank 0 alone, with no collective (a failure path, where a peer may be gone)."""
        self.fields.update(fields)
        if collective:
            shared_outcome(self.rt, lambda: self.write_files(status), rank0_only=True)
        elif self.rt.rank == 0:
            self.write_files(status)

    def write_files(self, status: str) -> None:
        h, rt, f, dev = self.h, self.rt, self.fields, self.device
        scores = {k: None if f.get(k) is None else round(f[k], 8)
                  for k in ("val_bpb", "val_loss", "prequant_val_bpb", "roundtrip_val_bpb", "sliding_val_bpb", "ttt_val_bpb")}
        ttt = ", score-first lora TTT" if f.get("ttt_val_bpb") is not None else ""
        quantizer = {True: "GPTQ ", False: "RTN ", None: ""}[f["gptq"]]  # None: a re-evaluated artifact's, not known
        sub = dict(author=h.author, github_id=h.github_id, name=h.name or f"{h.num_layers}L U-Net XSA BigramHash int5 TTT",
                   blurb=f"{h.num_layers}x{h.model_dim} U-Net GPT (vocab {h.vocab_size}), XSA, BigramHash, Muon, late QAT, int5 "
                         f"{quantizer}(embedding int{h.embed_bits}) + zstd, sliding eval stride {h.eval_stride}{ttt}; {rt.world}x {dev}",
                   date=time.strftime("%Y-%m-%d", time.gmtime()), status=status, **scores, bytes_total=f["bytes_code"] + f["bytes_model"],
                   bytes_code=f["bytes_code"], bytes_model=f["bytes_model"], code_sha256=f["code_sha256"],
                   source_sha256=f["source_sha256"] or None, rule_violations=self.violations,
                   steps=f["steps"], train_time_s=f["train_time_s"], eval_time_s=round(f["eval_time_s"], 2),
                   gptq_calibration_s=f["gptq_calibration_s"], world_size=rt.world, device=dev, seed=h.seed,
                   **{k: f[k] for k in ("pruned_frac", "zstd_level", "gptq", "artifact_sha256", "reevaluated")}, run_id=h.run_id)
        write_atomic(Path(h.out_dir) / "submission.json", (json.dumps(sub, indent=2, allow_nan=False) + "\n").encode())
        rt.log(f"submission.json written ({status}): val_bpb {f['val_bpb']:.8f}" + (" (RULES BROKEN)" if self.violations else ""))
        write_atomic(Path(h.out_dir) / "train.log", rt.log.path.read_bytes())

def train_and_export(h: Hyperparameters, rt: Runtime, trainer: Trainer, record: Record, validate, artifact: Path,
                     code_bytes: int):
    """Prime, train on the wall clock, calibrate GPTQ, then (on the eval clock, returned) the pre-quant eval and
    the export within the cap."""
    log, model = rt.log, trainer.model
    for f in (artifact.name, "submission.json", "train.log") if rt.rank == 0 else ():
        (Path(h.out_dir) / f).unlink(missing_ok=True)  # this run's results replace the last run's, whatever happens
    ratios = trainer.prime()
    steps, train_ms = trainer.train(ratios)
    log_memory(rt, "training")
    hessians, calib_ms = trainer.calibrate()
    log_memory(rt, "gptq calibration")
    if 0 < h.max_wallclock_seconds < (train_ms + calib_ms) / 1000:
        record.violate(f"training + calibration took {(train_ms + calib_ms) / 1000:.1f}s > MAX_WALLCLOCK_SECONDS={h.max_wallclock_seconds:g}")
    log(f"training done: {steps} steps, train_time:{train_ms:.0f}ms gptq_calibration:{calib_ms:.0f}ms "
        f"({h.gptq_calib_seqs} training seqs) total:{train_ms + calib_ms:.0f}ms")
    clock = make_clock()  # everything from here counts against the eval budget
    pre_loss, pre_bpb = scored(log, "final_prequant_ema_exact", validate())
    log(f"step:{steps}/{steps} val_loss:{pre_loss:.4f} val_bpb:{pre_bpb:.4f}")
    t_export = clock()
    model_bytes, info = export(h, rt, model, artifact, code_bytes, hessians)
    log(f"artifact {'gptq' if hessians else 'rtn'} zstd level {info['level']}, {sum(m != 1 for m in info['steps'].values())} "
        f"tensors at other steps, {len(info['lqer'])} with LQER factors, pruned {info['pruned']} symbols = {info['pruned_frac']:.4%} in {info['packs']} packs, "
        f"export_time:{clock() - t_export:.1f}s file {artifact.name}")
    log(f"artifact bytes_total:{code_bytes + model_bytes} bytes_code:{code_bytes} bytes_model:{model_bytes} cap:{h.byte_cap}")
    record.fields.update(steps=steps, train_time_s=round((train_ms + calib_ms) / 1000, 2), gptq=bool(hessians),
                         gptq_calibration_s=round(calib_ms / 1000, 2), prequant_val_bpb=pre_bpb, bytes_model=model_bytes,
                         pruned_frac=info["pruned_frac"], zstd_level=info["level"], artifact_sha256=info["sha256"],
                         reevaluated=None)
    return clock

TRAINING_FIELDS = ("steps", "train_time_s", "gptq", "gptq_calibration_s", "prequant_val_bpb", "pruned_frac", "zstd_level")

def artifact_to_reevaluate(h: Hyperparameters, rt: Runtime, trainer: Trainer, record: Record, artifact: Path,
                           code_bytes: int):
    """EVAL_ONLY=1: no training; the artifact's model is primed, then (on the eval clock, returned) read back as
    in a full run. OUT_DIR's record is replaced unless it is a final one; the training figures of a record of
    the same artifact (sha256) are kept."""
    def describe() -> tuple[int, str, dict]:  # on every rank: each loads the artifact
        if not artifact.is_file():
            raise RunError(f"EVAL_ONLY=1: no artifact at {artifact} (ARTIFACT_PATH, or OUT_DIR's final_model.int5.ptz)")
        prior_path = Path(h.out_dir) / "submission.json"
        prior = json.loads(prior_path.read_text()) if prior_path.is_file() else {}
        if prior.get("status", "final") == "final" and prior_path.is_file():
            raise RunError(f"EVAL_ONLY=1 would replace the final record {prior_path}: give it another OUT_DIR (ARTIFACT_PATH={artifact})")
        data = artifact.read_bytes()
        load_artifact_into(trainer.model, artifact)
        sha = hashlib.sha256(data).hexdigest()
        kept = {k: prior.get(k) for k in TRAINING_FIELDS} if prior.get("artifact_sha256") == sha else {}
        return len(data), sha, kept
    model_bytes, sha, kept = shared_outcome(rt, describe)
    rt.log(f"eval only: artifact {artifact} ({model_bytes} bytes, sha256 {sha}), recurrence {'on' if trainer.model.recur else 'off'}"
           + (", training figures from OUT_DIR's record of it" if kept else ""))
    if code_bytes + model_bytes > h.byte_cap:
        record.violate(f"artifact bytes_total {code_bytes + model_bytes} > BYTE_CAP {h.byte_cap} (with this script's {code_bytes} code bytes)")
    trainer.prime(train=False)
    record.fields.update({k: None for k in TRAINING_FIELDS}, bytes_model=model_bytes, artifact_sha256=sha,
                         reevaluated=dict(artifact=str(artifact), sha256=sha))
    record.fields.update(kept)
    return make_clock()

def main() -> None:
    if not (os.environ.get("PYTORCH_CUDA_ALLOC_CONF") or os.environ.get("PYTORCH_ALLOC_CONF")):  # the user's wins
        os.environ["PYTORCH_CUDA_ALLOC_CONF"] = "expandable_segments:True"  # read when CUDA first allocates
    h = Hyperparameters.from_env()
    rt = setup(h)
    log, device = rt.log, rt.device
    val_tokens, val_bytes = shared_outcome(rt, lambda: load_data(h, rt))
    model = GPT(h).to(device)
    log(f"model_params:{sum(p.numel() for p in model.parameters())}")
    trainer = shared_outcome(rt, lambda: Trainer(h, rt, model))
    run_model = trainer.run_model

    def validate() -> tuple[float, float]:  # the standard eval: non-overlapping windows
        set_qat(model, False)
        L = h.train_seq_len
        return bpb(eval_sliding(run_model, val_tokens, L, L, h.eval_batch_seqs, rt.rank, rt.world, device), val_bytes)

    record = Record(h, rt)
    code = Path(__file__).read_bytes()  # what counts: this file as it runs (the packed script, for a record)
    code_bytes = len(code)
    record.fields.update(code_sha256=hashlib.sha256(code).hexdigest(), source_sha256=packed_source_sha(code))
    packed = f" (packed; source sha256 {record.fields['source_sha256']})" if record.fields["source_sha256"] else ""
    log(f"code: {Path(__file__).name} {code_bytes} bytes, sha256 {record.fields['code_sha256']}{packed}")
    artifact = Path(h.artifact_path or Path(h.out_dir) / "final_model.int5.ptz")
    if h.eval_only:
        clock = artifact_to_reevaluate(h, rt, trainer, record, artifact, code_bytes)
    else:
        clock = train_and_export(h, rt, trainer, record, validate, artifact, code_bytes)
    budget = h.max_eval_seconds - h.eval_margin_seconds  # what the TTT guard aims at
    shared_outcome(rt, lambda: load_artifact_into(model, artifact))  # every rank evaluates the weights read back
    t_rt = clock()
    rt_loss, rt_bpb = scored(log, "final_int5_zstd_roundtrip_exact", validate(), f" time:{clock() - t_rt:.1f}s")
    log_memory(rt, "standard eval")
    t_sl = clock()
    nll = eval_sliding(run_model, val_tokens, eval_context(h), h.eval_stride, h.eval_batch_seqs, rt.rank, rt.world, device)
    sl_s = clock() - t_sl
    sl_loss, sl_bpb = scored(log, "final_sliding_exact", bpb(nll, val_bytes), f" time:{sl_s:.1f}s eval_time:{clock():.1f}s")
    log_memory(rt, "sliding eval")
    now, sl_s = reduce_max(rt, clock(), sl_s)  # every rank decides alike
    record.fields.update(bytes_code=code_bytes, roundtrip_val_bpb=rt_bpb, sliding_val_bpb=sl_bpb)
    ttt_on = bool(h.ttt_enabled)
    if ttt_on:
        sl_s *= max(1.0, h.eval_stride / h.ttt_lora_chunk)  # LoRA scores ~W/c tokens a target (the guard prices the rest)
        ttt_on = now + 1.1 * sl_s <= budget
        if not ttt_on:
            log(f"ttt skipped: {now:.1f}s + scoring (~{sl_s:.1f}s) would pass the {budget:g}s eval budget; the score is the sliding one")
    if ttt_on:  # the sliding score is a record before TTT starts: a failed TTT leaves it, marked
        record.write("provisional: the sliding score; TTT has not finished", val_bpb=sl_bpb, val_loss=sl_loss, eval_time_s=now)
        try:
            nll = eval_lora(model, run_model, val_tokens, h, rt.rank, rt.world, device, clock, log, budget)
            final_loss, final_bpb = scored(log, "legal_ttt_exact", bpb(nll, val_bytes))
        except Exception as e:
            record.write(f"provisional: TTT did not finish ({one_line(e, trace=False)}); the score is the sliding one",
                         collective=False, eval_time_s=clock())
            raise
        log_memory(rt, "lora ttt")
        log(f"ttt_gain:{sl_bpb - final_bpb:.6f}")
        record.fields.update(ttt_val_bpb=final_bpb)
    else:
        final_loss, final_bpb = sl_loss, sl_bpb
    eval_s = reduce_max(rt, clock())[0]  # the slowest rank's: every rank decides on it alike
    log(f"eval_time:{eval_s:.1f}s" + (f" train_time:{record.fields['train_time_s']:.1f}s" if not h.eval_only else ""))
    if eval_s > h.max_eval_seconds:
        record.violate(f"evaluation took {eval_s:.1f}s > MAX_EVAL_SECONDS={h.max_eval_seconds:g}")
    log(f"recompiles after priming: {int(reduce_max(rt, compiled_graphs() - trainer.graphs_primed)[0])} (any rank)")
    record.write("re-evaluated" if h.eval_only else "final", val_bpb=final_bpb, val_loss=final_loss, eval_time_s=eval_s)
    if record.violations:
        raise SharedError("; ".join(record.violations) + " (the record says so)")

if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # the process group is left as is: tearing down a half-failed one can hang
        rank = int(os.environ.get("RANK", "0"))
        if rank == 0 or not (isinstance(e, RunError) and e.shared):
            print(f"error: {one_line(e)}" + (f" (rank {rank})" if rank else ""), file=sys.stderr, flush=True)
        else:
            time.sleep(1.0)  # let rank 0 report before torchrun stops the others
        os._exit(1)
    if dist.is_initialized():
        dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # all is written: skip C++ teardown, which can abort at exit (~1 in 15 runs on gloo)
