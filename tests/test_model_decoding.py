"""The draft-and-edit decoder: token-identical to the reference, and every feature beyond it."""

import collections
import dataclasses
import json

import pytest
import torch

from decoding_support import replay
from golden import decode_kwargs, load_cases, require_golden
from model import DecodeConfig, DiffusionLM, ModelConfig, generate

CASES = load_cases()


@pytest.fixture(scope="module")
def lm():
    return DiffusionLM.from_pretrained(require_golden())


@pytest.mark.parametrize("use_cache", [False, True], ids=["nocache", "cache"])
@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_token_identical_to_reference(lm, case, use_cache):
    res = generate(lm, [case["prompt"]], DecodeConfig(**decode_kwargs(case), use_cache=use_cache))
    assert res.sequences[0] == case["output"]
    assert res.forwards[0] == case["forward_calls"]
    assert res.edits[0] == case["t2t_edits"]
    assert res.commits[0] == case["m2t_commits"]
    assert res.canvases[0] == case["final_canvas"]


def test_trajectory_matches_reference_trace(lm):
    """Step by step, the recorded commits and edits equal the reference trace."""
    for case in CASES:
        res = generate(lm, [case["prompt"]], DecodeConfig(**decode_kwargs(case), record_trajectory=True))
        steps = res.trajectories[0].steps
        assert len(steps) == len(case["trace"])
        for ours, ref in zip(steps, case["trace"]):
            assert ours.block == ref["block_index"]
            assert sorted(map(list, ours.m2t)) == sorted(ref["m2t"])
            assert sorted(map(list, ours.t2t)) == sorted(ref["t2t"])


@pytest.mark.parametrize("use_cache", [False, True], ids=["nocache", "cache"])
def test_cases_sharing_parameters_decode_together(lm, use_cache):
    groups = collections.defaultdict(list)
    for case in CASES:
        groups[json.dumps(decode_kwargs(case), sort_keys=True)].append(case)
    for key, cases in groups.items():
        res = generate(lm, [c["prompt"] for c in cases], DecodeConfig(**json.loads(key), use_cache=use_cache))
        assert res.sequences == [c["output"] for c in cases]
        assert res.forwards == [c["forward_calls"] for c in cases]


def _random_prompts(n, seed=0, vocab=240):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, 30, (n,), generator=g).tolist()
    return [torch.randint(0, vocab, (k,), generator=g).tolist() for k in lengths]


@pytest.mark.parametrize("settings", [
    dict(threshold=0.5, editing_threshold=0.7),
    dict(threshold=0.9, editing_threshold=0.95, eos_early_stop=True),
    dict(threshold=0.3, editing_threshold=0.6, num_to_transfer=2, max_post_steps=2),
])
def test_batch_of_different_lengths_equals_one_by_one(lm, settings):
    prompts = _random_prompts(8)
    cfg = DecodeConfig(block_length=8, gen_length=40, **settings)
    batched = generate(lm, prompts, cfg)
    for i, prompt in enumerate(prompts):
        single = generate(lm, [prompt], DecodeConfig(**{**cfg.__dict__, "use_cache": False}))
        assert batched.sequences[i] == single.sequences[0]
        assert batched.forwards[i] == single.forwards[0]
    # Every prompt advanced at its own pace inside shared forwards.
    assert batched.forward_calls < sum(batched.forwards)
    assert batched.forward_calls >= max(batched.forwards)


def test_max_batch_size_chunks_give_the_same_result(lm):
    prompts = _random_prompts(5, seed=3)
    cfg = DecodeConfig(block_length=8, gen_length=24, threshold=0.5, editing_threshold=0.7)
    whole = generate(lm, prompts, cfg)
    chunked = generate(lm, prompts, DecodeConfig(**{**cfg.__dict__, "max_batch_size": 2}))
    assert chunked.sequences == whole.sequences and chunked.forwards == whole.forwards


