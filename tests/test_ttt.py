import math
import re

import pytest
import torch

from test_model import small_model

L = 32
SHAPE = dict(num_layers=3, model_dim=32, num_heads=2, num_kv_heads=2, mlp_hidden=64, bigram_buckets=64,
             bigram_dim=8, ve_dim=8, train_seq_len=L, vocab_size=128, recur_layers="", parallel_from=2)


def plan_coverage(plan, lo, hi, seq_len):
    cover = torch.zeros(hi, dtype=torch.long)
    for end, frm in plan:
        assert end - seq_len >= 0 and frm >= end - seq_len and end <= hi
        cover[frm:end] += 1
    return cover[lo:]


@pytest.mark.parametrize("n,stride", [(1000, 8), (1000, 32), (32, 8), (999, 7), (64, 32)])
def test_sliding_plan_scores_every_target_exactly_once(tg, n, stride):
    plan = tg.window_plan(0, n, L, stride)
    assert (plan_coverage(plan, 0, n, L) == 1).all()
    assert plan[0] == (L, 0)  # the first window scores all its targets
    assert all(end - frm <= stride for end, frm in plan[1:])  # later ones >= L - stride context


def test_chunked_plans_tile_the_stream_like_one_plan(tg):
    n, C, S = 1000, 128, 8
    chunks = [tg.window_plan(lo, min(n, lo + C), L, S) for lo in range(0, n, C)]
    assert sum(chunks, []) == tg.window_plan(0, n, L, S)


def chunk_ttt():
    """bench/chunk_ttt.py: the chunked TTT arm of the benches (it left train_gpt.py; still score-first)."""
    from conftest import ROOT, load_module
    return load_module("chunk_ttt", ROOT / "bench" / "chunk_ttt.py")


def make_setup(tg, n=600, **kw):
    """Hyperparameters of the tiny shape with the chunked arm's settings (128-token chunks), and a token stream."""
    h = tg.Hyperparameters(**{**SHAPE, **dict(eval_stride=8, eval_batch_seqs=8, ttt_log_every=0), **kw})
    h = chunk_ttt().chunk_hparams(h, env={}, ttt_chunk_tokens=128, ttt_batch_seqs=2, ttt_lr=1e-2)
    torch.manual_seed(3)
    tokens = torch.randint(0, 128, (n + 1,))
    return h, tokens


def run_ttt(tg, h, tokens, budget=None):
    model = small_model(tg, **{k: getattr(h, k) for k in SHAPE})
    logs = []
    nll = chunk_ttt().eval_ttt(model, model, tokens, h, 0, 1, torch.device("cpu"), torch.ones(tokens.numel() - 1),
                               lambda: 0.0, logs.append, budget=budget)
    return model, nll, logs


def test_score_first_ttt_is_causal(tg):
    h, tokens = make_setup(tg)
    _, base, _ = run_ttt(tg, h, tokens)
    p = 300  # token p sits in chunk 2 (targets 256..383)
    changed = tokens.clone()
    changed[p] = (changed[p] + 1) % 128
    _, out, _ = run_ttt(tg, h, changed)
    # target j predicts token j+1: targets before p-1 never saw token p
    assert torch.equal(base[:p - 1], out[:p - 1])
    assert not torch.allclose(base[384:], out[384:])  # later chunks do see the adaptation


def test_ttt_with_zero_epochs_equals_the_sliding_score(tg):
    h, tokens = make_setup(tg, ttt_epochs=0)
    model, nll, _ = run_ttt(tg, h, tokens)
    sliding = tg.eval_sliding(model, tokens, L, h.eval_stride, 8, 0, 1, torch.device("cpu"))
    assert torch.allclose(nll, sliding, atol=1e-5)


def test_ttt_adapts_only_mlp_matrices(tg):
    h, tokens = make_setup(tg)
    model0 = small_model(tg, **SHAPE)
    model, _, _ = run_ttt(tg, h, tokens)
    mlp = {id(p) for p in chunk_ttt().ttt_params(model)}
    for (n, p0), p in zip(model0.named_parameters(), model.parameters()):
        assert torch.equal(p0, p) != (id(p) in mlp), n


