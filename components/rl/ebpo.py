"""The EBPO objective (LLaDA2.1 eq. 4) on ELBO log-likelihood estimates, and the batch update.

  J = E[ min(ρ Â, clip(ρ, 1 − ε_low, 1 + ε_high) Â) ] − β KL(π_θ ‖ π_ref)

ρ = exp(log π_θ(y|x) − log π_θold(y|x)) with both log-likelihoods from `estimator` under the same
masks. θ_old is the policy that generated the batch: the masks are fixed per batch, so its estimate
is the current policy's at the first optimisation step (taken detached) and stays fixed for the
remaining steps; no copy of the old weights is kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .config import EstimatorConfig, OptimConfig
from .estimator import EditTrace, SequenceLayout, sequence_log_likelihood

MAX_LOG_RATIO = 20.0  # exp(20) ≈ 5e8: keeps ρ finite when an estimate jumps; clipped anyway


def group_advantages(rewards: torch.Tensor, group_size: int, scale: bool = True, eps: float = 1e-6) -> torch.Tensor:
    """Â_i = (r_i − mean of its group) / (std of its group) for consecutive groups of `group_size`.

    A group whose rewards are all equal gets Â = 0 (it says nothing about which response is better).
    """
    if group_size < 2:
        raise ValueError(f"group_size must be >= 2 for group-relative advantages, got {group_size}")
    if rewards.dim() != 1 or rewards.numel() % group_size:
        raise ValueError(f"rewards must be 1-D with a multiple of group_size={group_size} entries, "
                         f"got shape {tuple(rewards.shape)}")
    r = rewards.float().view(-1, group_size)  # (prompts, G)
    centred = r - r.mean(1, keepdim=True)
    if scale:
        std = r.std(1, keepdim=True, unbiased=False)
        centred = torch.where(std > eps, centred / (std + eps), torch.zeros_like(centred))
    return centred.view(-1)


def all_failed_fraction(correct: torch.Tensor, group_size: int) -> float:
    """The share of prompts none of whose `group_size` responses is correct. Their advantages are all
    zero, so RL cannot learn from them: where accuracy plateaus, this says whether the prompts left
    are ones the sampled policy never solves."""
    return float((correct.view(-1, group_size).amax(1) <= 0).float().mean())


def permute_within_groups(advantages: torch.Tensor, group_size: int, generator: torch.Generator) -> torch.Tensor:
    """Each group's advantages in a random order (the control arm: same magnitudes, no reward signal)."""
    adv = advantages.view(-1, group_size)  # (prompts, G)
    order = torch.stack([torch.randperm(group_size, generator=generator) for _ in range(adv.shape[0])])
    return adv.gather(1, order).view(-1)


def damp_negative(advantages: torch.Tensor, negative_scale: float) -> torch.Tensor:
    """Scale the negative advantages by `negative_scale` (1.0 leaves them as they are)."""
    if negative_scale == 1.0:
        return advantages
    return torch.where(advantages < 0, advantages * negative_scale, advantages)


