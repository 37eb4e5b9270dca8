import pytest
import torch

SMALL = dict(num_layers=5, model_dim=64, num_heads=4, num_kv_heads=2, mlp_hidden=128,
             bigram_buckets=64, bigram_dim=16, ve_dim=16, train_seq_len=32, vocab_size=128, recur_layers="")


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


def block_calls(model):
    """Every block call in execution order: (layer, input x, output)."""
    calls = []
    for i, blk in enumerate(model.blocks):
        blk.register_forward_hook(lambda m, args, out, i=i: calls.append((i, args[0], out)))
    return calls


@pytest.mark.parametrize("gates", [0, 1])
def test_unet_skip_wiring(tg, gates):
    assert tg.unet_skip_plan(11) == [(5, 4), (6, 3), (7, 2), (8, 1), (9, 0)]
    model = small_model(tg, num_layers=11, parallel_from=-1, skip_gates=gates)
    calls = block_calls(model)
    ids = torch.randint(0, 128, (1, 32))
    model(ids, ids)
    outs = [c[2] for c in calls]
    for dec, enc in tg.unet_skip_plan(11):  # slot = the encoder pass
        s = model.skip_weights[enc] * outs[enc]
        want = torch.lerp(s, outs[dec - 1], torch.sigmoid(model.skip_gates[enc])) if gates else outs[dec - 1] + s
        assert torch.allclose(calls[dec][1], want, atol=1e-6), (dec, enc)
    assert torch.equal(calls[10][1], outs[9])  # the last block gets no skip


def test_a_gate_at_zero_takes_half_the_skip_and_half_the_stream(tg):
    model = tg.GPT(tg.Hyperparameters(**SMALL))
    assert torch.equal(model.skip_gates, torch.zeros_like(model.skip_gates))  # the init
    x, s = torch.randn(2, 8, 64), torch.randn(2, 8, 64)
    with torch.no_grad():
        model.skip_weights[1].uniform_(0.5, 2)
    assert torch.allclose(model.add_skip(1, x, s), 0.5 * x + 0.5 * model.skip_weights[1] * s, atol=1e-6)


def test_recurrence_reruns_its_layers_with_the_unet_over_all_13_passes(tg):
    plan = tg.layer_plan(11, (4, 5), 2)
    assert plan == [0, 1, 2, 3, 4, 5, 4, 5, 6, 7, 8, 9, 10] and tg.layer_plan(11, (), 2) == list(range(11))
    assert tg.unet_skip_plan(13) == [(6 + j, 5 - j) for j in range(6)]  # 6 encoder passes, 7 decoder
    for bad in ("4,6", "10,11", "x"):
        with pytest.raises(tg.RunError):
            tg.parse_recur(bad, 11)
    model = small_model(tg, num_layers=11, recur_layers="4,5", parallel_from=-1)
    assert model.skip_weights.shape[0] == 5  # slot e = encoder pass e, so a slot keeps its layers at the switch
    calls = block_calls(model)
    ids = torch.randint(0, 128, (1, 32))
    base = model(ids, ids, reduce=False)
    assert [c[0] for c in calls] == list(range(11))
    calls.clear()
    model.recur = True
    assert not torch.allclose(model(ids, ids, reduce=False), base)
    assert [c[0] for c in calls] == plan
    out = [c[2] for c in calls]
    assert torch.equal(calls[6][1], out[5])  # pass 6 (layer 4 again) would pair with pass 5, its neighbour: no slot
    for p, e in tg.unet_skip_plan(13)[1:]:  # passes 7..11 <- encoder passes 4..0: the pairs of the plain plan
        assert torch.allclose(calls[p][1], model.add_skip(e, out[p - 1], out[e]), atol=1e-6), p
    assert [(plan[p], plan[e]) for p, e in tg.unet_skip_plan(13)[1:]] == tg.unet_skip_plan(11)  # the same layers
    assert torch.equal(calls[12][1], out[11])


