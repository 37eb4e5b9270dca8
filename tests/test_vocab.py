"""Any SentencePiece vocabulary: the byte count per tokenizer, the vocabulary taken from the tokenizer, and a
compiled end-to-end run at vocab 4096 (data made by data/prepare_text.py) whose artifact reloads."""
import json
import re
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, TOKENIZER, metric, run_script

BENCH_TOKENIZERS = {v: ROOT / "bench" / "tokenizers" / f"bench_{v}_bpe.model" for v in (1024, 4096, 8192)}
ODD_TEXT = ["the café of naïve 2024 déjà vu", "emoji 🙂 and ☃, tabs\tand  double  spaces", "日本語のテキスト",
            "  leading spaces", "trailing spaces   ", "x", "Ελληνικά 3.14159 × 10⁻³ ≤ ½", "a\nnew line"]


def real_text() -> list[str]:
    """Lines of English prose, tables and commands (this repository's own documentation), as documents."""
    lines = [x.strip() for f in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
             for x in f.read_text(encoding="utf-8").splitlines()]
    return [x for x in lines if x] + ODD_TEXT


@pytest.mark.parametrize("model", [TOKENIZER, *BENCH_TOKENIZERS.values()], ids=lambda p: p.stem)
def test_bpb_bytes_are_the_decoded_utf8_bytes_for_every_tokenizer(tg, model):
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_file=str(model))
    luts = tg.build_byte_luts(sp)
    docs = [ids for ids in sp.encode(real_text()) if sp.unk_id() not in ids]  # <unk> carries no bytes (sp1024 has no byte fallback)
    assert len(docs) >= 300
    stream = torch.tensor([t for ids in docs for t in [sp.bos_id(), *ids]])  # documents as the shards hold them
    assert int(tg.target_bytes(stream, luts).sum()) == sum(len(sp.decode(ids).encode("utf-8")) for ids in docs)
    used = {t for ids in docs for t in ids}
    assert any(sp.id_to_piece(t).startswith("\u2581") for t in used)  # the leading-space marker is exercised...
    if model != TOKENIZER:
        assert any(sp.is_byte(t) for t in used)  # ...and byte-fallback pieces (emoji, CJK)
        assert sp.vocab_size() == int(model.stem.split("_")[1]) and luts[2][:4].all()  # control and unk ids: 0 bytes


def test_the_model_takes_the_tokenizers_vocabulary(tg):
    h = tg.Hyperparameters(tokenizer_path=str(BENCH_TOKENIZERS[8192]))
    tg.load_tokenizer(h)
    assert h.vocab_size == 8192 and tg.GPT(tg.Hyperparameters(**{**h.__dict__, "num_layers": 2, "recur_layers": ""})).tok_emb.weight.shape[0] == 8192
    with pytest.raises(tg.RunError, match=r"VOCAB_SIZE=1024 but .*bench_8192_bpe\.model has 8192 pieces"):
        tg.load_tokenizer(tg.Hyperparameters(tokenizer_path=str(BENCH_TOKENIZERS[8192]), vocab_size=1024))


@pytest.fixture(scope="module")
def data_4096(tmp_path_factory, synth_docs):
    """The synthetic corpus as a user makes shards for another vocabulary: data/prepare_text.py."""
    d = tmp_path_factory.mktemp("sp4096")
    train, val = synth_docs
    src = d / "docs.jsonl"
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in val + train), encoding="utf-8")
    r = subprocess.run([sys.executable, str(ROOT / "data" / "prepare_text.py"), str(src), "--tokenizer",
                        str(BENCH_TOKENIZERS[4096]), "--out", str(d), "--own-corpus", "--val-docs", str(len(val)),
                        "--shard-tokens", "40000", "--workers", "2", "--batch-bytes", "8192"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return d


def test_a_compiled_run_at_vocab_4096_trains_exports_and_its_artifact_reloads(tmp_path, data_4096):
    r = run_script(tmp_path, data_4096, COMPILE=1, TOKENIZER_PATH=str(BENCH_TOKENIZERS[4096]), ITERATIONS=20)
    assert r.returncode == 0, r.stderr[-3000:]
    log = (tmp_path / "logs" / "t.txt").read_text()
    assert re.search(r"^vocab:4096 val_tokens:\d+", log, re.M) and "compile:True" in log
    assert "recompiles after priming: 0" in log
    assert metric(log, "legal_ttt_exact") < metric(log, "final_int5_zstd_roundtrip_exact")  # the LoRA head spans 4096 logits
    sub = json.loads((tmp_path / "submission.json").read_text())
    assert sub["status"] == "final" and sub["bytes_total"] < 16_000_000
    code = f"""
import os, sys, torch
sys.path.insert(0, {str(ROOT)!r})
import train_gpt as tg
from conftest import TINY
h = tg.Hyperparameters.from_env({{**TINY, "DATA_PATH": {str(data_4096)!r}, "TOKENIZER_PATH": {str(BENCH_TOKENIZERS[4096])!r}}})
luts = tg.build_byte_luts(tg.load_tokenizer(h))
tg.apply_vocab_settings(h)
m = tg.load_artifact_into(tg.GPT(h), tg.Path({str(tmp_path / 'final_model.int5.ptz')!r}))
val = tg.load_validation(os.path.join(h.data_path, tg.VAL_PATTERN), h.train_seq_len)
nll = tg.eval_sliding(m, val, h.train_seq_len, h.train_seq_len, 64, 0, 1, torch.device("cpu"))
print(h.vocab_size, tg.bpb(nll, tg.target_bytes(val, luts))[1])
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT / "tests", timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    vocab, got = out.stdout.split()[-2:]
    assert vocab == "4096" and abs(float(got) - metric(log, "final_int5_zstd_roundtrip_exact")) < 1e-3  # eager vs compiled


def test_a_tokenizer_that_keeps_spaces_is_refused_since_the_byte_count_would_miss_them(tg, tmp_path):
    import sentencepiece as spm
    spm.SentencePieceTrainer.train(sentence_iterator=iter(["some words here", "more words there"] * 50),
                                   model_prefix=str(tmp_path / "keep"), vocab_size=40, model_type="bpe",
                                   add_dummy_prefix=False, remove_extra_whitespaces=False, minloglevel=2)
    sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "keep.model"))
    ids = sp.encode(" words  here")
    luts = tg.build_byte_luts(sp)
    assert int(tg.target_bytes(torch.tensor([1] + ids), luts).sum()) < len(sp.decode(ids).encode())  # the rule's blind spot
    with pytest.raises(tg.RunError, match="spaces kept as pieces"):
        tg.load_tokenizer(tg.Hyperparameters(tokenizer_path=str(tmp_path / "keep.model")))
