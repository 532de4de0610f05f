"""Vectorised ELBO estimate of a response's block-wise log-likelihood (LLaDA2.1 eq. 5).

For a noise level t the response is masked token-wise with probability t (the training stage's
`m2t_corrupt`; the prompt is never noised). The decoder generated block b conditioned on the clean
blocks before it, so the quantity wanted per block is log p(y_b | clean blocks < b, noisy block b).
All blocks are scored in one forward over a composite input and the block-causal training mask:

    z = prompt[:P0]  ⊕  noisy(seq[P0:L])  ⊕  clean(seq[P0:L])
        positions 0..P0-1   P0..L-1            P0..L-1

where seq = prompt ⊕ response (length L) and P0 is the start of the block holding the prompt's
last token (blocks count from position 0, as in the decoder). The prompt is clean context: its
whole blocks appear once, as a prefix every later query sees (block-causally, exactly as the
decoder's KV cache holds them). Only the prompt's last *partial* block is part of the duplicated
region, because in the decoder those prompt tokens share a block with the first response tokens
and attend to them while they are still masked; the noisy copy must reproduce that. Rules:

  * prefix query  -> prefix keys of blocks <= its block;
  * noisy block i -> the prefix, noisy block i, clean blocks < i;
  * clean block i -> the prefix, clean blocks <= i (never noisy);

which is `model.masks.block_diffusion_mask` over seq_t ⊕ seq_0 with the duplicated prompt blocks
removed (they influence nothing the loss reads). `block_log_likelihoods_reference` runs the
definition literally, one forward per block, and the tests check both agree to float tolerance.

The sequence estimate is log pi(y|x) ≈ Σ_n w_n Σ_b Σ_{masked i in b} log p(y_i | z_n). The masks are
drawn once per rollout batch and reused for θ, θ_old and the reference, so their noise cancels in
the ratio.

Keep terms (optional, `keep_weight` > 0; 0 is eq. 5 exactly). A draft-and-edit policy also decides,
at every visible token, whether to keep it or edit it (T2T), and that decision reads the model's
prediction at the visible position. Eq. 5 only scores masked positions, so RL leaves those
predictions untrained. With keep terms the estimate adds
keep_weight · (1/N) Σ_n Σ_{visible response i} log p(y_i | z_n) — the log-probability of keeping
each visible clean token — so a rewarded response also reinforces keeping its tokens and a failed
one makes its tokens candidates for editing. It stays off by default: on the tiny models it does not
keep S-mode TPF from falling during RL (docs/results.md).

Edit terms (optional, `edit_weight` > 0 with `edit_rate` > 0): the other half of the T2T decision.
Per level, a share `edit_rate` of the visible response tokens is shown substituted by another token of
the batch's responses (drawn once per rollout batch, like the masks, and shared by θ, θ_old and the
reference), as the SFT editing stream corrupts; the estimate adds
edit_weight · (1/N) Σ_n Σ_{substituted i} log p(y_i | z_n), the log-probability of editing a wrong
token back into the rollout's token. A rewarded response then reinforces the edits that produce it,
a failed one makes them less likely. The substituted tokens are context for every other query of
their block, so with edit terms the masked and keep terms are read next to those substitutions too.

L-EBPO (LLaDA2.2 §3.2, eq. 4-5; `levenshtein_rate` > 0): the action space is V ∪ {DELETE, INSERT}.
DELETE and INSERT never appear in the rollout, so their trace is recovered as training recovers it:
per level, a share of the response blocks is shown with structural errors (deletions, duplications,
run shifts; `components.training.corruption.structural_noise`) on top of that level's masks and
substitutions, and the action of every position of such a block is its LCS label against the
rollout's block (`model.levenshtein.edit_labels`: a token, DELETE or INSERT). Those blocks' masked
positions are eq. 5 terms with their action as the target; their visible positions whose action is an
edit (substitute, delete, insert) are edit terms, those whose action keeps the shown token keep terms.
The traces are drawn once per rollout batch (`draw_edit_traces`) and shared by θ, θ_old and the reference.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from components.training.corruption import m2t_corrupt, random_tokens, row_tokens, structural_noise, token_pool
from model.levenshtein import edit_labels
from model.masks import block_causal_mask

from .config import EstimatorConfig

PREFIX, NOISY, CLEAN, PAD = 0, 1, 2, 3


@dataclass
class SequenceLayout:
    """Prompts and responses of a rollout batch, right-padded into one tensor."""

    tokens: torch.Tensor  # (S, Lmax) long: prompt ⊕ response, padded with pad_id
    prompt_lengths: torch.Tensor  # (S,) long
    lengths: torch.Tensor  # (S,) long: prompt + response
    block_length: int

    @classmethod
    def from_lists(cls, prompts: list[list[int]], responses: list[list[int]], block_length: int,
                   pad_id: int = 0, device=None) -> "SequenceLayout":
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        if not prompts:
            raise ValueError("a layout needs at least one sequence")
        if block_length < 1:
            raise ValueError(f"block_length must be >= 1, got {block_length}")
        empty = [i for i, r in enumerate(responses) if len(r) == 0]
        if empty:
            raise ValueError(f"responses {empty[:5]} are empty; every response needs at least one token")
        lengths = [len(p) + len(r) for p, r in zip(prompts, responses)]
        tokens = torch.full((len(prompts), max(lengths)), pad_id, dtype=torch.long)
        for i, (p, r) in enumerate(zip(prompts, responses)):
            tokens[i, :lengths[i]] = torch.tensor(list(p) + list(r), dtype=torch.long)
        return cls(tokens.to(device), torch.tensor([len(p) for p in prompts], device=device),
                   torch.tensor(lengths, device=device), block_length)

    @property
    def size(self) -> int:
        return self.tokens.shape[0]

    def response_positions(self) -> torch.Tensor:
        """bool (S, Lmax): True at response tokens (the only positions ever noised or scored)."""
        pos = torch.arange(self.tokens.shape[1], device=self.tokens.device)[None]
        return (pos >= self.prompt_lengths[:, None]) & (pos < self.lengths[:, None])

    def response_lengths(self) -> torch.Tensor:
        return self.lengths - self.prompt_lengths

    def region_starts(self) -> torch.Tensor:
        """P0 (S,): first position of the block holding the first response token."""
        return torch.div(self.prompt_lengths, self.block_length, rounding_mode="floor") * self.block_length

    def num_blocks(self) -> torch.Tensor:
        """Response blocks per sequence (S,), the prompt's shared last block included."""
        region = self.lengths - self.region_starts()
        return torch.div(region + self.block_length - 1, self.block_length, rounding_mode="floor")

    def select(self, index: torch.Tensor) -> "SequenceLayout":
        """The sub-batch `index` (trimmed to its own longest row)."""
        lengths = self.lengths[index]
        width = int(lengths.max())
        return SequenceLayout(self.tokens[index, :width], self.prompt_lengths[index], lengths, self.block_length)


