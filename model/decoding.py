"""Draft-and-edit decoding: Mask-to-Token drafting plus Token-to-Token editing, block by block.

The semantics are those of the authors' reference `generate` (see shared/golden/README.md): with the
same weights and settings this decoder returns token-identical sequences and spends the same number
of forwards, while adding what the reference lacks — a KV cache for finished blocks, batches of
prompts of different lengths each at its own pace, sampling, Multi-Block Editing and an optional
speculative overlap of each block's verification forward with the next block's first draft step.

One decoding step of a row (prompt) in block b:
  * the row's forward input is its canvas from the first uncached position up to the end of block b
    (with the cache off: from position 0, exactly the reference's window);
  * M2T: masks whose confidence exceeds `threshold` are filled; if fewer than `num_to_transfer`
    qualify, the `num_to_transfer` most confident masks are filled instead;
  * T2T: non-mask, non-prompt positions whose arg-max differs and whose confidence exceeds
    `editing_threshold` are replaced (tokens filled in this very step excepted; with `max_reverts`
    set, not to a token the position held before once it has reverted that many times);
  * a step that starts with no mask counts as a "post" step; more than `max_post_steps` of them
    end the block before the forward, and a post step without edits ends it after the forward.

Multi-Block Editing (mbe_window = w > 0): when block b ends, the window of blocks b-w .. b is
re-encoded with *bidirectional* attention across the window (each window block sees the later ones;
everything before the window is seen as usual), and every non-prompt token of the window whose
arg-max differs with confidence above `editing_threshold` is replaced. Passes repeat while they
edit, at most max(1, max_post_steps) times. The window's cached keys/values are dropped before the
pass and recomputed under the block-causal mask by the next forward, so later blocks always see
keys/values consistent with the decoding mask.

Speculative verification (speculative_verify=True, greedy or sampled): a post step that usually
confirms the block unchanged also drafts the next block in the same forward (the next block's
queries see the current block as it stands). If the step edits nothing, the block ends with exactly
the contents the next block's first step would have seen, so the speculative draft is that first
step and one forward is saved; if it edits, the speculative part is discarded. With MBE the draft
waits for the window's passes: it is that first step if they edit nothing (the next block then sees
the same tokens under the same block-causal mask) and is discarded if they edit.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from .cache import KVCache
from .masks import window_block_mask
from .sampling import choose_tokens


@dataclass
class DecodeConfig:
    """The decoder's settings. The defaults are the authors' reference `generate()` signature (parity
    API, docs/design.md); the project's presets (S, Q) are `conf/decode/*.yaml`, loaded by
    `components.presets.load_decode_config`."""

    block_length: int = 32
    gen_length: int = 256
    threshold: float = 0.95  # tau_mask: a mask is filled when its confidence is strictly above it
    editing_threshold: float = 0.9  # tau_edit: above 1 disables editing
    max_post_steps: int = 16
    num_to_transfer: int = 1
    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    eos_early_stop: bool = False
    eos_id: int | None = None  # default: the model config's eos_token_id
    mask_id: int | None = None  # default: the model config's mask_token_id
    use_cache: bool = True
    mbe_window: int = 0  # Multi-Block Editing window in blocks (0 = off)
    seed: int | None = None
    speculative_verify: bool = False
    record_trajectory: bool = False
    max_batch_size: int | None = None  # prompts decoded together per call of the network (None = all)
    # The autoregressive baseline's two switches (the reference has neither; both default off):
    # the fallback commit takes the leftmost masks instead of the most confident ones, and a row ends
    # on the forward that completes its answer (an EOS with no mask before it) instead of at its block's
    # end, so that one token per forward costs one forward per answer token, as an AR model would.
    left_to_right: bool = False
    stop_at_answer_end: bool = False
    # A guard against edit ping-pong (the reference has none, so None = off): a position may
    # put back a token it already held in this decode (a revert) at most `max_reverts` times. Two
    # clashing tokens that the model swaps at every post step then stop flipping, and the block ends
    # instead of spending every post step up to `max_post_steps`.
    max_reverts: int | None = None

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Reject values the decoder would misread rather than refuse (a threshold of 1.5 fills no mask
        by confidence and silently decodes one token per forward). One line, the field first, so a
        config loader can add where the value came from."""
        def bad(name: str, expected: str) -> None:
            raise ValueError(f"DecodeConfig.{name} must be {expected}, got {getattr(self, name)!r}")

        for name in ("block_length", "gen_length"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) <= 0:
                bad(name, "a positive integer")
        if not 0.0 <= self.threshold <= 1.0:
            bad("threshold", "in [0, 1] (tau_mask)")
        if self.editing_threshold < 0.0:
            bad("editing_threshold", ">= 0 (tau_edit; above 1 disables editing)")
        if self.num_to_transfer < 1:
            bad("num_to_transfer", ">= 1")
        if self.max_post_steps < 0:
            bad("max_post_steps", ">= 0")
        if self.temperature < 0:
            bad("temperature", ">= 0")
        if self.top_k is not None and self.top_k < 1:
            bad("top_k", ">= 1 or None")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            bad("top_p", "in (0, 1] or None")
        if self.mbe_window < 0:
            bad("mbe_window", ">= 0")
        if self.max_reverts is not None and (not isinstance(self.max_reverts, int) or self.max_reverts < 0):
            bad("max_reverts", "a non-negative integer or None (off)")
        if self.max_batch_size is not None and self.max_batch_size < 1:
            bad("max_batch_size", ">= 1 or None")
        if self.stop_at_answer_end and (self.editing_threshold <= 1.0 or self.mbe_window):
            raise ValueError("DecodeConfig.stop_at_answer_end needs editing off (editing_threshold > 1, mbe_window 0): "
                             "it ends a row before later edits could revise its answer")


