"""Levenshtein editing inside fixed-length blocks (LLaDA2.2 §3.1): DELETE and INSERT edit controls.

T2T editing only substitutes a token in place, so a draft that skips, repeats or shifts a token can
only be repaired by rewriting everything after the error. Two edit-control outputs extend the head:
DELETE at position i removes x_i and left-shifts the rest of the block; INSERT at i expands x_i into
([MASK], x_i) so that a later denoising round fills the new slot. The block is then padded with
[MASK] or truncated at the tail, so its length never changes.

This module holds what the rest of the pipeline calls:

* `edit_labels(draft, target, ...)`: the per-position operation (keep / substitute / delete /
  insert) and supervision label of one block, from the LCS of draft and target (training, and the
  edit traces of L-EBPO);
* `edit_decisions` + `apply_block_edits` (= `levenshtein_step`): the decoding rule of one step on a
  batch of blocks, and `real_token_choice`, the logits fills and substitutions choose from;
* `edit_distance` and `StructuralRecord`: what edit accounting judges a structural edit by;
* `add_edit_controls(lm)` / `check_edit_thresholds`: the two extra vocabulary rows on a model, and
  the refusal of Levenshtein thresholds on a model without them.

The edit-control ids are appended past the model's vocabulary (`vocab_size`, `vocab_size + 1`) and named
by `ModelConfig.delete_token_id` / `insert_token_id`; both None (every released checkpoint) means
Levenshtein editing is off and nothing here is reached.

One decoding step of a block with Levenshtein editing on, in this order:

1. from the step's logits, the full choice (`choose_tokens(logits)`: arg-max over the whole head)
   decides structure, and the real choice (`choose_tokens(real_token_choice(logits, ids))`) decides
   fills and substitutions, so no control id is ever written into the canvas;
2. M2T fills masks from the real choice as today; T2T substitutes only where the full arg-max is a
   real token (a position whose best action is DELETE or INSERT gets no substitution that step);
3. `levenshtein_step(block, full_tokens, full_conf, written=<positions 1-2 wrote>, protected=<prompt>)`
   returns the new block and what moved (`BlockEdit.source`, `BlockEdit.record` for trajectories).

With Levenshtein editing off the decoder takes the real choice everywhere, which is exactly the
choice of the model without the rows. Structural edits belong in steps on a block without masks
(post steps, bounded by `max_post_steps`): an insert adds a mask, and a step that inserts one while
filling one would otherwise keep a block drafting forever.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .config import ModelConfig

KEEP, SUBSTITUTE, DELETE, INSERT = "K", "S", "D", "I"


# --------------------------------------------------------------------------- labels (§3.1)
@dataclass(frozen=True)
class EditLabels:
    """One block's labels, one entry per draft position."""

    ops: tuple[str, ...]  # K | S | D | I
    labels: tuple[int, ...]  # y[sigma(i)] for K/S, the DELETE id for D, the INSERT id for I
    sigma: tuple[int | None, ...]  # target index of a K/S position, None for D/I

    @property
    def num_edits(self) -> int:
        """Positions whose label is not a plain keep of the token already there (counted by callers
        against the edit distance; a mask anchor's K fills the mask, so it counts as a keep)."""
        return sum(op != KEEP for op in self.ops)


def lcs_anchors(draft: Sequence[int], target: Sequence[int], mask_id: int) -> list[tuple[int, int]]:
    """Matched pairs (i, j) of a longest common subsequence, [MASK] in `draft` matching any token.

    Among the longest alignments the one with the most exact (non-mask) matches wins: a real token
    that matches is evidence of where the draft sits, a mask is not. Remaining ties are broken by
    backtracking from the end and taking a match first, then skipping a draft position, so of two
    equal duplicates the later one is the anchor and the earlier one is deleted.
    """
    m, n = len(draft), len(target)
    big = min(m, n) + 1  # one more match outweighs every exact-match bonus together
    score = [[0] * (n + 1) for _ in range(m + 1)]
    for i in range(1, m + 1):
        xi, row, up = draft[i - 1], score[i], score[i - 1]
        for j in range(1, n + 1):
            best = up[j] if up[j] >= row[j - 1] else row[j - 1]
            if xi == mask_id or xi == target[j - 1]:
                diag = up[j - 1] + big + (xi != mask_id)
                if diag > best:
                    best = diag
            row[j] = best
    anchors = []
    i, j = m, n
    while i and j:
        xi = draft[i - 1]
        if (xi == mask_id or xi == target[j - 1]) and score[i][j] == score[i - 1][j - 1] + big + (xi != mask_id):
            anchors.append((i - 1, j - 1))
            i, j = i - 1, j - 1
        elif score[i][j] == score[i - 1][j]:
            i -= 1
        else:
            j -= 1
    return anchors[::-1]


