"""EBPO objective: group advantages, the clipped surrogate with ε_low/ε_high, KL, and the batch update."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from components.rl.config import EstimatorConfig, OptimConfig
from components.rl.ebpo import (
    PreparedBatch,
    all_failed_fraction,
    clipped_surrogate,
    damp_negative,
    group_advantages,
    optimise_batch,
    permute_within_groups,
    reference_token_logp,
    token_kl,
)
from components.rl.estimator import SequenceLayout, draw_masks, draw_substitutes, noise_levels, sequence_log_likelihood

MASK_ID = 63


LM_SIZES = dict(vocab_size=64, hidden_size=48, intermediate_size=96, head_dim=24, mask_token_id=MASK_ID,
                eos_token_id=1, pad_token_id=0, max_position_embeddings=128)  # the `tiny_lm` fixture's fields


def test_group_advantages_closed_form():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.5, 0.5, 0.5, 0.5])
    a = group_advantages(r, 4)
    torch.testing.assert_close(a[:4], torch.tensor([1.0, -1.0, -1.0, 1.0]), atol=1e-5, rtol=0)
    assert torch.equal(a[4:], torch.zeros(4))  # equal rewards: no signal
    plain = group_advantages(r, 4, scale=False)
    torch.testing.assert_close(plain[:4], torch.tensor([0.5, -0.5, -0.5, 0.5]))
    r2 = torch.tensor([3.0, 1.0, 2.0])
    torch.testing.assert_close(group_advantages(r2, 3), (r2 - 2.0) / r2.std(unbiased=False), atol=1e-5, rtol=0)


def test_all_failed_fraction_counts_the_groups_without_a_correct_response():
    correct = torch.tensor([0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0])
    assert all_failed_fraction(correct, 4) == pytest.approx(1 / 3)  # groups: one right, none right, all right
    assert all_failed_fraction(correct, 2) == pytest.approx(3 / 6)
    assert all_failed_fraction(torch.ones(4), 4) == 0.0


def test_damp_negative_scales_only_negative_advantages():
    a = torch.tensor([1.5, -0.5, 0.0, -2.0])
    torch.testing.assert_close(damp_negative(a, 0.25), torch.tensor([1.5, -0.125, 0.0, -0.5]))
    assert damp_negative(a, 1.0) is a
    torch.testing.assert_close(damp_negative(a, 0.0), torch.tensor([1.5, 0.0, 0.0, 0.0]))


def test_group_advantages_reject_bad_groups():
    with pytest.raises(ValueError, match="group_size must be >= 2"):
        group_advantages(torch.ones(4), 1)
    with pytest.raises(ValueError, match="multiple of group_size"):
        group_advantages(torch.ones(5), 2)


def test_clipped_surrogate_values_and_clip_fraction():
    eps_low, eps_high = 0.2, 0.28
    log_ratio = torch.log(torch.tensor([1.0, 1.5, 1.5, 0.5, 0.5, 1.1])).requires_grad_()
    adv = torch.tensor([1.0, 1.0, -1.0, -1.0, 1.0, 2.0])
    loss, stats = clipped_surrogate(log_ratio, adv, eps_low, eps_high)
    expected = torch.tensor([-1.0, -1.28, 1.5, 0.8, -0.5, -2.2])
    torch.testing.assert_close(loss.detach(), expected, atol=1e-6, rtol=0)
    assert stats["clipped"].tolist() == [0.0, 1.0, 0.0, 1.0, 0.0, 0.0]
    loss.sum().backward()
    g = log_ratio.grad
    assert g[1] == 0 and g[3] == 0  # the clipped branch blocks the gradient
    assert g[0] == pytest.approx(-1.0) and g[2] == pytest.approx(1.5) and g[5] == pytest.approx(-2.2)


def test_token_kl_k3():
    lp = torch.log(torch.tensor([[0.5, 0.2, 0.9]]))
    masked = torch.tensor([[True, True, False]])
    assert token_kl(lp, lp, masked).item() == 0.0
    ref = torch.log(torch.tensor([[0.25, 0.2, 0.1]]))
    r = math.log(0.25 / 0.5)
    assert token_kl(lp, ref, masked).item() == pytest.approx((math.exp(r) - r - 1) / 2, rel=1e-5)


def _batch(lm, est: EstimatorConfig, advantages: list[float], seed: int = 0) -> PreparedBatch:
    prompts = [[5, 6, 7, 8, 9], [5, 6, 7, 8, 9], [10, 11, 12], [10, 11, 12]]
    responses = [[20, 21, 22, 1, 1, 1, 1], [30, 31, 32, 33, 34, 1, 1], [40, 41, 1, 1, 1], [42, 43, 44, 45, 1]]
    layout = SequenceLayout.from_lists(prompts, responses, 4)
    g = torch.Generator().manual_seed(seed)
    levels, weights = noise_levels(est, g)
    masks = draw_masks(layout, levels, MASK_ID, g)
    subs = draw_substitutes(layout, masks, est.edit_rate, lm.config.vocab_size, {MASK_ID}, g) if est.edit_weight else None
    return PreparedBatch(layout, torch.tensor(advantages), masks, weights, MASK_ID, substitutes=subs)


def _sgd_step(lm, opt):
    def step() -> float:
        norm = torch.nn.utils.clip_grad_norm_(lm.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        return float(norm)
    return step


@pytest.mark.parametrize("edit_weight", [0.0, 1.0])
def test_first_step_ratio_is_one_and_old_estimate_uses_the_same_masks(edit_weight, tiny_lm):
    lm = tiny_lm(**LM_SIZES)
    old = copy.deepcopy(lm)
    est = EstimatorConfig(num_levels=2, t_min=0.3, edit_weight=edit_weight, edit_rate=0.3)
    batch = _batch(lm, est, [1.0, -1.0, 1.0, -1.0])
    opt_cfg = OptimConfig(inner_steps=1, micro_batch_size=3)
    opt = torch.optim.SGD(lm.parameters(), lr=0.0)
    stats = optimise_batch(lm, batch, est, opt_cfg, lambda loss: loss.backward(), _sgd_step(lm, opt))
    assert stats["ratio_min"] == 1.0 and stats["ratio_max"] == 1.0 and stats["clip_fraction"] == 0.0
    with torch.no_grad():  # θ_old's estimate under the very same masks (and substitutions)
        expected, _ = sequence_log_likelihood(old, batch.layout, batch.masks, batch.weights, MASK_ID, 0.0,
                                              batch.substitutes, edit_weight)
        eq5, _ = sequence_log_likelihood(old, batch.layout, batch.masks, batch.weights, MASK_ID)
    torch.testing.assert_close(batch.old_logp, expected.float(), atol=1e-5, rtol=1e-5)
    assert (batch.substitutes is not None) == bool(edit_weight)
    if edit_weight:  # the edit terms are in the ratio's estimate
        assert (expected - eq5).abs().max() > 1e-3


def test_inner_steps_keep_theta_old_fixed_and_move_the_ratio(tiny_lm):
    lm = tiny_lm(**LM_SIZES)
    est = EstimatorConfig(num_levels=2, t_min=0.3)
    batch = _batch(lm, est, [1.0, -1.0, 1.0, -1.0])
    opt_cfg = OptimConfig(inner_steps=3, micro_batch_size=2, eps_low=0.2, eps_high=0.28)
    opt = torch.optim.Adam(lm.parameters(), lr=3e-2)
    optimise_batch(lm, batch, est, opt_cfg, lambda loss: loss.backward(), _sgd_step(lm, opt))
    old = batch.old_logp.clone()
    with torch.no_grad():
        new, _ = sequence_log_likelihood(lm, batch.layout, batch.masks, batch.weights, MASK_ID)
    ratio = (new - old).exp()
    assert (ratio[[0, 2]] > 1.0).all() and (ratio[[1, 3]] < 1.0).all()  # up for Â > 0, down for Â < 0


def test_kl_term_is_zero_against_itself_and_reported(tiny_lm):
    lm = tiny_lm(**LM_SIZES)
    est = EstimatorConfig(num_levels=2)
    batch = _batch(lm, est, [1.0, -1.0, 0.5, -0.5])
    batch.ref_token_logp = reference_token_logp(copy.deepcopy(lm), batch, micro=4)
    opt = torch.optim.SGD(lm.parameters(), lr=0.0)
    stats = optimise_batch(lm, batch, est, OptimConfig(inner_steps=1, kl_coef=0.1), lambda loss: loss.backward(),
                           _sgd_step(lm, opt))
    assert stats["kl"] == pytest.approx(0.0, abs=1e-6)
    assert stats["entropy"] > 0


def test_mean_ratio_normalisation_divides_by_length(tiny_lm):
    lm = tiny_lm(**LM_SIZES)
    est_sum = EstimatorConfig(num_levels=1, schedule="fixed", levels=[0.5])
    est_mean = EstimatorConfig(num_levels=1, schedule="fixed", levels=[0.5], ratio="mean")
    a = _batch(lm, est_sum, [1.0, -1.0, 1.0, -1.0])
    b = _batch(lm, est_mean, [1.0, -1.0, 1.0, -1.0])
    opt = torch.optim.SGD(lm.parameters(), lr=0.0)
    for batch, est in ((a, est_sum), (b, est_mean)):
        optimise_batch(lm, batch, est, OptimConfig(inner_steps=1), lambda loss: loss.backward(), _sgd_step(lm, opt))
    torch.testing.assert_close(b.old_logp, a.old_logp / a.layout.response_lengths().float())


def _update_direction(tiny_lm, advantages: list[float]) -> torch.Tensor:
    """One EBPO update of a fresh tiny model on `_batch`'s four responses; returns each response's change of
    per-token log p, re-estimated with 16 independent noise levels (masks the update never saw)."""
    lm = tiny_lm(**LM_SIZES)
    batch = _batch(lm, EstimatorConfig(num_levels=2, t_min=0.3), advantages)
    g = torch.Generator().manual_seed(99)
    levels, weights = noise_levels(EstimatorConfig(num_levels=16, t_min=0.3), g)
    fresh = draw_masks(batch.layout, levels, MASK_ID, g)

    def per_token_logp() -> torch.Tensor:
        with torch.no_grad():
            logp, _ = sequence_log_likelihood(lm, batch.layout, fresh, weights, MASK_ID)
        return logp / batch.layout.response_lengths()

    before = per_token_logp()
    opt = torch.optim.Adam(lm.parameters(), lr=1e-2)
    optimise_batch(lm, batch, EstimatorConfig(num_levels=2, t_min=0.3), OptimConfig(inner_steps=2),
                   lambda loss: loss.backward(), _sgd_step(lm, opt))
    return per_token_logp() - before


def test_an_update_raises_log_p_of_positive_advantage_responses_relative_to_negative_ones(tiny_lm):
    # Measured on masks the update did not train on, so it is the policy that moved, not one estimate.
    # The flipped advantages must move it the other way: the check depends on the sign, not on the update.
    advantages = [1.0, -1.0, 1.0, -1.0]
    delta = _update_direction(tiny_lm, advantages)
    flipped = _update_direction(tiny_lm, [-a for a in advantages])
    positive, negative = [0, 2], [1, 3]
    assert delta[positive].mean() > delta[negative].mean()
    assert flipped[positive].mean() < flipped[negative].mean()


def test_permuted_advantages_keep_each_groups_values_in_another_order():
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5, 2.0, 0.0, -2.0, 0.0])
    out = permute_within_groups(adv, 4, torch.Generator().manual_seed(0))
    for g in range(2):
        assert sorted(out[4 * g: 4 * g + 4].tolist()) == sorted(adv[4 * g: 4 * g + 4].tolist())
    outs = {tuple(permute_within_groups(adv, 4, torch.Generator().manual_seed(s)).tolist()) for s in range(5)}
    assert len(outs) > 1  # the order depends on the generator: the link to the reward is gone


def test_l_ebpo_trains_the_delete_and_insert_rows_through_the_micro_batches(tiny_lm):
    from components.rl.estimator import draw_edit_traces
    from model.levenshtein import add_edit_controls

    lm = tiny_lm(**LM_SIZES)
    delete_id, insert_id = add_edit_controls(lm)
    est = EstimatorConfig(num_levels=2, t_min=0.3, edit_weight=1.0, edit_rate=0.0, levenshtein_rate=1.0)
    batch = _batch(lm, est, [1.0, -1.0, 1.0, -1.0])
    g = torch.Generator().manual_seed(5)
    batch.trace = draw_edit_traces(batch.layout, batch.masks, None, 1.0, 2, MASK_ID, delete_id, insert_id, {MASK_ID}, g)
    assert (batch.trace.actions == delete_id).any() and (batch.trace.actions == insert_id).any()
    # θ_old's estimate is taken under the same traces, micro-batch by micro-batch
    optimise_batch(lm, batch, est, OptimConfig(inner_steps=1, micro_batch_size=3), lambda loss: loss.backward(),
                   lambda: 0.0)  # no optimiser step: θ stays θ_old and the gradient stays readable
    with torch.no_grad():
        whole, _ = sequence_log_likelihood(lm, batch.layout, batch.masks, batch.weights, MASK_ID, 0.0, None, 1.0,
                                           batch.trace)
    torch.testing.assert_close(batch.old_logp, whole.float(), atol=1e-5, rtol=1e-5)
    grad = lm.lm_head.weight.grad
    assert grad[delete_id].abs().sum() > 0 and grad[insert_id].abs().sum() > 0
    # the reference's token log-probs read the same traces
    from components.rl.estimator import block_log_likelihoods

    ref = reference_token_logp(lm, batch, micro=2)
    with torch.no_grad():
        for n in range(2):
            want = block_log_likelihoods(lm, batch.layout, batch.masks[n], MASK_ID, None, batch.trace.level(n))
            torch.testing.assert_close(ref[n], want.token_logp.float(), atol=1e-5, rtol=1e-5)
            plain = block_log_likelihoods(lm, batch.layout, batch.masks[n], MASK_ID)
            assert (plain.token_logp - want.token_logp).abs().max() > 1e-4


def test_l_ebpo_settings_fail_in_one_line():
    from components.config import ConfigError

    with pytest.raises(ConfigError, match=r"rl\.estimator\.levenshtein_rate: needs rl\.estimator\.edit_weight > 0"):
        EstimatorConfig(levenshtein_rate=0.5).validate()
    with pytest.raises(ConfigError, match=r"rl\.estimator\.levenshtein_rate: must be in \[0, 1\]"):
        EstimatorConfig(levenshtein_rate=1.5, edit_weight=1.0).validate()
    with pytest.raises(ConfigError, match=r"rl\.estimator\.levenshtein_max_ops: must be an integer >= 1"):
        EstimatorConfig(levenshtein_max_ops=0).validate()
    EstimatorConfig(levenshtein_rate=0.5, edit_weight=1.0).validate()  # edit_rate 0 is fine: the traces carry edits
