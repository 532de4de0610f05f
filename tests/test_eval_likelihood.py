"""The likelihood estimators of components.evaluate.likelihood on a tiny random network."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from components.evaluate.likelihood import ESTIMATORS, LikelihoodConfig, _levels_and_uniforms, continuation_scores
from components.rl.estimator import SequenceLayout
from model.masks import block_causal_mask

MASK_ID = 7
VOCAB = 8  # small enough to enumerate every continuation of two tokens
LM_SIZES = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, head_dim=16, mask_token_id=MASK_ID,
                eos_token_id=1, pad_token_id=0, max_position_embeddings=64)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def lm(tiny_lm):
    net = tiny_lm(seed=3, **LM_SIZES).eval()
    with torch.no_grad():
        for p in net.parameters():
            if p.dim() == 2:
                p.mul_(8.0)  # larger than the init's 0.02: attention matters, estimators differ
    return net


def _score(lm, contexts, continuations, block=4, **cfg):
    layout = SequenceLayout.from_lists(contexts, continuations, block)
    with torch.no_grad():
        return continuation_scores(lm, layout, LikelihoodConfig(**cfg), MASK_ID, contexts, continuations)


def _chain_rule_by_hand(lm, context, continuation, block):
    """log p by the left-to-right chain rule within blocks, one forward per token (the definition)."""
    seq = list(context) + list(continuation)
    total = 0.0
    for i in range(len(context), len(seq)):
        start = (i // block) * block
        end = min(start + block, len(seq))
        ids = torch.tensor(seq[:end])
        ids[i:end] = MASK_ID  # the token and the block's later response tokens are masked
        with torch.no_grad():
            logits = lm(ids[None], attention_mask=block_causal_mask(end, block)).logits[0]
        total += float(torch.log_softmax(logits[i].double(), -1)[seq[i]])
    return total


def test_left_to_right_is_the_chain_rule_and_normalised(lm):
    contexts = [[3, 4, 5], [2, 6, 3, 4, 5, 6]]
    continuations = [[2, 3, 4, 5, 6, 2], [4, 4, 2]]
    scores, forwards = _score(lm, contexts, continuations, estimator="left_to_right")
    for s, (c, x) in enumerate(zip(contexts, continuations)):
        assert scores[s].item() == pytest.approx(_chain_rule_by_hand(lm, c, x, 4), abs=1e-4)
    assert forwards.tolist() == [4, 2]  # the fullest block of each row: 1 + 4 + 1 tokens, then 2 + 1
    # a normalised distribution over the continuations of a context: every pair of tokens sums to 1
    pairs = [list(p) for p in itertools.product(range(VOCAB), repeat=2)]
    scores, _ = _score(lm, [[3, 4, 5]] * len(pairs), pairs, estimator="left_to_right")
    assert torch.logsumexp(scores, 0).item() == pytest.approx(0.0, abs=1e-5)


def test_sampled_noise_follows_the_context_not_the_batch(lm):
    context = [3, 4, 5]
    a, b = [2, 3, 4, 5, 6], [2, 3, 6, 5, 6]
    for estimator in ("crn", "antithetic", "mc"):
        together, _ = _score(lm, [context, [6, 6], context], [a, [2, 2], b], estimator=estimator, samples=4)
        alone_a, _ = _score(lm, [context], [a], estimator=estimator, samples=4)
        alone_b, _ = _score(lm, [context], [b], estimator=estimator, samples=4)
        assert together[0].item() == pytest.approx(alone_a.item(), abs=1e-4)
        assert together[2].item() == pytest.approx(alone_b.item(), abs=1e-4)
        other_seed, _ = _score(lm, [context], [a], estimator=estimator, samples=4, seed=1)
        assert other_seed.item() != pytest.approx(alone_a.item(), abs=1e-4)


def test_common_random_numbers_shrink_the_noise_of_a_comparison(lm):
    """The spread over seeds of score(truth) - score(one token changed): crn well below mc."""
    context, truth = [3, 4, 5], [2, 3, 4, 5, 6, 2, 3, 4]
    near = list(truth)
    near[5] = 6
    spread = {}
    for estimator in ("mc", "crn"):
        diffs = []
        for seed in range(12):
            s, _ = _score(lm, [context, context], [truth, near], block=8, estimator=estimator, samples=2, seed=seed)
            diffs.append((s[0] - s[1]).item())
        spread[estimator] = torch.tensor(diffs).std().item()
    assert spread["crn"] < 0.5 * spread["mc"]


def test_antithetic_pairs_mask_every_token_once():
    cfg = LikelihoodConfig(estimator="antithetic", samples=6, t_min=1e-3)
    t, u = _levels_and_uniforms(cfg, seed=11, width=20)
    masks = u < t[:, None]
    n = len(t) // 2
    assert torch.equal(masks[:n] ^ masks[n:], torch.ones(n, 20, dtype=torch.bool))
    assert ((t[:n] >= 0.5) & (t[n:] <= 0.5)).all()


def test_decode_order_reveals_like_the_decoder(lm):
    contexts, continuations = [[3, 4, 5], [3, 4]], [[2, 3, 4, 5, 6], [2, 3, 4]]
    # threshold 1: one token per block and step, so as many forwards as the fullest block has tokens
    _, forwards = _score(lm, contexts, continuations, estimator="decode_order", threshold=1.0)
    assert forwards.tolist() == [4, 2]
    # a threshold nothing misses: one forward, every token scored with all of its block masked
    layout = SequenceLayout.from_lists(contexts, continuations, 4)
    from components.rl.estimator import block_log_likelihoods

    with torch.no_grad():
        all_masked = block_log_likelihoods(lm, layout, layout.response_positions(), MASK_ID).token_logp.sum(-1)
    at_once, forwards = _score(lm, contexts, continuations, estimator="decode_order", threshold=1e-9)
    assert forwards.tolist() == [1, 1]
    assert at_once.tolist() == pytest.approx(all_masked.double().tolist(), abs=1e-4)


@pytest.mark.parametrize("bad, match", [
    (dict(estimator="elbo"), "one of " + ", ".join(ESTIMATORS)),
    (dict(samples=0), "samples must be >= 1"),
    (dict(estimator="antithetic", samples=3), "even number"),
    (dict(t_min=0.0), "t_min"),
    (dict(threshold=1.5), "threshold"),
])
def test_bad_settings_name_the_setting(bad, match):
    with pytest.raises(ValueError, match=match):
        LikelihoodConfig(**bad)


def _exact_elbo(lm, context, x, block):
    """E_t[(1/t) Σ_masked log p] with t ~ U(0, 1), by enumerating every mask of the response:
    a mask of k tokens has weight ∫ t^(k-1) (1-t)^(n-k) dt = B(k, n-k+1)."""
    from components.rl.estimator import block_log_likelihoods

    n = len(x)
    layout = SequenceLayout.from_lists([context], [x], block)
    total = 0.0
    for bits in itertools.product([False, True], repeat=n):
        k = sum(bits)
        if k == 0:
            continue
        mask = torch.zeros_like(layout.tokens, dtype=torch.bool)
        mask[0, len(context):] = torch.tensor(bits)
        with torch.no_grad():
            logp = block_log_likelihoods(lm, layout, mask, MASK_ID).token_logp.sum().item()
        total += math.exp(math.lgamma(k) + math.lgamma(n - k + 1) - math.lgamma(n + 1)) * logp
    return total


def test_sampled_estimators_are_unbiased_for_the_elbo(lm):
    """Each sampled estimator's mean over seeds is the enumerated ELBO, within its standard error."""
    context, x = [3, 4, 5], [2, 3, 4, 5, 6]
    exact = _exact_elbo(lm, context, x, 4)
    assert exact < 0
    for estimator in ("mc", "crn", "antithetic"):
        draws = torch.tensor([_score(lm, [context], [x], estimator=estimator, samples=32, seed=seed)[0].item()
                              for seed in range(16)])
        error = draws.std().item() / math.sqrt(len(draws))
        assert abs(draws.mean().item() - exact) < 4 * error + 0.05, (estimator, draws.mean().item(), exact, error)