def test_budget_guard_stops_adapting_and_still_scores_everything(tg):
    h, tokens = make_setup(tg)
    model, nll, logs = run_ttt(tg, h, tokens, budget=-1.0)
    assert any("stopped adapting" in m for m in logs)
    sliding = tg.eval_sliding(model, tokens, L, h.eval_stride, 8, 0, 1, torch.device("cpu"))
    assert (nll > 0).all() and torch.allclose(nll, sliding, atol=1e-5)
    assert chunk_ttt().ttt_keep_adapting(10, 1, 1, 5, 20) and not chunk_ttt().ttt_keep_adapting(10, 5, 1, 5, 20)


def test_sliding_with_stride_equal_window_is_the_standard_eval(tg):
    h, tokens = make_setup(tg, n=L * 10)
    model = small_model(tg, **SHAPE)
    nll = tg.eval_sliding(model, tokens, L, L, 3, 0, 1, torch.device("cpu"))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        direct = model(tokens[:-1].view(-1, L), tokens[1:].view(-1, L), reduce=False).float().flatten()
    assert torch.allclose(nll, direct, atol=1e-5)


@pytest.mark.parametrize("world", [1, 2, 3, 8])
def test_ttt_batches_cover_each_sequence_once_in_one_shape(tg, world):
    lo, hi, batch = 256, 256 + 11 * L + 5, 4  # 11 whole sequences: steps of 4, 4, 3
    plans = [chunk_ttt().ttt_batch_plan(lo, hi, L, batch, r, world) for r in range(world)]
    assert all(s.shape == plans[0][0].shape == (3, math.ceil(batch / world)) for s, _ in plans)
    used = sorted(int(s) for S, W in plans for s, w in zip(S.flatten(), W.flatten()) if w > 0)
    assert used == list(range(lo, lo + 11 * L, L))
    step_weight = sum(W.sum(1) for _, W in plans) * L  # weights of a step sum to 1 / its tokens
    assert torch.allclose(step_weight, torch.ones(3, dtype=step_weight.dtype))


def test_predicted_stop_keeps_training_inside_the_wall_clock(tg):
    # 100 s left, plain steps 1 s, the last 10 steps (QAT) 2 s: 80 plain + 10 QAT = 100 s
    assert tg.predict_stop(50, 900_000, 1000, 2000, 1_000_000, 10, 10**6) == 50 + 90
    assert tg.predict_stop(50, 900_000, 1000, 1000, 1_000_000, 10, 10**6) == 50 + 100
    assert tg.predict_stop(50, 900_000, 1000, 2000, 1_000_000, math.inf, 10**6) == 50 + 50  # QAT on
    assert tg.predict_stop(50, 990_000, 1000, 2000, 1_000_000, 10, 10**6) == 50 + 5
    assert tg.predict_stop(50, 1_200_000, 1000, 2000, 1_000_000, 10, 10**6) == 50  # over: stop now
    assert tg.predict_stop(50, 0, 1000, 2000, 1_000_000, 10, 120) == 120  # ITERATIONS caps it


def test_stop_prediction_prices_the_recurrent_steps_and_fits_the_wall_clock(tg):
    # no recurrence to come, or recurrence at no cost: the plain prediction
    assert tg.predict_stop(0, 0, 1000, 2000, 1_000_000, 10, 10**6, 0.5, 1.0) == 990
    assert tg.predict_stop(0, 0, 1000, 2000, 1_000_000, 10, 10**6, 1.0, 2.0) == 990
    stop = tg.predict_stop(0, 0, 1000, 1000, 1_000_000, 0, 10**6, 0.5, 1.5)
    sw = math.ceil(0.5 * stop)  # the loop switches at step >= frac * stop
    cost = lambda n: sw * 1000 + (n - sw) * 1500  # noqa: E731
    assert cost(stop) <= 1_000_000 < cost(stop + 2) and 780 < stop < 820


@pytest.mark.parametrize("frac", [0.5, 0.95])
def test_stop_prediction_prices_qat_steps_before_and_after_a_late_switch(tg, frac):
    # plain 1 s, QAT (the last 100 steps) 2 s, recurrent steps 1.5x: a switch at 0.95 comes after QAT starts
    stop = tg.predict_stop(0, 0, 1000, 2000, 1_000_000, 100, 10**6, frac, 1.5)
    cost = lambda n: sum((2000 if i >= n - 100 else 1000) * (1.5 if i >= math.ceil(frac * n) else 1)  # noqa: E731
                         for i in range(n))
    assert cost(stop) <= 1_000_000 < cost(stop + 2)


