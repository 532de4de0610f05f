"""Corruption of clean training rows into the noisy half x_t of the block-diffusion input.

Three kinds of noise, one result type (`Corruption`), all driven by an explicit `torch.Generator`
so a training step's noise is a pure function of (seed, step, rank) and resumes exactly:

* M2T (drafting): a noise level t per sequence (or per block) drawn uniformly in the band
  [t_min, t_max] (LLaDA2.0's "mask ratio bandwidth"); each noisable token is masked with
  probability t. The model learns to fill masks.
* T2T (editing): among the noisable tokens left visible, each is replaced with probability r by a
  random token. The model learns to spot and repair wrong tokens. Random tokens come either from
  the whole vocabulary (minus special ids) or from the tokens of the batch ("batch": a digit is
  replaced by another digit, a plausible mistake rather than an obvious outlier), or from the
  row's own reply ("row": a token the answer already holds, placed twice -- the duplicate that
  parallel drafting of a permutation or a set makes, which a token foreign to the row never shows
  the editor). A share of the
  replacements can instead be a position-shift error: the clean token of an adjacent position
  that differs ("3 3 4" drafted for "3 3 3"), the off-by-one run boundary a sequence model's
  drafts get wrong and random substitutions almost never produce.
* Levenshtein (structural): in a share of the blocks, the draft skips a token (a deletion, the
  block's tail refilled with a token of the row), repeats one (a duplication, the tail cut) or
  shifts a run by one (a deletion and a duplication at two places). Substitution noise cannot show
  these errors: every token after one of them is off by a position. The labels become the LCS
  labels of `model.levenshtein.edit_labels` (keep / substitute / DELETE / INSERT), so the model
  learns the edits that repair them inside the fixed-length block.
* MTF (Multi-Turn Forward): the model's own draft is the corruption. Given the logits of a first
  turn, part of its masks are filled with the model's predictions (its real mistakes included):
  the most confident ones, as threshold decoding does, or a random subset. The filled tokens that
  are wrong become T2T targets of the second turn; the masks left become its M2T targets.

Multi-Block Editing rows (`mbe_windows`): an editing-stream row can be read as the decoder's MBE pass
reads a drafted window of blocks (bidirectionally, `model.masks.block_diffusion_mask(windows=...)`),
so the edits of that pass are trained, not extrapolated from the block-causal view.

Complementary masking (LLaDA2.0 §5.1) duplicates every row with the complementary M2T mask, so
every noisable token is masked in exactly one copy.

Noisable positions are `loss_mask & ~prompt_mask`: prompt tokens and padding are never noised and
never targets.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from model.levenshtein import edit_labels
from model.masks import block_ids


@dataclass
class Corruption:
    """A noisy row and which positions each loss stream reads. All tensors [B, L]."""

    xt: torch.Tensor  # long: the noisy tokens fed to the model
    x0: torch.Tensor  # long: the clean tokens (targets)
    noisable: torch.Tensor  # bool: positions that may be noised (response / document tokens)
    m2t: torch.Tensor  # bool: masked positions (M2T targets)
    t2t: torch.Tensor  # bool: visible but wrong positions (T2T targets)
    t: torch.Tensor  # float: the M2T noise level at each position (for 1/t weighting)
    # long [B, 2] or None: per row, the first and last block read in the Multi-Block Editing view
    # (first > last: the row is read as usual); see `mbe_windows`.
    windows: torch.Tensor | None = None
    # long [B, L] or None: the supervision label where it is not x0 (Levenshtein blocks, see
    # `levenshtein_corrupt`); None = x0 everywhere
    labels: torch.Tensor | None = None
    levenshtein: torch.Tensor | None = None  # bool [B, L] or None: positions of Levenshtein blocks

    @property
    def keep(self) -> torch.Tensor:
        """Noisable positions shown with their label's token (optional 'keep' loss)."""
        return self.noisable & ~self.m2t & ~self.t2t

    @property
    def targets(self) -> torch.Tensor:
        """long [B, L]: what every loss stream predicts (x0, or the Levenshtein labels)."""
        return self.x0 if self.labels is None else self.labels