def test_three_passes_of_three_layers_keep_the_skips_between_the_same_layers(tg):
    plan = tg.layer_plan(11, (3, 4, 5), 3)  # the frontier's loop (PR #1493): 17 passes
    assert plan == [0, 1, 2, 3, 4, 5, 3, 4, 5, 3, 4, 5, 6, 7, 8, 9, 10]
    model = small_model(tg, num_layers=11, recur_layers="3,4,5", recur_passes=3, parallel_from=-1)
    calls = block_calls(model)
    ids = torch.randint(0, 128, (1, 32))
    model.recur = True
    model(ids, ids, reduce=False)
    assert [c[0] for c in calls] == plan
    out = [c[2] for c in calls]
    inner, outer = tg.unet_skip_plan(17)[:3], tg.unet_skip_plan(17)[3:]  # 8 encoder passes, 5 skip slots
    for p, e in inner:  # the three innermost pairs (repeated passes) have no slot
        assert torch.equal(calls[p][1], out[p - 1]), p
    for p, e in outer:
        assert torch.allclose(calls[p][1], model.add_skip(e, out[p - 1], out[e]), atol=1e-6), p
    assert [(plan[p], plan[e]) for p, e in outer] == tg.unet_skip_plan(11)  # the plain model's layer pairs
    assert torch.equal(calls[16][1], out[15])  # the last pass (layer 10): no skip left, as in the plain model


def test_two_lanes_attention_writes_one_and_the_mlp_the_other(tg):
    model = small_model(tg, parallel_from=3)  # 5 layers: decoder 2..4, lanes from layer 3
    assert tg.GPT(tg.Hyperparameters(**{**SMALL, "parallel_from": 3})).lane_merge.item() == 0.5  # the init
    seen = {}
    for i, blk in enumerate(model.blocks):
        for name in ("attn", "mlp"):
            getattr(blk, name).register_forward_pre_hook(lambda m, args, k=(i, name): seen.__setitem__(k, args[0]))
    ids = torch.randint(0, 128, (1, 32))
    base = model(ids, ids)
    first = dict(seen)
    with torch.no_grad():  # attention after the split: the output changes, the MLP lane's inputs do not
        model.blocks[3].attn.proj.weight.mul_(3), model.blocks[4].attn.proj.weight.mul_(3)
    assert not torch.allclose(model(ids, ids), base)
    assert torch.equal(seen[3, "mlp"], first[3, "mlp"]) and torch.equal(seen[4, "mlp"], first[4, "mlp"])
    before = dict(seen)
    with torch.no_grad():  # nor does the MLP after the split reach attention
        model.blocks[3].mlp.down.weight.mul_(3)
    model(ids, ids)
    assert torch.equal(seen[4, "attn"], before[4, "attn"]) and not torch.allclose(seen[4, "mlp"], before[4, "mlp"])
    with torch.no_grad():  # before the split attention reaches every later MLP
        model.blocks[2].attn.proj.weight.mul_(3)
    model(ids, ids)
    assert not any(torch.allclose(seen[i, "mlp"], first[i, "mlp"]) for i in (2, 3, 4))
    assert not hasattr(small_model(tg, parallel_from=-1), "lane_merge") and not hasattr(small_model(tg, parallel_from=5), "lane_merge")


def test_equal_lanes_merge_to_one_residual_and_the_mlp_lane_weighs_1_minus_m(tg):
    """Lanes from the last layer, whose attention is switched off: lane 0 is the stream at the
    split and lane 1 that plus the MLP, so m*lane0 + (1-m)*lane1 = the one-lane model with its
    MLP scaled by 1 - m (m = 0.5: the lanes are equal when the MLP is off too)."""
    one, two = small_model(tg, parallel_from=-1), small_model(tg, parallel_from=4)
    ids = torch.randint(0, 128, (2, 32))
    for m, mlp in ((0.5, 0.0), (0.8, 1.0), (0.3, 1.0)):
        two.load_state_dict({**one.state_dict(), "lane_merge": torch.tensor(m)})
        with torch.no_grad():
            for model, scale in ((one, (1 - m) * mlp), (two, mlp)):
                blk = model.blocks[4]
                blk.attn_scale.zero_(), blk.mlp_scale.fill_(scale), blk.resid_mix.copy_(torch.tensor([[1.0], [0.0]]))
        assert torch.allclose(two(ids, ids), one(ids, ids), atol=1e-5), m


def test_a_skip_after_the_split_feeds_both_lanes(tg):
    model = small_model(tg, num_layers=11, parallel_from=7)  # lanes from pass 7; skips reach passes 8 and 9 after it
    calls = []
    for i in (7, 8):
        model.blocks[i].register_forward_hook(lambda m, args, out, i=i: calls.append((i, args, out)))
    enc = block_calls(model)
    ids = torch.randint(0, 128, (1, 32))
    model(ids, ids)
    (_, _, (x7, lane7)), (_, args8, _) = calls
    skip = enc[1][2]  # encoder pass 1's output: slot 1 feeds pass 8
    assert torch.allclose(args8[0], model.add_skip(1, x7, skip), atol=1e-6)
    assert torch.allclose(args8[5], model.add_skip(1, lane7, skip), atol=1e-6)


