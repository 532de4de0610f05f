"""Scores of continuations under a masked diffusion model, for ranking (multiple choice) and perplexity.

A masked diffusion model has no single left-to-right factorisation, so "log p(continuation | context)"
has to be estimated. Every estimator here scores all blocks of a row in one forward per mask pattern
(`components.rl.estimator.block_log_likelihoods`: noisy block b conditioned on the clean blocks before
it, exactly as the decoder conditions). They differ in the mask patterns:

* `mc`: the ELBO Σ log p / t over masked tokens, `samples` stratified levels, masks drawn
  independently for every row. Unbiased lower bound, but each choice gets its own noise, so the
  comparison of two choices carries the noise of both.
* `crn`: the same ELBO with common random numbers: levels and per-position uniforms are drawn from a
  seed of the *context* alone, so every continuation of one context is masked at the same response
  offsets at the same levels, and the noise largely cancels in their difference.
* `antithetic`: `crn` with complementary pairs: each level t with uniforms u is paired with level 1-t
  masking exactly the positions u leaves visible, so every token is scored once per pair.
* `left_to_right`: deterministic chain rule within each block: pattern k masks the block's response
  tokens from rank k on and scores rank k. An exact log-probability of the any-order model under one
  fixed order (a normalised distribution, so it also serves perplexity). Costs one forward per
  response token of the fullest block.
* `decode_order`: the continuation forced through the decoder's own unmasking rule: each step reveals,
  in every block, the masked tokens whose probability reaches `threshold` (at least the most
  probable one) and adds their log-probabilities. It scores how the decoder would write *this*
  continuation, in about as many forwards as decoding it. The order depends on the continuation, so
  it ranks but is not a normalised likelihood (do not report it as perplexity).

Each call returns the scores and the forwards every row took part in (the cost of the estimate).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import torch

from components.rl.estimator import SequenceLayout, block_log_likelihoods

ESTIMATORS = ("mc", "crn", "antithetic", "left_to_right", "decode_order")
SAMPLED = ("mc", "crn", "antithetic")  # the estimators that take `samples` levels


@dataclass(frozen=True)
class LikelihoodConfig:
    estimator: str = "crn"
    samples: int = 8  # noise levels per row (sampled estimators only)
    t_min: float = 1e-3  # lowest noise level of the sampled estimators
    threshold: float = 0.9  # decode_order: reveal every token at least this probable in one step
    seed: int = 0

    def __post_init__(self) -> None:
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"likelihood estimator must be one of {', '.join(ESTIMATORS)}, got {self.estimator!r}")
        if self.samples < 1:
            raise ValueError(f"likelihood samples must be >= 1, got {self.samples!r}")
        if self.estimator == "antithetic" and self.samples % 2:
            raise ValueError(f"antithetic likelihood needs an even number of samples (pairs), got {self.samples}")
        if not 0.0 < self.t_min < 1.0:
            raise ValueError(f"likelihood t_min must be in (0, 1), got {self.t_min!r}")
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"likelihood threshold must be in (0, 1], got {self.threshold!r}")


def row_seed(base: int, tokens: list[int]) -> int:
    """A seed fixed by `tokens` (and the base seed), independent of batching and of Python's hash salt."""
    data = torch.tensor([base, *tokens], dtype=torch.int64).numpy().tobytes()
    return zlib.crc32(data)


def continuation_scores(lm, layout: SequenceLayout, cfg: LikelihoodConfig, mask_id: int,
                        contexts: list[list[int]], continuations: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores (S,) float64 of each row's response and the forwards (S,) each row took part in.

    `contexts`/`continuations` are the rows' token lists (they seed the sampled estimators: `crn` and
    `antithetic` by the context, `mc` by context and continuation)."""
    if cfg.estimator in SAMPLED:
        return _sampled(lm, layout, cfg, mask_id, contexts, continuations)
    if cfg.estimator == "left_to_right":
        return _left_to_right(lm, layout, mask_id)
    return _decode_order(lm, layout, mask_id, cfg.threshold)


# ---------------------------------------------------------------------------------------- sampled ELBO


def _levels_and_uniforms(cfg: LikelihoodConfig, seed: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Levels t (N,) and per-response-offset uniforms u (N, width) of one row, complements included.

    The uniforms are drawn offset by offset, so a longer continuation of the same context shares every
    draw of a shorter one at the offsets they have in common."""
    g = torch.Generator().manual_seed(seed)
    n = cfg.samples // 2 if cfg.estimator == "antithetic" else cfg.samples
    lo = 0.5 if cfg.estimator == "antithetic" else cfg.t_min  # pairs (t, 1-t) cover [0, 1] from [0.5, 1]
    t = lo + (1.0 - lo) * (torch.arange(n, dtype=torch.float64) + torch.rand(n, generator=g, dtype=torch.float64)) / n
    u = torch.rand(width, n, generator=g, dtype=torch.float64).T  # (n, width)
    if cfg.estimator == "antithetic":
        t = torch.cat([t, (1.0 - t).clamp_min(cfg.t_min)])
        u = torch.cat([u, 1.0 - u])  # (1-u) < (1-t)  <=>  u > t: the positions the first mask leaves
    return t, u


