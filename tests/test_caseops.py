"""CaseOps (issue 34): the transform round-trips any text; the data tools reserve its markers and write the
validation byte sidecar in the canonical layout; train_gpt.py scores by the sidecar (bpb = sum nll / ln 2 / sum
of the original bytes), refuses a sidecar that does not match and a CaseOps tokenizer without one; the
validation split cannot shrink into training by accident; settings follow the vocabulary."""
import json
import math
import random
import shutil
import subprocess
import sys
import types
import unicodedata

import numpy as np
import pytest
import torch

import caseops
from conftest import ROOT, metric, run_script, write_shard

NAME = "fineweb10B_sp8192_lossless_caps_caseops_v1_reserved"  # the canonical export's names
TOKENIZER_NAME = "fineweb_8192_bpe_lossless_caps_caseops_v1_reserved.model"
T, A, C, E = caseops.MARKERS
ADVERSARIAL = ["", "a", "A", "AB", "aB", "Ab", "ABc", "abC", "iPhone", "McDonald's", "NASA's LaTeX", "x86_64 USB3 H2O",
               "HTTPServer", "ÉCOLE Émile naïve ÀB", "straße STRASSE", "日本語 Tokyo", "emoji 🙂 OK",
               T, A + C + E, "x" + T + "Y" + E, E + E, T + "abc", A + "AB", "  Leading and trailing  ", "\n\nTwo\n\nLines\n"]


def own_text() -> list[str]:
    """Mixed-case prose, tables and code: this repository's own documentation, one document per paragraph."""
    paras = [p.strip() for f in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
             for p in f.read_text(encoding="utf-8").split("\n\n")]
    return [p for p in paras if p]


@pytest.mark.parametrize("text,expected", [
    ("the cat", "the cat"),
    ("The Cat", T + "the " + T + "cat"),
    ("A b", T + "a b"),
    ("NASA OK", A + "nasa " + A + "ok"),
    ("iPhone", "i" + C + "phone"),
    ("McDonald", T + "mc" + C + "donald"),
    ("x86 Élan", "x86 Élan"),  # É is not ASCII: "lan" is a lowercase run
    ("a" + T + "b" + E, "a" + E + T + "b" + E + E),  # markers in the text are escaped
])
def test_each_rule_of_the_transform(text, expected):
    assert caseops.encode(text) == expected and caseops.decode(expected) == text


def test_every_document_and_adversarial_text_round_trips(synth_docs):
    docs = own_text() + synth_docs[0] + ADVERSARIAL
    rng = random.Random(0)
    alphabet = "aAzZqQ é1_-'" + "".join(caseops.MARKERS)
    docs += ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 16))) for _ in range(5000)]
    assert len(docs) > 5000 and sum(any(c.isupper() for c in d) for d in docs) > 1000
    for d in docs:
        enc = caseops.encode(d)
        assert caseops.decode(enc) == d and not any(c.isupper() and c.isascii() for c in enc), repr(d)


def test_decode_refuses_text_encode_cannot_write():
    for bad in [E, E + "a", T, T + "A", T + "1", A + "a", A + "aB"]:
        with pytest.raises(caseops.CaseOpsError):
            caseops.decode(bad)


def test_original_bytes_count_markers_zero_and_escaped_markers_their_own_bytes():
    assert caseops.original_bytes([T, "the", " ", A, "nasa"]) == [0, 3, 1, 0, 4]
    assert caseops.original_bytes([E, T, "x"]) == [0, 3, 1]  # an escape's marker may be the next piece
    assert caseops.original_bytes([E + T + "é"]) == [5]


def tool(name, *args):
    return subprocess.run([sys.executable, str(ROOT / "data" / name), *map(str, args)], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def caseops_data(tmp_path_factory, synth_docs):
    """A CaseOps tokenizer trained by data/train_tokenizer.py, and the synthetic corpus (plus mixed-case and
    adversarial validation documents) prepared by data/prepare_text.py --caseops, both under the canonical names."""
    d = tmp_path_factory.mktemp("caseops")
    train, val = synth_docs
    val = val + [x for x in own_text() if len(x) > 40][:30] + [x for x in ADVERSARIAL if x.strip()]
    src = d / "docs.jsonl"
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in val + train), encoding="utf-8")
    tok = d / "tokenizers" / TOKENIZER_NAME
    r = tool("train_tokenizer.py", src, "--caseops", "--vocab-size", 400, "--out", tok, "--own-corpus", "--skip-docs", 0)
    assert r.returncode == 0, r.stderr
    out = d / "datasets" / NAME
    r = tool("prepare_text.py", src, "--caseops", "--tokenizer", tok, "--out", out, "--own-corpus", "--val-docs", len(val),
             "--shard-tokens", 4000, "--workers", 2, "--batch-bytes", 4096)
    assert r.returncode == 0, r.stderr
    return types.SimpleNamespace(dir=d, tok=tok, out=out, val=val, src=src, stdout=r.stdout)


