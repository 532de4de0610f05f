"""Corruption statistics, loss coverage (never prompt, never padding), MTF drafts, schedules, averaging."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from components.training.averaging import average_state_dicts
from components.training.config import BlockStage, ObjectiveConfig
from components.training.corruption import (
    Corruption,
    complementary,
    m2t_corrupt,
    neighbour_tokens,
    noisable_positions,
    t2t_corrupt,
    unmask_rows,
)
from components.training.data import StepBatchSampler
from components.training.moe import ExpertLoadTracker
from components.training.objective import DraftEditObjective, diffusion_logits, stream_losses
from components.training.schedule import block_length_at, lr_factor
from model import DiffusionLM, ModelConfig
from model.masks import block_diffusion_mask

MASK, PAD, EOS, V = 2, 0, 1, 64
SPECIAL = {PAD, EOS, MASK}


def sft_batch(bsz: int = 6, seed: int = 0) -> dict[str, torch.Tensor]:
    """Rows of prompt (never noised) + reply (in the loss) + padding (neither), length 16."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, V, (bsz, 16), generator=g)
    prompt = torch.zeros(bsz, 16, dtype=torch.bool)
    loss = torch.zeros(bsz, 16, dtype=torch.bool)
    docs = torch.zeros(bsz, 16, dtype=torch.long)
    for r in range(bsz):
        p, n = 3 + r % 3, 10 + r % 4  # prompt length, prompt + reply length
        prompt[r, :p] = True
        loss[r, p:n] = True
        ids[r, n:] = PAD
        prompt[r, n:] = True
        docs[r, n:] = -1
    return {"input_ids": ids, "prompt_mask": prompt, "loss_mask": loss, "doc_ids": docs}


# ---------------------------------------------------------------------------------------------- rates