def test_speculative_verify_is_token_identical_and_saves_forwards(lm):
    saved = 0
    for case in CASES:
        plain = generate(lm, [case["prompt"]], DecodeConfig(**decode_kwargs(case)))
        fast = generate(lm, [case["prompt"]], DecodeConfig(**decode_kwargs(case), speculative_verify=True))
        assert fast.sequences == plain.sequences and fast.canvases == plain.canvases
        assert fast.forwards[0] <= plain.forwards[0]
        blocks = case["num_blocks"] - case["first_block_processed"]
        assert plain.forwards[0] - fast.forwards[0] <= blocks - 1  # at most one per block boundary
        saved += plain.forwards[0] - fast.forwards[0]
    assert saved > 0


def test_speculative_verify_batched_and_uncached(lm):
    prompts = _random_prompts(6, seed=5)
    base = DecodeConfig(block_length=8, gen_length=32, threshold=0.6, editing_threshold=0.8)
    plain = generate(lm, prompts, base)
    for use_cache in (True, False):
        fast = generate(lm, prompts, DecodeConfig(**{**base.__dict__, "speculative_verify": True, "use_cache": use_cache}))
        assert fast.sequences == plain.sequences
        assert sum(fast.forwards) < sum(plain.forwards)


def test_speculative_verify_with_mbe_is_token_identical_and_saves_forwards(lm):
    """With MBE the next block's speculative draft waits for the window's passes: used when they edit
    nothing, discarded when they edit. Outputs equal MBE without speculation, cached or not."""
    prompts = _random_prompts(6, seed=5)
    base = DecodeConfig(block_length=8, gen_length=32, threshold=0.6, editing_threshold=0.95, mbe_window=1,
                        record_trajectory=True)
    plain = generate(lm, prompts, base)
    for use_cache in (True, False):
        fast = generate(lm, prompts, DecodeConfig(**{**base.__dict__, "speculative_verify": True, "use_cache": use_cache}))
        assert fast.sequences == plain.sequences and fast.canvases == plain.canvases
        assert sum(fast.forwards) < sum(plain.forwards)
        steps = [[(s.kind, bool(s.t2t)) for s in t.steps] for t in fast.trajectories]
        pairs = [(k[i], k[i + 1]) for k in steps for i in range(len(k) - 1)]
        assert any(a[0] == "mbe" and b[0] == "speculative" for a, b in pairs)  # kept: the pass edited nothing
        assert any(a[0] == "post" and b == ("mbe", True) for a, b in pairs)  # discarded: the first pass edited