def test_the_tokenizer_reserves_the_markers_as_ids_4_to_7(caseops_data):
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_file=str(caseops_data.tok))
    assert [sp.id_to_piece(i) for i in range(8)] == ["<pad>", "<s>", "</s>", "<unk>", *caseops.MARKERS]
    assert sp.encode(caseops.encode("The NASA"))[0] == 4 and 5 in sp.encode(caseops.encode("The NASA"))


def test_prepare_text_writes_a_sidecar_per_validation_shard_of_each_tokens_original_bytes(caseops_data):
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_file=str(caseops_data.tok))
    vals = sorted(caseops_data.out.glob("fineweb_val_[0-9]*.bin"))
    sides = sorted(caseops_data.out.glob("fineweb_val_bytes_*.bin"))
    assert len(vals) >= 2 and [s.name for s in sides] == [v.name.replace("val_", "val_bytes_") for v in vals]
    head = [np.fromfile(f, "<i4", 256) for f in vals + sides]
    assert all(h[0] == 20240520 and h[1] == 1 for h in head)
    tokens = np.concatenate([np.fromfile(v, "<u2", offset=1024) for v in vals])
    nbytes = np.concatenate([np.fromfile(s, "<u2", offset=1024) for s in sides])
    assert len(tokens) == len(nbytes) and not nbytes[tokens == 1].any()
    starts = list(np.flatnonzero(tokens == 1)) + [len(tokens)]
    assert len(starts) - 1 == len(caseops_data.val)
    plain = 0
    for doc, a, b in zip(caseops_data.val, starts, starts[1:]):  # each document: its original bytes, its own text back
        assert int(nbytes[a:b].sum()) == len(doc.strip().encode("utf-8")), repr(doc)
        if doc == " ".join(doc.split()) and unicodedata.normalize("NFKC", doc) == doc:  # untouched by normalisation
            assert caseops.decode(sp.decode(tokens[a + 1:b].tolist())) == doc
            plain += 1
    assert plain > 60
    manifest = json.loads((caseops_data.out / "prepare_text.json").read_text())
    assert manifest["caseops"] and manifest["val_original_bytes"] == int(nbytes.sum())
    assert "sidecar" in caseops_data.stdout


def test_the_data_tools_refuse_a_split_that_would_train_on_validation_documents(caseops_data, tmp_path):
    src = caseops_data.src
    r = tool("prepare_text.py", src, "--caseops", "--tokenizer", caseops_data.tok, "--out", tmp_path / "o", "--val-docs", 10000)
    assert r.returncode != 0 and "issue #2127" in r.stderr and "--own-corpus" in r.stderr and not (tmp_path / "o").exists()
    official = tmp_path / "docs_selected.jsonl"
    shutil.copy(src, official)
    r = tool("prepare_text.py", official, "--tokenizer", caseops_data.tok, "--caseops", "--out", tmp_path / "o", "--own-corpus", "--val-docs", 5)
    assert r.returncode != 0 and "official documents file" in r.stderr
    r = tool("train_tokenizer.py", src, "--vocab-size", 400, "--out", tmp_path / "m.model", "--skip-docs", 0)
    assert r.returncode != 0 and "--own-corpus" in r.stderr and not (tmp_path / "m.model").exists()
    r = tool("prepare_text.py", src, "--tokenizer", caseops_data.tok, "--out", tmp_path / "o", "--own-corpus", "--val-docs", 5)
    assert r.returncode != 0 and "needs --caseops" in r.stderr  # a CaseOps tokenizer on untransformed text
    r = tool("prepare_text.py", src, "--caseops", "--tokenizer", ROOT / "data" / "tokenizers" / "fineweb_1024_bpe.model",
             "--out", tmp_path / "o", "--own-corpus", "--val-docs", 5)
    assert r.returncode != 0 and "needs a CaseOps tokenizer" in r.stderr


