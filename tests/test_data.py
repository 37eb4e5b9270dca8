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
    luts = tg.build_byte_luts(sp, 1024)
    checked = 0
    for text in EXTRA_DOCS + synth_docs[1][:40]:
        ids = sp.encode(text)
        if sp.unk_id() in ids:
            continue  # unknown pieces carry no bytes by definition
        toks = torch.tensor([sp.bos_id()] + ids)
        assert tg.target_bytes(toks, luts).sum().item() == len(sp.decode(ids).encode("utf-8"))
        checked += 1
    assert checked >= 40


def test_vocab_mismatch_is_rejected(tg):
    import sentencepiece as spm
    with pytest.raises(tg.RunError, match="VOCAB_SIZE 2048"):
        tg.build_byte_luts(spm.SentencePieceProcessor(model_file=str(TOKENIZER)), 2048)


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
        tg.TokenStream(str(tmp_path / "fineweb_train_*.bin"))
    write_shard(tmp_path / "fineweb_val_000000.bin", np.arange(64))
    with pytest.raises(tg.RunError, match="fewer than one sequence"):
        tg.load_validation(str(tmp_path / "fineweb_val_*.bin"), 64)


def test_global_batch_is_the_same_for_any_world_size(tg, tmp_path):
    write_shard(tmp_path / "fineweb_train_000000.bin", np.arange(0, 50))
    write_shard(tmp_path / "fineweb_train_000001.bin", np.arange(50, 70))
    pat = str(tmp_path / "fineweb_train_*.bin")
    batches = {}
    for world in (1, 2, 4):
        streams = [tg.TokenStream(pat) for _ in range(world)]
        xs, ys = [], []
        for _ in range(3):  # 3 x 17 tokens: crosses a shard and wraps around
            parts = [tg.rank_batch(s, 16, 4, r, world) for r, s in enumerate(streams)]
            xs.append(torch.cat([p[0] for p in parts]))
            ys.append(torch.cat([p[1] for p in parts]))
        batches[world] = (torch.stack(xs), torch.stack(ys))
        assert torch.equal(batches[world][1][:, :, :-1], batches[world][0][:, :, 1:])
    assert torch.equal(batches[1][0], batches[2][0]) and torch.equal(batches[1][0], batches[4][0])
    assert batches[1][0][2, 0, 0].item() == (34 % 70)  # third batch starts at token 34
