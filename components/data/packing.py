"""Turning token ids into training rows: CPT packing with document ids, SFT rows with loss masks.

Conventions shared with training:
- `doc_ids` numbers the document segments of a row 0, 1, 2, ...; padding is -1. The training mask
  only lets a query attend keys with the same doc id, so packed documents never see each other.
- `loss_mask` is False on padding (and, for SFT, on everything but assistant replies).
- `prompt_mask` (SFT) is True where tokens are never noised: prompt / non-assistant turns and padding.
- Every row length is a multiple of `block_length`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

PAD_DOC = -1


@dataclass
class PackedCPT:
    input_ids: torch.Tensor  # (N, L) int32
    doc_ids: torch.Tensor  # (N, L) int32, -1 on padding
    loss_mask: torch.Tensor  # (N, L) bool

    def __len__(self) -> int:
        return self.input_ids.shape[0]


def pack_cpt(
    documents: list[list[int]],
    seq_len: int,
    *,
    eos_id: int,
    pad_id: int,
    block_length: int,
    align_documents: bool = False,
) -> PackedCPT:
    """Concatenate `doc + [eos]` for every document into rows of `seq_len` tokens.

    A document that does not fit continues in the next row as a new segment (a new doc id there).
    With `align_documents`, each document starts at a block boundary (the gap is padding), so its
    blocks line up with its own first token exactly as in decoding. The last row is padded.
    """
    if seq_len % block_length:
        raise ValueError(f"seq_len ({seq_len}) must be a multiple of block_length ({block_length})")
    rows_ids: list[list[int]] = []
    rows_doc: list[list[int]] = []
    ids: list[int] = []
    docs: list[int] = []
    seg = 0

    def flush() -> None:
        nonlocal ids, docs, seg
        gap = seq_len - len(ids)
        rows_ids.append(ids + [pad_id] * gap)
        rows_doc.append(docs + [PAD_DOC] * gap)
        ids, docs, seg = [], [], 0

    for doc in documents:
        if not doc:
            continue
        tokens = list(doc) + [eos_id]
        if align_documents and len(ids) % block_length:
            gap = block_length - len(ids) % block_length
            ids.extend([pad_id] * gap)
            docs.extend([PAD_DOC] * gap)
            if len(ids) == seq_len:
                flush()
        start = 0
        while start < len(tokens):
            take = min(len(tokens) - start, seq_len - len(ids))
            ids.extend(tokens[start : start + take])
            docs.extend([seg] * take)
            seg += 1
            start += take
            if len(ids) == seq_len:
                flush()
    if ids:
        flush()
    if not rows_ids:
        raise ValueError("no tokens to pack: every document is empty")
    input_ids = torch.tensor(rows_ids, dtype=torch.int32)  # (N, L)
    doc_ids = torch.tensor(rows_doc, dtype=torch.int32)  # (N, L)
    return PackedCPT(input_ids, doc_ids, doc_ids != PAD_DOC)


@dataclass
class SFTRows:
    """Variable-length rows stored flat: row i is `[offsets[i], offsets[i+1])`."""

    input_ids: torch.Tensor  # (T,) int32
    prompt_mask: torch.Tensor  # (T,) bool
    loss_mask: torch.Tensor  # (T,) bool
    doc_ids: torch.Tensor  # (T,) int32: 0 on the conversation (and its EOS fill), -1 on pad fill
    offsets: torch.Tensor  # (N + 1,) int64
    stats: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return self.offsets.numel() - 1


class SequenceTooLongError(ValueError):
    """A conversation is longer than the model's limit and the policy is 'error'."""


def format_sft(
    conversations: list[tuple[list[int], list[bool]]],
    *,
    max_seq_len: int,
    block_length: int,
    eos_id: int,
    pad_id: int,
    fill: str = "eos",
    too_long: str = "error",
    where: str = "sft",
) -> SFTRows:
    """Rows from `(ids, is_reply)` pairs: loss on replies only, length padded to a block multiple.

    The gap after a conversation that ends with a reply is filled with EOS inside the loss when
    `fill == "eos"` (the model learns to end its answer and to fill the rest of the block with EOS,
    which is what the decoder expects); otherwise, and after truncated or non-reply endings, with
    pad outside the loss.
    """
    flat_ids: list[int] = []
    flat_prompt: list[bool] = []
    flat_loss: list[bool] = []
    flat_doc: list[int] = []
    offsets = [0]
    truncated = dropped = 0
    for i, (ids, is_reply) in enumerate(conversations):
        if len(ids) != len(is_reply):
            raise ValueError(f"{where}: conversation {i}: ids and reply flags differ in length")
        was_truncated = False
        if len(ids) > max_seq_len:
            if too_long == "error":
                raise SequenceTooLongError(
                    f"{where}: conversation {i} has {len(ids)} tokens, more than max_seq_len={max_seq_len} "
                    "(raise data.max_seq_len within the model's max_position_embeddings, or set "
                    "data.sft.too_long to 'truncate' or 'drop')"
                )
            if too_long == "drop":
                dropped += 1
                continue
            ids, is_reply = ids[:max_seq_len], is_reply[:max_seq_len]
            was_truncated = True
        if not any(is_reply):
            dropped += 1  # nothing to learn from (e.g. truncation removed the whole reply)
            continue
        truncated += was_truncated
        n = len(ids)
        gap = -n % block_length
        eos_fill = fill == "eos" and is_reply[-1] and not was_truncated
        flat_ids.extend(ids)
        flat_prompt.extend(not r for r in is_reply)
        flat_loss.extend(bool(r) for r in is_reply)
        flat_ids.extend([eos_id if eos_fill else pad_id] * gap)
        flat_prompt.extend([not eos_fill] * gap)
        flat_loss.extend([eos_fill] * gap)
        flat_doc.extend([0] * n + [0 if eos_fill else PAD_DOC] * gap)
        offsets.append(len(flat_ids))
    if len(offsets) == 1:
        raise ValueError(f"{where}: no conversation left to train on ({dropped} dropped: too long or no reply)")
    return SFTRows(
        input_ids=torch.tensor(flat_ids, dtype=torch.int32),
        prompt_mask=torch.tensor(flat_prompt, dtype=torch.bool),
        loss_mask=torch.tensor(flat_loss, dtype=torch.bool),
        doc_ids=torch.tensor(flat_doc, dtype=torch.int32),
        offsets=torch.tensor(offsets, dtype=torch.int64),
        stats={"conversations": len(offsets) - 1, "truncated": truncated, "dropped": dropped},
    )
