"""Tests for data/prepare_text.py (tiny inputs, no network, no GPU)."""
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER = ROOT / "data" / "tokenizers" / "fineweb_1024_bpe.model"
BOS = 1

import sentencepiece as spm  # noqa: E402

_spec = importlib.util.spec_from_file_location("prepare_text", ROOT / "data" / "prepare_text.py")
pt = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(pt)

DOCS = [
    "The quick brown fox jumps over the lazy dog.",
    "Unicode: café, naïve, Ελληνικά, 日本語, emoji 🎉.\nSecond line here.",
    "A longer document that should easily cross a shard boundary when shards hold only fifty "
    "tokens, because it keeps going for a while with plenty of ordinary English words in it.",
    "Short one.",
    "Last document\n\nwith a blank line inside and trailing spaces   ",
]


@pytest.fixture(scope="module")
def sp():
    return spm.SentencePieceProcessor(model_file=str(TOKENIZER))


def run(args):
    pt.main([str(a) for a in args])


def read_split(out, split):
    paths = sorted(out.glob(f"fineweb_{split}_*.bin"))
    for p in paths:
        header = np.fromfile(p, dtype="<i4", count=256)
        assert header[0] == 20240520 and header[1] == 1 and not header[3:].any()
        assert p.stat().st_size == 1024 + 2 * int(header[2])
    return paths, np.concatenate([pt.read_shard(p) for p in paths])


def split_docs(tokens):
    starts = np.flatnonzero(tokens == BOS)
    assert starts.size and starts[0] == 0
    return [tokens[a + 1:b].tolist() for a, b in zip(starts, list(starts[1:]) + [len(tokens)])]


def test_jsonl_round_trip(tmp_path, sp, capsys):
    src = tmp_path / "docs.jsonl"
    src.write_text("".join(json.dumps({"text": d}) + "\n" for d in DOCS), encoding="utf-8")
    out = tmp_path / "out"
    run([src, "--tokenizer", TOKENIZER, "--out", out, "--val-docs", 2, "--shard-tokens", 50,
         "--vocab-size", 1024])
    printed = capsys.readouterr().out
    assert "val: 2 docs" in printed and "train: 3 docs" in printed

    for split, docs in (("val", DOCS[:2]), ("train", DOCS[2:])):
        paths, tokens = read_split(out, split)
        assert all(len(pt.read_shard(p)) == 50 for p in paths[:-1])
        assert int((tokens == BOS).sum()) == len(docs)
        decoded = [sp.decode(ids) for ids in split_docs(tokens)]
        assert decoded == [sp.decode(sp.encode(d)) for d in docs]
    train_paths, _ = read_split(out, "train")
    assert len(train_paths) >= 2
    # some document continues into the next shard (next shard does not start with BOS)
    assert any(pt.read_shard(p)[0] != BOS for p in train_paths[1:])
    assert not list(out.glob("*.tmp"))


def test_plain_text_blank_line_documents(tmp_path, sp):
    src = tmp_path / "corpus.txt"
    src.write_text("first doc\nstill first\n\n  \nsecond doc\n\n\nthird doc\n", encoding="utf-8")
    assert pt.read_documents(src) == ["first doc\nstill first", "second doc", "third doc"]
    out = tmp_path / "out"
    run([src, "--tokenizer", TOKENIZER, "--out", out, "--val-docs", 1])
    _, val = read_split(out, "val")
    _, train = read_split(out, "train")
    assert [sp.decode(x) for x in split_docs(val)] == ["first doc still first"]
    assert [sp.decode(x) for x in split_docs(train)] == ["second doc", "third doc"]


def test_jsonl_line_without_text(tmp_path):
    src = tmp_path / "bad.jsonl"
    src.write_text('{"text": "ok"}\n{"body": "oops"}\n', encoding="utf-8")
    with pytest.raises(SystemExit) as e:
        run([src, "--tokenizer", TOKENIZER, "--out", tmp_path / "out", "--val-docs", 1])
    assert "prepare_text:" in str(e.value) and "bad.jsonl:2" in str(e.value) and '"text"' in str(e.value)


def test_invalid_json_and_missing_file(tmp_path):
    src = tmp_path / "bad.jsonl"
    src.write_text('{"text": "ok"}\n{not json\n', encoding="utf-8")
    with pytest.raises(SystemExit, match=r"bad\.jsonl:2: invalid JSON"):
        pt.read_documents(src)
    with pytest.raises(SystemExit, match="not found"):
        pt.read_documents(tmp_path / "missing.txt")


def test_vocab_size_mismatch(tmp_path):
    src = tmp_path / "a.txt"
    src.write_text("one\n\ntwo\n", encoding="utf-8")
    with pytest.raises(SystemExit, match=r"vocab size 1024.*--vocab-size 2048"):
        run([src, "--tokenizer", TOKENIZER, "--out", tmp_path / "out", "--vocab-size", 2048])


def test_zero_train_docs(tmp_path):
    src = tmp_path / "a.txt"
    src.write_text("one\n\ntwo\n", encoding="utf-8")
    with pytest.raises(SystemExit, match="zero training documents"):
        run([src, "--tokenizer", TOKENIZER, "--out", tmp_path / "out", "--val-docs", 2])


def test_read_shard_rejects_corrupt(tmp_path):
    good = tmp_path / "good.bin"
    pt.write_shard(good, np.arange(10, dtype=np.uint16))
    assert pt.read_shard(good).tolist() == list(range(10))
    raw = good.read_bytes()

    bad_magic = tmp_path / "bad_magic.bin"
    bad_magic.write_bytes(b"\x00\x00\x00\x00" + raw[4:])
    with pytest.raises(ValueError, match="bad_magic.bin"):
        pt.read_shard(bad_magic)

    truncated = tmp_path / "truncated.bin"
    truncated.write_bytes(raw[:-2])
    with pytest.raises(ValueError, match="truncated.bin"):
        pt.read_shard(truncated)

    tiny = tmp_path / "tiny.bin"
    tiny.write_bytes(raw[:100])
    with pytest.raises(ValueError, match="tiny.bin"):
        pt.read_shard(tiny)
