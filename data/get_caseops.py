#!/usr/bin/env python3
"""Fetch the frontier's SP8192 CaseOps data and check it: the Hugging Face dataset romeerp/parameter-golf-caseops-v1
(the export the maintainers accepted in their final audit, openai/parameter-golf PR #2146), laid out where
train_gpt.py's defaults read it:

    data/datasets/fineweb10B_sp8192_lossless_caps_caseops_v1_reserved/   fineweb_{train,val,val_bytes}_NNNNNN.bin
    data/tokenizers/fineweb_8192_bpe_lossless_caps_caseops_v1_reserved.model

Usage:
    python3 data/get_caseops.py [--train-shards 80] [--data data]   # download (huggingface_hub), then check
    python3 data/get_caseops.py --check-only [--data data]          # check a copy already in place

The download lands in data/caseops_download (Hugging Face's layout; a second run fetches only what is missing)
and the two places above link to it. Not run here: the build machine has no network.

The check refuses, in one line: a tokenizer that is not CaseOps with 8192 pieces; a validation shard without
its byte sidecar of the same length, or a sidecar byte on a BOS; a validation split that is not the official
one: 50,000 documents (a prep with fewer validation documents trained on the rest, openai/parameter-golf
issue #2127) and 47,851,520 scored tokens; fewer train shards than asked, or a shard with a bad header.
"""
import argparse
import sys
from pathlib import Path

import numpy as np

from prepare_text import is_caseops_tokenizer, read_shard, shard_length

REPO = "romeerp/parameter-golf-caseops-v1"
NAME = "fineweb10B_sp8192_lossless_caps_caseops_v1_reserved"
TOKENIZER = "fineweb_8192_bpe_lossless_caps_caseops_v1_reserved.model"
VOCAB = 8192
VAL_DOCS = 50_000
VAL_SCORED_TOKENS = 47_851_520  # (tokens - 1) // 2048 * 2048: the published runs' val_tokens (PR #2135's logs)
SEQ_LEN = 2048


def fail(msg: str):
    sys.exit(f"get_caseops: {msg}")


def link(target: Path, where: Path) -> None:
    """A symbolic link at `where` to `target` (an older link or file there is replaced)."""
    if where.is_symlink() or where.exists():
        where.unlink()
    where.symlink_to(target.resolve())


def download(data: Path, train_shards: int) -> None:
    """The validation shards, their sidecars, the first train_shards train shards and the tokenizer, fetched into
    data/caseops_download and linked from data/datasets/NAME and data/tokenizers."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        fail("needs huggingface_hub: pip install huggingface_hub")
    fetched = data / "caseops_download"
    patterns = [f"datasets/datasets/{NAME}/fineweb_val_*", f"datasets/tokenizers/{TOKENIZER}"]
    patterns += [f"datasets/datasets/{NAME}/fineweb_train_{i:06d}.bin" for i in range(train_shards)]
    try:
        snapshot_download(repo_id=REPO, repo_type="dataset", local_dir=str(fetched), allow_patterns=patterns, max_workers=8)
    except Exception as e:  # network, authentication, a repository that moved: one line
        fail(f"could not download {REPO}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
    shards = sorted((fetched / "datasets" / "datasets" / NAME).glob("fineweb_*.bin"))
    tokenizer = fetched / "datasets" / "tokenizers" / TOKENIZER
    if not shards or not tokenizer.is_file():
        fail(f"the download in {fetched} lacks {'the shards' if not shards else TOKENIZER}: has {REPO} changed its layout?")
    out = data / "datasets" / NAME
    out.mkdir(parents=True, exist_ok=True)
    (data / "tokenizers").mkdir(parents=True, exist_ok=True)
    for f in shards:
        link(f, out / f.name)
    link(tokenizer, data / "tokenizers" / TOKENIZER)


def check(folder: Path, tokenizer: Path, train_shards: int) -> str:
    """One line of what was checked; fail() on the first problem."""
    import sentencepiece as spm
    if not tokenizer.is_file():
        fail(f"tokenizer not found: {tokenizer}")
    sp = spm.SentencePieceProcessor(model_file=str(tokenizer))
    if sp.vocab_size() != VOCAB or not is_caseops_tokenizer(sp):
        fail(f"{tokenizer} is not a CaseOps tokenizer of {VOCAB} pieces (markers U+E001..U+E004 as ids 4..7)")
    vals = sorted(folder.glob("fineweb_val_[0-9]*.bin"))
    if not vals:
        fail(f"no validation shards in {folder}")
    extra = {p.name for p in folder.glob("fineweb_val_bytes_*.bin")} - {v.name.replace("val_", "val_bytes_") for v in vals}
    if extra:
        fail(f"{folder} has byte sidecars without their validation shard: {sorted(extra)[:3]}")
    tokens = []
    nbytes = []
    try:
        for v in vals:
            side = v.with_name(v.name.replace("fineweb_val_", "fineweb_val_bytes_"))
            if not side.is_file():
                fail(f"{v} has no byte sidecar {side.name}")
            tokens.append(read_shard(v))
            nbytes.append(read_shard(side))
            if len(nbytes[-1]) != len(tokens[-1]):
                fail(f"{side} holds {len(nbytes[-1])} values for the {len(tokens[-1])} tokens of {v.name}")
        trains = sorted(folder.glob("fineweb_train_[0-9]*.bin"))
        for t in trains:
            shard_length(t)  # the header and the file's size
    except ValueError as e:
        fail(str(e))
    tokens = np.concatenate(tokens)
    nbytes = np.concatenate(nbytes)
    docs = int((tokens == 1).sum())
    scored = (len(tokens) - 1) // SEQ_LEN * SEQ_LEN
    if docs != VAL_DOCS or scored != VAL_SCORED_TOKENS:
        fail(f"the validation split has {docs:,} documents and {scored:,} scored tokens; the official one "
             f"{VAL_DOCS:,} and {VAL_SCORED_TOKENS:,} (fewer documents: the rest went to training, issue #2127)")
    if nbytes[tokens == 1].any():
        fail("the byte sidecar gives bytes to BOS tokens")
    if len(trains) < train_shards:
        fail(f"{len(trains)} train shards in {folder}, fewer than --train-shards {train_shards}")
    return (f"ok: {tokenizer.name} (CaseOps, {VOCAB} pieces); {len(vals)} validation shards with sidecars: {docs:,} documents, "
            f"{len(tokens):,} tokens, {int(nbytes.sum()):,} original bytes; {len(trains)} train shards")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=Path("data"), help="the data folder (default ./data)")
    ap.add_argument("--train-shards", type=int, default=80, help="train shards to fetch (default 80, all of them)")
    ap.add_argument("--check-only", action="store_true", help="check the copy in place; download nothing")
    a = ap.parse_args(argv)
    if not 1 <= a.train_shards <= 80:
        fail("--train-shards must be 1..80")
    if not a.check_only:
        download(a.data, a.train_shards)
    print(check(a.data / "datasets" / NAME, a.data / "tokenizers" / TOKENIZER, a.train_shards))


if __name__ == "__main__":
    main()
