"""Step schedules: learning rate (linear warmup then cosine decay) and block size (WSD conversion)."""

from __future__ import annotations

import math
from collections.abc import Sequence


def lr_factor(step: int, *, warmup_steps: int, max_steps: int, min_lr_ratio: float) -> float:
    """Multiplier of the peak learning rate at optimizer step `step` (0-based).

    Linear warmup from lr/warmup to lr over `warmup_steps`, then cosine decay to lr * min_lr_ratio
    at `max_steps` (and flat after it).
    """
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, max_steps - warmup_steps)
    return cosine_factor((step - warmup_steps) / span, min_lr_ratio)


def cosine_factor(progress: float, min_lr_ratio: float) -> float:
    """Cosine from 1 at progress 0 to `min_lr_ratio` at progress 1 (flat after it)."""
    progress = min(1.0, max(0.0, progress))
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def block_length_at(step: int, default: int, schedule: Sequence) -> int:
    """Training block length at `step`: the first schedule stage with step < until_step, else `default`.

    Stages are objects with `until_step` and `block_length` (0 = the whole row). LLaDA2.0's WSD
    conversion of an AR checkpoint is e.g. 1 -> 4 -> 32 -> 0 (MDLM, stable) -> 32 (decay).
    """
    for stage in schedule:
        if step < stage.until_step:
            return stage.block_length
    return default


def effective_block_length(block_length: int, seq_len: int) -> int:
    """0 (whole row) or anything >= the row length means one block spanning the row."""
    return seq_len if block_length == 0 or block_length >= seq_len else block_length
