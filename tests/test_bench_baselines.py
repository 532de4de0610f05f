"""The benchmark's baselines: the independent reference loop (golden parity) and the AR-equivalent."""

import dataclasses

import pytest
import torch

from components.bench.baselines import autoregressive_config, reference_generate
from golden import decode_kwargs, load_cases, require_golden
from model import DecodeConfig, DiffusionLM, ModelConfig, generate


pytestmark = pytest.mark.usefixtures("one_thread")

CASES = load_cases()


@pytest.fixture(scope="module")
def golden_lm():
    return DiffusionLM.from_pretrained(require_golden())


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_reference_loop_reproduces_every_golden_case(golden_lm, case):
    res = reference_generate(golden_lm, case["prompt"], DecodeConfig(**decode_kwargs(case)))
    assert res.sequences[0] == case["output"]
    assert res.forwards[0] == case["forward_calls"]
    assert res.canvases[0] == case["final_canvas"]
    assert res.edits[0] == case["t2t_edits"] and res.commits[0] == case["m2t_commits"]


@pytest.fixture(scope="module")
def random_lm():
    torch.manual_seed(3)
    cfg = ModelConfig.tiny(vocab_size=120, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, head_dim=12, mask_token_id=119,
                           eos_token_id=7)
    lm = DiffusionLM(cfg).eval()
    with torch.no_grad():  # peaked outputs so that drafting commits several tokens and edits happen
        for name, p in lm.named_parameters():
            if p.dim() == 2 and "embeddings" not in name:
                p.normal_(0, p.shape[1] ** -0.5)
        lm.lm_head.weight.mul_(4.0)
        lm.lm_head.weight[119].zero_()
    return lm


def test_reference_loop_equals_our_decoder_on_other_weights(random_lm):
    prompts = [[3, 4, 5, 6, 8], list(range(20, 33)), [9]]
    cfg = DecodeConfig(gen_length=24, block_length=8, threshold=0.5, editing_threshold=0.7, eos_early_stop=True)
    ours = generate(random_lm, prompts, cfg)
    ref = [reference_generate(random_lm, p, cfg) for p in prompts]
    assert ours.sequences == [r.sequences[0] for r in ref]
    assert ours.forwards == [r.forwards[0] for r in ref]
    assert sum(r.edits[0] for r in ref) > 0  # editing was exercised


FINISH_PROMPTS = [[3, 4, 5, 6, 8], list(range(20, 33)), [9], [11, 12, 13, 14, 15, 16, 17, 18, 19]]


@pytest.mark.parametrize("extra", [{}, {"use_cache": False}, {"speculative_verify": True}, {"static_shapes": True},
                                   {"speculative_verify": True, "static_shapes": True}, {"eos_early_stop": False}],
                         ids=["cache", "nocache", "speculative", "static", "static-speculative", "no-eos-stop"])
def test_finish_threshold_ends_the_last_block_as_the_reference_loop_does(random_lm, extra):
    """The answer's last block ends on the drafting step that completes it, in our decoder (batched,
    cached or not, speculative, static) exactly as in the independent reference loop; it saves forwards."""
    base = DecodeConfig(gen_length=24, block_length=8, threshold=0.3, editing_threshold=0.7, eos_early_stop=True)
    # a random network rarely emits its EOS id: call "EOS" a token it drafts often, so answers end early
    drafted = [t for s in generate(random_lm, FINISH_PROMPTS, base).sequences for t in s]
    base = dataclasses.replace(base, eos_id=max(set(drafted), key=drafted.count), **extra)
    cfg = dataclasses.replace(base, finish_threshold=0.2)
    ours = generate(random_lm, FINISH_PROMPTS, cfg)
    refs = [reference_generate(random_lm, p, cfg) for p in FINISH_PROMPTS]
    assert ours.sequences == [r.sequences[0] for r in refs]
    assert ours.canvases == [r.canvases[0] for r in refs]
    assert ours.edits == [r.edits[0] for r in refs]
    if cfg.speculative_verify:  # speculation saves a block's first forward on top; never adds one
        assert all(o <= r.forwards[0] for o, r in zip(ours.forwards, refs))
    else:
        assert ours.forwards == [r.forwards[0] for r in refs]
    plain = [reference_generate(random_lm, p, base) for p in FINISH_PROMPTS]
    saved = [p.forwards[0] - r.forwards[0] for p, r in zip(plain, refs)]
    assert all(0 <= s for s in saved) and sum(saved) > 0  # the rule fired, and only ever saved forwards
    assert sum(ours.forwards) < sum(generate(random_lm, FINISH_PROMPTS, base).forwards)


