"""EBPO's vectorised ELBO estimator: composite input, masks, one forward per level, and equality
with the slow per-block definition."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from components.rl.config import EstimatorConfig
from components.rl.estimator import (
    SequenceLayout,
    block_log_likelihoods,
    block_log_likelihoods_reference,
    composite_input,
    draw_edit_traces,
    draw_masks,
    draw_substitutes,
    noise_levels,
    sequence_log_likelihood,
)
from model import DiffusionLM
from model.levenshtein import add_edit_controls, edit_labels
from model.masks import block_diffusion_mask

MASK_ID = 63
VOCAB = 64


LM_SIZES = dict(vocab_size=64, hidden_size=64, intermediate_size=128, head_dim=32, mask_token_id=MASK_ID,
                eos_token_id=1, pad_token_id=0, max_position_embeddings=256)  # the `tiny_lm` fixture's fields


def sharpened(lm: DiffusionLM) -> DiffusionLM:
    """Larger weights than the init's 0.02, so that attention patterns matter for the outputs."""
    lm.eval()
    with torch.no_grad():
        for p in lm.parameters():
            if p.dim() == 2:
                p.mul_(8.0)
    return lm


def random_layout(seed: int, block: int, n: int = 5) -> SequenceLayout:
    g = torch.Generator().manual_seed(seed)
    prompts, responses = [], []
    for i in range(n):
        p_len = int(torch.randint(1, 3 * block, (1,), generator=g))
        if i == 0:
            p_len = 2 * block  # a prompt that ends exactly on a block boundary
        r_len = int(torch.randint(1, 4 * block, (1,), generator=g))
        prompts.append(torch.randint(3, MASK_ID, (p_len,), generator=g).tolist())
        responses.append(torch.randint(3, MASK_ID, (r_len,), generator=g).tolist())
    return SequenceLayout.from_lists(prompts, responses, block)


@pytest.mark.parametrize("block,edit_rate", [(4, 0.0), (8, 0.0), (4, 0.3), (8, 0.3)])
def test_vectorised_equals_per_block_loop(block, edit_rate, tiny_lm):
    lm = sharpened(tiny_lm(**LM_SIZES))
    layout = random_layout(seed=block, block=block)
    g = torch.Generator().manual_seed(1)
    levels, _ = noise_levels(EstimatorConfig(num_levels=3, t_min=0.2), g)
    masks = draw_masks(layout, levels, MASK_ID, g)
    subs = draw_substitutes(layout, masks, edit_rate, VOCAB, {MASK_ID}, g) if edit_rate else None
    with torch.no_grad():
        for n in range(3):
            sub = None if subs is None else subs[n]
            fast = block_log_likelihoods(lm, layout, masks[n], MASK_ID, sub)
            slow_blocks, slow_tokens, slow_keep, slow_edit = block_log_likelihoods_reference(lm, layout, masks[n],
                                                                                             MASK_ID, sub)
            assert fast.per_block.shape == slow_blocks.shape
            torch.testing.assert_close(fast.per_block, slow_blocks, atol=2e-5, rtol=1e-5)
            torch.testing.assert_close(fast.token_logp, slow_tokens, atol=2e-5, rtol=1e-5)
            torch.testing.assert_close(fast.keep_logp, slow_keep, atol=2e-5, rtol=1e-5)
            torch.testing.assert_close(fast.edit_logp, slow_edit, atol=2e-5, rtol=1e-5)
            assert (fast.per_block != 0).any() and (fast.keep_logp != 0).any()
            # keep terms sit exactly on the visible clean response tokens, the edit terms on the
            # substituted ones, the masked terms on the hidden ones
            response = layout.response_positions()
            edited = torch.zeros_like(response) if sub is None else sub >= 0
            assert ((fast.keep_logp != 0) <= (response & ~masks[n] & ~edited)).all()
            assert ((fast.edit_logp != 0) == edited).all()
            assert ((fast.token_logp != 0) <= (response & masks[n])).all()
            if sub is not None:
                assert edited.any() and not (edited & (masks[n] | ~response)).any()
                assert (sub[edited] != layout.tokens[edited]).all()  # a substitution is a different token
                # the substituted tokens are context: the masked terms differ from the clean view's
                plain = block_log_likelihoods(lm, layout, masks[n], MASK_ID)
                assert (plain.token_logp - fast.token_logp).abs().max() > 1e-5


