#!/usr/bin/env python3
"""Turn your own text into Parameter Golf token shards (fineweb_{train,val}_NNNNNN.bin).

Example:
    python data/prepare_text.py corpus.jsonl --tokenizer fineweb_1024_bpe.model --out data/mine
"""
import argparse
import json
import os
import re
import sys
import tempfile
from pathlib import Path

import numpy as np

MAGIC, VERSION, HEADER_INTS = 20240520, 1, 256
HEADER_BYTES = HEADER_INTS * 4


def read_documents(path):
    """Documents of one file: JSONL (one {"text": ...} per line) or plain text split on blank lines."""
    path = Path(path)
    if not path.is_file():
        sys.exit(f"prepare_text: input file not found: {path}")
    try:
        content = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        sys.exit(f"prepare_text: {path}: not valid UTF-8 ({e})")
    if path.suffix != ".jsonl":
        blocks = re.split(r"\n[ \t\r\f\v]*\n", content.replace("\r\n", "\n"))
        return [b.strip() for b in blocks if b.strip()]
    docs = []
    for lineno, line in enumerate(content.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            sys.exit(f"prepare_text: {path}:{lineno}: invalid JSON ({e.msg})")
        if not isinstance(obj, dict) or "text" not in obj:
            sys.exit(f'prepare_text: {path}:{lineno}: line has no "text" field')
        if not isinstance(obj["text"], str):
            sys.exit(f'prepare_text: {path}:{lineno}: "text" is not a string')
        docs.append(obj["text"])
    return docs


def encode_documents(sp, docs):
    """Concatenate [bos] + sp.encode(doc) for every document, as a uint16 array."""
    pieces = sp.encode(list(docs)) if docs else []
    out = np.empty(sum(len(p) + 1 for p in pieces), dtype=np.uint16)
    pos = 0
    for p in pieces:
        out[pos] = sp.bos_id()
        out[pos + 1:pos + 1 + len(p)] = p
        pos += len(p) + 1
    return out


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


def read_shard(path):
    """Read a shard, validating magic, version and file size; raises ValueError naming the file."""
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
    return np.fromfile(path, dtype="<u2", count=n, offset=HEADER_BYTES)


def write_split(out_dir, split, tokens, shard_tokens):
    """Write tokens as consecutive shards; returns the list of paths."""
    paths = []
    for i, start in enumerate(range(0, len(tokens), shard_tokens)):
        paths.append(Path(out_dir) / f"fineweb_{split}_{i:06d}.bin")
        write_shard(paths[-1], tokens[start:start + shard_tokens])
    return paths


def main(argv=None):
    ap = argparse.ArgumentParser(
        prog="prepare_text.py",
        description="Tokenize text into challenge shards (fineweb_val_*.bin, fineweb_train_*.bin). "
                    "Inputs ending in .jsonl hold one {\"text\": ...} object per line; any other "
                    "file is plain UTF-8 text whose documents are separated by blank lines. "
                    "Each document becomes [BOS] + tokens; the first --val-docs go to validation.")
    ap.add_argument("inputs", nargs="+", metavar="INPUT", help=".jsonl or plain text file(s)")
    ap.add_argument("--tokenizer", required=True, help="SentencePiece .model file")
    ap.add_argument("--out", required=True, help="output directory (created if needed)")
    ap.add_argument("--val-docs", type=int, default=500,
                    help="documents from the start of the list used for validation (default 500)")
    ap.add_argument("--shard-tokens", type=int, default=100_000_000,
                    help="tokens per shard (default 100000000)")
    ap.add_argument("--vocab-size", type=int, help="fail unless the tokenizer has this vocab size")
    args = ap.parse_args(argv)

    import sentencepiece as spm
    if not Path(args.tokenizer).is_file():
        sys.exit(f"prepare_text: tokenizer not found: {args.tokenizer}")
    sp = spm.SentencePieceProcessor(model_file=str(args.tokenizer))
    vocab = sp.vocab_size()
    if args.vocab_size is not None and vocab != args.vocab_size:
        sys.exit(f"prepare_text: {args.tokenizer} has vocab size {vocab}, expected --vocab-size {args.vocab_size}")
    if vocab > 65536:
        sys.exit(f"prepare_text: vocab size {vocab} does not fit in uint16 (max 65536)")
    if sp.bos_id() < 0:
        sys.exit(f"prepare_text: {args.tokenizer} has no BOS token")
    if args.val_docs < 1:
        sys.exit(f"prepare_text: zero validation documents (--val-docs {args.val_docs})")
    if args.shard_tokens < 1:
        sys.exit(f"prepare_text: --shard-tokens must be >= 1, got {args.shard_tokens}")

    docs = [d for path in args.inputs for d in read_documents(path)]
    val_docs, train_docs = docs[:args.val_docs], docs[args.val_docs:]
    if not train_docs:
        sys.exit(f"prepare_text: zero training documents: {len(docs)} documents in total, "
                 f"all taken by --val-docs {args.val_docs}")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for split, split_docs in (("val", val_docs), ("train", train_docs)):
        tokens = encode_documents(sp, split_docs)
        paths = write_split(out, split, tokens, args.shard_tokens)
        stale = sorted(set(out.glob(f"fineweb_{split}_*.bin")) - set(paths))
        if stale:
            print(f"prepare_text: warning: {len(stale)} older {split} shard(s) left in {out}, "
                  f"e.g. {stale[0].name}; delete them before training", file=sys.stderr)
        shown = str(paths[0]) if len(paths) == 1 else f"{paths[0]} .. {paths[-1].name}"
        print(f"{split}: {len(split_docs)} docs, {len(tokens)} tokens, {len(paths)} shards -> {shown}")


if __name__ == "__main__":
    main()
