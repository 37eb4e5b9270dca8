import pytest
import torch

SMALL = dict(num_layers=5, model_dim=64, num_heads=4, num_kv_heads=2, mlp_hidden=128,
             bigram_buckets=64, bigram_dim=16, ve_dim=16, train_seq_len=32, vocab_size=128)


def small_model(tg, seed=0, **kw):
    torch.manual_seed(seed)
    model = tg.GPT(tg.Hyperparameters(**{**SMALL, **kw}))
    with torch.no_grad():  # leave the zero init so every path carries signal
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def test_model_is_causal(tg):
    model = small_model(tg)
    ids = torch.randint(0, 128, (2, 32))
    tgt = torch.randint(0, 128, (2, 32))
    base = model(ids, tgt, reduce=False)
    ids2 = ids.clone()
    ids2[:, 20] = (ids2[:, 20] + 1) % 128
    out = model(ids2, tgt, reduce=False)
    assert torch.equal(base[:, :20], out[:, :20])
    assert not torch.allclose(base[:, 20:], out[:, 20:])


def test_xsa_output_is_orthogonal_to_own_value(tg):
    y = torch.randn(2, 10, 8, 16)  # (B,T,H,D)
    v = torch.randn(2, 10, 4, 16)  # (B,T,Hkv,D)
    out = tg.exclusive_self_attention(y, v)
    vn = torch.nn.functional.normalize(v, dim=-1).repeat_interleave(2, dim=2)
    assert (out * vn).sum(-1).abs().max() < 1e-5
    # the part removed is exactly the projection on the own value direction
    assert torch.allclose(y - out, (y * vn).sum(-1, keepdim=True) * vn, atol=1e-5)


def test_xsa_is_on_every_layer_by_default_and_ve_on_the_last_two(tg):
    model = tg.GPT(tg.Hyperparameters(**{**SMALL, "num_layers": 11}))
    assert all(b.attn.xsa for b in model.blocks)
    assert [b.attn.ve_gain is not None for b in model.blocks] == [False] * 9 + [True] * 2
    model = tg.GPT(tg.Hyperparameters(**{**SMALL, "num_layers": 11, "xsa_last_n": 3}))
    assert [b.attn.xsa for b in model.blocks] == [False] * 8 + [True] * 3


def test_bigram_buckets_in_range_and_first_position_reserved(tg):
    ids = torch.randint(0, 1024, (4, 300))
    b = tg.bigram_buckets(ids, 4096)
    assert b.min() >= 0 and b.max() < 4096
    assert (b[:, 0] == 4095).all() and (b[:, 1:] < 4095).all()
    assert b[0, 5] == ((36313 * ids[0, 5].item()) ^ (27191 * ids[0, 4].item())) % 4095


def test_unet_skip_wiring(tg):
    assert tg.unet_skip_plan(11) == [(5, 4), (6, 3), (7, 2), (8, 1), (9, 0)]
    model = small_model(tg, num_layers=11)
    ins, outs = {}, {}
    def record(i):
        def hook(module, args, out):
            ins[i], outs[i] = args[0], out
        return hook
    for i, blk in enumerate(model.blocks):
        blk.register_forward_hook(record(i))
    ids = torch.randint(0, 128, (1, 32))
    model(ids, ids)
    for j, (dec, enc) in enumerate(tg.unet_skip_plan(11)):
        want = outs[dec - 1] + model.skip_weights[j] * outs[enc]
        assert torch.allclose(ins[dec], want, atol=1e-6), (dec, enc)
    assert torch.equal(ins[10], outs[9])  # the last block gets no skip


