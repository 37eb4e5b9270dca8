import pickle
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, metric, run_script
from test_model import small_model


def trained_like_state(tg):
    model = small_model(tg)
    names = {n + ".weight" for n, m in model.named_modules() if isinstance(m, tg.QATMixin)}
    return model, model.state_dict(), names


def test_every_matrix_is_int5_whatever_its_size(tg):
    model, state, names = trained_like_state(tg)
    assert {n for n, t in state.items() if t.ndim == 2 and n != "skip_weights" and "resid_mix" not in n} == names
    q = tg.quantize_state(state, names, 0.15)
    for n in names:
        kind, qv, scale = q[n]
        assert kind == "int5" and qv.abs().max() <= 15 and scale.dtype == torch.float16


def test_pack_unpack_reproduces_fake_quantized_weights_exactly(tg):
    _, state, names = trained_like_state(tg)
    back = tg.unpack_artifact(tg.pack_artifact(tg.quantize_state(state, names, 0.15)))
    assert set(back) == set(state)
    for n, t in state.items():
        want = t.float()
        if n in names:  # what QAT's forward sees
            want = tg.fake_quant(want, tg.prune_thresholds([want], 0.15)[0])
        assert torch.equal(back[n], want), n


def test_qat_forward_sees_exactly_the_exported_weights(tg):
    model, state, names = trained_like_state(tg)
    back = tg.unpack_artifact(tg.pack_artifact(tg.quantize_state(state, names, 0.15)))
    tg.set_qat(model, 0.15)  # thresholds batched by shape, outside the graph
    mods = dict(model.named_modules())
    for n in names:
        assert torch.equal(mods[n[:-len(".weight")]].qweight(), back[n]), n
    tg.set_qat(model, None)
    assert all(torch.equal(mods[n[:-7]].qweight(), state[n]) for n in names)


def test_quantizer_picks_the_best_clip_per_row(tg):
    w = torch.randn(16, 256)
    w[0, 0] = 20.0  # an outlier row wants a clip below its max
    q, s = tg.quantize_int5(w)
    err = ((tg.dequantize_int5(q, s) - w) ** 2).sum(1)
    for frac in tg.CLIP_FRACS:
        sc = (w.abs().amax(1) * frac / 15).half().float()
        e = ((torch.clamp(torch.round(w / sc[:, None]), -15, 15) * sc[:, None] - w) ** 2).sum(1)
        assert (err <= e + 1e-6).all()


def test_pickle_and_truncated_artifacts_are_rejected(tg, tmp_path):
    import zstandard
    _, state, names = trained_like_state(tg)
    blob = tg.pack_artifact(tg.quantize_state(state, names, 0.15))
    with pytest.raises(tg.RunError, match="zstd"):
        tg.unpack_artifact(blob[: len(blob) // 2])
    with pytest.raises(tg.RunError, match="zstd"):
        tg.unpack_artifact(pickle.dumps({"w": torch.zeros(3)}))
    with pytest.raises(tg.RunError, match="container"):
        tg.unpack_artifact(zstandard.ZstdCompressor().compress(pickle.dumps({"w": 1})))


def test_cap_logic_prunes_more_then_fails_cleanly(tg):
    _, state, names = trained_like_state(tg)
    base = len(tg.pack_artifact(tg.quantize_state(state, names, 0.15)))
    msgs = []
    blob, prune = tg.export_within_cap(state, names, 1000, 0.15, cap=1000 + base - 1, log=msgs.append)
    assert prune > 0.15 and len(blob) < base and msgs
    with pytest.raises(tg.RunError, match="cannot fit"):
        tg.export_within_cap(state, names, 1000, 0.15, cap=1000 + 100)


def test_artifact_reloads_in_a_fresh_process_with_the_same_bpb(tmp_path, tiny_data):
    r = run_script(tmp_path, tiny_data, TTT_ENABLED=0)
    assert r.returncode == 0, r.stderr[-2000:]
    log = (tmp_path / "logs" / "t.txt").read_text()
    want = metric(log, "final_int5_zstd_roundtrip_exact")
    code = f"""
import sys, torch
sys.path.insert(0, {str(ROOT)!r})
import train_gpt as tg
from conftest import TINY, TOKENIZER
import os, sentencepiece as spm
h = tg.Hyperparameters.from_env({{**TINY, "DATA_PATH": {str(tiny_data)!r}}})
m = tg.load_artifact_model(tg.Path({str(tmp_path / 'final_model.int5.ptz')!r}), h, torch.device("cpu"))
val = tg.load_validation(os.path.join(h.data_path, "fineweb_val_*.bin"), h.train_seq_len)
luts = tg.build_byte_luts(spm.SentencePieceProcessor(model_file=str(TOKENIZER)), 1024)
nll = tg.eval_sliding(m, val, h.train_seq_len, h.train_seq_len, 64, 0, 1, torch.device("cpu"))
print(tg.bpb(nll, tg.target_bytes(val, luts))[1])
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT / "tests", timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert abs(float(out.stdout.split()[-1]) - want) < 1e-6
    assert "artifact bytes_total:" in log and "error" not in r.stderr