# ---- per-document LoRA TTT (TTT_MODE=lora)

def doc_tokens(lengths, seed=5):
    """A stream of documents [BOS] + tokens (ids 2..127) of the given lengths."""
    g = torch.Generator().manual_seed(seed)
    return torch.cat([torch.cat([torch.tensor([1]), torch.randint(2, 128, (m - 1,), generator=g)]) for m in lengths])


LENGTHS = [40, 5, 70, 9, 17, 33, 120, 2, 26, 300, 60]  # > L, < chunk + 1, one token, > 4L (3 segments), ...


# The plan before issue 35 (every matrix, fresh A per batch, no phase), which the tests below change one at a time
BEFORE_35 = dict(ttt_lora_targets="all", ttt_lora_warm_a=0, ttt_phases=0, ttt_lora_beta2=0.999)


def run_lora(tg, tokens, model=None, world=1, rank=0, **kw):
    h = tg.Hyperparameters(**{**SHAPE, **BEFORE_35, **dict(ttt_lora_chunk=6, ttt_lora_docs=2, ttt_lora_rank=4, ttt_lora_alpha=4.0,
                                                           ttt_lora_lr=0.05, ttt_log_every=0), **kw})
    model = model or small_model(tg, **SHAPE, eval_seq_len=h.eval_seq_len)
    logs = []
    nll = tg.eval_lora(model, model, tokens, h, rank, world, torch.device("cpu"), lambda: 0.0, logs.append)
    return nll, logs


def test_documents_and_lora_batches_cover_every_target_once(tg):
    tokens = doc_tokens(LENGTHS)
    n = tokens.numel() - 1
    spans = tg.doc_spans(tokens, n)
    assert [hi - lo for lo, hi in spans] == LENGTHS[:-1] + [LENGTHS[-1] - 1]  # the stream's last token is no target
    assert all(tokens[lo] == 1 for lo, _ in spans) and spans[0][0] == 0 and spans[-1][1] == n
    for world in (1, 2, 3):
        batches = tg.lora_batches(spans, L, 2, world)
        segs = sorted(s for _, _, docs in batches for s in docs)
        cover = torch.zeros(n, dtype=torch.long)
        for lo, hi, start in segs:
            cover[lo:hi] += 1
            assert hi - lo <= 4 * L and start <= lo and any(a == start and hi <= b for a, b in spans)
        assert (cover == 1).all()
        assert len(segs) == len(spans) + 2  # the 300-token document: segments of 128, 128, 44
        for W, R, docs in batches:
            assert W in tg.lora_shapes(L) and R == 2 * L // W and len(docs) <= R * world
            assert all(hi - start <= W for _, hi, start in docs) or W == L


def test_lora_ttt_is_causal_and_document_isolated(tg):
    tokens = doc_tokens(LENGTHS)
    base, _ = run_lora(tg, tokens)
    spans = tg.doc_spans(tokens, tokens.numel() - 1)
    (lo, hi), (lo9, hi9) = spans[6], spans[9]  # 120 tokens: windows slide; 300: three segments
    for p, lo, hi in [(lo + 3, lo, hi), (lo + 50, lo, hi), (lo + 100, lo, hi), (lo9 + 130, lo9, hi9), (lo9 + 260, lo9, hi9)]:
        changed = tokens.clone()
        changed[p] = 2 + (changed[p] - 1) % 126  # never a BOS
        out, _ = run_lora(tg, changed)
        assert torch.equal(base[:p - 1], out[:p - 1]) and torch.equal(base[hi:], out[hi:])  # nothing before p, no other document
        assert not torch.equal(base[p - 1:hi], out[p - 1:hi])


def test_lora_ttt_scores_each_document_from_itself_then_adapts(tg):
    tokens = doc_tokens(LENGTHS)
    model = small_model(tg, **SHAPE)
    scored, _ = run_lora(tg, tokens, model, ttt_epochs=0)  # TTT_EPOCHS=0: doc-isolated scoring only
    adapted, _ = run_lora(tg, tokens, model)
    for lo, hi in tg.doc_spans(tokens, tokens.numel() - 1):
        if hi - lo <= L:  # the whole document in one window, from its BOS
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
                direct = model(tokens[None, lo:hi], tokens[None, lo + 1:hi + 1], reduce=False).float()[0]
            assert torch.allclose(scored[lo:hi], direct, atol=5e-3)  # bf16, other shapes (up to ~4e-3 on this model)
        assert torch.equal(scored[lo:lo + 6], adapted[lo:lo + 6])  # the first chunk: nothing learnt yet
        assert (hi - lo <= 6) == torch.equal(scored[lo:hi], adapted[lo:hi])  # the rest: the adapters'
    assert (adapted > 0).all()