# ---------------------------------------------------------------------------------------- noise levels


def noise_levels(cfg: EstimatorConfig, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The N levels t_n and weights w_n of one rollout batch (float64 tensors of shape (N,))."""
    n = cfg.num_levels
    if cfg.schedule == "stratified":
        u = torch.rand(n, generator=generator, dtype=torch.float64)
        t = cfg.t_min + (cfg.t_max - cfg.t_min) * (torch.arange(n, dtype=torch.float64) + u) / n
    elif cfg.schedule == "fixed":
        t = torch.tensor(list(cfg.levels), dtype=torch.float64)
    else:
        raise ValueError(f"estimator.schedule must be 'stratified' or 'fixed', got {cfg.schedule!r}")
    if cfg.weights:
        w = torch.tensor(list(cfg.weights), dtype=torch.float64)
    else:
        w = 1.0 / (n * t)  # the ELBO's 1/t, averaged over the N levels
    return t, w


def draw_masks(layout: SequenceLayout, levels: torch.Tensor, mask_id: int, generator: torch.Generator) -> torch.Tensor:
    """bool (N, S, Lmax): the response tokens masked at each level (one draw shared by θ, θ_old, ref)."""
    noisable = layout.response_positions()
    masks = []
    for t in levels.tolist():
        c = m2t_corrupt(layout.tokens.cpu(), noisable.cpu(), mask_id=mask_id, t_min=t, t_max=t, generator=generator)
        masks.append(c.m2t)
    return torch.stack(masks).to(layout.tokens.device)


def draw_substitutes(layout: SequenceLayout, masks: torch.Tensor, rate: float, vocab_size: int,
                     exclude_ids: set[int], generator: torch.Generator) -> torch.Tensor:
    """long (N, S, Lmax): per level, the token shown at each substituted visible response position
    (another token of the batch's responses), -1 where the clean token is shown. One draw shared by
    θ, θ_old and the reference, like the masks."""
    tokens = layout.tokens.cpu()
    response = layout.response_positions().cpu()
    pool = token_pool(tokens, response, "batch", vocab_size, exclude_ids)
    out = []
    for masked in masks.cpu():
        hit = response & ~masked & (torch.rand(tokens.shape, generator=generator) < rate)
        noise = random_tokens(tokens, pool, generator)
        hit = hit & (noise != tokens)  # a draw equal to the clean token is no substitution
        out.append(torch.where(hit, noise, torch.full_like(noise, -1)))
    return torch.stack(out).to(layout.tokens.device)


@dataclass
class EditTrace:
    """Levenshtein blocks of a rollout batch: per level, what their positions show and their actions.

    Both are long (N, S, Lmax), or (S, Lmax) for one level (`level`); -1 outside those blocks. Inside,
    `shown` is the token the noisy view shows (the mask id for a masked slot) and `actions` the
    position's action: a token id, DELETE or INSERT.
    """

    shown: torch.Tensor
    actions: torch.Tensor

    def level(self, n: int) -> "EditTrace":
        return EditTrace(self.shown[n], self.actions[n])

    def select(self, index: torch.Tensor, width: int) -> "EditTrace":
        """The sequences `index` of every level, trimmed to `width` positions."""
        return EditTrace(self.shown[:, index, :width], self.actions[:, index, :width])


def draw_edit_traces(layout: SequenceLayout, masks: torch.Tensor, substitutes: torch.Tensor | None, rate: float,
                     max_ops: int, mask_id: int, delete_id: int, insert_id: int, exclude_ids: set[int],
                     generator: torch.Generator) -> EditTrace:
    """Per level, each response block (two or more response tokens) becomes a Levenshtein block with
    probability `rate`: its noisy view at that level (masks, substitutions) gets 1..max_ops structural
    errors, and each position's action is its LCS label against the rollout's block. One draw shared by
    θ, θ_old and the reference, like the masks."""
    tokens = layout.tokens.cpu()
    response = layout.response_positions().cpu()
    B, (S, width) = layout.block_length, tokens.shape
    shown = torch.full((masks.shape[0], S, width), -1, dtype=torch.long)
    actions = shown.clone()
    fillers = row_tokens(tokens, response, exclude_ids, generator)  # (S, Lmax)
    n_blocks = -(-width // B)
    for n, masked in enumerate(masks.cpu()):
        view = torch.where(masked, torch.full_like(tokens, mask_id), tokens)
        if substitutes is not None:
            sub = substitutes[n].cpu()
            view = torch.where(sub >= 0, sub, view)
        picked = torch.rand(S, n_blocks, generator=generator) < rate
        for s, b in picked.nonzero().tolist():
            idx = response[s, b * B:(b + 1) * B].nonzero().flatten() + b * B
            if len(idx) < 2:
                continue
            ops = 1 + int(torch.randint(max_ops, (1,), generator=generator))
            draft = structural_noise(view[s, idx].tolist(), int(fillers[s, idx[-1]]), ops, generator)
            labels = edit_labels(draft, tokens[s, idx].tolist(), mask_id=mask_id, delete_id=delete_id,
                                 insert_id=insert_id).labels
            shown[n, s, idx] = torch.tensor(draft)
            actions[n, s, idx] = torch.tensor(labels)
    device = layout.tokens.device
    return EditTrace(shown.to(device), actions.to(device))


def classify_positions(response: torch.Tensor, masked: torch.Tensor, clean: torch.Tensor,
                       substituted: torch.Tensor | None, shown: torch.Tensor | None, actions: torch.Tensor | None,
                       mask_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(targets, scored, visible, edited) at the positions given, the one rule both the composite input
    and the per-block loop apply: outside Levenshtein blocks the clean token is the target, masked
    positions are scored, substituted ones edited, the rest kept; inside, the action is the target, a
    shown mask is scored, a shown token edited when its action is not to keep it, else kept."""
    targets, hidden = clean, masked
    edited = torch.zeros_like(masked) if substituted is None else substituted
    if shown is not None:
        trace = shown >= 0
        targets = torch.where(trace, actions, clean)
        hidden = torch.where(trace, shown == mask_id, masked)
        edited = torch.where(trace, ~hidden & (actions != shown), edited)
    return targets, response & hidden, response & ~hidden & ~edited, response & ~hidden & edited


# ---------------------------------------------------------------------------------------- composite input


@dataclass
class CompositeInput:
    input_ids: torch.Tensor  # (S, T)
    position_ids: torch.Tensor  # (S, T)
    attention_mask: torch.Tensor  # (S, 1, T, T) bool
    logit_index: torch.Tensor  # (S, K): indices into z of the noisy region (padded by repetition)
    positions: torch.Tensor  # (S, K): the absolute sequence positions read there
    targets: torch.Tensor  # (S, K): the clean tokens at those positions (the actions in Levenshtein blocks)
    scored: torch.Tensor  # (S, K) bool: masked response tokens (the terms of the estimate)
    visible: torch.Tensor  # (S, K) bool: visible response tokens shown clean (the keep terms)
    edited: torch.Tensor  # (S, K) bool: visible response tokens shown substituted (the edit terms)


def composite_attention(kind: torch.Tensor, block: torch.Tensor) -> torch.Tensor:
    """bool (S, 1, T, T) from each composite slot's kind (PREFIX/NOISY/CLEAN/PAD) and block id."""
    qk, kk = kind[:, :, None], kind[:, None, :]  # (S, T, 1), (S, 1, T)
    qb, kb = block[:, :, None], block[:, None, :]
    real_q = qk != PAD
    to_prefix = real_q & (kk == PREFIX) & (kb <= qb)
    to_noisy = (qk == NOISY) & (kk == NOISY) & (kb == qb)
    to_clean = (kk == CLEAN) & (((qk == CLEAN) & (kb <= qb)) | ((qk == NOISY) & (kb < qb)))
    eye = torch.eye(kind.shape[1], dtype=torch.bool, device=kind.device)[None]
    pad_self = (qk == PAD) & eye  # padding queries see themselves only (no all-False rows -> no NaN)
    return (to_prefix | to_noisy | to_clean | pad_self)[:, None]


def composite_input(layout: SequenceLayout, masked: torch.Tensor, mask_id: int, pad_id: int = 0,
                    substitutes: torch.Tensor | None = None, trace: EditTrace | None = None) -> CompositeInput:
    """Build z = prefix ⊕ noisy region ⊕ clean region per row (see the module docstring); the noisy
    region shows `substitutes` (S, Lmax; -1 = none) where given, and a level's `trace` (S, Lmax) over
    both in its Levenshtein blocks."""
    tokens, B = layout.tokens, layout.block_length
    S, width = tokens.shape
    device = tokens.device
    p0 = layout.region_starts()[:, None]  # (S, 1)
    d = (layout.lengths[:, None] - p0)  # (S, 1) duplicated region length
    T = int((p0 + 2 * d).max())
    j = torch.arange(T, device=device)[None]  # (1, T) composite slot
    kind = torch.where(j < p0, PREFIX, torch.where(j < p0 + d, NOISY, torch.where(j < p0 + 2 * d, CLEAN, PAD)))
    pos = torch.where(kind == CLEAN, j - d, j)
    pos = torch.where(kind == PAD, torch.zeros_like(pos), pos)  # (S, T) absolute positions
    clean = tokens.gather(1, pos)
    hide = (kind == NOISY) & masked.gather(1, pos)
    input_ids = torch.where(hide, torch.full_like(clean, mask_id), clean)
    if substitutes is not None:
        sub = torch.where(kind == NOISY, substitutes.gather(1, pos), -1)
        input_ids = torch.where(sub >= 0, sub, input_ids)
    if trace is not None:
        shown = torch.where(kind == NOISY, trace.shown.gather(1, pos), -1)
        input_ids = torch.where(shown >= 0, shown, input_ids)
    input_ids = torch.where(kind == PAD, torch.full_like(clean, pad_id), input_ids)
    block = torch.div(pos, B, rounding_mode="floor")
    attention = composite_attention(kind, block)

    K = int(d.max())
    k = torch.arange(K, device=device)[None]  # (1, K)
    inside = k < d
    logit_index = p0 + torch.minimum(k, d - 1)  # (S, K) slots of the noisy region
    positions = logit_index  # noisy slots sit at their own absolute position
    response = inside & (positions >= layout.prompt_lengths[:, None])
    targets, scored, visible, edited = classify_positions(
        response, masked.gather(1, positions), tokens.gather(1, positions),
        None if substitutes is None else substitutes.gather(1, positions) >= 0,
        None if trace is None else trace.shown.gather(1, positions),
        None if trace is None else trace.actions.gather(1, positions), mask_id)
    return CompositeInput(input_ids, pos, attention, logit_index, positions, targets, scored, visible, edited)


# ---------------------------------------------------------------------------------------- estimates


@dataclass
class BlockLogLik:
    per_block: torch.Tensor  # (S, NB): Σ log p(clean) over the masked tokens of each response block
    token_logp: torch.Tensor  # (S, Lmax): log p(clean) at masked response tokens, 0 elsewhere
    masked: torch.Tensor  # (S, Lmax) bool
    entropy: torch.Tensor  # (S, Lmax) detached predictive entropy at masked tokens, 0 elsewhere
    keep_logp: torch.Tensor  # (S, Lmax): log p(clean) at visible response tokens (keeping them), 0 elsewhere
    edit_logp: torch.Tensor  # (S, Lmax): log p(clean) at substituted response tokens (editing them back), 0 elsewhere


def block_log_likelihoods(lm, layout: SequenceLayout, masked: torch.Tensor, mask_id: int,
                          substitutes: torch.Tensor | None = None, trace: EditTrace | None = None) -> BlockLogLik:
    """Every response block's log-likelihood of its clean tokens (its actions, in a Levenshtein block of
    `trace`) at one noise level, in ONE forward."""
    z = composite_input(layout, masked, mask_id, substitutes=substitutes, trace=trace)
    out = lm(z.input_ids, attention_mask=z.attention_mask, position_ids=z.position_ids,
             logits_positions=z.logit_index)
    logp_all = F.log_softmax(out.logits.float(), dim=-1)  # (S, K, V)
    target_logp = logp_all.gather(-1, z.targets[..., None])[..., 0]  # (S, K)
    logp = torch.where(z.scored, target_logp, torch.zeros_like(target_logp))
    keep = torch.where(z.visible, target_logp, torch.zeros_like(target_logp))
    edit = torch.where(z.edited, target_logp, torch.zeros_like(target_logp))
    with torch.no_grad():
        entropy = -(logp_all.exp() * logp_all).sum(-1)
        entropy = torch.where(z.scored, entropy, torch.zeros_like(entropy))
    S, K = logp.shape
    B = layout.block_length
    rel_block = torch.div(torch.arange(K, device=logp.device), B, rounding_mode="floor").expand(S, K)
    nb = -(-K // B)
    per_block = torch.zeros(S, nb, dtype=logp.dtype, device=logp.device).scatter_add(1, rel_block, logp)
    width = layout.tokens.shape[1]
    token_logp = torch.zeros(S, width, dtype=logp.dtype, device=logp.device).scatter_add(1, z.positions, logp)
    token_entropy = torch.zeros(S, width, device=logp.device).scatter_add(1, z.positions, entropy)
    token_keep = torch.zeros(S, width, dtype=keep.dtype, device=keep.device).scatter_add(1, z.positions, keep)
    token_edit = torch.zeros(S, width, dtype=edit.dtype, device=edit.device).scatter_add(1, z.positions, edit)
    # the noisy region's padded slots repeat its last position with scored False: add, not overwrite
    scored = torch.zeros(S, width, dtype=torch.long, device=logp.device).scatter_add(1, z.positions, z.scored.long()) > 0
    return BlockLogLik(per_block, token_logp, scored & layout.response_positions(), token_entropy, token_keep,
                       token_edit)


def block_log_likelihoods_reference(lm, layout: SequenceLayout, masked: torch.Tensor, mask_id: int,
                                    substitutes: torch.Tensor | None = None, trace: EditTrace | None = None
                                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The slow definition: one forward per (sequence, block) over clean blocks < b ⊕ noisy block b
    under the decoder's block-causal mask. Returns (per_block (S, NB), token_logp (S, Lmax),
    keep_logp (S, Lmax), edit_logp (S, Lmax))."""
    B = layout.block_length
    S, width = layout.tokens.shape
    nb = int(layout.num_blocks().max())
    per_block = torch.zeros(S, nb)
    token_logp = torch.zeros(S, width)
    keep_logp = torch.zeros(S, width)
    edit_logp = torch.zeros(S, width)
    for s in range(S):
        P, L = int(layout.prompt_lengths[s]), int(layout.lengths[s])
        first = P // B
        for rb in range(int(layout.num_blocks()[s])):
            start, end = (first + rb) * B, min((first + rb + 1) * B, L)
            ids = layout.tokens[s, :end].clone()
            hide = masked[s, start:end].clone()
            hide[: max(0, P - start)] = False  # prompt tokens are never noised
            ids[start:end][hide] = mask_id
            sub = torch.full((end - start,), -1, dtype=torch.long) if substitutes is None else substitutes[s, start:end]
            sub = torch.where(hide | (torch.arange(start, end, device=sub.device) < P), -1, sub)
            ids[start:end] = torch.where(sub >= 0, sub, ids[start:end])
            shown = actions = None
            if trace is not None:
                shown, actions = trace.shown[s, start:end], trace.actions[s, start:end]
                ids[start:end] = torch.where(shown >= 0, shown, ids[start:end])
            logits = lm(ids[None], attention_mask=block_causal_mask(end, B, device=ids.device)).logits[0]
            logp = F.log_softmax(logits[start:end].float(), dim=-1)
            response = torch.arange(start, end, device=ids.device) >= P
            targets, scored, visible, edited = classify_positions(
                response, hide, layout.tokens[s, start:end], sub >= 0, shown, actions, mask_id)
            lp = logp.gather(-1, targets[:, None])[:, 0]
            keep_logp[s, start:end] = torch.where(visible, lp, torch.zeros_like(lp))
            edit_logp[s, start:end] = torch.where(edited, lp, torch.zeros_like(lp))
            lp = torch.where(scored, lp, torch.zeros_like(lp))
            per_block[s, rb] = lp.sum()
            token_logp[s, start:end] = lp
    return per_block, token_logp, keep_logp, edit_logp


def sequence_log_likelihood(lm, layout: SequenceLayout, masks: torch.Tensor, weights: torch.Tensor,
                            mask_id: int, keep_weight: float = 0.0, substitutes: torch.Tensor | None = None,
                            edit_weight: float = 0.0, trace: EditTrace | None = None
                            ) -> tuple[torch.Tensor, list[BlockLogLik]]:
    """log pi(y|x) ≈ Σ_n w_n Σ_b log p(a_b | z_n) (+ the keep and edit terms, see the module
    docstring): one forward per level. `substitutes` (N, S, Lmax) from `draw_substitutes`, `trace`
    from `draw_edit_traces`, or None. Returns ((S,), per-level parts)."""
    parts = [block_log_likelihoods(lm, layout, masks[n], mask_id, None if substitutes is None else substitutes[n],
                                   None if trace is None else trace.level(n))
             for n in range(masks.shape[0])]
    total = sum(float(weights[n]) * part.per_block.sum(-1) for n, part in enumerate(parts))
    if keep_weight:
        total = total + keep_weight / len(parts) * sum(part.keep_logp.sum(-1) for part in parts)
    if edit_weight:
        total = total + edit_weight / len(parts) * sum(part.edit_logp.sum(-1) for part in parts)
    return total, parts
