import numpy as np
import pytest
import torch

from conftest import TOKENIZER, write_shard


EXTRA_DOCS = [
    "It's 3:45 p.m. -- \"quoted\" text, (parentheses), 100% sure; semi-colons & ampersands!",
    "Line one.\nLine two   with  spaces.\n\nA new paragraph: numbers 1,234.56 and 2026.",
    "Caf\u00e9 na\u00efve r\u00e9sum\u00e9 -- accents that the tokenizer may or may not know.",
    "  leading spaces, trailing spaces  ",
    "Hyphen-ated words, e-mail addresses like someone@example.com, and URLs: https://example.org/x?y=1",
]


def test_bpb_bytes_equal_utf8_length_of_decoded_documents(tg, synth_docs):
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_file=str(TOKENIZER))
    luts = tg.build_byte_luts(sp)
    checked = 0
    for text in EXTRA_DOCS + synth_docs[1][:40]:
        ids = sp.encode(text)
        if sp.unk_id() in ids:
            continue  # unknown pieces carry no bytes by definition
        toks = torch.tensor([sp.bos_id()] + ids)
        assert tg.target_bytes(toks, luts).sum().item() == len(sp.decode(ids).encode("utf-8"))
        checked += 1
    assert checked >= 40


def test_the_vocabulary_comes_from_the_tokenizer(tg):
    h = tg.Hyperparameters(tokenizer_path=str(TOKENIZER))
    assert h.vocab_size == 0 and tg.load_tokenizer(h).vocab_size() == 1024 and h.vocab_size == 1024
    assert tg.load_tokenizer(tg.Hyperparameters(tokenizer_path=str(TOKENIZER), vocab_size=1024)).vocab_size() == 1024
    with pytest.raises(tg.RunError, match=r"VOCAB_SIZE=2048 but .*fineweb_1024_bpe\.model has 1024 pieces"):
        tg.load_tokenizer(tg.Hyperparameters(tokenizer_path=str(TOKENIZER), vocab_size=2048))


def test_shard_reader_reads_what_prepare_text_wrote(tg, tiny_data):
    (val,) = sorted(tiny_data.glob("fineweb_val_*.bin"))
    toks = tg.load_shard(str(val))
    assert len(toks) == (val.stat().st_size - 1024) // 2 > 5000 and toks.max() < 1024
    assert toks[0] == 1 and (toks == 1).sum() == 50  # one BOS per validation document
    train = sorted(tiny_data.glob("fineweb_train_*.bin"))
    assert len(train) >= 3 and all(tg.check_shard(str(f)) == 50_000 for f in train[:-1])


@pytest.mark.parametrize("kind,match", [("magic", "magic/version"), ("version", "magic/version"),
                                        ("size", "header says"), ("short", "shorter than")])
def test_shard_reader_rejects_corrupt_files(tg, tmp_path, kind, match):
    p = tmp_path / "fineweb_train_000000.bin"
    if kind == "short":
        p.write_bytes(b"\0" * 100)
    else:
        write_shard(p, np.arange(10), magic=1 if kind == "magic" else 20240520,
                    version=2 if kind == "version" else 1, count=11 if kind == "size" else None)
    with pytest.raises(tg.RunError, match=match) as e:
        tg.load_shard(str(p))
    assert str(p) in str(e.value)


def test_missing_shards_and_short_validation(tg, tmp_path):
    with pytest.raises(tg.RunError, match="no shard files match"):
        tg.TrainLoader(str(tmp_path / "fineweb_train_*.bin"), 4, 0)
    write_shard(tmp_path / "fineweb_train_000000.bin", np.arange(4))
    with pytest.raises(tg.RunError, match="hold no window"):
        tg.TrainLoader(str(tmp_path / "fineweb_train_*.bin"), 4, 0)
    write_shard(tmp_path / "fineweb_val_000000.bin", np.arange(64))
    with pytest.raises(tg.RunError, match="fewer than one sequence"):
        tg.load_validation(str(tmp_path / "fineweb_val_*.bin"), 64)


def shards(tmp_path, sizes=(50, 21, 37)):
    """Train shards whose tokens are their global positions (mod 60000), and a validation shard
    of ids that never occur in them."""
    o = 0
    for i, n in enumerate(sizes):
        write_shard(tmp_path / f"fineweb_train_{i:06d}.bin", np.arange(o, o + n))
        o += n
    write_shard(tmp_path / "fineweb_val_000000.bin", np.full(100, 65000))
    return str(tmp_path / "fineweb_train_*.bin")


def windows(x, y):
    """Each (input, target) row as the tuple of its seq_len + 1 tokens."""
    assert torch.equal(x[:, 1:], y[:, :-1])
    return [tuple(r) for r in torch.cat([x, y[:, -1:]], 1).tolist()]


def test_every_window_is_seen_once_before_any_repeats(tg, tmp_path):
    L = 4
    loader = tg.TrainLoader(shards(tmp_path), L, seed=1)
    # shard windows: 49 // 4 = 12, 20 // 4 = 5, 36 // 4 = 9 -> 26 windows, none across a boundary
    expect = {tuple(range(o + L * k, o + L * k + L + 1)) for o, n in ((0, 50), (50, 21), (71, 37)) for k in range((n - 1) // L)}
    assert len(expect) == 26
    first = sum((windows(*loader.batch(2, 0, 1)) for _ in range(13)), [])
    assert set(first) == expect and len(first) == 26  # one epoch: each window exactly once
    second = sum((windows(*loader.batch(2, 0, 1)) for _ in range(13)), [])
    assert set(second) == expect and second != first  # the next epoch, in a new order
    flat = [t for w in first for t in w]
    assert 65000 not in flat  # no validation token


def test_global_batch_is_the_same_for_any_world_size_and_seeded(tg, tmp_path):
    pat = shards(tmp_path)
    batches = {}
    for world in (1, 2, 4):
        loaders = [tg.TrainLoader(pat, 4, seed=7) for _ in range(world)]
        batches[world] = [sum((windows(*ld.batch(8, r, world)) for r, ld in enumerate(loaders)), []) for _ in range(5)]
    assert batches[1] == batches[2] == batches[4]  # 5 x 8 windows: crosses an epoch too
    other = tg.TrainLoader(pat, 4, seed=8)
    assert [windows(*other.batch(8, 0, 1)) for _ in range(5)] != batches[1]


def test_batches_never_read_a_whole_shard(tg, tmp_path, monkeypatch):
    """Shards are memory-mapped once: a step reads only its windows, so a shard boundary never stalls."""
    loader = tg.TrainLoader(shards(tmp_path, (4000, 4000)), 16, seed=0)
    monkeypatch.setattr(np, "fromfile", lambda *a, **k: pytest.fail("a whole-shard read"))
    for _ in range(600):  # 600 x 2 windows: all 498, across both shards and into a second epoch
        x, y = loader.batch(2, 0, 1)
    assert x.shape == (2, 16) and x.dtype == torch.int64