@pytest.fixture
def one_process_group(tmp_path):
    """A 1-process gloo group: a 'rank r of 3' then computes its own share (all-reduces are identity)."""
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_lora_adapters_are_fresh_for_every_batch_and_rank(tg, one_process_group, monkeypatch):
    """Every step at its batch's whole window W (a grown window's width follows the other rows of a rank's
    batch, so only bf16 rounding would differ: test_a_steps_window_...), a document scores the same alone, in
    the stream, and on any rank."""
    monkeypatch.setattr(tg, "lora_widths", lambda spans, W, K, c: [W] * K)
    tokens = doc_tokens(LENGTHS)
    spans = tg.doc_spans(tokens, tokens.numel() - 1)
    model = small_model(tg, **SHAPE)
    nll, _ = run_lora(tg, tokens, model)
    lo, hi = spans[2]  # 70 tokens; alone, in a stream of its own
    alone, _ = run_lora(tg, tokens[lo:hi + 1], model)
    assert torch.allclose(nll[lo:hi], alone, atol=1e-4)
    shares = [run_lora(tg, tokens, model, world=3, rank=r)[0] for r in range(3)]
    assert torch.allclose(sum(shares), nll, atol=1e-4)  # 3 ranks' shares sum to the 1-rank scores
    assert all(m.lora is None for m in tg.lora_modules(model, tg.lora_targets('all'))) and all(p.requires_grad for p in model.parameters())


def test_lora_budget_guard_stops_adapting_and_scores_the_rest(tg):
    tokens = doc_tokens(LENGTHS)
    model = small_model(tg, **SHAPE)
    scored, _ = run_lora(tg, tokens, model, ttt_epochs=0)
    h = tg.Hyperparameters(**{**SHAPE, **BEFORE_35, **dict(ttt_lora_chunk=6, ttt_lora_docs=2, ttt_lora_rank=4, ttt_lora_alpha=4.0,
                                                           ttt_log_every=0)})
    logs = []
    nll = tg.eval_lora(model, model, tokens, h, 0, 1, torch.device("cpu"), lambda: 0.0, logs.append, budget=-1.0)  # over budget at the first check (step 8)
    assert [m for m in logs if "stopped adapting" in m] == ["ttt budget: stopped adapting at batch 1/7 step 8, elapsed 0.0s; scoring the rest"]
    assert re.search(r"ttt lora: 7 batches, \d+ steps, 8 adapting", logs[-1])
    first = tg.lora_batches(tg.doc_spans(tokens, tokens.numel() - 1), L, 2, 1)[0][2]  # the 2 longest segments
    assert (nll > 0).all() and all(not torch.equal(nll[lo:hi], scored[lo:hi]) for lo, hi, _ in first)  # 8 chunks adapted
    rest = torch.ones_like(nll, dtype=torch.bool)
    for lo, hi, _ in first:
        rest[lo:hi] = False
    assert torch.equal(nll[rest], scored[rest])  # the other batches: scored only


def test_lora_ttt_learns_a_document_that_repeats_itself(tg):
    g = torch.Generator().manual_seed(9)
    tokens = torch.cat([torch.tensor([1]), torch.randint(2, 128, (10,), generator=g).repeat(12), torch.tensor([1])])
    model = small_model(tg, **SHAPE)
    scored, _ = run_lora(tg, tokens, model, ttt_epochs=0)
    adapted, _ = run_lora(tg, tokens, model)
    assert adapted[-60:].mean() < scored[-60:].mean() - 1.0, (adapted[-60:].mean(), scored[-60:].mean())


@pytest.mark.parametrize("chunk", [1, 7, L])  # preflight refuses chunks longer than L (targets outside the window)
def test_lora_ttt_scores_every_target_at_any_chunk_up_to_the_window(tg, chunk):
    tokens = doc_tokens(LENGTHS)
    nll, _ = run_lora(tg, tokens, ttt_lora_chunk=chunk, ttt_epochs=0)
    assert (nll > 0).all() and nll.numel() == tokens.numel() - 1