def test_m2t_rate_matches_band_and_never_touches_prompt_or_padding():
    b = sft_batch(4000 // 16 * 16)
    noisable = noisable_positions(b["loss_mask"], b["prompt_mask"])
    g = torch.Generator().manual_seed(1)
    c = m2t_corrupt(b["input_ids"], noisable, mask_id=MASK, t_min=0.3, t_max=0.7, generator=g)
    assert not c.m2t[~noisable].any()
    assert torch.equal(c.xt[~noisable], b["input_ids"][~noisable])
    assert (c.xt[c.m2t] == MASK).all() and torch.equal(c.xt[~c.m2t], b["input_ids"][~c.m2t])
    rate = c.m2t.sum() / noisable.sum()
    n = int(noisable.sum())
    assert abs(float(rate) - 0.5) < 4 * math.sqrt(0.25 / n) + 0.02  # E[t] = 0.5
    t = c.t[:, 0]
    assert t.min() >= 0.3 and t.max() <= 0.7 and (t.max() - t.min()) > 0.3  # spread over the band


def test_block_noise_is_constant_within_a_block():
    x0 = torch.randint(3, V, (200, 16))
    g = torch.Generator().manual_seed(2)
    c = m2t_corrupt(x0, torch.ones_like(x0, dtype=torch.bool), mask_id=MASK, t_min=0.1, t_max=0.9, generator=g,
                    noise_per="block", block_length=4)
    blocks = c.t.view(200, 4, 4)
    assert torch.equal(blocks, blocks[:, :, :1].expand_as(blocks))
    assert not torch.equal(blocks[:, 0, 0], blocks[:, 1, 0])


def test_t2t_rate_matches_config_and_uses_no_special_tokens():
    b = sft_batch(1600)
    noisable = noisable_positions(b["loss_mask"], b["prompt_mask"])
    g = torch.Generator().manual_seed(3)
    c = m2t_corrupt(b["input_ids"], noisable, mask_id=MASK, t_min=0.2, t_max=0.2, generator=g)
    c = t2t_corrupt(c, rate_min=0.1, rate_max=0.3, source="uniform", vocab_size=V, exclude_ids=SPECIAL, generator=g)
    visible = noisable & ~c.m2t
    assert not (c.t2t & ~visible).any()  # only visible noisable tokens are replaced
    rate = float(c.t2t.sum() / visible.sum())
    n = int(visible.sum())
    # E[r] = 0.2, minus draws equal to the clean token (re-drawn twice: ~(1/61)^3, negligible)
    assert abs(rate - 0.2) < 4 * math.sqrt(0.16 / n) + 0.01
    replaced = c.xt[c.t2t]
    assert not torch.isin(replaced, torch.tensor(sorted(SPECIAL))).any()
    assert (replaced != b["input_ids"][c.t2t]).all()
    assert torch.equal(c.xt[~noisable], b["input_ids"][~noisable])


def test_t2t_batch_source_draws_tokens_of_the_batch():
    x0 = torch.randint(10, 15, (64, 16))  # only ids 10..14 occur
    noisable = torch.ones_like(x0, dtype=torch.bool)
    g = torch.Generator().manual_seed(4)
    c = m2t_corrupt(x0, noisable, mask_id=MASK, t_min=0.1, t_max=0.1, generator=g)
    c = t2t_corrupt(c, rate_min=0.5, rate_max=0.5, source="batch", vocab_size=V, exclude_ids=SPECIAL, generator=g)
    assert c.t2t.sum() > 100
    assert ((c.xt[c.t2t] >= 10) & (c.xt[c.t2t] < 15)).all()


def test_neighbour_tokens_are_the_adjacent_different_clean_tokens():
    # one row, a sorted answer after a 2-token prompt: runs 5 5 | 6 6 6 | 7
    x0 = torch.tensor([[40, 41, 5, 5, 6, 6, 6, 7]])
    noisable = torch.tensor([[False, False, True, True, True, True, True, True]])
    for seed in range(8):
        tokens, valid = neighbour_tokens(x0, noisable, torch.Generator().manual_seed(seed))
        # inside a run nothing differs; the prompt token 41 is no neighbour (not noisable)
        assert valid.tolist() == [[False, True, False, True, True, False, True, True]]
        assert tokens[0, 3] == 6 and tokens[0, 4] == 5 and tokens[0, 6] == 7 and tokens[0, 7] == 6


def test_t2t_shift_errors_move_a_run_boundary_by_one():
    x0 = torch.arange(10, 26).repeat_interleave(3)[None].expand(256, 48).clone()  # runs of three: 10 10 10 11 ...
    noisable = torch.ones_like(x0, dtype=torch.bool)
    g = torch.Generator().manual_seed(5)
    c = m2t_corrupt(x0, noisable, mask_id=MASK, t_min=0.1, t_max=0.1, generator=g)
    c = t2t_corrupt(c, rate_min=0.3, rate_max=0.3, source="uniform", vocab_size=V, exclude_ids=SPECIAL, generator=g,
                    shift_prob=1.0)
    boundary = torch.zeros_like(noisable)
    boundary[:, 1:] |= x0[:, 1:] != x0[:, :-1]
    boundary[:, :-1] |= x0[:, :-1] != x0[:, 1:]
    shifted = c.xt[c.t2t & boundary]
    assert shifted.numel() > 500
    # every replacement at a run boundary is the neighbouring run's token: the boundary moved by one
    assert ((shifted - x0[c.t2t & boundary]).abs() == 1).all()
    # inside a run there is no different neighbour: a random token from the source instead
    inside = c.xt[c.t2t & ~boundary]
    assert inside.numel() > 100 and ((inside - x0[c.t2t & ~boundary]).abs() != 1).float().mean() > 0.8
    # with shift_prob 0 the same draws give random tokens (the shipped recipe is unchanged)
    c0 = t2t_corrupt(m2t_corrupt(x0, noisable, mask_id=MASK, t_min=0.1, t_max=0.1, generator=torch.Generator().manual_seed(5)),
                     rate_min=0.3, rate_max=0.3, source="uniform", vocab_size=V, exclude_ids=SPECIAL,
                     generator=torch.Generator().manual_seed(6))
    assert ((c0.xt[c0.t2t & boundary] - x0[c0.t2t & boundary]).abs() != 1).float().mean() > 0.8


def test_complementary_masks_partition_the_noisable_tokens():
    b = sft_batch(8)
    noisable = noisable_positions(b["loss_mask"], b["prompt_mask"])
    c = m2t_corrupt(b["input_ids"], noisable, mask_id=MASK, t_min=0.2, t_max=0.8, generator=torch.Generator().manual_seed(5))
    cc = complementary(c, MASK)
    first, second = cc.m2t[:8], cc.m2t[8:]
    assert not (first & second).any()
    assert torch.equal(first | second, noisable)
    assert (cc.xt[8:][second] == MASK).all()
    torch.testing.assert_close(cc.t[8:], 1 - c.t)


def test_mbe_rows_are_editing_stream_rows_with_a_window_inside_the_reply():
    b = sft_batch(64)
    obj = _objective(t_min=0.3, t_max=0.7, t2t_stream_prob=0.5, mbe_prob=1.0, mbe_window=1)
    c = obj.corrupt(b, 4, torch.Generator().manual_seed(12))
    on = c.windows[:, 0] <= c.windows[:, 1]
    stream = ~c.m2t.any(1)  # the rows shown without masks (the editing-stream rows, and a rare unlucky draw)
    assert 16 <= int(on.sum()) <= 48  # mbe_prob 1: every editing-stream row (t2t_stream_prob 0.5)
    assert not (on & ~stream).any()  # and never a row with masks
    blocks = torch.arange(16) // 4
    for r in on.nonzero().flatten().tolist():
        first, last = c.windows[r].tolist()
        reply = blocks[c.noisable[r]]
        assert int(reply.min()) <= first <= last <= int(reply.max())
        assert last - first <= 1 and (last - first == 1 or first == int(reply.min()))
    # the window's last block is drawn over the reply's blocks, not fixed
    assert len(set(c.windows[on, 1].tolist())) >= 3
    assert obj.corrupt(b, 4, torch.Generator().manual_seed(12)).windows is not None
    assert _objective(t2t_stream_prob=0.5).corrupt(b, 4, torch.Generator().manual_seed(12)).windows is None


def test_mbe_rows_reach_the_network_as_window_masks():
    seen = []

    class MaskProbe(LogitsProbe):
        def forward(self, input_ids, attention_mask=None, position_ids=None, logits_positions=None):
            seen.append(attention_mask)
            return super().forward(input_ids, attention_mask, position_ids, logits_positions)

    b = sft_batch(8)
    obj = _objective(t_min=0.3, t_max=0.7, t2t_stream_prob=1.0, mbe_prob=1.0, mbe_window=2)
    out = obj(MaskProbe(8, 16), b, block_length=4, generator=torch.Generator().manual_seed(13), mtf=False)
    expected = block_diffusion_mask(16, 4, doc_ids=b["doc_ids"], windows=out.corruption.windows)
    assert torch.equal(seen[0], expected)
    assert not torch.equal(seen[0], block_diffusion_mask(16, 4, doc_ids=b["doc_ids"]))


# ---------------------------------------------------------------------------------------------- losses


class LogitsProbe(torch.nn.Module):
    """Stands in for the network: fixed logits as a leaf tensor whose gradient shows which positions a loss reads."""

    def __init__(self, bsz: int, seq_len: int, plant: torch.Tensor | None = None):
        super().__init__()
        logits = torch.randn(bsz, seq_len, V, generator=torch.Generator().manual_seed(11))
        if plant is not None:  # make the arg-max right at even positions (so CAP has something to read)
            logits[:, ::2].scatter_add_(-1, plant[:, ::2, None], torch.full((bsz, (seq_len + 1) // 2, 1), 20.0))
        self.logits = torch.nn.Parameter(logits)
        self.calls = 0

    def forward(self, input_ids, attention_mask=None, position_ids=None, logits_positions=None):
        self.calls += 1
        return type("Out", (), {"logits": self.logits})()


def _objective(**kw) -> DraftEditObjective:
    return DraftEditObjective(ObjectiveConfig(**kw), mask_id=MASK, vocab_size=V, special_ids=SPECIAL)


@pytest.mark.parametrize("stream", ["m2t", "t2t", "keep", "cap"])
def test_each_stream_reads_exactly_its_positions(stream):
    b = sft_batch(6)
    weights = dict(t2t_weight=0.0, keep_weight=0.0, cap_weight=0.0)
    if stream != "m2t":
        weights[f"{stream}_weight"] = 1.0
    obj = _objective(t_min=0.3, t_max=0.7, t2t_rate_min=0.3, t2t_rate_max=0.3, t2t_source="uniform", **weights)
    probe = LogitsProbe(6, 16, plant=b["input_ids"])
    out = obj(probe, b, block_length=8, generator=torch.Generator().manual_seed(6), mtf=False)
    c = out.corruption
    parts = stream_losses(probe.logits, c, "none")
    parts[stream].backward()
    touched = probe.logits.grad.abs().sum(-1) > 0  # (B, L)
    if stream == "cap":
        expected = c.m2t & (probe.logits.argmax(-1) == c.x0)
        assert (expected != c.m2t).any()  # some masked predictions are wrong and must not be read
    else:
        expected = {"m2t": c.m2t, "t2t": c.t2t, "keep": c.keep}[stream]
    assert expected.any()
    assert torch.equal(touched, expected)
    prompt_or_pad = b["prompt_mask"] | ~b["loss_mask"]
    assert not touched[prompt_or_pad].any()


def test_loss_values_match_cross_entropy_by_hand():
    b = sft_batch(6)
    obj = _objective(t_min=0.3, t_max=0.7, t2t_rate_min=0.2, t2t_rate_max=0.2, t2t_source="uniform")
    probe = LogitsProbe(6, 16)
    c = obj.corrupt(b, 8, torch.Generator().manual_seed(7))
    parts = stream_losses(probe.logits, c, "none", "per_stream")
    lg, x0 = probe.logits.detach(), b["input_ids"]
    torch.testing.assert_close(parts["m2t"], F.cross_entropy(lg[c.m2t], x0[c.m2t]))
    torch.testing.assert_close(parts["t2t"], F.cross_entropy(lg[c.t2t], x0[c.t2t]))
    pooled = stream_losses(probe.logits, c, "none")  # the default: T2T + keep = one CE over visible tokens
    visible = c.t2t | c.keep
    torch.testing.assert_close(pooled["t2t"] + pooled["keep"], F.cross_entropy(lg[visible], x0[visible]))
    inv_t = stream_losses(probe.logits, c, "inv_t")["m2t"]
    by_hand = (F.cross_entropy(lg[c.m2t], x0[c.m2t], reduction="none") / c.t[c.m2t]).sum() / c.noisable.sum()
    torch.testing.assert_close(inv_t, by_hand)


LM_SIZES = dict(vocab_size=V, hidden_size=32, intermediate_size=64, head_dim=16,
                mask_token_id=MASK)  # the `tiny_lm` fixture's fields


def test_mtf_corruption_is_the_models_own_draft(tiny_lm):
    """Filled tokens are the model's arg-max on the first turn's input, at its most confident masks."""
    lm = tiny_lm(**LM_SIZES).eval()
    b = sft_batch(6)
    obj = _objective(t_min=0.6, t_max=0.9, t2t_rate_max=0.2, mtf_fill_min=0.5, mtf_fill_max=0.5)
    out = obj(lm, b, block_length=8, generator=torch.Generator().manual_seed(8), mtf=True)
    c1, c2, draft = out.corruption, out.mtf, out.mtf_draft
    with torch.no_grad():
        logits = diffusion_logits(lm, c1.xt, c1.x0, 8, b["doc_ids"])
    probs = logits.softmax(-1)
    filled = draft >= 0
    assert filled.any() and not (filled & ~c1.m2t).any()
    assert torch.equal(draft[filled], logits.argmax(-1)[filled])
    assert torch.equal(c2.xt[filled], draft[filled])
    conf = probs.max(-1).values
    for r in range(6):  # half of each row's masks, and the most confident half
        n_masked = int(c1.m2t[r].sum())
        assert int(filled[r].sum()) == int(math.floor(0.5 * n_masked + 0.5))
        if filled[r].any() and (c1.m2t[r] & ~filled[r]).any():
            assert conf[r][filled[r]].min() >= conf[r][c1.m2t[r] & ~filled[r]].max()
    # the second turn's T2T targets are exactly the wrong drafts; the first turn's random tokens are gone
    assert torch.equal(c2.t2t, filled & (draft != b["input_ids"]))
    assert torch.equal(c2.m2t, c1.m2t & ~filled)
    untouched = ~c1.m2t
    assert torch.equal(c2.xt[untouched], b["input_ids"][untouched])


def test_mtf_second_turn_trains_on_wrong_drafts():
    probe = LogitsProbe(6, 16)
    obj = _objective(t_min=0.8, t_max=0.9, t2t_rate_max=0.0, mtf_fill_min=1.0, mtf_fill_max=1.0)
    out = obj(probe, sft_batch(6), block_length=8, generator=torch.Generator().manual_seed(9), mtf=True)
    assert probe.calls == 2
    assert out.mtf.t2t.sum() > 0 and out.mtf.m2t.sum() == 0  # every mask filled; random logits -> wrong drafts
    assert out.metrics["mtf_error_rate"] > 0.5
    assert out.metrics["mtf"] == 1.0


def test_mtf_start_step_holds_the_second_turn_back_until_then():
    """With mtf_prob 1 the second turn runs on every step from mtf_start_step on, and on none before."""
    probe = LogitsProbe(6, 16)
    obj = _objective(t_min=0.8, t_max=0.9, t2t_rate_max=0.0, mtf_prob=1.0, mtf_start_step=5)
    before = obj(probe, sft_batch(6), block_length=8, generator=torch.Generator().manual_seed(9), step=4)
    assert probe.calls == 1 and before.mtf is None and before.metrics["mtf"] == 0.0
    after = obj(probe, sft_batch(6), block_length=8, generator=torch.Generator().manual_seed(9), step=5)
    assert probe.calls == 3 and after.mtf is not None and after.metrics["mtf"] == 1.0


def test_t2t_warmup_ramps_the_rate():
    obj = _objective(t2t_rate_min=0.2, t2t_rate_max=0.2, t2t_warmup_steps=100, t2t_source="uniform")
    b = sft_batch(400)
    at0 = obj.corrupt(b, 8, torch.Generator().manual_seed(1), step=0).t2t.sum()
    at50 = obj.corrupt(b, 8, torch.Generator().manual_seed(1), step=50).t2t.float().sum()
    at100 = obj.corrupt(b, 8, torch.Generator().manual_seed(1), step=100).t2t.float().sum()
    assert at0 == 0 and 0.35 < float(at50 / at100) < 0.65


# ---------------------------------------------------------------------------------------------- schedules etc.


def test_lr_schedule_closed_form():
    kw = dict(warmup_steps=10, max_steps=110, min_lr_ratio=0.1)
    assert lr_factor(0, **kw) == pytest.approx(0.1)
    assert lr_factor(9, **kw) == pytest.approx(1.0)
    assert lr_factor(10, **kw) == pytest.approx(1.0)
    assert lr_factor(60, **kw) == pytest.approx(0.55)  # half way down the cosine
    assert lr_factor(110, **kw) == pytest.approx(0.1)
    assert lr_factor(500, **kw) == pytest.approx(0.1)


def test_block_schedule_wsd():
    sched = [BlockStage(10, 1), BlockStage(20, 4), BlockStage(40, 0)]
    assert [block_length_at(s, 32, sched) for s in (0, 9, 10, 19, 20, 39, 40, 99)] == [1, 1, 4, 4, 0, 0, 32, 32]


def test_average_state_dicts():
    a = {"w": torch.tensor([1.0, 2.0]), "n": torch.tensor([3])}
    b = {"w": torch.tensor([3.0, 6.0]), "n": torch.tensor([5])}
    avg = average_state_dicts([a, b])
    assert torch.equal(avg["w"], torch.tensor([2.0, 4.0])) and torch.equal(avg["n"], torch.tensor([3]))
    with pytest.raises(ValueError, match="w"):
        average_state_dicts([a, {"w": torch.zeros(3), "n": torch.tensor([1])}])


def test_step_sampler_resumes_and_splits_ranks():
    full = StepBatchSampler(10, 3, seed=1)
    it = iter(full)
    first = [next(it) for _ in range(8)]
    resumed = iter(StepBatchSampler(10, 3, seed=1, start=5))
    assert [next(resumed) for _ in range(3)] == first[5:8]
    r0, r1 = StepBatchSampler(10, 3, seed=1, rank=0, world_size=2), StepBatchSampler(10, 3, seed=1, rank=1, world_size=2)
    stream = [i for k in range(5) for i in full.batch(k)]
    assert r0.batch(0) + r1.batch(0) == stream[:6]
    seen = [i for k in range(10) for i in full.batch(k)][:30]  # three epochs: each a permutation
    assert all(sorted(seen[e * 10:(e + 1) * 10]) == list(range(10)) for e in range(3))


def test_expert_bias_moves_against_load():
    lm = DiffusionLM(ModelConfig.tiny_moe(vocab_size=V, hidden_size=32, num_hidden_layers=2, moe_intermediate_size=16,
                                          num_attention_heads=2, num_key_value_heads=1, head_dim=16, mask_token_id=MASK))
    tracker = ExpertLoadTracker(lm, rate=0.01)
    assert len(tracker.layers) == 1
    lm.train()
    lm(torch.randint(3, V, (2, 16)))
    name, moe = tracker.layers[0]
    load = tracker.loads[name].clone()
    stats = tracker.update()
    bias = moe.gate.expert_bias
    assert torch.equal(bias, torch.sign(load.mean() - load) * 0.01)
    assert stats["layer1/load_max_over_mean"] == pytest.approx(float(load.max() / load.mean()))
    lm.eval()
    lm(torch.randint(3, V, (2, 16)))
    assert not tracker.loads  # evaluation forwards are not counted


def test_gradient_checkpointing_gives_the_same_gradients(tiny_lm):
    b = sft_batch(4)
    grads = []
    for checkpointing in (False, True):
        lm = tiny_lm(**LM_SIZES).train()
        lm.gradient_checkpointing = checkpointing
        obj = _objective(t2t_rate_max=0.2, t2t_source="uniform")
        obj(lm, b, block_length=8, generator=torch.Generator().manual_seed(3), mtf=True).loss.backward()
        grads.append({n: p.grad.clone() for n, p in lm.named_parameters()})
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], atol=1e-6, rtol=1e-5, msg=n)


def test_t2t_row_source_places_a_token_of_the_rows_own_reply():
    """source 'row': the replacement is another token of the same reply (a duplicate), never a special
    token (the EOS filling the reply's block) and never a token foreign to the row."""
    g = torch.Generator().manual_seed(14)
    rows = torch.stack([torch.randperm(40, generator=g)[:6] + 10 for _ in range(128)])  # 6 distinct tokens per row
    x0 = torch.cat([torch.full((128, 2), 7), rows, torch.full((128, 4), EOS)], dim=1)  # prompt, reply, EOS fill
    noisable = torch.ones_like(x0, dtype=torch.bool)
    noisable[:, :2] = False
    c = m2t_corrupt(x0, noisable, mask_id=MASK, t_min=0.1, t_max=0.1, generator=g)
    c = t2t_corrupt(c, rate_min=0.4, rate_max=0.4, source="row", vocab_size=V, exclude_ids=SPECIAL, generator=g)
    assert c.t2t.sum() > 200
    for r in range(128):
        reply = set(rows[r].tolist())
        for pos in c.t2t[r].nonzero().flatten().tolist():
            assert int(c.xt[r, pos]) in reply and int(c.xt[r, pos]) != int(x0[r, pos])
    assert (c.xt[c.t2t] != EOS).all()


def _corruption(t2t_rows: int) -> tuple[torch.Tensor, Corruption]:
    """4 visible noisable positions in one row: `t2t_rows` of them wrong, the rest kept."""
    x0 = torch.tensor([[1, 2, 3, 4]])
    t2t = torch.tensor([[i < t2t_rows for i in range(4)]])
    c = Corruption(xt=torch.where(t2t, 0, x0), x0=x0, noisable=torch.ones_like(t2t), m2t=torch.zeros_like(t2t),
                   t2t=t2t, t=torch.full((1, 4), 0.5))
    torch.manual_seed(0)
    return torch.randn(1, 4, 8), c


def test_pooled_visible_losses_share_one_count_per_stream_means_do_not():
    logits, c = _corruption(t2t_rows=1)
    ce = torch.nn.functional.cross_entropy(logits[0], c.x0[0], reduction="none")
    pooled = stream_losses(logits, c, "none", "pooled")
    assert pooled["t2t"] == pytest.approx(float(ce[0] / 4))
    assert pooled["keep"] == pytest.approx(float(ce[1:].sum() / 4))
    assert pooled["t2t"] + pooled["keep"] == pytest.approx(float(ce.mean()))  # one cross-entropy
    per_stream = stream_losses(logits, c, "none", "per_stream")
    assert per_stream["t2t"] == pytest.approx(float(ce[0]))  # the one wrong token weighs 3x a kept one
    assert per_stream["keep"] == pytest.approx(float(ce[1:].mean()))


def test_editing_stream_rows_have_no_masks_and_other_rows_keep_theirs():
    g = torch.Generator().manual_seed(0)
    x0 = torch.arange(1, 33).view(4, 8)
    c = m2t_corrupt(x0, torch.ones_like(x0, dtype=torch.bool), mask_id=0, t_min=0.5, t_max=1.0, generator=g)
    rows = torch.tensor([[True], [False], [True], [False]])
    u = unmask_rows(c, rows)
    assert not u.m2t[rows[:, 0]].any() and torch.equal(u.xt[rows[:, 0]], x0[rows[:, 0]])
    assert torch.equal(u.m2t[~rows[:, 0]], c.m2t[~rows[:, 0]]) and c.m2t[~rows[:, 0]].any()


def test_objective_with_editing_stream_only_trains_visible_tokens():
    cfg = ObjectiveConfig(t2t_rate_min=0.5, t2t_rate_max=0.5, t2t_stream_prob=1.0)
    objective = DraftEditObjective(cfg, mask_id=0, vocab_size=40, special_ids=set())
    batch = {"input_ids": torch.randint(1, 40, (3, 16)), "loss_mask": torch.ones(3, 16, dtype=torch.bool)}
    c = objective.corrupt(batch, block_length=16, generator=torch.Generator().manual_seed(1), step=10)
    assert not c.m2t.any() and c.t2t.any() and (c.xt != 0).all()