def test_recurrence_reruns_its_layers_after_the_last_of_them_outside_the_skips(tg):
    plan = tg.layer_plan(11, (4, 5))
    assert [i for i, _ in plan] == [0, 1, 2, 3, 4, 5, 4, 5, 6, 7, 8, 9, 10]
    assert [i for i, first in plan if not first] == [4, 5] and tg.layer_plan(11, ()) == [(i, True) for i in range(11)]
    for bad in ("4,6", "10,11", "x"):
        with pytest.raises(tg.RunError):
            tg.parse_recur(bad, 11)
    model = small_model(tg, num_layers=11, recur_layers="4,5")
    calls = []
    for i, blk in enumerate(model.blocks):
        blk.register_forward_hook(lambda m, args, out, i=i: calls.append((i, args[0], out)))
    ids = torch.randint(0, 128, (1, 32))
    base = model(ids, ids)
    assert [c[0] for c in calls] == list(range(11))
    calls.clear()
    model.recur = True
    assert not torch.allclose(model(ids, ids), base)
    assert [c[0] for c in calls] == [i for i, _ in plan]
    out = [c[2] for c in calls]
    assert torch.equal(calls[6][1], out[5]) and torch.equal(calls[7][1], out[6])  # repeats: no skip
    assert torch.allclose(calls[5][1], out[4] + model.skip_weights[0] * out[4], atol=1e-6)  # block 5: block 4's first pass
    assert torch.allclose(calls[8][1], out[7] + model.skip_weights[1] * out[3], atol=1e-6)  # block 6 after the repeat


def test_parallel_layers_feed_attention_and_mlp_the_same_input(tg):
    model = small_model(tg, parallel_from=3)
    assert [b.parallel for b in model.blocks] == [False, False, False, True, True]
    seen = {}
    for i, blk in enumerate(model.blocks):
        for name in ("attn", "mlp"):
            getattr(blk, name).register_forward_pre_hook(lambda m, args, k=(i, name): seen.__setitem__(k, args[0]))
    model(*(torch.randint(0, 128, (1, 32)),) * 2)
    assert [torch.equal(seen[i, "attn"], seen[i, "mlp"]) for i in range(5)] == [False, False, False, True, True]
    assert not any(b.parallel for b in small_model(tg).blocks)


def test_default_model_is_the_spec_shape_with_16384_bigram_buckets(tg):
    with torch.device("meta"):
        model = tg.GPT(tg.Hyperparameters())
    n = sum(p.numel() for p in model.parameters())
    assert n == 27_255_900 + (16384 - 4096) * 128  # SPEC §4 (4096 buckets) + the bytes spent on buckets


def test_model_compiles_without_graph_breaks(tg):
    model = small_model(tg)
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    ids = torch.randint(0, 128, (2, 32))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = compiled(ids, ids)
    loss.backward()
    tg.set_qat(model, 0.15)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        compiled(ids, ids).backward()


def test_the_fullgraph_check_tells_a_traceable_kernel_from_one_that_is_not(tg):
    """The probe setup() runs on FlashAttention-3 before priming (an untraceable build falls back to SDPA)."""
    q = torch.randn(1, 16, 2, 8)
    assert tg.fullgraph_error(lambda t: tg.causal_attention(t, t, t, 0.125), q) is None
    opaque = lambda t: (torch._dynamo.graph_break(), t * 2)[1]  # like a pybind kernel dynamo cannot trace
    assert tg.fullgraph_error(opaque, q).startswith("Unsupported")


def test_the_script_stays_within_1500_lines():
    from conftest import ROOT
    assert len((ROOT / "train_gpt.py").read_text().splitlines()) <= 1500


def test_muon_update_is_orthogonal_and_shape_scaled(tg):
    g = torch.randn(3, 64, 32)
    u = tg.zeropower_ns5(g, 5).float()
    sv = torch.linalg.svdvals(u)
    assert sv.min() > 0.5 and sv.max() < 1.3


def test_hyperparameters_from_env(tg):
    h = tg.Hyperparameters.from_env({"NUM_LAYERS": "3", "MATRIX_LR": "0.01", "DATA_PATH": "x"})
    assert (h.num_layers, h.matrix_lr, h.data_path, h.max_wallclock_seconds) == (3, 0.01, "x", 600.0)
    with pytest.raises(tg.RunError, match="NUM_LAYERS"):
        tg.Hyperparameters.from_env({"NUM_LAYERS": "many"})