def test_a_run_on_the_canonical_layout_scores_by_its_sidecar(caseops_data, tmp_path):
    r = run_script(tmp_path, caseops_data.out, TOKENIZER_PATH=str(caseops_data.tok), ITERATIONS=8, TTT_ENABLED=0)
    assert r.returncode == 0, r.stderr[-3000:]
    log = (tmp_path / "logs" / "t.txt").read_text()
    line = next(x for x in log.splitlines() if x.startswith("vocab:400 "))
    assert "(from the sidecar: " in line and " fineweb_val_bytes shards)" in line, line
    assert "vocab settings (400 pieces): EMBED_BITS=5 BIGRAM_BUCKETS=256 (set)" in log
    code = f"""
import os, sys, torch
sys.path.insert(0, {str(ROOT)!r})
import train_gpt as tg
from conftest import TINY
h = tg.Hyperparameters.from_env({{**TINY, "DATA_PATH": {str(caseops_data.out)!r}, "TOKENIZER_PATH": {str(caseops_data.tok)!r}}})
tg.load_tokenizer(h)
m = tg.load_artifact_into(tg.GPT(h), tg.Path({str(tmp_path / 'final_model.int5.ptz')!r}))
val = tg.load_validation(os.path.join(h.data_path, tg.VAL_PATTERN), h.train_seq_len)
nll = tg.eval_sliding(m, val, h.train_seq_len, h.train_seq_len, 64, 0, 1, torch.device("cpu"))
print(val.numel(), nll.double().sum().item())
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT / "tests", timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    n, total_nll = out.stdout.split()[-2:]
    sides = sorted(caseops_data.out.glob("fineweb_val_bytes_*.bin"))
    original = np.concatenate([np.fromfile(s, "<u2", offset=1024) for s in sides]).astype(np.int64)[1:int(n)]  # each target's
    assert f"val_bytes:{original.sum()} " in line
    expected = float(total_nll) / math.log(2) / original.sum()
    assert abs(expected - metric(log, "final_int5_zstd_roundtrip_exact")) < 1e-6


def fake_rt(lines):
    return types.SimpleNamespace(log=lines.append, device=torch.device("cpu"))


@pytest.mark.parametrize("case,msg", [
    ("short", "holds 99 values for the 100 tokens"),
    ("missing", "does not match the validation shards"),
    ("bos", "bytes on BOS tokens"),
    ("none", "is a CaseOps tokenizer"),
])
def test_a_sidecar_that_does_not_match_or_is_missing_is_one_error(tg, caseops_data, tmp_path, case, msg):
    toks = np.tile(np.r_[1, np.arange(20, 40)], 10)[:100]
    for i in range(2):
        write_shard(tmp_path / f"fineweb_val_{i:06d}.bin", toks)
        if case != "none" and not (case == "missing" and i == 1):
            nbytes = np.where(toks == 1, 0, 2)
            nbytes[0] = 5 if case == "bos" else 0
            write_shard(tmp_path / f"fineweb_val_bytes_{i:06d}.bin", nbytes[:99] if case == "short" else nbytes)
    h = tg.Hyperparameters(data_path=str(tmp_path), tokenizer_path=str(caseops_data.tok), train_seq_len=64)
    with pytest.raises(tg.RunError, match=msg):
        tg.load_data(h, fake_rt([]))


def test_the_vocabulary_chooses_its_settings_unless_set(tg, caseops_data):
    assert tg.VOCAB_SETTINGS[0][1] == {k: getattr(tg.Hyperparameters(), k) for k in tg.VOCAB_SETTINGS[0][1]}
    assert tg.vocab_settings(400) == tg.vocab_settings(2048) == tg.VOCAB_SETTINGS[0][1]
    assert tg.vocab_settings(8192) == tg.vocab_settings(10240) == dict(embed_bits=7, bigram_buckets=4096, ve_layers=0, mlp_hidden=2048,
                                                                                     ttt_lora_docs=44, ttt_lora_chunk=88)
    h = tg.Hyperparameters.from_env({"VE_LAYERS": "1"})
    h.vocab_size = 8192
    line = tg.apply_vocab_settings(h)
    assert (h.embed_bits, h.bigram_buckets, h.ve_layers, h.mlp_hidden, h.ttt_lora_docs, h.ttt_lora_chunk) == (7, 4096, 1, 2048, 44, 88)
    assert line == "vocab settings (8192 pieces): EMBED_BITS=7 BIGRAM_BUCKETS=4096 VE_LAYERS=1 (set) MLP_HIDDEN=2048 TTT_LORA_DOCS=44 TTT_LORA_CHUNK=88"
    defaults = tg.Hyperparameters()
    assert defaults.data_path.endswith(NAME) and defaults.tokenizer_path.endswith(TOKENIZER_NAME)


def test_get_caseops_checks_a_copy_laid_out_as_the_canonical_export(caseops_data, tmp_path, monkeypatch):
    from conftest import load_module
    gc = load_module("get_caseops", ROOT / "data" / "get_caseops.py")
    import sentencepiece as spm
    folder, tok = caseops_data.out, caseops_data.tok
    tokens = np.concatenate([np.fromfile(v, "<u2", offset=1024) for v in sorted(folder.glob("fineweb_val_[0-9]*.bin"))])
    monkeypatch.setattr(gc, "VOCAB", spm.SentencePieceProcessor(model_file=str(tok)).vocab_size())
    monkeypatch.setattr(gc, "VAL_DOCS", len(caseops_data.val))
    monkeypatch.setattr(gc, "VAL_SCORED_TOKENS", (len(tokens) - 1) // gc.SEQ_LEN * gc.SEQ_LEN)
    assert gc.check(folder, tok, 1).startswith(f"ok: {TOKENIZER_NAME} (CaseOps, 400 pieces)")
    with pytest.raises(SystemExit, match="fewer than --train-shards 80"):
        gc.check(folder, tok, 80)
    monkeypatch.setattr(gc, "VAL_DOCS", len(caseops_data.val) + 1)  # a copy whose split is not the official one
    with pytest.raises(SystemExit, match="issue #2127"):
        gc.check(folder, tok, 1)
    broken = tmp_path / NAME
    shutil.copytree(folder, broken)
    next(broken.glob("fineweb_val_bytes_*.bin")).unlink()
    with pytest.raises(SystemExit, match="has no byte sidecar"):
        gc.check(broken, tok, 1)
    with pytest.raises(SystemExit, match="not a CaseOps tokenizer"):
        gc.check(folder, ROOT / "data" / "tokenizers" / "fineweb_1024_bpe.model", 1)


def test_the_benches_evaluation_scores_caseops_data_by_its_sidecar(tg, caseops_data):
    sys.path.insert(0, str(ROOT / "bench"))
    from ttt_sweep import validation
    h = tg.Hyperparameters(data_path=str(caseops_data.out), tokenizer_path=str(caseops_data.tok), train_seq_len=64)
    val, nbytes = validation(h)
    sides = sorted(caseops_data.out.glob("fineweb_val_bytes_*.bin"))
    original = np.concatenate([np.fromfile(s, "<u2", offset=1024) for s in sides]).astype(np.int64)
    assert nbytes.tolist() == original[1:val.numel()].tolist()
    with pytest.raises(SystemExit, match="is a CaseOps tokenizer"):
        validation(h, str(caseops_data.out / "fineweb_val_[0-9]*.bin"))


def test_a_plain_prep_over_a_caseops_one_removes_its_sidecars(caseops_data, tmp_path):
    out = tmp_path / "data"
    shutil.copytree(caseops_data.out, out)
    assert list(out.glob("fineweb_val_bytes_*.bin"))
    r = tool("prepare_text.py", caseops_data.src, "--tokenizer", ROOT / "data" / "tokenizers" / "fineweb_1024_bpe.model",
             "--out", out, "--own-corpus", "--val-docs", len(caseops_data.val), "--shard-tokens", 100000)
    assert r.returncode == 0, r.stderr
    assert not list(out.glob("fineweb_val_bytes_*.bin")) and len(list(out.glob("fineweb_val_[0-9]*.bin"))) == 1
    assert "removed" in r.stderr and "val_bytes shard" in r.stderr