def test_multi_block_editing_revises_an_earlier_block(lm):
    prompt = CASES[0]["prompt"]
    base = DecodeConfig(block_length=8, gen_length=32, threshold=0.5, editing_threshold=0.3, max_post_steps=4)
    res = generate(lm, [prompt], DecodeConfig(**{**base.__dict__, "mbe_window": 2, "record_trajectory": True}))
    mbe_steps = [s for s in res.trajectories[0].steps if s.kind == "mbe"]
    assert mbe_steps, "no MBE pass ran"
    earlier_edits = [(s.block, pos) for s in mbe_steps for pos, _, _ in s.t2t if pos // 8 < s.block]
    assert earlier_edits, "MBE never edited a block before the one just finished"
    # Edits never touch the prompt.
    assert all(pos >= len(prompt) for s in mbe_steps for pos, _, _ in s.t2t)
    # The cache is rebuilt for edited blocks: cached and uncached MBE agree.
    uncached = generate(lm, [prompt], DecodeConfig(**{**base.__dict__, "mbe_window": 2, "use_cache": False}))
    assert uncached.sequences == res.sequences and uncached.forwards == res.forwards
    without = generate(lm, [prompt], base)
    assert without.canvases != res.canvases


def test_mbe_batched_equals_single(lm):
    prompts = _random_prompts(4, seed=9)
    cfg = DecodeConfig(block_length=8, gen_length=24, threshold=0.5, editing_threshold=0.5, mbe_window=1,
                       max_post_steps=2)
    batched = generate(lm, prompts, cfg)
    for i, p in enumerate(prompts):
        assert generate(lm, [p], cfg).sequences[0] == batched.sequences[i]


def test_eos_early_stop_saves_forwards_but_not_tokens(lm):
    pair = {c["name"]: c for c in CASES if c["name"].startswith("speedy_b8_p6_")}
    stop, nostop = pair["speedy_b8_p6_eosstop"], pair["speedy_b8_p6_noeosstop"]
    a = generate(lm, [stop["prompt"]], DecodeConfig(**decode_kwargs(stop)))
    b = generate(lm, [nostop["prompt"]], DecodeConfig(**decode_kwargs(nostop)))
    assert a.sequences == b.sequences and a.sequences[0][-1] == 240
    assert a.forwards[0] < b.forwards[0]


def test_seeded_sampling_is_reproducible_and_varies_with_seed(lm):
    prompts = _random_prompts(3, seed=1)
    cfg = DecodeConfig(block_length=8, gen_length=24, threshold=0.5, editing_threshold=0.8, temperature=1.0,
                       top_k=20, top_p=0.9, seed=7)
    a, b = generate(lm, prompts, cfg), generate(lm, prompts, cfg)
    c = generate(lm, prompts, DecodeConfig(**{**cfg.__dict__, "seed": 8}))
    assert a.sequences == b.sequences
    assert a.sequences != c.sequences
    assert all(250 not in s for s in a.canvases)


def test_top_k_one_sampling_equals_greedy_tokens():
    from model.sampling import choose_tokens
    logits = torch.randn(4, 6, 50)
    greedy, _ = choose_tokens(logits, mask_id=49)
    sampled, conf = choose_tokens(logits, mask_id=49, temperature=0.7, top_k=1, generator=torch.Generator().manual_seed(0))
    assert torch.equal(greedy, sampled) and torch.allclose(conf, torch.ones_like(conf))


def test_top_p_keeps_smallest_nucleus():
    from model.sampling import filter_logits
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    kept = torch.isfinite(filter_logits(logits, None, 0.7))
    assert kept.tolist() == [[True, True, False, False]]
    kept = torch.isfinite(filter_logits(logits, None, 0.8))  # 0.5 + 0.3 reaches 0.8 exactly
    assert kept.tolist() == [[True, True, False, False]]


def test_mask_argmax_guard_finishes_instead_of_looping():
    """A model that always predicts the mask token would make the reference loop forever."""
    torch.manual_seed(0)
    cfg = ModelConfig.tiny(vocab_size=32, hidden_size=32, head_dim=8, intermediate_size=64, num_hidden_layers=1,
                           mask_token_id=31, eos_token_id=30)
    lm = DiffusionLM(cfg)
    with torch.no_grad():
        lm.lm_head.weight.zero_()
        lm.lm_head.weight[31] = 1.0  # every position's arg-max is the mask id ...
        lm.model.norm.weight.fill_(1.0)
    res = generate(lm, [[1, 2, 3]], DecodeConfig(block_length=4, gen_length=8))
    assert len(res.sequences[0]) == 8 and 31 not in res.canvases[0]


def test_trajectory_replays_to_final_canvas(lm):
    prompts = _random_prompts(3, seed=11)
    res = generate(lm, prompts, DecodeConfig(block_length=8, gen_length=24, threshold=0.5, editing_threshold=0.6,
                                             record_trajectory=True, speculative_verify=True))
    for traj, canvas in zip(res.trajectories, res.canvases):
        assert replay(traj) == canvas


def test_tokens_per_forward_definition(lm):
    prompts = _random_prompts(2, seed=2)
    res = generate(lm, prompts, DecodeConfig(block_length=8, gen_length=16, threshold=0.5))
    assert res.tokens_per_forward == pytest.approx(sum(map(len, res.sequences)) / sum(res.forwards))


@pytest.mark.parametrize("kwargs,prompts,needle", [
    ({}, [[]], "prompt 0 is empty"),
    ({}, [], "at least one prompt"),
    ({"gen_length": 600}, [[1, 2]], "max_position_embeddings=512"),
    ({"threshold": 1.5}, [[1]], "threshold"),
    ({"threshold": -0.1}, [[1]], "threshold"),
    ({"editing_threshold": -1.0}, [[1]], "above 1 disables"),
    ({"mask_id": 300}, [[1]], "mask_id=300 is outside"),
    ({"eos_id": -1}, [[1]], "eos_id=-1 is outside"),
    ({"block_length": 0}, [[1]], "block_length must be a positive"),
    ({"num_to_transfer": 0}, [[1]], "num_to_transfer"),
    ({"top_p": 0.0}, [[1]], "top_p"),
    ({}, [[1, 999]], "outside the vocabulary"),
    ({}, [[1, 250]], "contains the mask token"),
])
def test_bad_input_fails_before_any_forward(lm, kwargs, prompts, needle):
    calls = []
    handle = lm.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(ValueError, match=needle):
            generate(lm, prompts, DecodeConfig(**{"block_length": 8, "gen_length": 16, **kwargs}))
    finally:
        handle.remove()
    assert not calls


def test_editing_threshold_above_one_disables_edits(lm):
    prompts = _random_prompts(3, seed=4)
    res = generate(lm, prompts, DecodeConfig(block_length=8, gen_length=24, threshold=0.4, editing_threshold=1.01))
    assert res.edits == [0, 0, 0]


@pytest.mark.parametrize("extra", [{"speculative_verify": True}, {"mbe_window": 1}], ids=["speculative", "mbe"])
def test_max_reverts_caps_how_often_a_position_puts_back_an_earlier_token(lm, extra):
    """tau_edit 0 makes the random golden model edit back and forth; the guard caps the reverts per
    position (0: never, 1: once) in every pass (drafting, post steps, MBE), and a batch decodes as
    its rows one by one."""
    from components.edits import classify_edits

    prompts = _random_prompts(4, seed=3)
    base = dict(block_length=8, gen_length=24, threshold=0.5, editing_threshold=0.0, record_trajectory=True, **extra)

    def reverts_per_position(trajectory):
        held, reverts = {}, collections.Counter()
        for step in trajectory.steps:
            for pos, tok in step.m2t:
                held.setdefault(pos, set()).add(tok)
            for pos, _, new in step.t2t:
                reverts[pos] += new in held.setdefault(pos, set())
                held[pos].add(new)
        return reverts

    free = generate(lm, prompts, DecodeConfig(**base))
    assert max(max(reverts_per_position(t).values(), default=0) for t in free.trajectories) > 1
    for cap in (0, 1):
        capped = generate(lm, prompts, DecodeConfig(**base, max_reverts=cap))
        for trajectory in capped.trajectories:
            assert max(reverts_per_position(trajectory).values(), default=0) <= cap
        assert sum(classify_edits(t, None, None).oscillations for t in capped.trajectories) < sum(
            classify_edits(t, None, None).oscillations for t in free.trajectories)
        one_by_one = [generate(lm, [p], DecodeConfig(**base, max_reverts=cap)).sequences[0] for p in prompts]
        assert capped.sequences == one_by_one
    with pytest.raises(ValueError, match="max_reverts"):
        generate(lm, prompts, DecodeConfig(block_length=8, gen_length=16, max_reverts=-1))


@pytest.mark.parametrize("extra", [{"speculative_verify": True}, {"mbe_window": 1}], ids=["speculative", "mbe"])
def test_forward_split_adds_up_to_the_decoders_forwards(lm, extra):
    """The benchmark's drafting / edit-round / verification / MBE accounting covers every forward."""
    from components.edits import forward_split

    prompts = _random_prompts(3, seed=5)
    res = generate(lm, prompts, DecodeConfig(block_length=8, gen_length=24, threshold=0.5, editing_threshold=0.6,
                                             record_trajectory=True, **extra))
    splits = [forward_split(t) for t in res.trajectories]
    assert [sum(s.values()) for s in splits] == res.forwards
    assert all(s["draft"] >= 1 for s in splits)
    assert sum(s["mbe"] for s in splits) > 0 if extra.get("mbe_window") else all(s["mbe"] == 0 for s in splits)


@pytest.mark.parametrize("settings", [
    dict(threshold=0.5, editing_threshold=0.7, speculative_verify=True),
    dict(threshold=0.5, editing_threshold=0.5, mbe_window=1, max_post_steps=2),
    dict(threshold=0.9, editing_threshold=0.95, eos_early_stop=True),
], ids=["spec", "mbe", "eos"])
def test_on_block_hands_over_only_finished_text(lm, settings):
    """Every on_block call is a prefix of the final answer that no later step changes, growing block by
    block, and the last call (done) is the answer itself; the results equal decoding without the hook."""
    prompts = _random_prompts(3, seed=4)
    cfg = DecodeConfig(block_length=8, gen_length=32, **settings)
    calls = collections.defaultdict(list)
    res = generate(lm, prompts, cfg, on_block=lambda i, tokens, done: calls[i].append((list(tokens), done)))
    assert res == dataclasses.replace(generate(lm, prompts, cfg), wall_seconds=res.wall_seconds)
    for i, seq in enumerate(res.sequences):
        assert [done for _, done in calls[i]] == [False] * (len(calls[i]) - 1) + [True]
        assert calls[i][-1][0] == seq
        lengths = [len(t) for t, _ in calls[i]]
        assert lengths[:-1] == sorted(set(lengths[:-1])) and all(seq[:len(t)] == t for t, _ in calls[i])
    assert max(len(c) for c in calls.values()) > 2, "answers arrive in several pieces"
    assert not any(res.stopped) and res.trajectories is None


def test_cancelled_rows_leave_the_others_as_they_were_alone(lm):
    prompts = _random_prompts(3, seed=5)
    cfg = DecodeConfig(block_length=8, gen_length=24, threshold=0.5, editing_threshold=0.7)
    asked = collections.Counter()

    def cancelled(i):
        asked[i] += 1
        return i == 1 and asked[i] > 2  # row 1 stops after two forwards

    res = generate(lm, prompts, cfg, cancelled=cancelled)
    assert res.stopped == [False, True, False] and res.forwards[1] == 2
    for i in (0, 2):
        alone = generate(lm, [prompts[i]], cfg)
        assert res.sequences[i] == alone.sequences[0] and res.forwards[i] == alone.forwards[0]
    assert generate(lm, prompts, cfg, cancelled=lambda i: True).forward_calls == 0


# ------------------------------------------------------------------ execution switches
SWITCH_SETTINGS = [
    dict(threshold=0.95, editing_threshold=0.9),
    dict(threshold=0.3, editing_threshold=0.4, speculative_verify=True, max_reverts=1),
    dict(threshold=0.3, editing_threshold=0.4, mbe_window=1, speculative_verify=True, max_post_steps=3),
    dict(threshold=0.5, editing_threshold=0.6, eos_early_stop=True, eos_id=17, speculative_verify=True),
    dict(threshold=0.3, editing_threshold=0.5, temperature=0.8, seed=3, speculative_verify=True),
]


def _outcome(res):
    return res.sequences, res.forwards, res.edits, res.commits, res.canvases, res.forward_calls


@pytest.mark.parametrize("settings", SWITCH_SETTINGS, ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()))
def test_static_shapes_decode_what_the_eager_decoder_decodes(lm, settings):
    """Static shapes change the forward's shapes (whole blocks queried, every cache slot a key), never
    the algorithm: batched prompts of different lengths decode identically."""
    prompts = _random_prompts(5, seed=11)
    base = DecodeConfig(block_length=8, gen_length=24, **settings)
    static = dataclasses.replace(base, static_shapes=True)
    assert _outcome(generate(lm, prompts, static)) == _outcome(generate(lm, prompts, base))


