#!/usr/bin/env python3
"""Turn a documents file into Parameter Golf token shards (fineweb_{val,train}_NNNNNN.bin), streaming.

Examples:
    # the official route to another vocabulary: the challenge's docs_selected.jsonl (~48 GB), re-tokenized
    python3 data/prepare_text.py docs_selected.jsonl --tokenizer fineweb_4096_bpe.model \\
        --out data/datasets/fineweb10B_sp4096
    # CaseOps (data/caseops.py) with a CaseOps tokenizer: also the validation byte sidecar
    python3 data/prepare_text.py docs_selected.jsonl --caseops --tokenizer fineweb_8192_bpe_caseops.model \\
        --out data/datasets/fineweb10B_sp8192_caseops
    # a small corpus of your own: its own validation share
    python3 data/prepare_text.py corpus.jsonl --tokenizer fineweb_1024_bpe.model --out data/mine --own-corpus --val-docs 500

Documents are read one at a time and encoded by --workers processes in order, so memory stays bounded
(about one shard of tokens plus a few batches of text) on any input size, and the output is the same for
any number of workers. Each document becomes [BOS] + its tokens. The first --val-docs documents
(default 50,000: the official split) are validation, the rest training; a training document whose text
equals a validation document's is left out and counted, so no validation text reaches training. Shards
are written into a hidden folder of --out and moved into place only when the whole input is done (an
older run's extra shards of a split are then removed: training would read them too); a failed or
stopped (SIGTERM) run leaves --out's shards as they were. --out also gets prepare_text.json (what was
done, with the counts).

The validation split is the official one, the first 50,000 documents, and nothing else unless --own-corpus
says the input is not the official documents file: a smaller share would put validation documents into
training (openai/parameter-golf issue #2127: a prep script's default of 10,000 did so in 15 entries).
With --caseops each document is transformed before encoding, and each validation shard gets a sidecar
fineweb_val_bytes_NNNNNN.bin (the same header and length): every token's original UTF-8 bytes, BOS and
markers 0, from the slice of the text each piece covers (the layout of the frontier's CaseOps export).
The bytes SentencePiece drops (whitespace at a document's ends) belong to no piece; prepare_text.json
counts them.
"""
import argparse
import hashlib
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections import deque
from pathlib import Path

import numpy as np

import caseops

MAGIC, VERSION, HEADER_INTS = 20240520, 1, 256
HEADER_BYTES = HEADER_INTS * 4
OFFICIAL_VAL_DOCS = 50_000  # the challenge's split: the first 50,000 documents of docs_selected.jsonl
MAX_DOC_BYTES = 1 << 26  # a plain-text "document" this large is a file without blank lines (or a JSONL file misnamed)


def fail(msg: str):
    sys.exit(f"prepare_text: {msg}")


def iter_documents(path):
    """Yields (where, text) for each document of one file, reading it line by line: JSONL (one
    {"text": ...} per line) or plain text whose documents are separated by blank lines."""
    path = Path(path)
    if not path.is_file():
        fail(f"input file not found: {path}")
    jsonl, block, start = path.suffix == ".jsonl", [], 1
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                fail(f"{path}:{lineno}: not valid UTF-8 ({e.reason} at byte {e.start} of the line)")
            if jsonl:
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    fail(f"{path}:{lineno}: invalid JSON ({e.msg})")
                if not isinstance(obj, dict) or "text" not in obj:
                    fail(f'{path}:{lineno}: line has no "text" field')
                if not isinstance(obj["text"], str):
                    fail(f'{path}:{lineno}: "text" is not a string')
                if not obj["text"].strip():
                    fail(f"{path}:{lineno}: empty document")
                yield f"{path}:{lineno}", obj["text"]
            elif not line.strip():  # a blank line ends a plain-text document
                if block:
                    yield f"{path}:{start}", "".join(block).strip()
                block, size = [], 0
            else:
                start, size = (lineno, 0) if not block else (start, size)
                block.append(line.replace("\r\n", "\n"))
                size += len(raw)
                if size > MAX_DOC_BYTES:
                    fail(f"{path}:{start}: a plain-text document of over {MAX_DOC_BYTES >> 20} MB (documents are separated "
                         f"by blank lines; JSONL input must end in .jsonl)")
    if block:
        yield f"{path}:{start}", "".join(block).strip()