def _place_masks(anchors: list[tuple[int, int]], draft: Sequence[int], n: int, mask_id: int) -> list[tuple[int, int]]:
    """Mask anchors moved to their nearest feasible target index.

    Backtracking may match a mask to any target token; the index it lands on is an accident of the tie
    order. Each mask anchor instead continues the diagonal of the anchor before it (i + j_prev - i_prev:
    the slot the mask would fill if nothing was skipped since), clamped so the alignment stays strictly
    increasing and leaves room for the mask anchors after it before the next real-token anchor. On that
    diagonal the gap before a mask anchor never holds more target than draft tokens, so a mask is never
    an insertion site, and a draft with only masks as errors gets exactly its target as labels.
    """
    placed: list[tuple[int, int]] = []
    prev_i, prev_j = -1, -1
    for k, (i, j) in enumerate(anchors):
        if draft[i] == mask_id:
            run_after = 0  # mask anchors after this one before the next real-token anchor
            nxt = n
            for i2, j2 in anchors[k + 1:]:
                if draft[i2] != mask_id:
                    nxt = j2
                    break
                run_after += 1
            j = min(i + prev_j - prev_i, nxt - run_after - 1)
        placed.append((i, j))
        prev_i, prev_j = i, j
    return placed


def edit_labels(draft: Sequence[int], target: Sequence[int], *, mask_id: int, delete_id: int,
                insert_id: int) -> EditLabels:
    """Keep / substitute / delete / insert labels of one block (LLaDA2.2 eq. 2-3).

    LCS matches are anchors. An anchor keeps its token unless it is an insertion site. In the gap
    before each anchor, draft and target positions pair up from the left (substitute); surplus draft
    positions, the rightmost of the gap, are deleted; a gap with more target than draft tokens puts one
    INSERT on the anchor that follows it (one per gap per round: the rest are created in later
    rounds). Every draft position after the last anchor is deleted (the tail padding brings back the
    missing slots as masks); with no anchor every position is deleted. Masks take part like tokens
    (a surplus mask is deleted), their anchor index placed by `_place_masks`.
    """
    draft, target = [int(t) for t in draft], [int(t) for t in target]
    anchors = _place_masks(lcs_anchors(draft, target, mask_id), draft, len(target), mask_id)
    ops: list[str] = [DELETE] * len(draft)
    sigma: list[int | None] = [None] * len(draft)
    prev_i, prev_j = -1, -1
    for i, j in anchors:
        gap_x, gap_y = i - prev_i - 1, j - prev_j - 1
        for k in range(gap_x):
            if k < gap_y:
                ops[prev_i + 1 + k], sigma[prev_i + 1 + k] = SUBSTITUTE, prev_j + 1 + k
        if gap_y > gap_x:
            ops[i] = INSERT
        else:
            ops[i], sigma[i] = KEEP, j
        prev_i, prev_j = i, j
    labels = tuple(target[s] if s is not None else (delete_id if op == DELETE else insert_id)
                   for op, s in zip(ops, sigma))
    return EditLabels(ops=tuple(ops), labels=labels, sigma=tuple(sigma))


def edit_distance(draft: Sequence[int], target: Sequence[int], mask_id: int) -> int:
    """Levenshtein distance (unit insert / delete / substitute), a [MASK] in `draft` matching any token:
    how many edits a block still needs once its masks are filled right. Edit accounting judges a
    structural edit by whether it lowers this against the reference block."""
    row = list(range(len(target) + 1))
    for i, x in enumerate(draft, 1):
        diag, row[0] = row[0], i
        for j, y in enumerate(target, 1):
            cost = 0 if x == mask_id or x == y else 1
            diag, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, diag + cost)
    return row[-1]


# --------------------------------------------------------------------------- decoding rule
@dataclass(frozen=True)
class StructuralRecord:
    """What one step's structural edits did to one block: what a trajectory keeps for accounting."""

    start: int  # canvas position of the block's first slot
    before: tuple[int, ...]  # the block before them (after this step's fills and substitutions)
    deleted: tuple[int, ...]  # block offsets removed
    inserted: tuple[int, ...]  # block offsets a [MASK] was put before