def test_muon_eq_r_normalises_each_row_before_newton_schulz(tg):
    G = torch.randn(3, 16, 8) * torch.rand(3, 16, 1) * 10
    assert torch.allclose(tg.row_normalize(G).norm(dim=-1), torch.ones(3, 16), atol=1e-5)
    torch.manual_seed(0)
    g = torch.randn(16, 8) * torch.linspace(0.1, 5, 16)[:, None]
    outs = []
    for row_norm in (False, True):
        p = torch.nn.Parameter(torch.zeros(16, 8))
        p.grad = g.clone()
        tg.Muon([p], lr=1.0, momentum=0.0, weight_decay=0.0, coeffs=tg.ns_coefficients("polar", 5), row_norm=row_norm).step()
        want = -tg.newton_schulz((tg.row_normalize(g) if row_norm else g)[None], tg.ns_coefficients("polar", 5))[0].float() * 2 ** 0.5
        assert torch.allclose(p.detach(), want, atol=1e-2)
        outs.append(p.detach())
    assert not torch.allclose(outs[0], outs[1], atol=1e-2)


def test_warmdown_is_a_step_count_or_a_fraction_of_the_run(tg):
    assert tg.warmdown_steps(tg.Hyperparameters(), 6000) == 5100  # default: 85% of the run
    assert tg.warmdown_steps(tg.Hyperparameters(warmdown_iters=60), 200) == 60


def test_default_model_is_the_spec_shape_with_16384_bigram_buckets(tg):
    with torch.device("meta"):
        model = tg.GPT(tg.Hyperparameters(vocab_size=1024))
    n = sum(p.numel() for p in model.parameters())
    # SPEC §4 (4096 buckets) + the bytes spent on buckets + 5 skip gates + the lane merge + the attention gates
    # (8 heads x 12 dims a layer)
    assert n == 27_255_900 + (16384 - 4096) * 128 + 5 * 512 + 1 + 11 * 8 * 12


