import pickle
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, metric, run_script
from test_model import small_model


def trained_like_state(tg):
    model = small_model(tg)
    return model, model.state_dict(), tg.quantized_names(model)


def test_every_matrix_is_int5_whatever_its_size(tg):
    model, state, names = trained_like_state(tg)
    small = ("skip_", "resid_mix", ".gate")  # per-channel and per-head vectors stay fp32
    assert {n for n, t in state.items() if t.ndim == 2 and not any(k in n for k in small)} == set(names)
    q = tg.quantize_state(state, names)
    for n in names:
        kind, qv, scale, qmax = q[n]
        assert kind == "q" and qmax == 15 and qv.abs().max() <= 15 and scale.dtype == torch.float16


def test_pack_unpack_reproduces_fake_quantized_weights_exactly(tg):
    _, state, names = trained_like_state(tg)
    back = tg.unpack_artifact(tg.pack_artifact(tg.quantize_state(state, names)))
    assert set(back) == set(state)
    for n, t in state.items():
        want = t.float()
        if n in names:  # what QAT's forward sees
            want = tg.fake_quant(want, names[n])
        assert torch.equal(back[n], want), n


def test_qat_forward_sees_exactly_the_exported_weights(tg):
    model, state, names = trained_like_state(tg)
    back = tg.unpack_artifact(tg.pack_artifact(tg.quantize_state(state, names)))
    tg.set_qat(model, True)
    mods = dict(model.named_modules())
    for n in names:
        assert torch.equal(mods[n[:-len(".weight")]].qweight(), back[n]), n
    tg.set_qat(model, False)
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
    blob = tg.pack_artifact(tg.quantize_state(state, names))
    with pytest.raises(tg.RunError, match="zstd"):
        tg.unpack_artifact(blob[: len(blob) // 2])
    with pytest.raises(tg.RunError, match="zstd"):
        tg.unpack_artifact(pickle.dumps({"w": torch.zeros(3)}))
    with pytest.raises(tg.RunError, match="container"):
        tg.unpack_artifact(zstandard.ZstdCompressor().compress(pickle.dumps({"w": 1})))


def correlated_layer(seed=0, rows=48, cols=64, n=2048):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, cols, generator=g) @ torch.randn(cols, cols, generator=g)  # correlated inputs
    X[:, 3] *= 10  # one dominant channel, as the tied embedding's final-norm input has
    return torch.randn(rows, cols, generator=g), X


def test_gptq_beats_round_to_nearest_on_correlated_inputs_and_equals_it_without_correlation(tg):
    W, X = correlated_layer()
    H = X.T @ X
    scale = tg.quantize_int5(W, torch.diag(H))[1]
    rtn = torch.clamp(torch.round(W / scale.float()[:, None]), -15, 15)
    q = tg.gptq_int5(W, H, scale)
    assert q.abs().max() <= 15 and q.dtype == torch.int8
    out_err = lambda Q: ((W - Q.float() * scale.float()[:, None]) @ X.T).norm()
    assert out_err(q) < 0.8 * out_err(rtn)
    assert torch.equal(tg.gptq_int5(W, torch.eye(64), scale).float(), rtn)  # identity Hessian: RTN
    assert torch.equal(tg.gptq_int5(W, torch.diag(torch.diag(H)), scale).float(), rtn)


def test_hessian_weighted_clip_lowers_the_weighted_error(tg):
    W, X = correlated_layer(1)
    hd = torch.diag(X.T @ X)
    err = lambda qs: (((W - tg.dequantize_int5(*qs)) ** 2) * hd).sum()
    assert err(tg.quantize_int5(W, hd)) < 0.95 * err(tg.quantize_int5(W))


def cap_setup(tg, sensitivities: bool = True):
    """Peaked (Laplace) weights like trained ones: 0 is the commonest symbol. Hessians for the matrices
    (not the tables), and each output's sensitivity: the MLP's up matrices 1000x the rest."""
    _, state, names = trained_like_state(tg)
    torch.manual_seed(0)
    for n in sorted(names):  # a set's order changes between processes
        state[n] = torch.distributions.Laplace(0.0, 0.02).sample(state[n].shape)
    hs = {n: torch.diag(torch.rand(state[n].size(1)) + 0.1) for n in sorted(names) if "emb" not in n and "table" not in n}
    if sensitivities:
        hs.update({n + ":g": torch.full((state[n].size(0),), 1000.0 if "mlp.up" in n else 1.0) for n in sorted(hs)})
    free, info = tg.export_within_cap(state, names, 1000, hs, cap=10**9)
    return state, names, hs, free, info


def test_without_pressure_the_export_is_the_least_error_one_bit_for_bit(tg):
    state, names, hs, free, info = cap_setup(tg)
    assert free == tg.pack_artifact(tg.quantize_state(state, names, hs))
    assert info["pruned"] == 0 and info["packs"] == 1 and info["steps"] == {}


def test_under_the_cap_the_allocation_fits_just_under_it_and_spares_the_sensitive_matrices(tg, monkeypatch):
    state, names, hs, free, _ = cap_setup(tg)
    packs, pack = [], tg.pack_artifact
    monkeypatch.setattr(tg, "pack_artifact", lambda q, *a: packs.append(1) or pack(q, *a))
    for shrink in (0.95, 0.85, 0.75):
        cap, packs[:] = 1000 + int(shrink * len(free)), []
        blob, info = tg.export_within_cap(state, names, 1000, hs, cap=cap, log=lambda m: None)
        # at 90 KB one tensor's candidate moves the size by up to ~3% (the bench and full size land within 0.2%)
        assert 0.96 * (cap - 1000) <= len(blob) <= cap - 1000 and info["packs"] == len(packs) > 1
        assert set(tg.unpack_artifact(blob)) == set(state)  # it decodes
        up = [m for n, m in info["steps"].items() if "mlp.up" in n]
        rest = [m for n, m in info["steps"].items() if "mlp.up" not in n and n in hs]
        assert max(up) <= min(rest) and sum(up) / len(up) < sum(rest) / len(rest)  # a byte costs 1000x the loss there: finer steps
    with pytest.raises(tg.RunError, match="cannot fit"):
        tg.export_within_cap(state, names, 1000, hs, cap=1000 + 100, log=lambda m: None)


def test_without_calibration_the_allocation_weighs_every_entry_alike_and_fits(tg):
    state, names, _, free, _ = cap_setup(tg)
    for shrink in (0.8, 0.4):
        blob, info = tg.export_within_cap(state, names, 1000, None, cap=1000 + int(shrink * len(free)), log=lambda m: None)
        assert len(blob) <= int(shrink * len(free)) and set(tg.unpack_artifact(blob)) == set(state)
    w = torch.ones(4, 3)
    assert tg.rd_weight("x", w, None) is None and tg.rd_weight("x", w, {"x": -torch.eye(3), "x:g": torch.ones(4)}) is None
    assert torch.equal(tg.rd_weight("x", w, {"x": 2 * torch.eye(3), "x:g": torch.arange(4.0)}), torch.arange(4.0)[:, None] * 2 * w)


def test_rate_distortion_ladder_counts_bits_and_loss_of_each_candidate_exactly(tg):
    state, names, hs, _, _ = cap_setup(tg)
    n = "blocks.0.mlp.up.weight"
    w, weight = state[n].float(), tg.rd_weight(n, state[n], hs)
    scale = tg.quantize_state(state, names, hs)[n][2]
    ladder = tg.rd_ladder(w, weight, scale, 15)
    assert ladder.shape == (len(tg.RD_STEPS) * len(tg.RD_PRUNE), 2)
    for i, m in enumerate(tg.RD_STEPS):
        for j, share in enumerate(tg.RD_PRUNE):
            s = (scale.float() * m).half().float()[:, None]
            q = torch.clamp(torch.round(w / s), -15, 15)
            ones = (q.abs() == 1).flatten().nonzero().squeeze(1)
            cost = (weight * (w * w - (q * s - w) ** 2) / 2).flatten()[ones]
            q.view(-1)[ones[cost.argsort()[:round(share * len(ones))]]] = 0
            p = torch.bincount((q + 15).flatten().long(), minlength=31).double() / q.numel()
            bits = float(-(p[p > 0] * p[p > 0].log2()).sum()) * q.numel()
            loss = float((weight * (q * s - w) ** 2).sum() / 2)
            got = ladder[i * len(tg.RD_PRUNE) + j]
            assert abs(float(got[0]) - bits) < 1e-6 * bits and abs(float(got[1]) - loss) < 1e-4 * loss + 1e-9, (m, share)


def test_a_hessian_gptq_cannot_use_falls_back_to_round_to_nearest_at_its_clip(tg):
    state, names, hs, _, _ = cap_setup(tg)
    bad, nan_h, good = sorted(n for n in hs if ":" not in n)[:3]
    hs = {**hs, nan_h: hs[nan_h] * float("nan"), bad: -hs[bad]}  # not finite; not positive definite
    logs = []
    q = tg.quantize_state(state, names, hs, logs.append)
    assert sorted(m.split()[2] for m in logs if m.startswith("gptq fallback:")) == sorted([bad, nan_h])
    assert torch.equal(q[nan_h][1], tg.quantize_int5(state[nan_h])[0])  # no usable H: MSE clip
    rtn_at_clip = tg.quantize_int5(state[bad], torch.diag(hs[bad]), tg.GPTQ_CLIP_FRACS)
    assert torch.equal(q[bad][1], rtn_at_clip[0]) and torch.equal(q[bad][2], rtn_at_clip[1])
    assert torch.equal(q[good][1], tg.gptq_int5(state[good], hs[good], q[good][2]))  # the others: GPTQ
    blob, info = tg.export_within_cap(state, names, 1000, hs, cap=1000 + int(0.97 * len(tg.pack_artifact(q))), log=logs.append)
    assert set(tg.unpack_artifact(blob)) == set(state)  # the two matrices' losses are priced at a typical weight
    assert tg.rd_weight(nan_h, state[nan_h], hs) is None and tg.rd_weight(bad, state[bad], hs) is None


def test_the_artifact_is_one_zstd_frame_at_level_16_and_any_level_decodes(tg):
    _, state, names = trained_like_state(tg)
    q = tg.quantize_state(state, names)
    blob = tg.pack_artifact(q)
    assert tg.ZSTD_LEVEL == 16 and blob == tg.pack_artifact(q, 16)
    for lv in (3, 19, 22):  # the benches compare levels
        other = tg.unpack_artifact(tg.pack_artifact(q, lv))
        assert all(torch.equal(a, b) for a, b in zip(other.values(), tg.unpack_artifact(blob).values()))


@pytest.mark.parametrize("switched", [False, True])
def test_the_artifact_says_whether_the_recurrence_ran(tg, tmp_path, switched):
    from test_model import SMALL
    model = small_model(tg, recur_layers="1,2")
    model.recur_on.fill_(float(switched))  # a run that stopped before (or after) the switch
    tg.write_atomic(tmp_path / "a.ptz", tg.pack_artifact(tg.quantize_state(model.state_dict(), tg.quantized_names(model))))
    back = tg.load_artifact_into(tg.GPT(tg.Hyperparameters(**{**SMALL, "recur_layers": "1,2"})), tmp_path / "a.ptz")
    assert back.recur is switched and "recur_on" not in small_model(tg).state_dict()


@pytest.mark.parametrize("env", [{}, {"RECUR_LAYERS": "1,2", "PARALLEL_FROM": "2"}])
def test_artifact_reloads_in_a_fresh_process_with_the_same_bpb(tmp_path, tiny_data, env):
    r = run_script(tmp_path, tiny_data, TTT_ENABLED=0, **env)
    assert r.returncode == 0, r.stderr[-2000:]
    log = (tmp_path / "logs" / "t.txt").read_text()
    want = metric(log, "final_int5_zstd_roundtrip_exact")
    code = f"""
import sys, torch
sys.path.insert(0, {str(ROOT)!r})
import train_gpt as tg
from conftest import TINY, TOKENIZER
import os, sentencepiece as spm
h = tg.Hyperparameters.from_env({{**TINY, **{env!r}, "DATA_PATH": {str(tiny_data)!r}, "TOKENIZER_PATH": str(TOKENIZER)}})
luts = tg.build_byte_luts(tg.load_tokenizer(h))
m = tg.load_artifact_into(tg.GPT(h), tg.Path({str(tmp_path / 'final_model.int5.ptz')!r})).to(torch.device("cpu"))
val = tg.load_validation(os.path.join(h.data_path, tg.VAL_PATTERN), h.train_seq_len)
nll = tg.eval_sliding(m, val, h.train_seq_len, h.train_seq_len, 64, 0, 1, torch.device("cpu"))
print(tg.bpb(nll, tg.target_bytes(val, luts))[1])
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT / "tests", timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert abs(float(out.stdout.split()[-1]) - want) < 1e-6
    assert "artifact bytes_total:" in log and "error" not in r.stderr


def test_gptq_calibration_reads_the_next_training_tokens(tg, tiny_data, monkeypatch):
    h = tg.Hyperparameters(num_layers=2, model_dim=32, num_heads=2, num_kv_heads=2, mlp_hidden=64,
                           bigram_buckets=64, bigram_dim=8, ve_dim=8, train_seq_len=64,
                           train_batch_tokens=256, gptq_calib_seqs=4, data_path=str(tiny_data), recur_layers="", vocab_size=1024)
    rt = tg.Runtime(0, 1, torch.device("cpu"), 1, False, tg.Logger(None))
    trainer = tg.Trainer(h, rt, tg.GPT(h))
    trainer.batch(), trainer.batch()  # two training batches of 4 windows of 64 (+1) tokens
    seen = []
    monkeypatch.setattr(tg, "collect_hessians", lambda model, x, y, batch, world: seen.append((x, y)) or {})
    trainer.calibrate()
    ref = tg.TrainLoader(str(tiny_data / "fineweb_train_*.bin"), 64, h.seed)
    ref.batch(4, 0, 1), ref.batch(4, 0, 1)
    x, y = ref.batch(4, 0, 1)
    assert torch.equal(seen[0][0], x) and torch.equal(seen[0][1], y)  # the next 4 training windows, and their targets


def test_hessians_are_the_inputs_gram_matrices_and_sensitivities_the_outputs_squared_gradients(tg):
    model = small_model(tg)
    ids, tgt = torch.randint(0, 128, (3, 32)), torch.randint(0, 128, (3, 32))
    hs = tg.collect_hessians(model, ids, tgt, 2, 1)
    linear = {n + ".weight" for n, m in model.named_modules() if isinstance(m, tg.CastedLinear)}
    assert set(hs) == linear | {"tok_emb.weight"} | {n + ":g" for n in tg.quantized_names(model)}
    assert all(p.grad is None for p in model.parameters())  # the model's gradients are left alone
    outs, hooks = {}, []
    for name in ("bigram.proj", "bigram.table", "ve_table"):
        hooks.append(dict(model.named_modules())[name].register_forward_hook(
            lambda mod, a, out, name=name: outs.setdefault(name, []).append(out) or out.retain_grad()))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        x = model.hidden(ids, model.tok_emb.weight)
        logits = torch.nn.functional.linear(x, model.tok_emb.weight.to(x.dtype))
        logits.retain_grad()
        model.nll(logits, tgt).sum().backward()
    for hk in hooks:
        hk.remove()
    x = x.detach().float().reshape(-1, 64)
    b = outs["bigram.table"][0].detach().float().reshape(-1, 16)
    assert torch.allclose(hs["tok_emb.weight"], x.T @ x / 96, rtol=1e-4, atol=1e-5)  # per token
    assert torch.allclose(hs["bigram.proj.weight"], b.T @ b / 96, rtol=1e-4, atol=1e-6)
    g = outs["bigram.proj"][0].grad.float().reshape(-1, 64)
    assert torch.allclose(hs["bigram.proj.weight:g"], (g * g).sum(0) / 96, rtol=1e-3, atol=1e-12)
    g = logits.grad.float().reshape(-1, 128)
    assert torch.allclose(hs["tok_emb.weight:g"], (g * g).sum(0) / 96, rtol=1e-3, atol=1e-12)
    g, rows = outs["ve_table"][0].grad.float().reshape(-1, model.ve_table.weight.size(1)), ids.reshape(-1)
    want = torch.zeros_like(model.ve_table.weight).index_add_(0, rows, g * g) / 96  # per table entry
    assert torch.allclose(hs["ve_table.weight:g"], want, rtol=1e-3, atol=1e-12)


def test_the_tied_embedding_ships_at_embed_bits(tg, tmp_path):
    from test_model import SMALL
    h = tg.Hyperparameters(**{**SMALL, "embed_bits": 7})
    model = tg.GPT(h)
    names = tg.quantized_names(model)
    assert names["tok_emb.weight"] == 63 and {v for n, v in names.items() if n != "tok_emb.weight"} == {15}
    q = tg.quantize_state(model.state_dict(), names)
    assert q["tok_emb.weight"][1].abs().max() > 15
    tg.write_atomic(tmp_path / "a.ptz", tg.pack_artifact(q))
    back = tg.load_artifact_into(tg.GPT(h), tmp_path / "a.ptz").to(torch.device("cpu"))
    tg.set_qat(model, True)
    assert torch.equal(back.tok_emb.weight, model.tok_emb.qweight())  # QAT sees int7 there


def test_lqer_factors_are_the_loss_weighted_best_rank_r_correction(tg):
    """With a matrix's separable weight r_i c_j the factors are the weighted SVD's truncation (up to int4 rounding),
    and they beat the plain SVD's on the weighted error."""
    torch.manual_seed(0)
    E = torch.randn(48, 40) + 0.3 * torch.randn(48, 2) @ torch.randn(2, 40)  # rounding noise, a little structure
    r, c = torch.rand(48) ** 4 + 1e-3, torch.rand(40) ** 4 + 1e-3
    weight = r[:, None] * c
    werr = lambda approx: float((weight * (E - approx) ** 2).sum())
    f = tg.lqer_factors(E, weight, 3)
    assert f[0].shape == (48, 3) and f[2].shape == (3, 40) and f[0].abs().max() <= tg.LQER_QMAX and f[1].dtype == torch.float16
    U, S, Vh = torch.linalg.svd(E * r.sqrt()[:, None] * c.sqrt(), full_matrices=False)
    best = (U[:, :3] * S[:3]) @ Vh[:3] / r.sqrt()[:, None] / c.sqrt()
    U, S, Vh = torch.linalg.svd(E, full_matrices=False)
    plain = (U[:, :3] * S[:3]) @ Vh[:3]
    captured = werr(0 * E) - werr(tg.lqer_product(f))
    assert 0.97 * (werr(0 * E) - werr(best)) < captured <= werr(0 * E) - werr(best)  # int4 factors keep 97% of the best
    assert werr(tg.lqer_product(f)) < 0.8 * werr(plain)
    assert torch.equal(tg.lqer_product(tg.lqer_factors(E, weight, 3)), tg.lqer_product(f))  # the same factors every run


def test_lqer_candidates_are_priced_and_the_export_ships_what_it_picked(tg):
    state, names, hs, free, _ = cap_setup(tg)
    n = "blocks.0.mlp.up.weight"
    w, weight = state[n].float(), tg.rd_weight(n, state[n], hs)
    scale = tg.quantize_state(state, names, hs)[n][2]
    plain, ladder = tg.rd_ladder(w, weight, scale, 15), tg.rd_ladder(w, weight, scale, 15, lqer_rank=2)
    P = len(tg.RD_PRUNE)
    assert torch.equal(ladder[:len(plain)], plain) and len(ladder) == len(plain) + len(tg.RD_STEPS)
    for i, m in enumerate(tg.RD_STEPS):  # each step again, nothing zeroed: more bits, less loss
        s = (scale.float() * m).half().float()[:, None]
        q = torch.clamp(torch.round(w / s), -15, 15)
        f = tg.lqer_factors(w - q * s, weight, 2)
        assert float(ladder[len(plain) + i, 0]) == pytest.approx(float(tg.entropy_bits(q, 15) + tg.lqer_bits(f)))  # q unzeroed
        assert float(ladder[len(plain) + i, 1]) < float(plain[i * P, 1])
    assert tg.rd_ladder(w[:, :3], weight[:, :3], scale, 15, lqer_rank=2)[-1, 1] == float("inf")  # too narrow for rank 2
    blob, info = tg.export_within_cap(state, names, 1000, hs, cap=1000 + int(0.8 * len(free)), log=lambda m: None, lqer_rank=2)
    assert info["lqer"] and len(blob) <= int(0.8 * len(free))
    back = tg.unpack_artifact(blob)
    k = info["lqer"][0]
    q = tg.quantize_state(state, names, hs, steps=info["steps"])[k]
    assert torch.allclose(back[k], tg.dequantize_int5(q[1], q[2]) + tg.lqer_product(tg.lqer_factors(
        state[k].float() - tg.dequantize_int5(q[1], q[2]), tg.rd_weight(k, state[k], hs), 2)), atol=1e-6)


def test_lqer_factors_that_do_not_fit_their_matrix_are_a_corrupt_artifact(tg):
    _, state, names = trained_like_state(tg)
    q = tg.quantize_state(state, names)
    n = sorted(names)[0]
    rows, cols = q[n][1].shape
    bad = (torch.zeros(rows + 1, 2, dtype=torch.int8), torch.ones(2).half(), torch.zeros(2, cols, dtype=torch.int8), torch.ones(2).half())
    with pytest.raises(tg.RunError, match="LQER factors"):
        tg.unpack_artifact(tg.pack_artifact({**q, n: q[n] + (bad,)}))
