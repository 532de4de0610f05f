"""Torch datasets and collate functions over prepared rows (dicts of tensors, see packing.py)."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from components.data.packing import PAD_DOC, PackedCPT, SFTRows


class CPTDataset(Dataset):
    """Fixed-length packed rows: `input_ids`, `doc_ids`, `loss_mask`, each [L]."""

    def __init__(self, packed: PackedCPT) -> None:
        self.packed = packed

    def __len__(self) -> int:
        return len(self.packed)

    @property
    def seq_len(self) -> int:
        return self.packed.input_ids.shape[1]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {
            "input_ids": self.packed.input_ids[i].long(),  # (L,)
            "doc_ids": self.packed.doc_ids[i].long(),  # (L,)
            "loss_mask": self.packed.loss_mask[i].clone(),  # (L,)
        }


def cpt_collate(batch: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack equal-length CPT rows into [B, L] tensors."""
    return {k: torch.stack([b[k] for b in batch]) for k in batch[0]}


class SFTDataset(Dataset):
    """One conversation per row: `input_ids`, `prompt_mask`, `loss_mask`, `doc_ids`, each [n_i]
    with n_i a multiple of the block length."""

    def __init__(self, rows: SFTRows) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def lengths(self) -> list[int]:
        return (self.rows.offsets[1:] - self.rows.offsets[:-1]).tolist()

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} rows")
        i = i % len(self)
        a, b = int(self.rows.offsets[i]), int(self.rows.offsets[i + 1])
        return {
            "input_ids": self.rows.input_ids[a:b].long(),  # (n,)
            "prompt_mask": self.rows.prompt_mask[a:b].clone(),  # (n,)
            "loss_mask": self.rows.loss_mask[a:b].clone(),  # (n,)
            "doc_ids": self.rows.doc_ids[a:b].long(),  # (n,)
        }


class SFTCollator:
    """Pad a batch of SFT rows to a common length (the longest, rounded up to `block_length`, or
    the fixed `pad_to`). Padding: pad id, prompt_mask True (never noised), loss_mask False, doc -1.
    A class rather than a closure so DataLoader workers can pickle it."""

    def __init__(self, pad_id: int, block_length: int, pad_to: int | None = None) -> None:
        if pad_to is not None and pad_to % block_length:
            raise ValueError(f"pad_to ({pad_to}) must be a multiple of block_length ({block_length})")
        self.pad_id = pad_id
        self.block_length = block_length
        self.pad_to = pad_to

    def __call__(self, batch: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        longest = max(b["input_ids"].numel() for b in batch)
        length = self.pad_to if self.pad_to is not None else -(-longest // self.block_length) * self.block_length
        if longest > length:
            raise ValueError(f"a row has {longest} tokens, more than pad_to={length}")
        fills = {"input_ids": self.pad_id, "prompt_mask": True, "loss_mask": False, "doc_ids": PAD_DOC}
        out = {}
        for key, value in fills.items():
            first = batch[0][key]
            t = torch.full((len(batch), length), value, dtype=first.dtype)  # (B, L)
            for j, b in enumerate(batch):
                t[j, : b[key].numel()] = b[key]
            out[key] = t
        return out