def clipped_surrogate(log_ratio: torch.Tensor, advantages: torch.Tensor, eps_low: float, eps_high: float
                      ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-sequence loss −min(ρÂ, clip(ρ)Â) (S,) and detached statistics."""
    ratio = log_ratio.clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO).exp()
    clipped = ratio.clamp(1.0 - eps_low, 1.0 + eps_high)
    unclipped_obj, clipped_obj = ratio * advantages, clipped * advantages
    loss = -torch.minimum(unclipped_obj, clipped_obj)
    with torch.no_grad():
        # The clipped branch is the active one (and blocks the gradient) exactly here:
        is_clipped = ((ratio > 1.0 + eps_high) & (advantages > 0)) | ((ratio < 1.0 - eps_low) & (advantages < 0))
        stats = {"ratio": ratio.detach(), "clipped": is_clipped.float()}
    return loss, stats


def token_kl(logp: torch.Tensor, ref_logp: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
    """Per-sequence mean over masked tokens of the k3 estimator exp(r) − r − 1, r = log p_ref − log p (S,)."""
    r = (ref_logp - logp).clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO)
    k3 = torch.where(masked, r.exp() - r - 1.0, torch.zeros_like(r))
    return k3.sum(-1) / masked.sum(-1).clamp_min(1)


@dataclass
class PreparedBatch:
    """One rollout batch, ready for the optimisation steps."""

    layout: SequenceLayout
    advantages: torch.Tensor  # (S,)
    masks: torch.Tensor  # (N, S, Lmax) bool
    weights: torch.Tensor  # (N,)
    mask_id: int
    substitutes: torch.Tensor | None = None  # (N, S, Lmax) long, -1 = clean: the edit terms' inputs
    trace: EditTrace | None = None  # L-EBPO's Levenshtein blocks (draw_edit_traces), or None
    ref_token_logp: torch.Tensor | None = None  # (N, S, Lmax) when a KL term is used
    old_logp: torch.Tensor | None = None  # (S,) θ_old's estimate; NaN until the first step fills it

    def __post_init__(self) -> None:
        if self.old_logp is None:
            self.old_logp = torch.full((self.layout.size,), float("nan"), device=self.layout.tokens.device)

    @property
    def size(self) -> int:
        return self.layout.size


def micro_batches(size: int, micro: int) -> list[torch.Tensor]:
    return [torch.arange(i, min(i + micro, size)) for i in range(0, size, micro)]


def micro_batch_loss(lm, batch: PreparedBatch, index: torch.Tensor, est: EstimatorConfig, opt: OptimConfig
                     ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Mean loss of the sequences `index` (graph attached) and per-sequence detached statistics."""
    layout = batch.layout.select(index)
    width = layout.tokens.shape[1]
    masks = batch.masks[:, index, :width]
    subs = None if batch.substitutes is None else batch.substitutes[:, index, :width]
    trace = None if batch.trace is None else batch.trace.select(index, width)
    logp, parts = sequence_log_likelihood(lm, layout, masks, batch.weights, batch.mask_id, est.keep_weight,
                                          subs, est.edit_weight, trace)  # (s,)
    if est.ratio == "mean":
        logp = logp / layout.response_lengths().clamp_min(1)
    old = batch.old_logp[index]
    fresh = torch.isnan(old)
    if fresh.any():  # first optimisation step: θ is still θ_old, so its estimate is θ_old's
        old = torch.where(fresh, logp.detach(), old)
        batch.old_logp[index] = old
    loss_seq, stats = clipped_surrogate(logp - old, batch.advantages[index], opt.eps_low, opt.eps_high)
    n_masked = sum(p.masked.sum() for p in parts).clamp_min(1)
    stats["entropy_sum"] = sum(p.entropy.sum() for p in parts).detach()
    stats["masked_tokens"] = n_masked.detach().float()
    stats["logp"] = logp.detach()
    kl = None
    if batch.ref_token_logp is not None:
        ref = batch.ref_token_logp[:, index, :width]
        kl = torch.stack([token_kl(p.token_logp, ref[n], p.masked) for n, p in enumerate(parts)]).mean(0)  # (s,)
        loss_seq = loss_seq + opt.kl_coef * kl
        stats["kl"] = kl.detach()
    return loss_seq.mean(), stats


def reference_token_logp(ref_lm, batch: PreparedBatch, micro: int) -> torch.Tensor:
    """(N, S, Lmax) token log-probs of the frozen reference under the batch's masks (no grad)."""
    from .estimator import block_log_likelihoods

    N, S, width = batch.masks.shape
    out = torch.zeros(N, S, width)
    with torch.no_grad():
        for index in micro_batches(S, micro):
            layout = batch.layout.select(index)
            w = layout.tokens.shape[1]
            for n in range(N):
                subs = None if batch.substitutes is None else batch.substitutes[n, index, :w]
                trace = None if batch.trace is None else batch.trace.select(index, w).level(n)
                out[n, index, :w] = block_log_likelihoods(ref_lm, layout, batch.masks[n, index, :w], batch.mask_id,
                                                          subs, trace).token_logp.float().cpu()
    return out.to(batch.layout.tokens.device)


def optimise_batch(lm, batch: PreparedBatch, est: EstimatorConfig, opt: OptimConfig,
                   backward: Callable[[torch.Tensor], None], step: Callable[[], float]) -> dict[str, float]:
    """`opt.inner_steps` optimisation steps on one rollout batch with θ_old fixed.

    `backward(loss)` and `step() -> grad_norm` are the caller's (Lightning's manual_backward and
    clip-then-step), so the same code runs under any strategy. Returns averaged statistics.
    """
    stats: dict[str, list[float]] = {}
    S = batch.size
    for inner in range(opt.inner_steps):
        ratios, clipped, kls, logps = [], [], [], []
        ent_sum = masked_sum = 0.0
        loss_total = 0.0
        for index in micro_batches(S, opt.micro_batch_size):
            loss, st = micro_batch_loss(lm, batch, index, est, opt)
            backward(loss * (len(index) / S))
            loss_total += float(loss.detach()) * len(index) / S
            ratios.append(st["ratio"])
            clipped.append(st["clipped"])
            logps.append(st["logp"])
            ent_sum += float(st["entropy_sum"])
            masked_sum += float(st["masked_tokens"])
            if "kl" in st:
                kls.append(st["kl"])
        grad_norm = step()
        ratio = torch.cat(ratios)
        row = {
            "loss": loss_total,
            "ratio_mean": float(ratio.mean()),
            "ratio_min": float(ratio.min()),
            "ratio_max": float(ratio.max()),
            "ratio_std": float(ratio.std(unbiased=False)),
            "clip_fraction": float(torch.cat(clipped).mean()),
            "entropy": ent_sum / max(masked_sum, 1.0),
            "grad_norm": float(grad_norm),
            "logp_mean": float(torch.cat(logps).mean()),
        }
        if kls:
            row["kl"] = float(torch.cat(kls).mean())
        for k, v in row.items():
            stats.setdefault(k, []).append(v)
    out = {k: sum(v) / len(v) for k, v in stats.items()}
    # ratio statistics of the last step are the informative ones (step 0 is exactly 1)
    for k in ("ratio_mean", "ratio_min", "ratio_max", "ratio_std", "clip_fraction"):
        out[k] = stats[k][-1]
    return out