def read_documents(path) -> list[str]:
    """All documents of one file, as a list (small inputs and tests)."""
    return [text for _, text in iter_documents(path)]


def with_bos(docs: list, bos: int) -> np.ndarray:
    """Concatenate [bos] + doc for every document (lists of ints), as a uint16 array."""
    out = np.empty(sum(len(d) + 1 for d in docs), dtype=np.uint16)
    pos = 0
    for d in docs:
        out[pos] = bos
        out[pos + 1:pos + 1 + len(d)] = d
        pos += len(d) + 1
    return out


def encode_documents(sp, docs):
    """Concatenate [bos] + sp.encode(doc) for every document, as a uint16 array."""
    return with_bos(sp.encode(list(docs)) if docs else [], sp.bos_id())


def encode_caseops(sp, docs) -> tuple[np.ndarray, np.ndarray]:
    """(tokens, original bytes per token) of the CaseOps text of every document: [bos] + its pieces, and 0 +
    each piece's original UTF-8 bytes (caseops.original_bytes of the slices of the text the pieces cover)."""
    protos = sp.encode([caseops.encode(d) for d in docs], out_type="proto") if docs else []
    ids = [[p.id for p in proto.pieces] for proto in protos]
    nbytes = [caseops.original_bytes(p.surface for p in proto.pieces) for proto in protos]
    for doc, n in zip(docs, nbytes):
        if sum(n) > len(doc.encode("utf-8")):
            raise ValueError(f"pieces cover {sum(n)} original bytes of a {len(doc.encode('utf-8'))}-byte document")
        if max(n, default=0) > 65535:
            raise ValueError(f"a piece covers {max(n)} original bytes, more than the uint16 sidecar holds")
    return with_bos(ids, sp.bos_id()), with_bos(nbytes, 0)


def write_shard(path, tokens):
    """Write header + uint16 tokens atomically (temp file in the same dir, then os.replace)."""
    path = Path(path)
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[:3] = MAGIC, VERSION, len(tokens)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(header.tobytes())
            f.write(np.asarray(tokens, dtype="<u2").tobytes())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; use normal file permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def shard_length(path) -> int:
    """A shard's token count, validating magic, version and file size; raises ValueError naming the file."""
    path = Path(path)
    size = path.stat().st_size
    if size < HEADER_BYTES:
        raise ValueError(f"{path}: too small for a shard header ({size} bytes)")
    header = np.fromfile(path, dtype="<i4", count=HEADER_INTS)
    if header[0] != MAGIC or header[1] != VERSION:
        raise ValueError(f"{path}: bad magic/version {header[0]}/{header[1]} "
                         f"(expected {MAGIC}/{VERSION})")
    n = int(header[2])
    if size != HEADER_BYTES + 2 * n:
        raise ValueError(f"{path}: size {size} bytes != {HEADER_BYTES} + 2*{n} tokens")
    return n


def read_shard(path):
    """Read a shard, validating magic, version and file size; raises ValueError naming the file."""
    return np.fromfile(path, dtype="<u2", count=shard_length(path), offset=HEADER_BYTES)


def write_split(out_dir, split, tokens, shard_tokens):
    """Write tokens as consecutive shards; returns the list of paths."""
    writer = ShardWriter(out_dir, split, shard_tokens)
    writer.add(tokens)
    return writer.close()


