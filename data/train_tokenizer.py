#!/usr/bin/env python3
"""Train a SentencePiece BPE tokenizer with the challenge's settings from a documents file (JSONL, one
{"text": ...} per line, as the official docs_selected.jsonl).

Usage:
    python3 data/train_tokenizer.py DOCS.jsonl --vocab-size 4096 --out fineweb_4096_bpe.model [--max-docs 5000000]
    python3 data/train_tokenizer.py DOCS.jsonl --vocab-size 8192 --caseops --out fineweb_8192_bpe_caseops.model
    python3 data/train_tokenizer.py corpus.jsonl --own-corpus --skip-docs 0 --vocab-size 1024 --out mine.model

Settings, as the frontier's sp4096/sp8192 tokenizers: BPE, byte fallback, digits split, nmt_nfkc
normalisation, no dummy prefix, ids pad/bos/eos/unk = 0/1/2/3 (BOS = 1 marks document starts in the
shards). With --caseops it learns the CaseOps text (data/caseops.py) and reserves the four markers as
user-defined pieces, ids 4..7, as the frontier's SP8192 CaseOps tokenizer does. The first --skip-docs
documents (the official 50,000 validation documents) are never read, so no validation text shapes the
vocabulary; another count needs --own-corpus (a corpus that is not the official documents file).
Each non-empty line of a document is one SentencePiece sentence. The model is written whole or not at all.
"""
import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import caseops

OFFICIAL_VAL_DOCS = 50_000  # the challenge's validation split: the first 50,000 documents of docs_selected.jsonl


def fail(msg: str) -> None:
    sys.exit(f"train_tokenizer: {msg}")


def lines(path: Path, skip: int, limit: int, transform=None):
    """The non-empty lines of documents skip .. skip+limit-1 (limit 0: all), through transform if given."""
    with open(path, "rb") as f:
        for i, raw in enumerate(f):
            if i < skip:
                continue
            if limit and i >= skip + limit:
                break
            try:
                text = json.loads(raw.decode("utf-8"))["text"]
            except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
                fail(f"{path} line {i + 1} is not a JSON object with a UTF-8 \"text\" field ({type(e).__name__}: {e})")
            if not isinstance(text, str):
                fail(f"{path} line {i + 1}: \"text\" is not a string")
            if transform is not None:
                text = transform(text)
            yield from (line for line in text.split("\n") if line.strip())


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("docs", type=Path)
    ap.add_argument("--vocab-size", type=int, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--skip-docs", type=int, default=OFFICIAL_VAL_DOCS,
                    help=f"documents at the start never read (default {OFFICIAL_VAL_DOCS:,}: the official validation split)")
    ap.add_argument("--own-corpus", action="store_true", help="the input is not the official documents: --skip-docs may differ")
    ap.add_argument("--caseops", action="store_true", help="learn the CaseOps text; the four markers become ids 4..7")
    ap.add_argument("--max-docs", type=int, default=0, help="documents read at most (0: all)")
    ap.add_argument("--sentences", type=int, default=10_000_000, help="lines SentencePiece samples at most")
    a = ap.parse_args(argv)
    if not a.docs.is_file():
        fail(f"documents file not found: {a.docs}")
    if a.vocab_size < 300 or a.skip_docs < 0 or a.max_docs < 0:
        fail("need --vocab-size >= 300 (256 byte pieces + 4 control ids + merges), --skip-docs >= 0, --max-docs >= 0")
    if a.skip_docs != OFFICIAL_VAL_DOCS and not a.own_corpus:
        fail(f"--skip-docs {a.skip_docs}: the official validation split is the first {OFFICIAL_VAL_DOCS:,} documents, and "
             f"a tokenizer must not learn them; for a corpus of your own, add --own-corpus")
    if a.own_corpus and a.docs.name == "docs_selected.jsonl":
        fail(f"--own-corpus with {a.docs}: that is the official documents file, whose first {OFFICIAL_VAL_DOCS:,} are validation")
    import sentencepiece as spm
    data = lines(a.docs, a.skip_docs, a.max_docs, caseops.encode if a.caseops else None)
    try:
        first = next(data)
    except StopIteration:
        fail(f"{a.docs}: no non-empty document after the first {a.skip_docs} (--skip-docs)")
    with tempfile.TemporaryDirectory() as tmp:

        def sentences():
            yield first
            yield from data

        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=sentences(), model_prefix=os.path.join(tmp, "m"), vocab_size=a.vocab_size,
                model_type="bpe", byte_fallback=True, split_digits=True, normalization_rule_name="nmt_nfkc",
                add_dummy_prefix=False, pad_id=0, bos_id=1, eos_id=2, unk_id=3, character_coverage=0.9999,
                input_sentence_size=a.sentences, shuffle_input_sentence=True, max_sentence_length=1 << 16,
                num_threads=os.cpu_count() or 1, minloglevel=2,
                user_defined_symbols=list(caseops.MARKERS) if a.caseops else [])
        except RuntimeError as e:
            fail(f"SentencePiece could not train a {a.vocab_size}-piece model: {str(e).splitlines()[0]}")
        sp = spm.SentencePieceProcessor(model_file=os.path.join(tmp, "m.model"))
        if sp.vocab_size() != a.vocab_size or (sp.pad_id(), sp.bos_id(), sp.eos_id(), sp.unk_id()) != (0, 1, 2, 3):
            fail(f"trained model has {sp.vocab_size()} pieces and ids {sp.pad_id(), sp.bos_id(), sp.eos_id(), sp.unk_id()}")
        if a.caseops and [sp.piece_to_id(m) for m in caseops.MARKERS] != list(caseops.MARKER_IDS):
            fail(f"the CaseOps markers got ids {[sp.piece_to_id(m) for m in caseops.MARKERS]}, expected {list(caseops.MARKER_IDS)}")
        a.out.parent.mkdir(parents=True, exist_ok=True)
        tmp_out = a.out.with_name(a.out.name + ".tmp")
        shutil.copyfile(os.path.join(tmp, "m.model"), tmp_out)
        os.replace(tmp_out, a.out)
    kind = "CaseOps text, markers ids 4..7, " if a.caseops else ""
    print(f"wrote {a.out}: {a.vocab_size} pieces ({kind}BPE, byte fallback, digits split, nmt_nfkc, no dummy prefix, "
          f"bos 1), from {a.docs} after its first {a.skip_docs} documents")


if __name__ == "__main__":
    main()