def _sampled(lm, layout, cfg, mask_id, contexts, continuations):
    S, width = layout.tokens.shape
    n_levels = cfg.samples
    levels = torch.empty(n_levels, S, dtype=torch.float64)
    masks = torch.zeros(n_levels, S, width, dtype=torch.bool)
    for s in range(S):
        key = contexts[s] if cfg.estimator != "mc" else [*contexts[s], -1, *continuations[s]]
        start, end = int(layout.prompt_lengths[s]), int(layout.lengths[s])
        t, u = _levels_and_uniforms(cfg, row_seed(cfg.seed, key), end - start)
        levels[:, s] = t
        masks[:, s, start:end] = u < t[:, None]
    t, masks = levels, masks.to(layout.tokens.device)
    total = torch.zeros(S, dtype=torch.float64)
    for n in range(t.shape[0]):
        part = block_log_likelihoods(lm, layout, masks[n], mask_id)
        total += part.per_block.sum(-1).double().cpu() / (t.shape[0] * t[n])
    return total, torch.full((S,), t.shape[0])


# ---------------------------------------------------------------------------------------- deterministic


def _ranks(layout: SequenceLayout) -> torch.Tensor:
    """long (S, W): each response token's rank among the response tokens of its block, -1 elsewhere."""
    width = layout.tokens.shape[1]
    pos = torch.arange(width, device=layout.tokens.device)[None]
    block_start = torch.div(pos, layout.block_length, rounding_mode="floor") * layout.block_length
    first = torch.maximum(block_start, layout.prompt_lengths[:, None])
    return torch.where(layout.response_positions(), pos - first, torch.full_like(pos - first, -1))


def _left_to_right(lm, layout, mask_id):
    rank = _ranks(layout)
    total = torch.zeros(layout.size, dtype=torch.float64)
    forwards = torch.zeros(layout.size, dtype=torch.long)
    for k in range(int(rank.max()) + 1):
        part = block_log_likelihoods(lm, layout, rank >= k, mask_id)
        scored = rank == k
        total += torch.where(scored, part.token_logp, torch.zeros_like(part.token_logp)).sum(-1).double().cpu()
        forwards += (rank >= k).any(-1).cpu()
    return total, forwards


def _decode_order(lm, layout, mask_id, threshold):
    S, width = layout.tokens.shape
    hidden = layout.response_positions().clone()
    block = torch.div(torch.arange(width, device=hidden.device), layout.block_length, rounding_mode="floor")
    slot = (torch.arange(S, device=hidden.device)[:, None] * (int(block.max()) + 1) + block[None]).flatten()
    total = torch.zeros(S, dtype=torch.float64)
    forwards = torch.zeros(S, dtype=torch.long)
    while hidden.any():
        lp = block_log_likelihoods(lm, layout, hidden, mask_id).token_logp  # (S, W) at hidden tokens
        lp = torch.where(hidden, lp, torch.full_like(lp, float("-inf")))
        best = torch.full((S * (int(block.max()) + 1),), float("-inf"), dtype=lp.dtype, device=lp.device)
        best = best.scatter_reduce(0, slot, lp.flatten(), reduce="amax").view(S, -1)  # (S, blocks)
        reveal = hidden & ((lp >= torch.log(torch.tensor(threshold))) | (lp == best.gather(1, block.expand(S, -1))))
        total += torch.where(reveal, lp, torch.zeros_like(lp)).sum(-1).double().cpu()
        forwards += hidden.any(-1).cpu()
        hidden &= ~reveal
    return total, forwards