@dataclass
class StepRecord:
    """What one forward did to one prompt (absolute canvas positions)."""
    kind: str  # "draft", "post", "mbe" or "speculative"
    block: int
    m2t: list[tuple[int, int]] = field(default_factory=list)  # (position, token)
    t2t: list[tuple[int, int, int]] = field(default_factory=list)  # (position, old, new)


@dataclass
class Trajectory:
    prompt_length: int
    block_length: int
    mask_id: int
    initial_canvas: list[int]
    steps: list[StepRecord] = field(default_factory=list)


@dataclass
class GenerationResult:
    sequences: list[list[int]]  # generated tokens per prompt, cut after the first EOS
    forwards: list[int]  # network forwards each prompt took part in
    edits: list[int]  # token-to-token replacements per prompt
    commits: list[int]  # mask-to-token fills per prompt
    canvases: list[list[int]]  # the whole final canvas per prompt (prompt included)
    forward_calls: int  # calls of the network for the whole batch
    wall_seconds: float
    trajectories: list[Trajectory] | None = None
    stopped: list[bool] = field(default_factory=list)  # per prompt: dropped by `cancelled` before it finished

    @property
    def tokens_per_forward(self) -> float:
        total = sum(self.forwards)
        return sum(len(s) for s in self.sequences) / total if total else 0.0

    @property
    def num_tokens(self) -> int:
        return sum(len(s) for s in self.sequences)


