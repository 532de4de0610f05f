"""Attention masks as small pure functions (bool, True = may attend).

Positions are split into blocks of `block_length` counted from position 0 of each sequence.
"""

from __future__ import annotations

import torch


def block_ids(positions: torch.Tensor, block_length: int) -> torch.Tensor:
    """Block index of each absolute position."""
    if block_length <= 0:
        raise ValueError(f"block_length must be positive, got {block_length}")
    return torch.div(positions, block_length, rounding_mode="floor")


def block_causal_mask(seq_len: int, block_length: int, device=None) -> torch.Tensor:
    """Decoding mask: query i may attend key j exactly when block(j) <= block(i).

    Bidirectional inside a block, causal across blocks (the reference `generate`'s mask).
    Returns bool [1, 1, seq_len, seq_len].
    """
    blocks = block_ids(torch.arange(seq_len, device=device), block_length)
    return (blocks[None, :] <= blocks[:, None])[None, None]


def block_diffusion_mask(seq_len: int, block_length: int, doc_ids: torch.Tensor | None = None,
                         device=None, windows: torch.Tensor | None = None) -> torch.Tensor:
    """Training mask over the concatenation x_t (noisy, first L) ⊕ x_0 (clean, last L).

    LLaDA2.0 eq. 3: noisy block i attends noisy block i and clean blocks < i; clean block i attends
    clean blocks <= i; clean never attends noisy. With `doc_ids` [B, L], no query attends across a
    document boundary. `windows` [B, 2] (first, last block; first > last = none) is the view of a
    Multi-Block Editing pass: the noisy blocks of a row's window attend each other bidirectionally
    and only the clean blocks before the window, as the decoder's MBE pass sees its drafted window.
    Returns bool [B or 1, 1, 2L, 2L].
    """
    blocks = block_ids(torch.arange(seq_len, device=device), block_length)
    q_blk, k_blk = blocks[:, None], blocks[None, :]
    noisy_noisy = q_blk == k_blk
    noisy_clean = k_blk < q_blk
    clean_clean = k_blk <= q_blk
    clean_noisy = torch.zeros_like(noisy_noisy)
    mask = torch.cat([torch.cat([noisy_noisy, noisy_clean], dim=1),
                      torch.cat([clean_noisy, clean_clean], dim=1)], dim=0)[None, None]  # (1, 1, 2L, 2L)
    if doc_ids is not None:
        if doc_ids.dim() != 2 or doc_ids.shape[1] != seq_len:
            raise ValueError(f"doc_ids must have shape [batch, {seq_len}], got {tuple(doc_ids.shape)}")
        docs = torch.cat([doc_ids, doc_ids], dim=1).to(mask.device)  # (B, 2L)
        same_doc = docs[:, :, None] == docs[:, None, :]  # (B, 2L, 2L)
        mask = mask & same_doc[:, None]
    if windows is not None:
        mask = mask.expand(windows.shape[0], -1, -1, -1).clone()
        first, last = windows[:, 0, None].to(blocks.device), windows[:, 1, None].to(blocks.device)  # (B, 1)
        in_window = (blocks[None] >= first) & (blocks[None] <= last)  # (B, L)
        q = in_window[:, :, None]  # (B, L, 1): noisy queries of the window
        noisy_keys = q & in_window[:, None, :]  # the whole window, both ways
        clean_keys = q & (blocks[None, None, :] < first[:, :, None])  # clean blocks before the window
        window_rows = torch.cat([noisy_keys, clean_keys], dim=2)  # (B, L, 2L)
        if doc_ids is not None:
            window_rows = window_rows & same_doc[:, :seq_len]
        noisy_queries = mask[:, 0, :seq_len]  # (B, L, 2L), a view: written in place
        noisy_queries[:] = torch.where(q, window_rows, noisy_queries)
    return mask


def window_block_mask(q_positions: torch.Tensor, k_positions: torch.Tensor, block_length: int,
                      k_valid: torch.Tensor, bidirectional_from: torch.Tensor | None = None) -> torch.Tensor:
    """Block-causal mask between arbitrary query and key positions (used with a KV cache).

    q_positions [B, Tq], k_positions [B, Tk], k_valid [B, Tk] (False = padding / empty cache slot).
    `bidirectional_from` [B] (optional, Multi-Block Editing): keys and queries at positions >= it
    form one window in which every query sees every key. Returns bool [B, 1, Tq, Tk].
    """
    q_blk = block_ids(q_positions, block_length)[:, :, None]  # (B, Tq, 1)
    k_blk = block_ids(k_positions, block_length)[:, None, :]  # (B, 1, Tk)
    allowed = k_blk <= q_blk
    if bidirectional_from is not None:
        start = bidirectional_from[:, None, None]
        allowed = allowed | ((q_positions[:, :, None] >= start) & (k_positions[:, None, :] >= start))
    return (allowed & k_valid[:, None, :])[:, None]


def additive_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A bool mask as the additive one attention applies (0 where allowed, -inf elsewhere). Attention
    converts a bool mask so in every layer of every forward; a decoder that reuses one mask for many
    forwards converts it once."""
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill_(~allowed, float("-inf"))
