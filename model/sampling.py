"""Token choice and confidence from logits: the one place greedy / temperature / top-k / top-p live."""

from __future__ import annotations

import torch


def filter_logits(logits: torch.Tensor, top_k: int | None, top_p: float | None) -> torch.Tensor:
    """Keep the top-k tokens and the smallest nucleus of mass >= top_p; the rest get -inf."""
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        drop_sorted = cumulative - sorted_logits.softmax(-1) >= top_p  # mass before this token already enough
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def choose_tokens(logits: torch.Tensor, mask_id: int, temperature: float = 0.0, top_k: int | None = None,
                  top_p: float | None = None, generator: torch.Generator | None = None):
    """Return (tokens, confidences) for logits (..., V).

    Greedy (temperature 0): the arg-max and its softmax probability over the *whole* vocabulary,
    mask token included, exactly as the reference computes it. Guard: the reference loops forever
    when the arg-max is the mask token (committing a mask leaves the block unfinished); we take the
    best non-mask token instead, with its own probability. The mask's probability is set below every
    other after the softmax, so the guard costs no host read and changes nothing on a model whose
    mask logit is not the maximum: outputs stay token-identical.
    Sampling: the mask token is excluded, top-k / top-p filter, then one multinomial draw; the
    confidence is the drawn token's probability under the filtered, tempered distribution.
    """
    logits = logits.float()
    if temperature == 0.0:
        probs = logits.softmax(-1)
        probs[..., mask_id] = -1.0
        conf, tokens = probs.max(-1)
        return tokens, conf
    logits = logits.clone()
    logits[..., mask_id] = float("-inf")
    logits = filter_logits(logits / temperature, top_k, top_p)
    probs = logits.softmax(-1)
    flat = probs.reshape(-1, probs.shape[-1])
    tokens = torch.multinomial(flat, 1, generator=generator).view(probs.shape[:-1])
    conf = probs.gather(-1, tokens[..., None]).squeeze(-1)
    return tokens, conf