def test_static_shapes_give_one_shape_per_step_after_the_first():
    """Every forward after a row's first has the same input and key shapes (what compilation and graph
    capture need), while the eager decoder's key width grows block by block."""
    torch.manual_seed(0)
    lm = DiffusionLM(ModelConfig.tiny(vocab_size=64, num_hidden_layers=1, hidden_size=32, intermediate_size=64,
                                      num_attention_heads=2, num_key_value_heads=1, head_dim=16, mask_token_id=63)).eval()
    shapes = {}
    for static in (False, True):
        seen = []
        forward = lm.forward

        def spy(input_ids, past=None, plan=None, **kw):
            seen.append((tuple(input_ids.shape), tuple(plan.mask.shape)))
            return forward(input_ids, past=past, plan=plan, **kw)

        lm.forward = spy
        try:
            generate(lm, [[1, 2, 3]], DecodeConfig(block_length=4, gen_length=16, threshold=0.99, editing_threshold=2.0,
                                                   static_shapes=static))
        finally:
            del lm.forward
        shapes[static] = seen
    assert len(set(shapes[True][1:])) == 1 and len(shapes[True]) > 4
    assert len({s[1] for s in shapes[False][1:]}) > 1


def test_cuda_graphs_off_cuda_is_refused_in_one_line(lm):
    with pytest.raises(ValueError, match=r"^DecodeConfig.cuda_graphs needs a model on a CUDA device"):
        generate(lm, [[1, 2, 3]], DecodeConfig(cuda_graphs=True))