class ShardWriter:
    """Token stream -> shards of exactly shard_tokens (the last one shorter), written as they fill."""

    def __init__(self, out_dir, split: str, shard_tokens: int):
        self.out_dir, self.split, self.shard_tokens = Path(out_dir), split, shard_tokens
        self.pending, self.held, self.paths, self.tokens, self.docs = [], 0, [], 0, 0

    def add(self, tokens: np.ndarray, docs: int = 0) -> None:
        self.pending.append(tokens)
        self.held, self.tokens, self.docs = self.held + len(tokens), self.tokens + len(tokens), self.docs + docs
        if self.held >= self.shard_tokens:
            self.flush(self.held // self.shard_tokens * self.shard_tokens)

    def flush(self, n: int) -> None:
        """Writes the first n tokens held, as shards of shard_tokens (the last may be shorter)."""
        stream = np.concatenate(self.pending)
        for a in range(0, n, self.shard_tokens):
            self.paths.append(self.out_dir / f"fineweb_{self.split}_{len(self.paths):06d}.bin")
            write_shard(self.paths[-1], stream[a:min(n, a + self.shard_tokens)])
        self.pending, self.held = [stream[n:]], len(stream) - n

    def close(self) -> list[Path]:
        if self.held:
            self.flush(self.held)
        return self.paths


SP = None  # each worker's tokenizer
CASEOPS = False  # whether each worker transforms its documents (and counts validation bytes)


def worker_init(model_file: str, use_caseops: bool = False) -> None:
    global SP, CASEOPS
    import sentencepiece as spm
    SP = spm.SentencePieceProcessor(model_file=model_file)
    CASEOPS = use_caseops


def worker_encode(split: str, texts: list[str]) -> tuple[np.ndarray, np.ndarray | None]:
    """(tokens, the validation byte sidecar's values or None)."""
    if not CASEOPS:
        return encode_documents(SP, texts), None
    if split == "val":
        return encode_caseops(SP, texts)
    return encode_documents(SP, [caseops.encode(t) for t in texts]), None


def doc_hash(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()


def batches(docs, val_docs: int, stats: dict, batch_bytes: int = 1 << 20):
    """(split, texts) batches of about batch_bytes of text, never mixing the splits; training documents equal to
    a validation document are left out (counted in stats, with the batches)."""
    seen, texts, size, split = set(), [], 0, "val"
    for i, (_, text) in enumerate(docs):
        now = "val" if i < val_docs else "train"
        if now != split or size >= batch_bytes:
            if texts:
                stats["batches"] += 1
                yield split, texts
            texts, size, split = [], 0, now
        if now == "val":
            seen.add(doc_hash(text))
            stats["val_text_bytes"] += len(text.encode("utf-8"))
        elif doc_hash(text) in seen:
            stats["train_docs_equal_to_val"] += 1
            continue
        texts.append(text)
        size += len(text)
    if texts:
        stats["batches"] += 1
        yield split, texts


def encoded(tasks, tokenizer: str, workers: int, use_caseops: bool = False):
    """(split, (tokens, sidecar or None), docs) in input order; with workers > 1, at most 2 x workers batches in
    flight (a worker that dies, e.g. out of memory, is an error: BrokenProcessPool, never a hang)."""
    if workers <= 1:
        worker_init(tokenizer, use_caseops)
        for split, texts in tasks:
            yield split, worker_encode(split, texts), len(texts)
        return
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else None)
    with ProcessPoolExecutor(workers, ctx, worker_init, (tokenizer, use_caseops)) as pool:
        flight = deque()
        try:
            for split, texts in tasks:
                flight.append((split, pool.submit(worker_encode, split, texts), len(texts)))
                if len(flight) >= 2 * workers:
                    s, res, n = flight.popleft()
                    yield s, res.result(), n
            while flight:
                s, res, n = flight.popleft()
                yield s, res.result(), n
        finally:
            for _, res, _ in flight:
                res.cancel()


def is_caseops_tokenizer(sp) -> bool:
    return sp.vocab_size() > max(caseops.MARKER_IDS) and [sp.id_to_piece(i) for i in caseops.MARKER_IDS] == list(caseops.MARKERS)


def check_tokenizer(path: str, vocab_size: int | None, use_caseops: bool = False):
    import sentencepiece as spm
    if not Path(path).is_file():
        fail(f"tokenizer not found: {path}")
    try:
        sp = spm.SentencePieceProcessor(model_file=str(path))
    except (OSError, RuntimeError) as e:
        fail(f"{path} is not a SentencePiece model ({str(e).splitlines()[0]})")
    vocab = sp.vocab_size()
    if vocab_size is not None and vocab != vocab_size:
        fail(f"{path} has vocab size {vocab}, expected --vocab-size {vocab_size}")
    if vocab > 65536:
        fail(f"vocab size {vocab} does not fit in uint16 (max 65536)")
    if sp.bos_id() != 1:
        fail(f"{path} has BOS id {sp.bos_id()}; the challenge's shards start each document with BOS = 1 "
             f"(data/train_tokenizer.py makes such a tokenizer)")
    if sp.encode(" "):
        fail(f"{path} keeps spaces as pieces (remove_extra_whitespaces off): train_gpt.py's byte count would "
             f"miss some; the challenge's tokenizers collapse them")
    if use_caseops and not is_caseops_tokenizer(sp):
        fail(f"--caseops needs a CaseOps tokenizer (markers U+E001..U+E004 as ids 4..7; data/train_tokenizer.py --caseops "
             f"makes one), and {path} is not one")
    if is_caseops_tokenizer(sp) and not use_caseops:
        fail(f"{path} is a CaseOps tokenizer: it needs --caseops (the text transformed, and the byte sidecar)")
    return sp


def main(argv=None):
    ap = argparse.ArgumentParser(
        prog="prepare_text.py", formatter_class=argparse.RawDescriptionHelpFormatter, description=__doc__)
    ap.add_argument("inputs", nargs="+", metavar="INPUT", help=".jsonl or plain text file(s), read in this order")
    ap.add_argument("--tokenizer", required=True, help="SentencePiece .model file (BOS = 1)")
    ap.add_argument("--out", required=True, help="output directory (created if needed)")
    ap.add_argument("--val-docs", type=int, default=OFFICIAL_VAL_DOCS,
                    help=f"documents from the start used for validation ({OFFICIAL_VAL_DOCS:,}, the official split; "
                         f"another count needs --own-corpus)")
    ap.add_argument("--own-corpus", action="store_true", help="the input is not the official documents: --val-docs may differ")
    ap.add_argument("--caseops", action="store_true",
                    help="transform documents with CaseOps (a CaseOps tokenizer) and write the validation byte sidecar")
    ap.add_argument("--shard-tokens", type=int, default=100_000_000, help="tokens per shard (default 100000000)")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    ap.add_argument("--workers", type=int, default=cores, help=f"encoding processes (default: the cores this process may use, {cores})")
    ap.add_argument("--batch-bytes", type=int, default=1 << 20, help="text per task sent to a worker (default 1 MiB)")
    ap.add_argument("--vocab-size", type=int, help="fail unless the tokenizer has this vocab size")
    args = ap.parse_args(argv)
    sp = check_tokenizer(args.tokenizer, args.vocab_size, args.caseops)
    if args.caseops:
        try:
            import google.protobuf  # noqa: F401
        except ImportError:
            fail("--caseops needs protobuf (pip install protobuf): SentencePiece gives each piece's slice of the text through it")
    if args.val_docs < 1:
        fail(f"zero validation documents (--val-docs {args.val_docs})")
    if args.val_docs != OFFICIAL_VAL_DOCS and not args.own_corpus:
        fail(f"--val-docs {args.val_docs}: the official validation split is the first {OFFICIAL_VAL_DOCS:,} documents, and "
             f"fewer would train on the rest of them (openai/parameter-golf issue #2127); for a corpus of your own, add --own-corpus")
    if args.own_corpus and any(Path(p).name == "docs_selected.jsonl" for p in args.inputs):
        fail(f"--own-corpus with docs_selected.jsonl: that is the official documents file, whose first {OFFICIAL_VAL_DOCS:,} are validation")
    if min(args.shard_tokens, args.workers, args.batch_bytes) < 1:
        fail("--shard-tokens, --workers and --batch-bytes must be >= 1")
    for path in args.inputs:
        if not Path(path).is_file():
            fail(f"input file not found: {path}")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob(".prepare_text.*"):
        print(f"prepare_text: warning: {old} is left from a run that was killed; delete it", file=sys.stderr)
    work = Path(tempfile.mkdtemp(dir=out, prefix=".prepare_text."))
    signal.signal(signal.SIGTERM, lambda *_: fail("stopped by SIGTERM; --out's shards are as they were"))  # runs the cleanup
    stats = dict(train_docs_equal_to_val=0, batches=0, val_text_bytes=0, val_original_bytes=0)
    writers = {s: ShardWriter(work, s, args.shard_tokens) for s in ("val", "train")}
    sidecar = ShardWriter(work, "val_bytes", args.shard_tokens)  # written with --caseops: the same boundaries as "val"
    t0, last = time.time(), time.time()
    try:
        docs = (d for path in args.inputs for d in iter_documents(path))
        tasks = batches(docs, args.val_docs, stats, args.batch_bytes)
        try:
            for split, (tokens, nbytes), n in encoded(tasks, args.tokenizer, args.workers, args.caseops):
                writers[split].add(tokens, n)
                if nbytes is not None:
                    sidecar.add(nbytes, n)
                    stats["val_original_bytes"] += int(nbytes.sum())
        except ValueError as e:  # a document the sidecar cannot count (from encode_caseops, in any worker)
            fail(str(e))
            if time.time() - last > 60:
                last = time.time()
                done = sum(w.docs for w in writers.values())
                print(f"  {done:,} documents, {sum(w.tokens for w in writers.values()):,} tokens, "
                      f"{time.time() - t0:.0f}s", file=sys.stderr, flush=True)
        paths = {s: w.close() for s, w in writers.items()}
        paths["val_bytes"] = sidecar.close()
        total = writers["val"].docs + writers["train"].docs + stats["train_docs_equal_to_val"]
        if writers["val"].docs < args.val_docs or not writers["train"].docs:
            fail(f"zero training documents: {total} documents in total, --val-docs {args.val_docs} "
                 f"(a small corpus passes its own --val-docs)")
        for split in ("val", "val_bytes", "train"):  # whole: moved into place; an older run's extra shards would be read too
            for i, p in enumerate(paths[split]):
                paths[split][i] = out / p.name
                os.replace(p, paths[split][i])
            for stale in sorted(set(out.glob(f"fineweb_{split}_[0-9]*.bin")) - set(paths[split])):
                stale.unlink()
                print(f"prepare_text: removed {stale}, an older run's {split} shard", file=sys.stderr)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if not args.caseops:
        del stats["val_original_bytes"]  # no sidecar: train_gpt.py counts bytes from the pieces
    manifest = dict(inputs=[str(p) for p in args.inputs], tokenizer=str(args.tokenizer), vocab_size=sp.vocab_size(),
                    caseops=args.caseops,
                    tokenizer_sha256=hashlib.sha256(Path(args.tokenizer).read_bytes()).hexdigest(),
                    val_docs=writers["val"].docs, train_docs=writers["train"].docs, **stats,
                    val_tokens=writers["val"].tokens, train_tokens=writers["train"].tokens,
                    shard_tokens=args.shard_tokens, seconds=round(time.time() - t0, 1))
    (out / "prepare_text.json").write_text(json.dumps(manifest, indent=2) + "\n")
    for split in ("val", "train"):
        ps, w = paths[split], writers[split]
        shown = str(ps[0]) if len(ps) == 1 else f"{ps[0]} .. {ps[-1].name}"
        print(f"{split}: {w.docs} docs, {w.tokens} tokens, {len(ps)} shards -> {shown}")
    if args.caseops:
        dropped = stats["val_text_bytes"] - stats["val_original_bytes"]
        print(f"val_bytes: {len(paths['val_bytes'])} sidecar shards, {stats['val_original_bytes']:,} original bytes "
              f"({dropped:,} of the documents' {stats['val_text_bytes']:,} UTF-8 bytes in no piece: whitespace at their ends)")
    if stats["train_docs_equal_to_val"]:
        print(f"train: {stats['train_docs_equal_to_val']} documents equal to a validation document left out")


if __name__ == "__main__":
    main()