@pytest.mark.parametrize("block,edit_rate", [(4, 0.0), (8, 0.0), (4, 0.3)])
def test_levenshtein_traces_vectorised_equals_per_block_loop(block, edit_rate, tiny_lm):
    lm = tiny_lm(**LM_SIZES)
    delete_id, insert_id = add_edit_controls(lm)
    with torch.no_grad():
        lm.lm_head.weight[VOCAB:].normal_(std=0.02)  # off their zero start, so their logits carry the context
    lm = sharpened(lm)
    layout = random_layout(seed=block + 10, block=block)
    g = torch.Generator().manual_seed(4)
    levels, _ = noise_levels(EstimatorConfig(num_levels=3, t_min=0.2), g)
    masks = draw_masks(layout, levels, MASK_ID, g)
    subs = draw_substitutes(layout, masks, edit_rate, VOCAB, {MASK_ID}, g) if edit_rate else None
    trace = draw_edit_traces(layout, masks, subs, 0.6, 2, MASK_ID, delete_id, insert_id, {MASK_ID}, g)
    response = layout.response_positions()
    inside = trace.shown >= 0
    assert not (inside & ~response).any()  # only response tokens are ever in a Levenshtein block
    assert (trace.actions == delete_id).any() and (trace.actions == insert_id).any()
    # the actions are the LCS labels of each shown block against the rollout's block
    for n, s, start in inside.nonzero().tolist()[::7]:
        b = start // block * block
        idx = inside[n, s, b:b + block].nonzero().flatten() + b
        want = edit_labels(trace.shown[n, s, idx].tolist(), layout.tokens[s, idx].tolist(), mask_id=MASK_ID,
                           delete_id=delete_id, insert_id=insert_id).labels
        assert trace.actions[n, s, idx].tolist() == list(want)
    with torch.no_grad():
        for n in range(3):
            sub = None if subs is None else subs[n]
            fast = block_log_likelihoods(lm, layout, masks[n], MASK_ID, sub, trace.level(n))
            slow = block_log_likelihoods_reference(lm, layout, masks[n], MASK_ID, sub, trace.level(n))
            for got, want in zip((fast.per_block, fast.token_logp, fast.keep_logp, fast.edit_logp), slow):
                torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-5)
            # structural actions at visible tokens are edit terms; a trace changes the estimate
            control = inside[n] & ((trace.actions[n] == delete_id) | (trace.actions[n] == insert_id))
            visible_control = control & (trace.shown[n] != MASK_ID)
            assert ((fast.edit_logp != 0) >= visible_control).all()
            plain = block_log_likelihoods(lm, layout, masks[n], MASK_ID, sub)
            assert (plain.per_block - fast.per_block).abs().max() > 1e-5
            # the masked set follows the shown view inside Levenshtein blocks
            assert torch.equal(fast.masked[inside[n]], trace.shown[n][inside[n]] == MASK_ID)


def test_equality_is_sensitive_to_the_mask(tiny_lm):
    """The equality above is not vacuous: letting noisy blocks see later blocks changes the result."""
    lm = sharpened(tiny_lm(**LM_SIZES))
    layout = random_layout(seed=3, block=4)
    g = torch.Generator().manual_seed(2)
    masks = draw_masks(layout, torch.tensor([0.5], dtype=torch.float64), MASK_ID, g)
    z = composite_input(layout, masks[0], MASK_ID)
    with torch.no_grad():
        right = lm(z.input_ids, attention_mask=z.attention_mask, position_ids=z.position_ids,
                   logits_positions=z.logit_index).logits
        wrong = lm(z.input_ids, attention_mask=None, position_ids=z.position_ids,
                   logits_positions=z.logit_index).logits
    assert (right - wrong)[z.scored].abs().max() > 1e-3


def test_composite_mask_is_the_training_mask_without_prompt_prefix():
    """With the prompt inside the first block (P0 = 0) the composite is exactly x_t ⊕ x_0 and its
    mask is `block_diffusion_mask` (design §4)."""
    B = 4
    layout = SequenceLayout.from_lists([[5, 6, 7]], [[8, 9, 10, 11, 12, 13, 14, 15, 16]], B)
    masked = torch.zeros_like(layout.tokens, dtype=torch.bool)
    z = composite_input(layout, masked, MASK_ID)
    L = 12
    assert z.input_ids.shape == (1, 2 * L)
    assert torch.equal(z.attention_mask, block_diffusion_mask(L, B))
    assert torch.equal(z.position_ids[0], torch.cat([torch.arange(L), torch.arange(L)]))


def test_prompt_blocks_appear_once_and_match_the_duplicated_training_layout(tiny_lm):
    """Whole prompt blocks are a shared clean prefix (not duplicated), and the result equals the
    training layout seq_t ⊕ seq_0 under block_diffusion_mask, which duplicates them."""
    lm = sharpened(tiny_lm(1, **LM_SIZES))
    B = 4
    prompt, response = list(range(3, 14)), list(range(20, 30))  # P = 11 -> P0 = 8
    layout = SequenceLayout.from_lists([prompt], [response], B)
    g = torch.Generator().manual_seed(0)
    masked = draw_masks(layout, torch.tensor([0.6], dtype=torch.float64), MASK_ID, g)[0]
    z = composite_input(layout, masked, MASK_ID)
    L, P0 = 21, 8
    assert z.input_ids.shape[1] == P0 + 2 * (L - P0)
    assert torch.equal(z.input_ids[0, :P0], torch.tensor(prompt[:P0]))
    with torch.no_grad():
        fast = block_log_likelihoods(lm, layout, masked, MASK_ID)
        seq0 = layout.tokens
        seqt = torch.where(masked, torch.full_like(seq0, MASK_ID), seq0)
        logits = lm(torch.cat([seqt, seq0], 1), attention_mask=block_diffusion_mask(L, B),
                    position_ids=torch.cat([torch.arange(L), torch.arange(L)])[None]).logits[0, :L]
        lp = F.log_softmax(logits, -1).gather(-1, seq0[0, :, None])[:, 0]
        expected = torch.where(masked[0], lp, torch.zeros_like(lp))
    torch.testing.assert_close(fast.token_logp[0], expected, atol=2e-5, rtol=1e-5)