@pytest.mark.slow
def test_compiled_decode_is_token_identical_to_eager(lm):
    """torch.compile runs the steady steps (on CPU: inductor's C++ kernels) and decodes what the eager
    decoder decodes, batch 1 and batched, on the golden model."""
    prompts = _random_prompts(4, seed=2)
    for settings in SWITCH_SETTINGS[:2]:
        base = DecodeConfig(block_length=8, gen_length=24, **settings)
        for batch in ([prompts[0]], prompts):
            assert _outcome(generate(lm, batch, dataclasses.replace(base, compile=True))) == _outcome(
                generate(lm, batch, base))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graph_decode_is_token_identical_to_eager(lm):
    gpu = DiffusionLM.from_pretrained(require_golden(), device="cuda")
    prompts = _random_prompts(4, seed=2)
    base = DecodeConfig(block_length=8, gen_length=24, threshold=0.3, editing_threshold=0.4, speculative_verify=True)
    for batch in ([prompts[0]], prompts):
        assert _outcome(generate(gpu, batch, dataclasses.replace(base, cuda_graphs=True))) == _outcome(
            generate(gpu, batch, base))


def test_forward_layouts_are_made_once_and_reused(lm, monkeypatch):
    """A layout (the network's ForwardPlan and the block positions) is made once and reused by every
    step with it: decoding the same prompt four times one by one makes no more layouts than once."""
    import model.decoding as decoding

    made = []
    make = decoding._Layout.make.__func__
    monkeypatch.setattr(decoding._Layout, "make", classmethod(lambda cls, *a: made.append(1) or make(cls, *a)))
    prompt = CASES[0]["prompt"]
    cfg = DecodeConfig(block_length=8, gen_length=24, threshold=0.3, editing_threshold=0.4, speculative_verify=True,
                       max_batch_size=1)
    once = generate(lm, [prompt], cfg)
    first = len(made)
    made.clear()
    four = generate(lm, [prompt] * 4, cfg)
    assert four.sequences == once.sequences * 4
    assert 0 < first < once.forward_calls and len(made) == first