class _Row:
    """Decoding state of one prompt."""

    def __init__(self, index: int, prompt: list[int], cfg: DecodeConfig, mask_id: int):
        B = cfg.block_length
        self.index = index
        self.prompt_length = P = len(prompt)
        self.num_blocks = -(-(P + cfg.gen_length) // B)
        self.block = P // B
        self.canvas = torch.full((self.num_blocks * B,), mask_id, dtype=torch.long)
        self.canvas[:P] = torch.tensor(prompt, dtype=torch.long)
        self.phase = "draft"  # or "mbe"
        self.post_steps = 0
        self.mbe_steps = 0
        self.held_draft = None  # (tokens, confidences): the next block's speculative draft, waiting on MBE
        self.done = False
        self.stopped = False  # dropped by `cancelled` before it finished
        self.final_reported: int | None = 0  # answer tokens handed to `on_block` (None once it had the last)
        self.forwards = self.edits = self.commits = 0
        self.trajectory = None
        # for `max_reverts` (None when it is off): the tokens each position has held, and its reverts
        self.held: dict[int, set[int]] | None = {} if cfg.max_reverts is not None else None
        self.reverts: dict[int, int] = {}


class _Decoder:
    def __init__(self, lm, cfg: DecodeConfig, mask_id: int, eos_id: int | None, generator, on_step=None,
                 on_block=None, cancelled=None):
        self.lm, self.cfg, self.mask_id, self.eos_id, self.generator = lm, cfg, mask_id, eos_id, generator
        self.on_step, self.on_block, self.cancelled = on_step, on_block, cancelled
        self.forward_calls = 0

    # ------------------------------------------------------------------ finished text
    def answer(self, row: _Row, end: int | None = None) -> list[int]:
        """The row's generated tokens up to canvas position `end` (default: all), cut after the first EOS."""
        stop = row.prompt_length + self.cfg.gen_length
        out = row.canvas[row.prompt_length:stop if end is None else min(end, stop)].tolist()
        if self.eos_id is not None and self.eos_id in out:
            out = out[:out.index(self.eos_id) + 1]
        return out

    def _final_end(self, row: _Row) -> int:
        """Canvas position up to which no later step can change the row: the blocks before the active one,
        less the Multi-Block Editing window that may still re-edit them; everything once the row is done."""
        if row.done:
            return len(row.canvas)
        return max(row.prompt_length, (row.block - self.cfg.mbe_window) * self.cfg.block_length)

    def _report(self, rows: list[_Row]) -> None:
        """Hand each row's answer to `on_block` when its finished part has grown, and once when it is done."""
        for row in rows:
            if row.stopped or row.final_reported is None:
                continue
            tokens = self.answer(row, self._final_end(row))
            if row.done or len(tokens) > row.final_reported:
                row.final_reported = None if row.done else len(tokens)  # None: the last call was made
                self.on_block(row.index, tokens, row.done)

    # ------------------------------------------------------------------ block bookkeeping
    def _block_slice(self, row: _Row, block: int | None = None) -> slice:
        b = row.block if block is None else block
        return slice(b * self.cfg.block_length, (b + 1) * self.cfg.block_length)

    def _mbe_start(self, row: _Row) -> int:
        """First block of the Multi-Block Editing window (never a block wholly inside the prompt)."""
        return max(row.block - self.cfg.mbe_window, row.prompt_length // self.cfg.block_length)

    def _end_block(self, row: _Row) -> None:
        if self.cfg.mbe_window > 0 and self._mbe_start(row) < row.block:
            row.phase, row.mbe_steps = "mbe", 0
        else:
            self._advance(row)

    def _advance(self, row: _Row) -> None:
        row.phase = "draft"
        end = (row.block + 1) * self.cfg.block_length
        if self.cfg.eos_early_stop and self.eos_id is not None:
            generated = row.canvas[row.prompt_length:end]
            if not (generated == self.mask_id).any() and (generated == self.eos_id).any():
                row.done = True
                return
        if row.block + 1 == row.num_blocks:
            row.done = True
            return
        row.block += 1
        row.post_steps = 0

    def _prepare(self, row: _Row) -> str | None:
        """Resolve block ends that need no forward; return the kind of forward the row needs next."""
        while not row.done:
            if row.phase == "mbe":
                if row.mbe_steps >= max(1, self.cfg.max_post_steps):
                    self._advance(row)
                    continue
                return "mbe"
            if (row.canvas[self._block_slice(row)] == self.mask_id).any():
                return "draft"
            row.post_steps += 1
            if row.post_steps > self.cfg.max_post_steps:
                self._end_block(row)
                continue
            return "post"
        return None

    def _speculates(self, row: _Row, kind: str) -> bool:
        return self.cfg.speculative_verify and kind == "post" and row.block + 1 < row.num_blocks

    # ------------------------------------------------------------------ one batched forward
    def run(self, rows: list[_Row]) -> None:
        cfg, B = self.cfg, self.cfg.block_length
        capacity = max(r.num_blocks for r in rows) * B
        cache = KVCache.for_model(self.lm, len(rows), capacity) if cfg.use_cache else None
        active = list(rows)
        while True:
            if self.cancelled is not None:
                for r in active:
                    if self.cancelled(r.index):
                        r.done = r.stopped = True
            kinds = {r.index: self._prepare(r) for r in active}
            if self.on_block is not None:
                self._report(active)
            still = [i for i, r in enumerate(active) if not r.done]
            if len(still) < len(active):
                if cache is not None and still:
                    cache.keep_rows(torch.tensor(still, device=cache.lengths.device))
                active = [active[i] for i in still]
            if not active:
                return
            self._step(active, [kinds[r.index] for r in active], cache)

    def _step(self, rows: list[_Row], kinds: list[str], cache: KVCache | None) -> None:
        cfg, B, device = self.cfg, self.cfg.block_length, self.lm.device
        starts, ends, logit_starts, bidir_from, speculative = [], [], [], [], []
        for slot, (row, kind) in enumerate(zip(rows, kinds)):
            spec = self._speculates(row, kind)
            end = (row.block + (2 if spec else 1)) * B
            cached = int(cache.lengths[slot]) if cache is not None else 0
            if kind == "mbe":
                window_start = self._mbe_start(row) * B
                cached = min(cached, window_start)
                if cache is not None:
                    cache.truncate(slot, cached)
                logit_starts.append(window_start)
                bidir_from.append(window_start)
            else:
                logit_starts.append(row.block * B)
                bidir_from.append(end)  # nothing bidirectional beyond the block structure
            starts.append(cached)
            ends.append(end)
            speculative.append(spec)

        q_len = max(e - s for s, e in zip(starts, ends))
        n_logits = max(e - ls for e, ls in zip(ends, logit_starts))
        starts_t = torch.tensor(starts, device=device)
        ends_t = torch.tensor(ends, device=device)
        offsets = torch.arange(q_len, device=device)
        q_pos = starts_t[:, None] + offsets[None, :]  # (R, Tq) absolute positions
        q_valid = q_pos < ends_t[:, None]
        width = max(len(r.canvas) for r in rows) + q_len
        canvas = torch.stack([torch.nn.functional.pad(r.canvas, (0, width - len(r.canvas))) for r in rows]).to(device)
        input_ids = canvas.gather(1, q_pos)  # (R, Tq)
        if cache is not None:  # keys are the cache slots 0 .. max end: kept prefix, then this step's queries
            k_pos = torch.arange(max(ends), device=device).expand(len(rows), -1)
            k_valid = k_pos < ends_t[:, None]
        else:
            k_pos, k_valid = q_pos, q_valid
        mask = window_block_mask(q_pos, k_pos, B, k_valid, torch.tensor(bidir_from, device=device))
        logit_idx = (torch.tensor(logit_starts, device=device) - starts_t)[:, None] + torch.arange(n_logits, device=device)
        logit_idx = torch.minimum(logit_idx, (ends_t - starts_t - 1)[:, None])  # (R, K), padded by repetition
        with torch.no_grad():
            out = self.lm(input_ids, attention_mask=mask, position_ids=q_pos, past=cache,
                          logits_positions=logit_idx, token_valid=q_valid)
        self.forward_calls += 1
        tokens, conf = choose_tokens(out.logits, self.mask_id, cfg.temperature, cfg.top_k, cfg.top_p, self.generator)
        tokens, conf = tokens.cpu(), conf.cpu()

        store_counts = []
        for slot, (row, kind) in enumerate(zip(rows, kinds)):
            row.forwards += 1
            n = ends[slot] - logit_starts[slot]
            tok, cf = tokens[slot, :n], conf[slot, :n]
            if kind == "mbe":
                window = slice(logit_starts[slot], ends[slot])
                edits = self._apply_edits(row, window, tok, cf, kind)
                row.mbe_steps += 1
                frozen_until = logit_starts[slot]
                held, row.held_draft = row.held_draft, None
                if not edits:
                    block_before = row.block
                    self._advance(row)
                    if held is not None and not row.done and row.block == block_before + 1:
                        self._apply_block_step(row, *held, "speculative")
            else:
                frozen_until = row.block * B
                spec = speculative[slot]
                block_tok, block_cf = (tok[:B], cf[:B])
                had_masks = bool((row.canvas[self._block_slice(row)] == self.mask_id).any())
                edits = self._apply_block_step(row, block_tok, block_cf, kind)
                if not had_masks and not edits:
                    frozen_until = (row.block + 1) * B  # the input was the block's final content
                    block_before = row.block
                    self._end_block(row)
                    if spec and not row.done and row.phase == "mbe":
                        row.held_draft = (tok[B:2 * B], cf[B:2 * B])
                    elif spec and not row.done and row.block == block_before + 1:
                        self._apply_block_step(row, tok[B:2 * B], cf[B:2 * B], "speculative")
            if cfg.stop_at_answer_end and not row.done and self._answer_complete(row):
                row.done = True
            store_counts.append(max(0, frozen_until - starts[slot]))
            if self.on_step is not None:
                self.on_step(row.index, row.canvas, row.trajectory.steps[-1])
        if cache is not None:
            cache.keep(starts_t, store_counts)

    def _answer_complete(self, row: _Row) -> bool:
        """True when the generated canvas holds an EOS and no mask before the first one."""
        if self.eos_id is None:
            return False
        generated = row.canvas[row.prompt_length:]
        eos_at = (generated == self.eos_id).nonzero()
        return len(eos_at) > 0 and not (generated[:int(eos_at[0])] == self.mask_id).any()

    # ------------------------------------------------------------------ the update rules
    def _apply_block_step(self, row: _Row, tok: torch.Tensor, cf: torch.Tensor, kind: str) -> int:
        """M2T + T2T on the active block from this step's choices; returns the number of edits."""
        cfg, sl = self.cfg, self._block_slice(row)
        current = row.canvas[sl]
        is_mask = current == self.mask_id
        positions = torch.arange(sl.start, sl.stop)
        protected = positions < row.prompt_length
        commit = torch.zeros_like(is_mask)
        n_masks = int(is_mask.sum())
        if n_masks:
            confident = is_mask & (cf > cfg.threshold)
            if int(confident.sum()) >= cfg.num_to_transfer:
                commit = confident
            else:
                k = min(cfg.num_to_transfer, n_masks)
                if cfg.left_to_right:
                    top = is_mask.nonzero().flatten()[:k]
                else:
                    top = cf.masked_fill(~is_mask, float("-inf")).topk(k).indices
                commit[top] = True
        edit = ~is_mask & ~protected & (tok != current) & (cf > cfg.editing_threshold)
        edit = self._limit_reverts(row, positions, tok, edit)
        record = self._record(row, kind)
        if record is not None:
            record.m2t = [(int(p), int(t)) for p, t in zip(positions[commit], tok[commit])]
            record.t2t = [(int(p), int(o), int(t)) for p, o, t in zip(positions[edit], current[edit], tok[edit])]
        update = commit | edit
        current[update] = tok[update]
        self._remember(row, positions, tok, update)
        n_edits = int(edit.sum())
        row.commits += int(commit.sum())
        row.edits += n_edits
        return n_edits

    def _apply_edits(self, row: _Row, window: slice, tok, cf, kind: str) -> int:
        """T2T over a Multi-Block Editing window (no masks are left there)."""
        current = row.canvas[window]
        positions = torch.arange(window.start, window.stop)
        edit = (positions >= row.prompt_length) & (current != self.mask_id) & (tok != current) & (
            cf > self.cfg.editing_threshold)
        edit = self._limit_reverts(row, positions, tok, edit)
        record = self._record(row, kind)
        if record is not None:
            record.t2t = [(int(p), int(o), int(t)) for p, o, t in zip(positions[edit], current[edit], tok[edit])]
        current[edit] = tok[edit]
        self._remember(row, positions, tok, edit)
        n_edits = int(edit.sum())
        row.edits += n_edits
        return n_edits

    def _limit_reverts(self, row: _Row, positions: torch.Tensor, tok: torch.Tensor, edit: torch.Tensor) -> torch.Tensor:
        """`edit` without the reverts (a token the position held before) past `max_reverts` per position;
        the reverts kept are counted."""
        if row.held is None or not bool(edit.any()):
            return edit
        edit = edit.clone()
        for i in edit.nonzero().flatten().tolist():
            p = int(positions[i])
            if int(tok[i]) in row.held.get(p, ()):
                if row.reverts.get(p, 0) >= self.cfg.max_reverts:
                    edit[i] = False
                else:
                    row.reverts[p] = row.reverts.get(p, 0) + 1
        return edit

    @staticmethod
    def _remember(row: _Row, positions: torch.Tensor, tok: torch.Tensor, written: torch.Tensor) -> None:
        if row.held is not None:
            for p, t in zip(positions[written].tolist(), tok[written].tolist()):
                row.held.setdefault(p, set()).add(t)

    def _record(self, row: _Row, kind: str) -> StepRecord | None:
        if row.trajectory is None:
            return None
        record = StepRecord(kind=kind, block=row.block)
        row.trajectory.steps.append(record)
        return record


def validate(lm, prompts: list[list[int]], cfg: DecodeConfig) -> tuple[int, int | None]:
    """Check everything before any forward runs; return (mask_id, eos_id)."""
    vocab = lm.config.vocab_size
    mask_id = cfg.mask_id if cfg.mask_id is not None else lm.config.mask_token_id
    eos_id = cfg.eos_id if cfg.eos_id is not None else lm.config.eos_token_id
    if mask_id is None:
        raise ValueError("DecodeConfig.mask_id is not set and the model config has no mask_token_id")
    if not 0 <= mask_id < vocab:
        raise ValueError(f"DecodeConfig.mask_id={mask_id} is outside the vocabulary [0, {vocab})")
    if eos_id is not None and not 0 <= eos_id < vocab:
        raise ValueError(f"DecodeConfig.eos_id={eos_id} is outside the vocabulary [0, {vocab})")
    if eos_id is not None and eos_id == mask_id:
        raise ValueError(f"eos_id and mask_id are both {mask_id}; they must differ")
    cfg.check()  # again: a field may have been assigned since construction
    if not prompts:
        raise ValueError("generate() needs at least one prompt")
    limit = lm.config.max_position_embeddings
    for i, prompt in enumerate(prompts):
        if len(prompt) == 0:
            raise ValueError(f"prompt {i} is empty; every prompt needs at least one token")
        bad = [t for t in prompt if not 0 <= int(t) < vocab]
        if bad:
            raise ValueError(f"prompt {i} has token ids outside the vocabulary [0, {vocab}): {bad[:5]}")
        if mask_id in prompt:
            raise ValueError(f"prompt {i} contains the mask token id {mask_id}; prompts must be fully known")
        canvas = -(-(len(prompt) + cfg.gen_length) // cfg.block_length) * cfg.block_length
        if canvas > limit:
            raise ValueError(
                f"prompt {i}: prompt length {len(prompt)} + gen_length {cfg.gen_length}, rounded up to whole "
                f"blocks of {cfg.block_length}, is {canvas} positions, beyond max_position_embeddings={limit}")
    return mask_id, eos_id


def generate(lm, prompts: list[list[int]], cfg: DecodeConfig | None = None, on_step=None, on_block=None,
             cancelled=None) -> GenerationResult:
    """Decode every prompt with draft-and-edit; see the module docstring for the semantics.

    on_step(prompt_index, canvas, step_record) is called after every forward for every prompt in it
    (for live displays); it implies trajectory recording.
    on_block(prompt_index, tokens, done) is called whenever a prompt's finished answer grows (a block
    no later step can change, cut after the first EOS; for streaming) and once more when it is done:
    `tokens` is then its final sequence. No trajectory is recorded for it.
    cancelled(prompt_index) is asked before every forward; True drops that prompt (its `stopped` flag is
    set, its sequence is what it held then) while the others decode on exactly as they would have.
    """
    cfg = cfg or DecodeConfig()
    if prompts and isinstance(prompts[0], int):
        prompts = [prompts]
    prompts = [[int(t) for t in p] for p in prompts]
    mask_id, eos_id = validate(lm, prompts, cfg)
    generator = None
    if cfg.temperature > 0:
        generator = torch.Generator(device=lm.device)
        generator.manual_seed(cfg.seed if cfg.seed is not None else torch.seed())
    decoder = _Decoder(lm, cfg, mask_id, eos_id, generator, on_step, on_block, cancelled)
    rows = [_Row(i, p, cfg, mask_id) for i, p in enumerate(prompts)]
    record = cfg.record_trajectory or on_step is not None
    if record:
        for row in rows:
            row.trajectory = Trajectory(row.prompt_length, cfg.block_length, mask_id, row.canvas.tolist())
    was_training = lm.training
    lm.eval()
    start = time.perf_counter()
    try:
        chunk = cfg.max_batch_size or len(rows)
        for i in range(0, len(rows), chunk):
            decoder.run(rows[i:i + chunk])
    finally:
        lm.train(was_training)
    wall = time.perf_counter() - start
    return GenerationResult(
        sequences=[decoder.answer(row) for row in rows], forwards=[r.forwards for r in rows], edits=[r.edits for r in rows],
        commits=[r.commits for r in rows], canvases=[r.canvas.tolist() for r in rows],
        forward_calls=decoder.forward_calls, wall_seconds=wall,
        trajectories=[r.trajectory for r in rows] if record else None, stopped=[r.stopped for r in rows])