def test_finish_threshold_one_never_fires_and_out_of_range_is_refused(random_lm):
    base = DecodeConfig(gen_length=24, block_length=8, threshold=0.5, editing_threshold=0.7, eos_early_stop=True)
    never = dataclasses.replace(base, finish_threshold=1.0)  # a confidence is never strictly above 1
    a, b = generate(random_lm, FINISH_PROMPTS, base), generate(random_lm, FINISH_PROMPTS, never)
    assert (a.sequences, a.forwards) == (b.sequences, b.forwards)
    with pytest.raises(ValueError, match=r"^DecodeConfig.finish_threshold must be in \[0, 1\] or None"):
        dataclasses.replace(base, finish_threshold=1.5)


def test_autoregressive_baseline_spends_one_forward_per_token(random_lm):
    base = DecodeConfig(gen_length=24, block_length=8, threshold=0.3, editing_threshold=0.6, max_post_steps=4,
                        eos_early_stop=True)
    cfg = autoregressive_config(base)
    prompts = [[3, 4, 5], list(range(10, 21)), [7, 7, 2, 9]]
    # a random network rarely emits its EOS id: call "EOS" the token it drafts most often instead
    drafted = [t for s in generate(random_lm, prompts, cfg).sequences for t in s]
    cfg = dataclasses.replace(cfg, eos_id=max(set(drafted), key=drafted.count))
    res = generate(random_lm, prompts, dataclasses.replace(cfg, record_trajectory=True))
    assert res.commits == res.forwards  # exactly one commit per forward
    assert res.edits == [0] * len(prompts)
    assert cfg.block_length == base.block_length and cfg.gen_length == base.gen_length
    eos = cfg.eos_id
    for seq, traj, forwards in zip(res.sequences, res.trajectories, res.forwards):
        committed = [pos for step in traj.steps for pos, _ in step.m2t]
        assert committed == list(range(traj.prompt_length, traj.prompt_length + forwards))  # left to right
        # an AR model's cost: one forward per answer token, EOS included; no EOS: the whole canvas
        canvas_left = len(traj.initial_canvas) - traj.prompt_length
        assert forwards == (len(seq) if seq[-1] == eos else canvas_left)
    assert [generate(random_lm, [p], cfg).forwards[0] for p in prompts] == res.forwards  # batching changes nothing
    # the block-end EOS stop of the reference pays for the masked positions after the EOS as well
    block_end = generate(random_lm, prompts, dataclasses.replace(cfg, stop_at_answer_end=False))
    assert block_end.sequences == res.sequences
    assert all(a <= b for a, b in zip(res.forwards, block_end.forwards))
    assert sum(res.forwards) < sum(block_end.forwards)
    assert any(s[-1] == eos for s in res.sequences)


def test_stop_at_answer_end_refuses_editing(random_lm):
    with pytest.raises(ValueError, match="stop_at_answer_end needs editing off"):
        DecodeConfig(gen_length=8, block_length=4, editing_threshold=0.9, stop_at_answer_end=True)
    cfg = DecodeConfig(gen_length=8, block_length=4, editing_threshold=1.01, stop_at_answer_end=True)
    cfg.editing_threshold = 0.9  # assigned after construction: generate checks again before any forward
    with pytest.raises(ValueError, match="stop_at_answer_end needs editing off"):
        generate(random_lm, [[1, 2]], cfg)


def test_reference_loop_refuses_what_it_does_not_have(random_lm):
    with pytest.raises(ValueError, match="greedy"):
        reference_generate(random_lm, [1, 2], DecodeConfig(temperature=0.7, gen_length=8, block_length=4))
    with pytest.raises(ValueError, match="Multi-Block"):
        reference_generate(random_lm, [1, 2], DecodeConfig(mbe_window=1, gen_length=8, block_length=4))
    with pytest.raises(ValueError, match="empty"):
        reference_generate(random_lm, [], DecodeConfig(gen_length=8, block_length=4))
    cfg = dataclasses.replace(DecodeConfig(gen_length=8, block_length=4), mask_id=None)
    random_lm.config.mask_token_id, saved = None, random_lm.config.mask_token_id
    try:
        with pytest.raises(ValueError, match="mask id"):
            reference_generate(random_lm, [1, 2], cfg)
    finally:
        random_lm.config.mask_token_id = saved