def noisable_positions(loss_mask: torch.Tensor, prompt_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Positions that may be noised: in the loss and not in the prompt ([B, L] bool)."""
    noisable = loss_mask.bool()
    if prompt_mask is not None:
        noisable = noisable & ~prompt_mask.bool()
    return noisable


def sample_noise_levels(shape_bl: tuple[int, int], t_min: float, t_max: float, per: str, block_length: int,
                        generator: torch.Generator, device=None) -> torch.Tensor:
    """t per position [B, L]: one draw in [t_min, t_max] per sequence, or per block of each sequence."""
    bsz, seq_len = shape_bl
    if per == "sequence":
        t = torch.rand(bsz, 1, generator=generator, device=device)  # (B, 1)
        t = t.expand(bsz, seq_len)
    elif per == "block":
        blocks = block_ids(torch.arange(seq_len, device=device), block_length)  # (L,)
        n_blocks = int(blocks[-1]) + 1
        t = torch.rand(bsz, n_blocks, generator=generator, device=device)[:, blocks]  # (B, L)
    else:
        raise ValueError(f"noise_per must be 'sequence' or 'block', got {per!r}")
    return t_min + (t_max - t_min) * t


def m2t_corrupt(x0: torch.Tensor, noisable: torch.Tensor, *, mask_id: int, t_min: float, t_max: float,
                generator: torch.Generator, noise_per: str = "sequence", block_length: int = 1) -> Corruption:
    """Mask each noisable token with probability t (t drawn in the band per sequence or block)."""
    t = sample_noise_levels(tuple(x0.shape), t_min, t_max, noise_per, block_length, generator, x0.device)
    m2t = noisable & (torch.rand(x0.shape, generator=generator, device=x0.device) < t)  # (B, L)
    xt = torch.where(m2t, torch.full_like(x0, mask_id), x0)
    return Corruption(xt=xt, x0=x0, noisable=noisable, m2t=m2t, t2t=torch.zeros_like(m2t), t=t)


def complementary(c: Corruption, mask_id: int) -> Corruption:
    """Each row followed (in a second half of the batch) by its complement: masked <-> visible.

    The complement's noise level is 1 - t, so 1/t weighting stays the inverse of its mask rate.
    T2T noise is not duplicated: apply `t2t_corrupt` after this.
    """
    m2t_c = c.noisable & ~c.m2t
    xt_c = torch.where(m2t_c, torch.full_like(c.x0, mask_id), c.x0)
    cat = lambda a, b: torch.cat([a, b], dim=0)  # noqa: E731 - local shorthand
    return Corruption(xt=cat(c.xt, xt_c), x0=cat(c.x0, c.x0), noisable=cat(c.noisable, c.noisable),
                      m2t=cat(c.m2t, m2t_c), t2t=cat(c.t2t, torch.zeros_like(m2t_c)),
                      t=cat(c.t, (1.0 - c.t).clamp_min(1e-3)))


def unmask_rows(c: Corruption, rows: torch.Tensor) -> Corruption:
    """Rows (bool [B, 1]) shown clean, without masks: the editing stream's input before T2T noise."""
    m2t = c.m2t & ~rows
    return replace(c, xt=torch.where(rows, c.x0, c.xt), m2t=m2t)


def mbe_windows(noisable: torch.Tensor, rows: torch.Tensor, block_length: int, window: int,
                generator: torch.Generator) -> torch.Tensor:
    """Per row [B, 2]: a Multi-Block Editing window (first, last block) for the rows in `rows` ([B, 1]).

    The last block is drawn uniformly among the blocks holding noisable tokens; the window reaches
    `window` blocks back but not before the first such block, as the decoder's MBE pass never
    reaches into the prompt's blocks. Rows outside `rows` (or with nothing noisable) get (1, 0).
    """
    bsz, seq_len = noisable.shape
    blocks = block_ids(torch.arange(seq_len, device=noisable.device), block_length).expand(bsz, seq_len)
    big = torch.full_like(blocks, seq_len)
    first_block = torch.where(noisable, blocks, big).amin(1)  # (B,)
    last_block = torch.where(noisable, blocks, -1).amax(1)  # (B,)
    span = (last_block - first_block + 1).clamp_min(1)
    u = torch.rand(bsz, generator=generator, device=noisable.device)
    end = first_block + (u * span).long().clamp_max(span - 1)  # (B,)
    start = torch.maximum(end - window, first_block)
    on = rows[:, 0] & noisable.any(1)
    none = torch.tensor([1, 0], device=noisable.device).expand(bsz, 2)
    return torch.where(on[:, None], torch.stack([start, end], dim=1), none)


def random_tokens(x0: torch.Tensor, pool: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A random token from `pool` (1-D) at every position, re-drawn (twice) where it equals x0."""
    out = pool[torch.randint(len(pool), x0.shape, generator=generator, device=x0.device)]
    for _ in range(2):
        same = out == x0
        redraw = pool[torch.randint(len(pool), x0.shape, generator=generator, device=x0.device)]
        out = torch.where(same, redraw, out)
    return out


def row_tokens(x0: torch.Tensor, noisable: torch.Tensor, exclude_ids: set[int], generator: torch.Generator) -> torch.Tensor:
    """At every position, the clean token of a random noisable non-special position of the same row
    (not the EOS that fills the reply's last block), re-drawn (twice) where it equals x0; a row with
    no such position keeps x0 (no corruption there)."""
    eligible = noisable
    if exclude_ids:
        eligible = eligible & ~torch.isin(x0, torch.tensor(sorted(exclude_ids), device=x0.device))
    # the row's eligible positions first, in order: entry k of that list is order[:, k]
    order = torch.argsort((~eligible).to(torch.int8), dim=1, stable=True)  # (B, L)
    count = eligible.sum(1, keepdim=True).clamp_min(1)  # (B, 1)

    def draw() -> torch.Tensor:
        k = (torch.rand(x0.shape, generator=generator, device=x0.device) * count).long().clamp_max(count - 1)
        return x0.gather(1, order.gather(1, k))

    out = draw()
    for _ in range(2):
        out = torch.where(out == x0, draw(), out)
    return torch.where(eligible.any(1, keepdim=True), out, x0)


def token_pool(x0: torch.Tensor, noisable: torch.Tensor, source: str, vocab_size: int,
               exclude_ids: set[int]) -> torch.Tensor:
    """Where T2T's random tokens come from: the vocabulary minus special ids, or the batch's tokens."""
    if source == "uniform":
        keep = torch.ones(vocab_size, dtype=torch.bool, device=x0.device)
        keep[[i for i in exclude_ids if 0 <= i < vocab_size]] = False
        return keep.nonzero().flatten()
    if source == "batch":
        pool = x0[noisable]
        if exclude_ids:
            pool = pool[~torch.isin(pool, torch.tensor(sorted(exclude_ids), device=x0.device))]
        if pool.numel() == 0:  # nothing in the batch to draw from: fall back to the vocabulary
            return token_pool(x0, noisable, "uniform", vocab_size, exclude_ids)
        return pool
    raise ValueError(f"token_pool source must be 'uniform' or 'batch', got {source!r}")


def neighbour_tokens(x0: torch.Tensor, noisable: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The clean token of an adjacent noisable position that differs from x0, and where one exists.

    Left or right is drawn per position; where that side is the same token (inside a run) or not
    noisable, the other side is used. Returns (tokens [B, L], valid [B, L] bool).
    """
    pad = torch.full_like(x0[:, :1], -1)
    left = torch.cat([pad, x0[:, :-1]], dim=1)  # (B, L): the token at i - 1
    right = torch.cat([x0[:, 1:], pad], dim=1)  # (B, L): the token at i + 1
    no = torch.zeros_like(noisable[:, :1])
    left_ok = torch.cat([no, noisable[:, :-1]], dim=1) & (left != x0)
    right_ok = torch.cat([noisable[:, 1:], no], dim=1) & (right != x0)
    prefer_left = torch.rand(x0.shape, generator=generator, device=x0.device) < 0.5
    use_left = left_ok & (prefer_left | ~right_ok)
    return torch.where(use_left, left, right), left_ok | right_ok


def t2t_corrupt(c: Corruption, *, rate_min: float, rate_max: float, source: str, vocab_size: int,
                exclude_ids: set[int], generator: torch.Generator, shift_prob: float = 0.0) -> Corruption:
    """Replace each visible noisable token with probability r (r drawn per sequence in the band).

    With probability `shift_prob` a replaced token becomes an adjacent different token (a
    position-shift error) where the position has one; otherwise a random token from `source`.
    """
    if rate_max <= 0.0:
        return c
    bsz = c.x0.shape[0]
    rate = rate_min + (rate_max - rate_min) * torch.rand(bsz, 1, generator=generator, device=c.x0.device)
    visible = c.noisable & ~c.m2t
    hit = visible & (torch.rand(c.x0.shape, generator=generator, device=c.x0.device) < rate)  # (B, L)
    if source == "row":
        noise = row_tokens(c.x0, c.noisable, exclude_ids, generator)
    else:
        noise = random_tokens(c.x0, token_pool(c.x0, c.noisable, source, vocab_size, exclude_ids), generator)
    if shift_prob > 0.0:
        shifted, has_neighbour = neighbour_tokens(c.x0, c.noisable, generator)
        use_shift = has_neighbour & (torch.rand(c.x0.shape, generator=generator, device=c.x0.device) < shift_prob)
        noise = torch.where(use_shift, shifted, noise)
    hit = hit & (noise != c.x0)  # a draw equal to the clean token is no corruption
    return replace(c, xt=torch.where(hit, noise, c.xt), t2t=c.t2t | hit)


def mtf_corrupt(c: Corruption, logits: torch.Tensor, *, mask_id: int, fill_min: float, fill_max: float,
                select: str, generator: torch.Generator, temperature: float = 0.0) -> tuple[Corruption, torch.Tensor]:
    """The second turn of Multi-Turn Forward: the model's own draft as the corruption.

    `logits` [B, L, V] are the model's output on `c.xt` (detached by the caller). Per row, a
    fraction f ~ U[fill_min, fill_max] of the masked positions is filled with the model's prediction
    (arg-max, or a sample at `temperature`): the most confident ones (`select="confidence"`, what
    threshold decoding commits) or a random subset (`select="random"`). T2T's random tokens of the
    first turn are reverted to clean, so every wrong visible token of the new state is the model's
    own mistake. Returns the new corruption and the draft tokens [B, L] (valid where filled).
    """
    if select not in ("confidence", "random"):
        raise ValueError(f"mtf select must be 'confidence' or 'random', got {select!r}")
    probs = torch.softmax(logits.float(), dim=-1)  # (B, L, V)
    if temperature > 0.0:
        flat = torch.softmax(logits.float().flatten(0, 1) / temperature, dim=-1)
        draft = torch.multinomial(flat, 1, generator=generator).view(c.x0.shape)  # (B, L)
    else:
        draft = probs.argmax(-1)  # (B, L)
    conf = probs.gather(-1, draft[..., None])[..., 0]  # (B, L)
    if select == "random":
        conf = torch.rand(c.x0.shape, generator=generator, device=c.x0.device)
    bsz = c.x0.shape[0]
    frac = fill_min + (fill_max - fill_min) * torch.rand(bsz, generator=generator, device=c.x0.device)  # (B,)
    n_masked = c.m2t.sum(1)  # (B,)
    n_fill = torch.floor(frac * n_masked + 0.5).long()  # (B,)
    # Rank masked positions by confidence within each row; fill the first n_fill of them.
    score = torch.where(c.m2t, conf, torch.full_like(conf, -1.0))
    order = score.argsort(dim=1, descending=True)  # (B, L)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand_as(order))
    filled = c.m2t & (rank < n_fill[:, None])  # (B, L)
    wrong = filled & (draft != c.x0)
    m2t = c.m2t & ~filled
    xt = torch.where(m2t, torch.full_like(c.x0, mask_id), c.x0)
    xt = torch.where(filled, draft, xt)
    return (Corruption(xt=xt, x0=c.x0, noisable=c.noisable, m2t=m2t, t2t=wrong, t=c.t, windows=c.windows),
            torch.where(filled, draft, -1))


def structural_noise(draft: list[int], filler: int, ops: int, generator: torch.Generator) -> list[int]:
    """`draft` after `ops` deletions, duplications or run shifts (drawn uniformly), length kept.

    A deletion refills the tail with `filler`; a duplication repeats a token in place and cuts the
    tail; a shift deletes one token and repeats another, which moves the run between them by one
    towards the deletion. Needs len(draft) >= 2.
    """
    m = len(draft)

    def pos(limit: int = m) -> int:
        return int(torch.randint(limit, (1,), generator=generator))

    def delete(x: list[int], i: int) -> list[int]:
        return x[:i] + x[i + 1:] + [filler]

    def duplicate(x: list[int], i: int) -> list[int]:
        return (x[:i + 1] + x[i:])[:m]

    def shift(x: list[int], i: int, j: int) -> list[int]:
        """x[i] removed and x[j] repeated: the run between them moves by one towards i."""
        if i < j:
            return x[:i] + x[i + 1:j + 1] + [x[j]] + x[j + 1:]
        return x[:j + 1] + [x[j]] + x[j + 1:i] + x[i + 1:]

    out = list(draft)
    for _ in range(ops):
        kind = int(torch.randint(3, (1,), generator=generator))
        if kind == 0:
            out = delete(out, pos())
        elif kind == 1:
            out = duplicate(out, pos(m - 1))  # the last token repeated would be cut again
        else:
            i = pos()
            j = (i + 1 + pos(m - 1)) % m  # another position
            out = shift(out, i, j)
    return out


def levenshtein_corrupt(c: Corruption, *, prob: float, max_ops: int, block_length: int, mask_id: int,
                        delete_id: int, insert_id: int, exclude_ids: set[int], generator: torch.Generator) -> Corruption:
    """Structural errors in each block with probability `prob`, and the LCS labels of those blocks.

    A block's draft is its noisable positions in order, as the earlier noise left them (masks and
    T2T replacements move with the tokens, as they do in a decoded block); 1..max_ops deletions,
    duplications or shifts are applied to it (`structural_noise`; a deletion's filler is a token of
    the row's own reply, as `row_tokens` draws). The block's labels are then
    `edit_labels(draft, clean)`: its masks are M2T targets, its other positions T2T targets where the
    label differs from the token shown and keep targets where it is the same. Blocks with fewer than
    two noisable positions are left alone (nothing can shift). Rows and the other blocks are unchanged.
    """
    if prob <= 0.0:
        return c
    bsz, seq_len = c.x0.shape
    block_length = min(block_length, seq_len) if block_length > 0 else seq_len
    n_blocks = -(-seq_len // block_length)
    picked = torch.rand(bsz, n_blocks, generator=generator, device=c.x0.device) < prob  # (B, n_blocks)
    fillers = row_tokens(c.x0, c.noisable, exclude_ids, generator)  # (B, L)
    xt, labels = c.xt.clone(), c.x0.clone()
    region = torch.zeros_like(c.noisable)
    for r, b in picked.nonzero().tolist():
        span = slice(b * block_length, min((b + 1) * block_length, seq_len))
        idx = c.noisable[r, span].nonzero().flatten() + span.start
        if len(idx) < 2:
            continue
        ops = 1 + int(torch.randint(max_ops, (1,), generator=generator))
        draft = structural_noise(c.xt[r, idx].tolist(), int(fillers[r, idx[-1]]), ops, generator)
        out = edit_labels(draft, c.x0[r, idx].tolist(), mask_id=mask_id, delete_id=delete_id, insert_id=insert_id)
        xt[r, idx] = torch.tensor(draft, device=xt.device)
        labels[r, idx] = torch.tensor(out.labels, device=xt.device)
        region[r, idx] = True
    if not region.any():
        return c
    is_mask = xt == mask_id
    m2t = torch.where(region, is_mask, c.m2t)
    t2t = torch.where(region, ~is_mask & (labels != xt), c.t2t)
    return replace(c, xt=xt, m2t=m2t, t2t=t2t, labels=labels, levenshtein=region)