def test_lora_scoring_steps_build_no_graph_and_one_steps_graph_at_most_is_alive(tg):
    """Tensors saved for backward, tracked while alive: a step that does not adapt saves none, and no step
    starts while an earlier step's graph is alive (the peak over a batch whose guard stops adapting mid-way
    is one adapting step's)."""
    import weakref

    class Saved:  # what the graph keeps in place of each saved tensor; dies with the graph
        def __init__(self, t):
            self.t = t

    live = weakref.WeakSet()

    def pack(t):
        s = Saved(t)
        live.add(s)
        return s

    def live_bytes():
        return sum(s.t.numel() * s.t.element_size() for s in list(live))

    h = tg.Hyperparameters(**{**SHAPE, **BEFORE_35, **dict(ttt_lora_chunk=4, ttt_lora_rank=4, ttt_lora_alpha=4.0)})
    model = small_model(tg, **SHAPE)
    tokens = doc_tokens([L, L])
    at_start, saved = [], []

    def run_model(ids, targets, reduce=True):
        at_start.append(live_bytes())
        out = model(ids, targets, reduce=reduce)
        saved.append(live_bytes() - at_start[-1])
        return out

    nll = torch.zeros(tokens.numel() - 1)
    K = L // 4  # 8 chunks a document: steps 0..2 adapt, then the guard stops adapting, step 7 scores only
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda s: s.t):
        tg.lora_batch(run_model, model, tokens, nll, [(0, L, 0), (L, 2 * L, L)], L, 2, K, h.ttt_lora_chunk,
                      tg.Adapters(model, h, 2), h, lambda k: k < 3)
    assert len(saved) == K and all(b > 0 for b in saved[:3]) and saved[3:] == [0] * (K - 3)
    assert at_start == [0] * K  # every earlier step's graph was freed before the next step ran
    assert live_bytes() == 0 and (nll > 0).all()


# ---- issue 35: phased TTT, warm-started A, the frontier's LoRA settings, the chunk schedule, the eval context

def test_lora_targets_name_the_matrices_they_adapt(tg):
    model = small_model(tg, **{**SHAPE, "ve_layers": 1})
    names = {id(m): n for n, m in model.named_modules()}
    mods = tg.lora_modules(model, tg.lora_targets("q, mlp,head"))
    assert [names[id(m)] for m in mods[:-1]] == [f"blocks.{i}.{r}" for i in range(3) for r in ("attn.q", "mlp.up", "mlp.down")]
    assert mods[-1] is model
    every = tg.lora_modules(model, tg.lora_targets("all"))
    assert len(every) == 3 * 6 + 2 + 1  # q, k, v, o, up, down a layer; the bigram and value-embedding projections; the head
    for bad in ("q,x", "", " , "):
        with pytest.raises(tg.RunError, match="TTT_LORA_TARGETS"):
            tg.lora_targets(bad)


def test_chunk_schedule_picks_the_smallest_threshold_holding_the_batch(tg):
    sched = tg.parse_chunk_schedule("2000:24, 256:8")
    assert sched == [(256, 8), (2000, 24)]
    assert [tg.batch_chunk(n, 48, sched) for n in (1, 256, 257, 2000, 2001)] == [8, 8, 24, 24, 48]
    assert tg.batch_chunk(5, 48, tg.parse_chunk_schedule("")) == 48
    for bad in ("256", "a:8", "256:0"):
        with pytest.raises(tg.RunError, match="TTT_LORA_CHUNK_SCHEDULE"):
            tg.parse_chunk_schedule(bad)


def test_phases_take_the_longest_documents_first_in_equal_groups(tg):
    spans = tg.doc_spans(doc_tokens(LENGTHS), sum(LENGTHS) - 1)
    phases, rest = tg.phase_groups(spans, 2, 5)
    by_length = sorted(spans, key=lambda s: (s[0] - s[1], s[0]))
    assert [len(g) for g in phases] == [2, 3] and phases[0] + phases[1] + rest == by_length
    assert tg.phase_groups(spans, 0, 5) == ([], by_length)
    assert tg.phase_groups(spans, 3, 100) == ([by_length[:3], by_length[3:7], by_length[7:]], [])


