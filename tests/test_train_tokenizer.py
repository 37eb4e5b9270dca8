"""data/train_tokenizer.py: the challenge's SentencePiece settings, the validation documents never read,
bad input in one line, and train_gpt.py's byte count exact for a byte-fallback tokenizer."""
import json
import random
import subprocess
import sys

import pytest
import torch

from conftest import ROOT

TOOL = ROOT / "data" / "train_tokenizer.py"
WORDS = ("the of and to in a is that for it as was with be by on not he this are or his from at which but have an "
         "they you were her she there been one all we their has would when café naïve déjà vu").split()


def corpus(path, n=300, secret=10):
    random.seed(0)
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            text = "zqxjsecretword " * 40 if i < secret else \
                " ".join(random.choice(WORDS) for _ in range(150)) + f" in 19{i % 100:02d}.\nA second line, {i}."
            f.write(json.dumps({"text": text}) + "\n")
    return path


def train(tmp_path, *args):
    return subprocess.run([sys.executable, str(TOOL), *map(str, args)], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    d = tmp_path_factory.mktemp("tok")
    r = train(d, corpus(d / "docs.jsonl"), "--vocab-size", 420, "--out", d / "m.model", "--own-corpus", "--skip-docs", 10)
    assert r.returncode == 0, r.stderr
    import sentencepiece as spm
    return spm.SentencePieceProcessor(model_file=str(d / "m.model")), d


def test_the_tokenizer_has_the_challenges_settings_and_never_saw_the_skipped_documents(tokenizer):
    sp, d = tokenizer
    assert sp.vocab_size() == 420 and (sp.pad_id(), sp.bos_id(), sp.eos_id(), sp.unk_id()) == (0, 1, 2, 3)
    assert sum(sp.is_byte(i) for i in range(420)) == 256  # byte fallback
    assert sp.encode("in 1999", out_type=str)[-4:] == ["1", "9", "9", "9"]  # digits split
    assert not sp.encode("the", out_type=str)[0].startswith("\u2581")  # no dummy prefix
    assert not any("zq" in sp.id_to_piece(i) for i in range(420))  # the first 10 documents were not read
    r = train(d, d / "docs.jsonl", "--vocab-size", 420, "--out", d / "all.model", "--own-corpus", "--skip-docs", 0)
    import sentencepiece as spm
    seen = spm.SentencePieceProcessor(model_file=str(d / "all.model"))
    assert r.returncode == 0 and any("zq" in seen.id_to_piece(i) for i in range(420))  # ...and would shape it


def test_byte_count_is_exact_for_a_byte_fallback_tokenizer(tg, tokenizer):
    sp, _ = tokenizer
    luts = tg.build_byte_luts(sp)
    for text in ["the café of naïve 2024 déjà vu", "zqxj ☃ emoji 🙂 and tabs\tend", "  leading spaces", "x"]:
        ids = torch.tensor([1] + sp.encode(text))  # a document: BOS, then its tokens
        assert int(tg.target_bytes(ids, luts).sum()) == len(sp.decode(sp.encode(text)).encode("utf-8")), text


@pytest.mark.parametrize("case,msg", [
    ("binary", "not a JSON object with a UTF-8"),
    ("missing", "documents file not found"),
    ("all skipped", "no non-empty document after the first"),
    ("tiny vocab", "need --vocab-size >= 300"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, case, msg):
    docs = corpus(tmp_path / "docs.jsonl", n=30)
    if case == "binary":
        with open(docs, "ab") as f:
            f.write(b'{"text": "\xff\xfe"}\n')
    args = [tmp_path / "nope.jsonl" if case == "missing" else docs, "--vocab-size", 299 if case == "tiny vocab" else 400,
            "--out", tmp_path / "m.model", "--own-corpus", "--skip-docs", 1000 if case == "all skipped" else 0]
    r = train(tmp_path, *args)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and msg in r.stderr, r.stderr
    assert not (tmp_path / "m.model").exists()
