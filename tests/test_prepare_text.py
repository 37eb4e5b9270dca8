"""Tests for data/prepare_text.py (tiny inputs, no network, no GPU)."""
import importlib.util
import json
import re
import sys
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
    """In this process, one worker (the worker processes are tested through the command line)."""
    pt.main([str(a) for a in args] + ([] if "--workers" in args else ["--workers", "1"]))


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
    run([src, "--tokenizer", TOKENIZER, "--out", out, "--own-corpus", "--val-docs", 2, "--shard-tokens", 50,
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
    run([src, "--tokenizer", TOKENIZER, "--out", out, "--own-corpus", "--val-docs", 1])
    _, val = read_split(out, "val")
    _, train = read_split(out, "train")
    assert [sp.decode(x) for x in split_docs(val)] == ["first doc still first"]
    assert [sp.decode(x) for x in split_docs(train)] == ["second doc", "third doc"]


def test_jsonl_line_without_text(tmp_path):
    src = tmp_path / "bad.jsonl"
    src.write_text('{"text": "ok"}\n{"body": "oops"}\n', encoding="utf-8")
    with pytest.raises(SystemExit) as e:
        run([src, "--tokenizer", TOKENIZER, "--out", tmp_path / "out", "--own-corpus", "--val-docs", 1])
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
        run([src, "--tokenizer", TOKENIZER, "--out", tmp_path / "out", "--own-corpus", "--val-docs", 2])


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


def write_jsonl(path, docs):
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs), encoding="utf-8")
    return path


def cli(*args, timeout=300):
    """prepare_text.py as a user runs it (its worker processes included); (returncode, stdout, stderr)."""
    import subprocess
    r = subprocess.run([sys.executable, str(ROOT / "data" / "prepare_text.py"), *map(str, args)],
                       capture_output=True, text=True, timeout=timeout)
    return r.returncode, r.stdout, r.stderr


def shard_bytes(out):
    return {p.name: p.read_bytes() for p in sorted(out.glob("fineweb_*.bin"))}


def test_workers_give_the_same_shards_as_one_process(tmp_path, synth_docs):
    docs = synth_docs[0][:600]
    src = write_jsonl(tmp_path / "docs.jsonl", docs)
    outs = []
    for w in (1, 3):
        code, printed, err = cli(src, "--tokenizer", TOKENIZER, "--out", tmp_path / f"w{w}", "--own-corpus", "--val-docs", 40,
                                 "--shard-tokens", 20_000, "--workers", w, "--batch-bytes", 4096)
        assert code == 0, err
        outs.append(shard_bytes(tmp_path / f"w{w}"))
    assert outs[0] == outs[1] and len(outs[0]) >= 4
    manifest = json.loads((tmp_path / "w3" / "prepare_text.json").read_text())
    assert (manifest["val_docs"], manifest["train_docs"], manifest["train_docs_equal_to_val"]) == (40, 560, 0)
    assert manifest["batches"] > 10 * 2 * 3  # many more batches than the 2 x workers in flight: order is tested


def test_memory_stays_bounded_as_the_input_grows(tmp_path, synth_docs):
    """Streaming: 23 MB more input adds at most half of that to the peak memory (a few MB of allocator noise;
    reading it whole, as before, added ~10x the input's size)."""
    import subprocess
    peaks = []
    for copies in (10, 50):
        src = write_jsonl(tmp_path / f"in{copies}.jsonl", synth_docs[0] * copies)
        code = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], capture_output=True); "
                "print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
        r = subprocess.run([sys.executable, "-c", code, sys.executable, str(ROOT / "data" / "prepare_text.py"), str(src),
                            "--tokenizer", str(TOKENIZER), "--out", str(tmp_path / "out"), "--own-corpus", "--val-docs", "50",
                            "--shard-tokens", "1000000", "--workers", "1"], capture_output=True, text=True, timeout=300)
        rc, kb = map(int, r.stdout.split())
        assert rc == 0
        peaks.append(kb * 1024)
    extra = (tmp_path / "in50.jsonl").stat().st_size - (tmp_path / "in10.jsonl").stat().st_size
    assert extra > 20_000_000 and peaks[1] - peaks[0] < 0.5 * extra, (peaks, extra)


def test_iter_documents_reads_lazily(tmp_path):
    src = tmp_path / "d.jsonl"
    src.write_text('{"text": "one"}\n{"text": "two"}\n{broken\n', encoding="utf-8")
    docs = pt.iter_documents(src)
    assert [next(docs)[1], next(docs)[1]] == ["one", "two"]  # the broken line is not read yet
    with pytest.raises(SystemExit, match=r"d\.jsonl:3: invalid JSON"):
        next(docs)


def test_the_official_split_is_the_default_and_no_validation_text_reaches_training(tmp_path, sp):
    docs = [f"document number {i} with some words" for i in range(50_010)]
    docs[50_003] = docs[7]  # a training document equal to a validation one
    src = write_jsonl(tmp_path / "docs.jsonl", docs)
    run([src, "--tokenizer", TOKENIZER, "--out", tmp_path / "out"])
    _, val = read_split(tmp_path / "out", "val")
    _, train = read_split(tmp_path / "out", "train")
    assert int((val == BOS).sum()) == 50_000 and sp.decode(split_docs(val)[-1]) == docs[49_999]
    assert [sp.decode(x) for x in split_docs(train)] == [d for i, d in enumerate(docs[50_000:]) if i != 3]
    assert json.loads((tmp_path / "out" / "prepare_text.json").read_text())["train_docs_equal_to_val"] == 1