def fake_counts(tg, h, tokens, world):
    """How often each target is scored at `world` ranks: a model whose every nll is 1 (no adapting)."""
    n = tokens.numel() - 1
    total = torch.zeros(n)
    for rank in range(world):
        model = small_model(tg, **SHAPE)

        def ones(ids, targets, reduce=True):
            return torch.ones(targets.shape)
        total += tg.eval_lora(model, ones, tokens, h, rank, world, torch.device("cpu"), lambda: 0.0, lambda m: None)
    return total


@pytest.mark.parametrize("world", [1, 2, 3])
def test_phased_ttt_with_a_chunk_schedule_scores_every_target_once_at_any_world_size(tg, one_process_group, world):
    tokens = doc_tokens(LENGTHS)
    h = tg.Hyperparameters(**{**SHAPE, **BEFORE_35, **dict(ttt_lora_chunk=6, ttt_lora_docs=2, ttt_epochs=0, ttt_phases=2, ttt_phase_docs=5,
                                              ttt_lora_chunk_schedule="20:1,40:3", eval_seq_len=40)})
    assert (fake_counts(tg, h, tokens, world) == 1).all()


PHASED = dict(ttt_phases=1, ttt_phase_docs=2, ttt_phase_lr=0.05, ttt_phase_batch_tokens=2 * L)


def changes(tg, tokens, p, **kw):
    """The targets whose score changes when token p changes (never into a BOS)."""
    base, _ = run_lora(tg, tokens, **kw)
    changed = tokens.clone()
    changed[p] = 2 + (changed[p] - 1) % 126
    out, _ = run_lora(tg, changed, **kw)
    return (base - out).abs() > 0


def test_phased_ttt_learns_only_from_scored_documents_and_only_after_its_phase(tg):
    """A target's score depends on its own document's earlier tokens and, after the phase's global pass, on the
    documents scored before it: a change in a prefix document changes its own later targets and the rest's
    documents (the pass read it), no other prefix document; a change in a rest document changes nothing else."""
    tokens = doc_tokens(LENGTHS)
    spans = tg.doc_spans(tokens, tokens.numel() - 1)
    phases, rest = tg.phase_groups(spans, 1, PHASED["ttt_phase_docs"])
    assert spans[9] in phases[0] and spans[2] in rest  # 300 tokens (a prefix document); 70 (a rest one)
    for (lo, hi), prefix in ((spans[9], True), (spans[2], False)):
        p = lo + 30
        diff = changes(tg, tokens, p, **PHASED)
        assert not diff[lo:p - 1].any()  # nothing before p in its document
        assert diff[p - 1:hi].any()
        others = [s for s in spans if s != (lo, hi)]
        for a, b in others:
            touched = bool(diff[a:b].any())
            if (a, b) in phases[0] or not prefix:
                assert not touched, ((lo, hi), (a, b))  # scored before the pass, or the changed document was never read
        assert prefix == any(diff[a:b].any() for a, b in rest if (a, b) != (lo, hi))  # the pass learnt the prefix document


def test_the_global_pass_moves_the_base_model_and_rests_on_every_scored_document(tg):
    tokens = doc_tokens(LENGTHS)
    spans = tg.doc_spans(tokens, tokens.numel() - 1)
    model = small_model(tg, **SHAPE)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    h = tg.Hyperparameters(**{**SHAPE, **BEFORE_35, **PHASED})
    seen = []

    def recording(ids, targets, reduce=True):
        seen.append((ids.clone(), targets.clone()))
        return model(ids, targets, reduce=reduce)
    phases, _ = tg.phase_groups(spans, 1, PHASED["ttt_phase_docs"])
    took, steps = tg.global_pass(recording, model, tokens, phases[0], h, 0, 1, lambda s: True)
    assert took == steps == sum(hi - lo for lo, hi in phases[0]) // (2 * L) == len(seen)
    x = torch.cat([ids.flatten() for ids, _ in seen])
    y = torch.cat([t.flatten() for _, t in seen])
    inputs = torch.cat([tokens[lo:hi] for lo, hi in sorted(phases[0])])
    targets = torch.cat([tokens[lo + 1:hi + 1] for lo, hi in sorted(phases[0])])
    assert torch.equal(x, inputs[:x.numel()]) and torch.equal(y, targets[:y.numel()])  # the scored targets, in order
    assert x.numel() == steps * 2 * L < inputs.numel()  # the tail short of a step is left out
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert tg.global_pass(recording, model, tokens, phases[0], h, 0, 1, lambda s: s < 2)[0] == 2  # the guard stops it