@dataclass
class BlockEdit:
    """A step's structural edits on a batch of blocks [R, m]."""

    tokens: torch.Tensor  # long [R, m]: the new blocks
    deleted: torch.Tensor  # bool [R, m]: input positions removed
    inserted: torch.Tensor  # bool [R, m]: input positions a [MASK] was put before
    # long [R, m]: for every output position, the input position its token came from; -1 for a mask
    # created by an insert or by the tail padding. An output position whose source is not itself holds
    # a moved token (its cached keys/values are stale); accounting follows tokens through it.
    source: torch.Tensor

    @property
    def num_edits(self) -> torch.Tensor:
        """long [R]: structural edits per block."""
        return self.deleted.sum(-1) + self.inserted.sum(-1)

    def record(self, row: int, before: torch.Tensor, start: int) -> StructuralRecord | None:
        """Row `row`'s edits for its trajectory (`before`: the [R, m] or [m] input), None when it made none."""
        deleted = self.deleted if self.deleted.dim() == 1 else self.deleted[row]
        inserted = self.inserted if self.inserted.dim() == 1 else self.inserted[row]
        if not bool(deleted.any() or inserted.any()):
            return None
        block = before if before.dim() == 1 else before[row]
        return StructuralRecord(start, tuple(block.tolist()), tuple(deleted.nonzero().flatten().tolist()),
                                tuple(inserted.nonzero().flatten().tolist()))