@pytest.mark.parametrize("content,msg", [
    (b'{"text": "ok"}\n{"text": "caf\xe9"}\n', r"bad\.jsonl:52: not valid UTF-8"),
    (b'{"text": "ok"}\n{"text": "   "}\n', r"bad\.jsonl:52: empty document"),
    (b'{"text": "ok"}\n["text"]\n', r'bad\.jsonl:52: line has no "text" field'),
])
def test_bad_input_is_one_line_and_leaves_out_as_it_was(tmp_path, content, msg):
    src = tmp_path / "bad.jsonl"
    src.write_bytes(b'{"text": "a first document"}\n' * 50 + content)
    out = tmp_path / "out"
    out.mkdir()
    (out / "fineweb_val_000000.bin").write_bytes(b"before")
    code, _, err = cli(src, "--tokenizer", TOKENIZER, "--out", out, "--own-corpus", "--val-docs", 10, "--shard-tokens", 30, "--workers", 1)
    assert code != 0 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert re.search(msg, err), err
    assert sorted(p.name for p in out.iterdir()) == ["fineweb_val_000000.bin"]  # no shard, no hidden folder left
    assert (out / "fineweb_val_000000.bin").read_bytes() == b"before"


def test_a_tokenizer_without_bos_1_is_refused(tmp_path):
    spm.SentencePieceTrainer.train(sentence_iterator=iter(["some words here", "more words there"] * 50),
                                   model_prefix=str(tmp_path / "nobos"), vocab_size=40, model_type="bpe",
                                   bos_id=-1, eos_id=-1, pad_id=-1, unk_id=0, minloglevel=2)
    src = write_jsonl(tmp_path / "d.jsonl", ["one", "two"])
    with pytest.raises(SystemExit, match=r"nobos\.model has BOS id -1.*BOS = 1"):
        run([src, "--tokenizer", tmp_path / "nobos.model", "--out", tmp_path / "out", "--own-corpus", "--val-docs", 1])


def test_an_older_runs_extra_shards_are_removed(tmp_path):
    src = write_jsonl(tmp_path / "d.jsonl", [f"document {i} of a few words" for i in range(40)])
    out = tmp_path / "out"
    run([src, "--tokenizer", TOKENIZER, "--out", out, "--own-corpus", "--val-docs", 10, "--shard-tokens", 20])
    many = sorted(p.name for p in out.glob("fineweb_*.bin"))
    run([src, "--tokenizer", TOKENIZER, "--out", out, "--own-corpus", "--val-docs", 10, "--shard-tokens", 1000])
    assert len(many) > 4 and sorted(p.name for p in out.glob("fineweb_*.bin")) == ["fineweb_train_000000.bin", "fineweb_val_000000.bin"]


def test_sigterm_leaves_no_hidden_folder_and_no_shards(tmp_path, synth_docs):
    import signal
    import subprocess
    import time
    src = write_jsonl(tmp_path / "big.jsonl", synth_docs[0] * 60)  # ~34 MB: several seconds of encoding
    out = tmp_path / "out"
    p = subprocess.Popen([sys.executable, str(ROOT / "data" / "prepare_text.py"), str(src), "--tokenizer", str(TOKENIZER),
                          "--out", str(out), "--own-corpus", "--val-docs", "50", "--shard-tokens", "100000", "--workers", "1"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not list(out.glob(".prepare_text.*/fineweb_train_*.bin")) and time.time() < deadline:
        time.sleep(0.05)  # until the hidden folder holds training shards
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=60)
    assert p.returncode != 0 and "stopped by SIGTERM" in err and "Traceback" not in err
    assert list(out.iterdir()) == []


def test_plain_text_blank_lines_may_hold_any_whitespace_and_a_huge_block_is_refused(tmp_path, monkeypatch):
    src = tmp_path / "a.txt"
    src.write_text("one\n\u3000\u00a0\ntwo\n", encoding="utf-8")
    assert pt.read_documents(src) == ["one", "two"]
    monkeypatch.setattr(pt, "MAX_DOC_BYTES", 100)
    src.write_text("a line of forty bytes, more or less....\n" * 4, encoding="utf-8")
    with pytest.raises(SystemExit, match=r"a\.txt:1: a plain-text document of over"):
        pt.read_documents(src)


def test_a_tokenizer_that_keeps_spaces_is_refused(tmp_path):
    spm.SentencePieceTrainer.train(sentence_iterator=iter(["some words here", "more words there"] * 50),
                                   model_prefix=str(tmp_path / "keep"), vocab_size=40, model_type="bpe",
                                   add_dummy_prefix=False, remove_extra_whitespaces=False, minloglevel=2)
    src = write_jsonl(tmp_path / "d.jsonl", ["one", "two"])
    with pytest.raises(SystemExit, match=r"keep\.model keeps spaces as pieces"):
        run([src, "--tokenizer", tmp_path / "keep.model", "--out", tmp_path / "out", "--own-corpus", "--val-docs", 1])