def test_warm_a_carries_each_slot_to_its_next_document_and_nothing_back(tg):
    """Warm-started A: a document's score may depend on documents scored before it on the same slot, never on
    one scored with it or after it; the first batch scores as with fresh adapters."""
    tokens = doc_tokens(LENGTHS)
    spans = tg.doc_spans(tokens, tokens.numel() - 1)
    batches = tg.lora_batches(spans, L, 2, 1)
    cold, _ = run_lora(tg, tokens)
    warm, _ = run_lora(tg, tokens, ttt_lora_warm_a=1)
    first = [(lo, hi) for lo, hi, _ in batches[0][2]]
    assert all(torch.equal(cold[lo:hi], warm[lo:hi]) for lo, hi in first)
    assert not torch.equal(cold, warm)
    lo, hi, _ = batches[1][2][0]  # a document of the second batch: a change there reaches the third batch's on, no earlier
    p = lo + 20
    diff = changes(tg, tokens, p, ttt_lora_warm_a=1)
    scored_before = [(a, b) for _, _, segs in batches[:2] for a, b, _ in segs if (a, b) != (lo, hi)]
    assert not any(diff[a:b].any() for a, b in scored_before)
    assert any(diff[a:b].any() for _, _, segs in batches[2:] for a, b, _ in segs)


def test_alpha_scales_the_adapters_output(tg):
    model = small_model(tg, **SHAPE)
    h = tg.Hyperparameters(**{**SHAPE, **dict(ttt_lora_rank=4, ttt_lora_alpha=8.0, ttt_lora_targets="head")})
    ad = tg.Adapters(model, h, 2)
    params = ad.attach(2)
    with torch.no_grad():
        params[1].fill_(0.1)
    x = torch.randn(2, 5, SHAPE["model_dim"])
    y = torch.zeros(2, 5, SHAPE["vocab_size"])
    assert torch.allclose(tg.lora_add(y, x, model.lora), (x @ params[0]) @ params[1] * 2.0)
    ad.detach()
    assert model.lora is None


def test_a_longer_eval_context_scores_every_target_from_longer_windows(tg):
    tokens = doc_tokens([200, 150])
    n = tokens.numel() - 1
    model = small_model(tg, **{**SHAPE, "eval_seq_len": 2 * L})
    assert model.rope_cos.size(0) == 2 * L
    for T in (L, 2 * L):
        plan = tg.window_plan(0, n, T, 8)
        assert (plan_coverage(plan, 0, n, T) == 1).all()
    with torch.inference_mode():
        short = tg.eval_sliding(model, tokens, L, 8, 4, 0, 1, torch.device("cpu"))
        long = tg.eval_sliding(model, tokens, 2 * L, 8, 4, 0, 1, torch.device("cpu"))
    assert not torch.allclose(short[2 * L:], long[2 * L:])  # later targets see 2L - 8 tokens instead of L - 8
    nll, _ = run_lora(tg, tokens, eval_seq_len=2 * L, ttt_epochs=0)
    assert (nll > 0).all()


def test_a_steps_window_is_the_widest_reach_of_its_rows_and_the_scores_hold(tg, monkeypatch):
    spans = [(0, 10, 0), (40, 100, 40), (200, 330, 150)]  # short; long; a later segment of a document from 150
    assert tg.lora_widths(spans[:2], 64, 4, 8) == [8, 16, 24, 32]  # the rows' windows grow with their chunks
    assert tg.lora_widths(spans, 64, 2, 8) == [58, 64]  # a later segment reaches back to its document's start
    assert tg.lora_widths([], 64, 2, 8) == [2, 2] and tg.lora_widths([(0, 1, 0)], 64, 1, 1) == [2]
    tokens = doc_tokens(LENGTHS)
    model = small_model(tg, **SHAPE)
    grown, _ = run_lora(tg, tokens, model, ttt_epochs=0)
    monkeypatch.setattr(tg, "lora_widths", lambda spans, W, K, c: [W] * K)  # every step the batch's whole window
    whole, _ = run_lora(tg, tokens, model, ttt_epochs=0)
    assert torch.allclose(grown, whole, atol=5e-3)  # the same contexts (bf16 rounding apart)