@pytest.mark.parametrize("kw", [{}, {"parallel_from": 3, "recur_layers": "1,2"}])
def test_model_compiles_without_graph_breaks(tg, kw):
    model = small_model(tg, **kw)
    model.recur = bool(kw)
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    ids = torch.randint(0, 128, (2, 32))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = compiled(ids, ids)
    loss.backward()
    tg.set_qat(model, True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        compiled(ids, ids).backward()


def test_the_fullgraph_check_tells_a_traceable_kernel_from_one_that_is_not(tg):
    """The probe setup() runs on FlashAttention-3 before priming (an untraceable build falls back to SDPA)."""
    q = torch.randn(1, 16, 2, 8)
    assert tg.fullgraph_error(lambda t: tg.causal_attention(t, t, t, 0.125), q) is None
    opaque = lambda t: (torch._dynamo.graph_break(), t * 2)[1]  # like a pybind kernel dynamo cannot trace
    assert tg.fullgraph_error(opaque, q).startswith("Unsupported")
    assert tg.fullgraph_error(lambda t: tg.causal_attention(t, t, t, 0.125), q.requires_grad_()) is None

    class NoBackward(torch.autograd.Function):  # a kernel whose forward traces but whose backward fails
        @staticmethod
        def forward(ctx, t):
            return t * 2

        @staticmethod
        def backward(ctx, grad):
            raise RuntimeError("no backward in this build")

    assert tg.fullgraph_error(NoBackward.apply, torch.randn(4)) is None  # forward only: nothing to see
    assert tg.fullgraph_error(NoBackward.apply, torch.randn(4, requires_grad=True)) is not None  # training would fail


def test_no_two_statements_share_a_line_of_the_script():
    """Lines cost nothing once the script is packed: one statement per line, no `a; b`, no `if x: y`."""
    import ast
    from collections import Counter
    from conftest import ROOT
    tree = ast.parse((ROOT / "train_gpt.py").read_text())
    starts = Counter(n.lineno for n in ast.walk(tree) if isinstance(n, ast.stmt))
    shared = sorted(line for line, k in starts.items() if k > 1)
    assert not shared, f"lines holding more than one statement: {shared[:20]}"


@pytest.mark.parametrize("env,phases", [
    ({}, [(False, False), (True, False), (True, True)]),  # the defaults: QAT comes after the switch
    ({"RECUR_START_FRAC": "0.95"}, [(False, False), (False, True), (True, False), (True, True)]),
    ({"RECUR_START_FRAC": "0"}, [(True, False), (True, True)]),  # recurrent from step 0
    ({"RECUR_LAYERS": ""}, [(False, False), (False, True)]),
    ({"WARMDOWN_ITERS": "3000", "ITERATIONS": "20000", "MAX_WALLCLOCK_SECONDS": "0"},
     [(False, False), (True, False), (True, True)]),
    ({"WARMDOWN_ITERS": "3000"}, [(False, False), (False, True), (True, False), (True, True)]),  # length unknown
    ({"WARMDOWN_ITERS": "100", "ITERATIONS": "20", "MAX_WALLCLOCK_SECONDS": "0"},  # QAT from step 6 of 20
     [(False, False), (False, True), (True, False), (True, True)]),
])
def test_priming_compiles_the_training_states_the_schedule_reaches(tg, env, phases):
    assert tg.training_phases(tg.Hyperparameters.from_env(env)) == phases


def states_reached(tg, h):
    """The (recurrent, QAT) states of every step of a run of h.iterations steps, by Trainer.train's own rules."""
    stop = h.iterations
    warmdown = tg.warmdown_steps(h, stop)
    recur = qat = False
    states = set()
    for step in range(stop):
        if tg.recur_at_end(h) and not recur and step >= min(h.recur_start_frac * stop, stop - 1):
            recur = True
        if not qat and tg.lr_multiplier(step, stop, warmdown) < h.qat_threshold:
            qat = True
        states.add((recur, qat))
    return states


def test_every_state_a_fixed_length_run_reaches_is_primed(tg):
    import itertools
    grid = itertools.product([20, 100], [0, 5, 50, 150], [0.3, 0.667, 1.0], [0.0, 0.15, 0.5, 1.0],
                             [0.0, 0.3, 0.5, 0.95, 1.0], ["", "4,5"])
    for iters, wd_iters, wd_frac, thr, frac, layers in grid:
        h = tg.Hyperparameters.from_env(dict(ITERATIONS=str(iters), WARMDOWN_ITERS=str(wd_iters), WARMDOWN_FRAC=str(wd_frac),
                                             QAT_THRESHOLD=str(thr), RECUR_START_FRAC=str(frac), RECUR_LAYERS=layers,
                                             MAX_WALLCLOCK_SECONDS="0"))
        assert states_reached(tg, h) <= set(tg.training_phases(h)), (iters, wd_iters, wd_frac, thr, frac, layers)


def test_muon_update_is_orthogonal_and_polar_express_gets_closer_in_five_steps(tg):
    torch.manual_seed(0)
    g = torch.randn(3, 64, 32) * torch.logspace(-2, 0, 32)  # singular values over two decades
    dev = {}
    for name in ("quintic", "polar"):
        sv = torch.linalg.svdvals(tg.newton_schulz(g, tg.ns_coefficients(name, 5)).float())
        assert sv.min() > 0.5 and sv.max() < 1.3
        dev[name] = float((sv - 1).abs().mean())
    assert dev["polar"] < 0.6 * dev["quintic"]
    assert tg.ns_coefficients("polar", 3) == list(tg.NS_POLAR[:3]) and tg.ns_coefficients("quintic", 7) == [tg.NS_QUINTIC] * 7
    for bad in [("polar", 6), ("cubic", 5)]:
        with pytest.raises(tg.RunError, match="NS_COEFFS"):
            tg.ns_coefficients(*bad)


def test_the_lr_falls_to_its_floor_and_qat_starts_where_it_did_without_one(tg):
    """MIN_LR clamps the LR; QAT_THRESHOLD reads the schedule's own multiplier, so the floor never delays QAT."""
    h = tg.Hyperparameters(min_lr=0.1)
    assert [round(tg.lr_multiplier(s, 100, 85), 3) for s in (0, 15, 57, 100)] == [1.0, 1.0, 0.506, 0.0]
    assert [max(tg.lr_multiplier(s, 100, 85), h.min_lr) for s in (92, 99)] == [0.1, 0.1]


def test_the_attention_gate_starts_at_one_half_and_the_content_smear_at_nothing(tg):
    torch.manual_seed(0)
    gated, plain = small_model(tg, attn_gate=12), small_model(tg, attn_gate=0)
    x = torch.randn(2, 16, 64)
    cos, sin = gated.rope_cos, gated.rope_sin
    for blk in gated.blocks:
        blk.attn.gate.data.zero_()
    for bg, bp in zip(gated.blocks, plain.blocks):
        bp.attn.load_state_dict({k: v for k, v in bg.attn.state_dict().items() if k != "gate"})
        proj = bp.attn.proj.weight.detach().clone()
        bp.attn.proj.weight.data.mul_(0.5)  # the gate at 1/2 halves every head's output
        assert torch.allclose(bg.attn(x, cos, sin), bp.attn(x, cos, sin), atol=1e-5)
        bp.attn.proj.weight.data.copy_(proj)
    model = tg.GPT(tg.Hyperparameters(**{**SMALL, "smear_window": 12}))
    ids = torch.randint(2, 128, (2, 16))
    assert torch.equal(model.smear(x, ids), x)  # lambda = 0 at init
    with torch.no_grad():
        model.smear_lambda.fill_(1.0)
    assert not torch.allclose(model.smear(x, ids)[:, 1:], x[:, 1:])


def test_hyperparameters_from_env(tg):
    h = tg.Hyperparameters.from_env({"NUM_LAYERS": "3", "MATRIX_LR": "0.01", "DATA_PATH": "x"})
    assert (h.num_layers, h.matrix_lr, h.data_path, h.max_wallclock_seconds) == (3, 0.01, "x", 600.0)
    with pytest.raises(tg.RunError, match="NUM_LAYERS"):
        tg.Hyperparameters.from_env({"NUM_LAYERS": "many"})


def packed_documents(tg, lengths, vocab=128, seed=0):
    """A row of documents end to end, each [BOS] + tokens that are never BOS."""
    g = torch.Generator().manual_seed(seed)
    docs = [torch.cat([torch.tensor([tg.BOS_ID]), torch.randint(2, vocab, (n - 1,), generator=g)]) for n in lengths]
    return docs, torch.cat(docs)[None]


def test_an_isolated_document_scores_as_if_it_were_alone(tg):
    """DOC_ISOLATION: attention, the smear and the bigram hash stop at a BOS, and RoPE is relative, so a document
    packed after others gets the logits it gets at the start of a row of its own; without isolation it does not."""
    docs, row = packed_documents(tg, [9, 14, 9])
    for iso in (1, 0):
        model = small_model(tg, doc_isolation=iso)
        with torch.no_grad():
            packed = model.hidden(row, model.tok_emb.weight)[0, 23:]
            alone = model.hidden(docs[2][None], model.tok_emb.weight)[0]
        assert torch.allclose(packed, alone, atol=1e-5) == bool(iso)


def test_isolation_keeps_the_model_causal_and_a_row_s_first_tokens_in_their_document(tg):
    """A row that starts mid-document: its first tokens are one document; changing a token changes nothing
    before it, and nothing after the next BOS."""
    model = small_model(tg)
    ids = torch.randint(2, 128, (2, 32))
    ids[:, 12] = tg.BOS_ID
    base = model(ids, ids, reduce=False)
    ids2 = ids.clone()
    ids2[:, 5] = (ids2[:, 5] + 1) % 126 + 2
    out = model(ids2, ids, reduce=False)
    assert torch.equal(base[:, :5], out[:, :5]) and torch.equal(base[:, 12:], out[:, 12:])
    assert not torch.allclose(base[:, 5:12], out[:, 5:12])


def test_the_varlen_path_matches_the_masked_one(tg, monkeypatch):
    """FlashAttention-3's varlen call (here a reference: causal SDPA per document, as the kernel computes it) gets
    boundaries that give what SDPA's mask gives; the boundaries are each document's first token, then B*T."""
    def reference(q, k, v, cu_q, cu_k, max_q, max_k, softmax_scale, causal):
        assert torch.equal(cu_q, cu_k) and causal and cu_q.dtype == torch.int32 and int((cu_q.diff()).max()) <= max_q
        out = [tg.causal_attention(*(t[a:b][None] for t in (q, k, v)), softmax_scale, False)[0]
               for a, b in zip(cu_q[:-1].tolist(), cu_q[1:].tolist())]
        return torch.cat(out), None

    ids = torch.randint(2, 128, (2, 32))
    ids[0, [0, 7, 20]] = tg.BOS_ID
    ids[1, 30] = tg.BOS_ID
    q, k, v = torch.randn(2, 32, 4, 8), torch.randn(2, 32, 2, 8), torch.randn(2, 32, 2, 8)
    masked = tg.causal_attention(q, k, v, 0.3, False, tg.document_layout(ids, False))
    monkeypatch.setattr(tg, "attention_kernel", lambda device, allow_fa3=True: "flash_attn_3" if allow_fa3 else "sdpa")
    monkeypatch.setattr(tg, "flash_attn_3_varlen", reference)
    cu = tg.document_layout(ids)
    assert cu.tolist() == [0, 7, 20, 32, 62, 64]
    assert torch.allclose(tg.causal_attention(q, k, v, 0.3, True, cu), masked, atol=1e-5)