def edit_decisions(block: torch.Tensor, tokens: torch.Tensor, confidences: torch.Tensor, *, mask_id: int,
                   delete_id: int, insert_id: int, delete_threshold: float, insert_threshold: float,
                   protected: torch.Tensor | None = None, written: torch.Tensor | None = None,
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """(delete, insert) bool [..., m]: where this step's arg-max is an edit control above its threshold.

    Prompt positions (`protected`) are never edited. A mask is never deleted nor an insertion site: a
    mask slot is resolved by filling it (with the best real token, see `real_token_choice`), and a
    surplus filled token is deleted in a later round; deleting masks instead lets a block whose
    trailing masks all predict DELETE shift forever without committing a token. Positions this step
    already filled or substituted (`written`) take no structural edit: each position gets one decision
    per step, and the arg-max a fill or substitution used is a real token there anyway. Thresholds are
    strict (>), as the decoder's tau_mask and tau_edit are.
    """
    editable = block != mask_id
    if protected is not None:
        editable = editable & ~protected
    if written is not None:
        editable = editable & ~written
    delete = editable & (tokens == delete_id) & (confidences > delete_threshold)
    insert = editable & (tokens == insert_id) & (confidences > insert_threshold)
    return delete, insert


def apply_block_edits(block: torch.Tensor, delete: torch.Tensor, insert: torch.Tensor, *, mask_id: int) -> BlockEdit:
    """Apply deletions and insertions to blocks [R, m] (or [m]) and restore length m.

    Each input position i lands at i - (deletions before i) + (insertions at or before i); an insert
    puts a [MASK] just before its token; what runs past m is cut, what is left short is padded with
    [MASK]. `edit_decisions` never marks a position for both (one arg-max per position); given both,
    the deletion wins.
    """
    delete, insert = delete.bool(), insert.bool()
    squeeze = block.dim() == 1
    if squeeze:
        block, delete, insert = block[None], delete[None], insert[None]
    rows, m = block.shape
    insert = insert & ~delete
    keep = ~delete
    # output index of each kept input token
    dest = torch.arange(m, device=block.device) - (delete.long().cumsum(-1) - delete.long()) + insert.long().cumsum(-1)
    kept = keep & (dest < m)
    out = torch.full_like(block, mask_id)
    source = torch.full_like(block, -1)
    row_ids = torch.arange(rows, device=block.device)[:, None].expand(rows, m)
    src = torch.arange(m, device=block.device).expand(rows, m)
    out[row_ids[kept], dest[kept]] = block[kept]
    source[row_ids[kept], dest[kept]] = src[kept]
    result = BlockEdit(tokens=out, deleted=delete, inserted=insert, source=source)
    if squeeze:
        result = BlockEdit(*(t[0] for t in (result.tokens, result.deleted, result.inserted, result.source)))
    return result


def levenshtein_step(block: torch.Tensor, tokens: torch.Tensor, confidences: torch.Tensor, *, mask_id: int,
                     delete_id: int, insert_id: int, delete_threshold: float, insert_threshold: float,
                     protected: torch.Tensor | None = None, written: torch.Tensor | None = None) -> BlockEdit:
    """One decoding step's structural edits on blocks [R, m] (or [m]).

    `block`: the blocks after this step's M2T fills and T2T substitutions; `written`: the positions
    those wrote; `tokens`/`confidences`: this step's choice over the whole head, edit controls included
    (not the `real_token_choice` one). See `edit_decisions` and `apply_block_edits`.
    """
    delete, insert = edit_decisions(block, tokens, confidences, mask_id=mask_id, delete_id=delete_id,
                                    insert_id=insert_id, delete_threshold=delete_threshold,
                                    insert_threshold=insert_threshold, protected=protected, written=written)
    return apply_block_edits(block, delete, insert, mask_id=mask_id)


def real_token_choice(logits: torch.Tensor, control_ids: Sequence[int]) -> torch.Tensor:
    """`logits` with the edit-control ids at -inf: what fills and substitutions choose from.

    A mask whose arg-max is DELETE or INSERT must still be filled with a real token, and a substitution
    must never write a control id into the canvas. The decoder runs its token choice on these logits
    for M2T/T2T and on the full logits for `edit_decisions`.
    """
    logits = logits.clone()
    logits[..., list(control_ids)] = float("-inf")
    return logits


# --------------------------------------------------------------------------- vocabulary and model
def add_edit_controls(lm: nn.Module) -> tuple[int, int]:
    """Append the DELETE and INSERT rows to `lm` (embedding and head) in place; return their ids.

    The ids are the two past the current vocabulary, so every existing id, row and logit is unchanged.
    The embedding rows start at the mask token's embedding (a control id is never an input, so that is
    only a sane default) and the head rows at zero (with tied embeddings they are the same rows). Either
    start gives the controls a finite logit that would take softmax mass from real tokens, so until
    Levenshtein editing is switched on the decoder leaves those two logits out of its token choice
    (`real_token_choice`), and every confidence is exactly what the model without the rows computes.
    Idempotent: a model that has the rows keeps them.
    """
    cfg: ModelConfig = lm.config
    if cfg.delete_token_id is not None and cfg.insert_token_id is not None:
        return cfg.delete_token_id, cfg.insert_token_id
    old = cfg.vocab_size
    emb = lm.model.word_embeddings
    head = lm.lm_head
    with torch.no_grad():
        fill = emb.weight[cfg.mask_token_id] if cfg.mask_token_id is not None else emb.weight.mean(0)
        new_emb = nn.Embedding(old + 2, emb.embedding_dim, device=emb.weight.device, dtype=emb.weight.dtype)
        new_emb.weight[:old] = emb.weight
        new_emb.weight[old:] = fill
        lm.model.word_embeddings = new_emb
        if cfg.tie_word_embeddings:
            lm.lm_head.weight = new_emb.weight
        else:
            new_head = nn.Linear(head.in_features, old + 2, bias=False, device=head.weight.device, dtype=head.weight.dtype)
            new_head.weight[:old] = head.weight
            new_head.weight[old:] = 0.0
            lm.lm_head = new_head
    cfg.vocab_size = old + 2
    cfg.delete_token_id, cfg.insert_token_id = old, old + 1
    cfg.validate()
    return old, old + 1


def check_edit_thresholds(config: ModelConfig | None, delete_threshold: float | None,
                          insert_threshold: float | None) -> None:
    """Refuse Levenshtein thresholds on a model without the edit-control rows, in one line.

    None = that edit is off. A threshold is a probability bound like tau_edit: >= 0, above 1 = never.
    `config=None` checks the values alone (a decode config is checked before it meets a model).
    """
    for name, value in (("delete_threshold", delete_threshold), ("insert_threshold", insert_threshold)):
        if value is None:
            continue
        if not isinstance(value, (int, float)) or value < 0:
            raise ValueError(f"DecodeConfig.{name} must be >= 0 or None (off), got {value!r}")
        if config is not None and (config.delete_token_id is None or config.insert_token_id is None):
            raise ValueError(
                f"DecodeConfig.{name}={value} needs a model with DELETE/INSERT rows, but its config has "
                "delete_token_id/insert_token_id unset (add them with model.levenshtein.add_edit_controls and train)")


__all__ = ["KEEP", "SUBSTITUTE", "DELETE", "INSERT", "EditLabels", "BlockEdit", "StructuralRecord", "lcs_anchors",
           "edit_labels", "edit_distance", "edit_decisions", "apply_block_edits", "levenshtein_step", "real_token_choice",
           "add_edit_controls", "check_edit_thresholds"]