def test_one_forward_per_noise_level(tiny_lm):
    lm = sharpened(tiny_lm(**LM_SIZES))
    calls = []
    handle = lm.register_forward_hook(lambda *_: calls.append(1))
    layout = SequenceLayout.from_lists([[5, 6, 7], [8] * 6], [list(range(10, 40)), list(range(10, 20))], 4)
    assert int(layout.num_blocks().max()) >= 8  # many blocks, still one forward per level
    g = torch.Generator().manual_seed(0)
    levels, weights = noise_levels(EstimatorConfig(num_levels=4), g)
    masks = draw_masks(layout, levels, MASK_ID, g)
    total, parts = sequence_log_likelihood(lm, layout, masks, weights, MASK_ID)
    handle.remove()
    assert len(calls) == 4
    expected = sum(float(weights[n]) * parts[n].per_block.sum(-1) for n in range(4))
    torch.testing.assert_close(total, expected)
    with_keep, _ = sequence_log_likelihood(lm, layout, masks, weights, MASK_ID, keep_weight=0.5)
    keep = sum(part.keep_logp.sum(-1) for part in parts) / 4
    torch.testing.assert_close(with_keep, expected + 0.5 * keep)
    assert (keep < 0).all()
    subs = draw_substitutes(layout, masks, 0.3, VOCAB, {MASK_ID}, g)
    calls.clear()
    handle = lm.register_forward_hook(lambda *_: calls.append(1))
    with_edit, edit_parts = sequence_log_likelihood(lm, layout, masks, weights, MASK_ID, 0.0, subs, edit_weight=2.0)
    handle.remove()
    assert len(calls) == 4  # the edit terms ride on the same forwards
    edit = sum(part.edit_logp.sum(-1) for part in edit_parts) / 4
    masked_terms = sum(float(weights[n]) * edit_parts[n].per_block.sum(-1) for n in range(4))
    torch.testing.assert_close(with_edit, masked_terms + 2.0 * edit)
    assert (edit < 0).all()
    total.sum().backward()  # the estimate is differentiable
    assert lm.lm_head.weight.grad is not None and lm.lm_head.weight.grad.abs().sum() > 0


def test_masks_touch_only_response_tokens_and_are_reproducible():
    layout = random_layout(seed=5, block=4)
    levels = torch.tensor([1.0, 0.5], dtype=torch.float64)
    a = draw_masks(layout, levels, MASK_ID, torch.Generator().manual_seed(7))
    b = draw_masks(layout, levels, MASK_ID, torch.Generator().manual_seed(7))
    assert torch.equal(a, b)
    response = layout.response_positions()
    assert torch.equal(a[0], response)  # t = 1 masks every response token and nothing else
    assert not (a[1] & ~response).any()
    assert 0 < a[1].sum() < response.sum()


def test_noise_levels_stratified_and_fixed():
    g = torch.Generator().manual_seed(0)
    cfg = EstimatorConfig(num_levels=4, t_min=0.2, t_max=1.0)
    t, w = noise_levels(cfg, g)
    edges = 0.2 + 0.8 * torch.arange(5, dtype=torch.float64) / 4
    assert ((t >= edges[:-1]) & (t < edges[1:])).all()  # one level per stratum
    torch.testing.assert_close(w, 1.0 / (4 * t))
    fixed = EstimatorConfig(num_levels=2, schedule="fixed", levels=[0.25, 0.75], weights=[0.3, 0.7])
    t, w = noise_levels(fixed, g)
    assert t.tolist() == [0.25, 0.75] and w.tolist() == [0.3, 0.7]


def test_estimator_config_rejects_bad_values():
    with pytest.raises(ValueError, match="estimator.levels"):
        EstimatorConfig(num_levels=2, schedule="fixed", levels=[0.5]).validate()
    with pytest.raises(ValueError, match="estimator.num_levels"):
        EstimatorConfig(num_levels=0).validate()
    with pytest.raises(ValueError, match="estimator.t_min"):
        EstimatorConfig(t_min=0.0).validate()


def test_layout_rejects_empty_responses():
    with pytest.raises(ValueError, match="empty"):
        SequenceLayout.from_lists([[1, 2]], [[]], 4)
