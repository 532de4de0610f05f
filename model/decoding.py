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
  * Levenshtein editing (`delete_threshold` / `insert_threshold`, model.levenshtein): on a model with
    the edit-control rows, fills and substitutions choose over real tokens only; with it on, a position
    whose arg-max over the whole head is DELETE or INSERT is not substituted, and in a post step it is
    deleted (the block shifts left, [MASK] pads its tail) or gets a [MASK] put before it (the tail is
    cut). A structural edit counts as an edit; the masks it makes are drafted by the next steps;
  * a step that starts with no mask counts as a "post" step; more than `max_post_steps` of them
    end the block before the forward, and a post step without edits ends it after the forward;
  * with `finish_threshold` set, the drafting step that completes the answer's last block ends it
    without a post step when it backs every generated token of the block above that threshold.

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
import weakref
from dataclasses import dataclass, field

import torch

from .cache import KVCache
from .levenshtein import StructuralRecord, apply_block_edits, check_edit_thresholds, edit_decisions, real_token_choice
from .masks import additive_mask, window_block_mask
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
    # Finishing without the verify forward (the reference has none, so None = off). The block that ends
    # the answer -- no mask left after a drafting step, and an EOS in it (with `eos_early_stop`) or the
    # row's last block -- ends at once, without its post-block forward, when the forward that completed
    # it proposed no edit and chose every generated token of the block as it stands with confidence
    # strictly above `finish_threshold`. A verify would re-read a block the model has just backed that
    # strongly; it costs one forward per answer, which on short answers is a third of S mode's forwards.
    finish_threshold: float | None = None
    # Levenshtein editing (LLaDA2.2 §3.1, model.levenshtein): in a post step (a block without masks), a
    # position whose arg-max over the whole head is DELETE (INSERT) with confidence strictly above its
    # threshold is deleted (gets a [MASK] put before it). None = that edit is off; either one on needs
    # a model with the edit-control rows (`model.levenshtein.add_edit_controls`).
    delete_threshold: float | None = None
    insert_threshold: float | None = None
    # Execution switches; none changes the algorithm. `static_shapes`: every step after a row's first
    # forward has one shape per decode -- queries are the active block (two blocks for every row when
    # any row speculates), keys the whole cache -- so the network's forward can be compiled or
    # captured once and replayed. `compile`: those steps run the network through torch.compile.
    # `cuda_graphs`: they run it as captured CUDA graphs (torch.compile's "reduce-overhead" mode;
    # CUDA only), which removes the per-kernel launch cost that rules small batches on a GPU. Both
    # imply static shapes. Compiled kernels may round differently in the last bits, so a near-tie can
    # resolve the other way; the eager decoder is the one that is token-identical to the reference.
    static_shapes: bool = False
    compile: bool = False
    cuda_graphs: bool = False

    @property
    def uses_static_shapes(self) -> bool:
        return self.static_shapes or self.compile or self.cuda_graphs

    @property
    def levenshtein(self) -> bool:
        """Structural edits (DELETE / INSERT) are on: at least one of their thresholds is set."""
        return self.delete_threshold is not None or self.insert_threshold is not None

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
        if self.finish_threshold is not None and not 0.0 <= self.finish_threshold <= 1.0:
            bad("finish_threshold", "in [0, 1] or None (off)")
        check_edit_thresholds(None, self.delete_threshold, self.insert_threshold)
        if self.stop_at_answer_end and (self.editing_threshold <= 1.0 or self.mbe_window):
            raise ValueError("DecodeConfig.stop_at_answer_end needs editing off (editing_threshold > 1, mbe_window 0): "
                             "it ends a row before later edits could revise its answer")


@dataclass
class _Draft:
    """The next block's speculative draft from a post step: its choices, and with Levenshtein editing
    on the choice over the whole head (the finish rule reads it)."""
    tokens: torch.Tensor
    conf: torch.Tensor
    full_tokens: torch.Tensor | None = None
    full_conf: torch.Tensor | None = None

    @classmethod
    def of(cls, slot: int, B: int, tokens, conf, full) -> "_Draft":
        part = slice(B, 2 * B)
        if full is None:
            return cls(tokens[slot, part], conf[slot, part])
        return cls(tokens[slot, part], conf[slot, part], full[0][slot, part], full[1][slot, part])


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
    # Levenshtein editing: the structural edits of a step, by the step's index in `steps`, applied after
    # its m2t and t2t. Kept beside the steps so that a step's record is the same for every decode.
    structural: dict[int, StructuralRecord] = field(default_factory=dict)


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
    structural_edits: list[int] = field(default_factory=list)  # per prompt: deletions + insertions (Levenshtein)

    @property
    def tokens_per_forward(self) -> float:
        total = sum(self.forwards)
        return sum(len(s) for s in self.sequences) / total if total else 0.0

    @property
    def num_tokens(self) -> int:
        return sum(len(s) for s in self.sequences)


class _Row:
    """Host-side control state of one prompt. Its tokens live on the device, in row `slot` of the
    decoder's canvas tensor; the host keeps only the integers that decide the next forward."""

    def __init__(self, index: int, prompt: list[int], cfg: DecodeConfig, mask_id: int):
        B = cfg.block_length
        self.index = index
        self.prompt = prompt
        self.prompt_length = P = len(prompt)
        self.num_blocks = -(-(P + cfg.gen_length) // B)
        self.length = self.num_blocks * B
        self.block = P // B
        self.masks_left = (self.block + 1) * B - P  # masks in the active block (the host never reads the canvas for it)
        self.phase = "draft"  # or "mbe"
        self.post_steps = 0
        self.mbe_steps = 0
        self.held_draft = None  # the next block's speculative draft (`_Draft`), waiting on MBE
        self.done = False
        self.stopped = False  # dropped by `cancelled` before it finished
        self.final_reported: int | None = 0  # answer tokens handed to `on_block` (None once it had the last)
        self.forwards = self.edits = self.commits = self.structural = 0
        self.canvas: list[int] | None = None  # the final canvas, read back once the row leaves the batch
        self.trajectory = None
        # for `max_reverts` (None when it is off): the tokens edits wrote at each position (the token a
        # commit wrote is in the decoder's `committed` tensor), and each position's reverts
        self.held: dict[int, set[int]] | None = {} if cfg.max_reverts is not None else None
        self.reverts: dict[int, int] = {}

    def initial_canvas(self, mask_id: int) -> list[int]:
        return self.prompt + [mask_id] * (self.length - self.prompt_length)


class _Decoder:
    """Decodes a batch of rows. The canvases of the rows in the batch are one (R, W) tensor on the
    model's device, and each forward's update (M2T fills, T2T edits) is computed for all its rows at
    once there. The host reads back one small (R, 3) tensor per update -- masks before it, fills,
    edits -- because the next forward's layout depends on it (whether a block ended); every other host
    read is one the algorithm needs at a block boundary (EOS early stop, Multi-Block Editing,
    streaming) or one an option asks for (`max_reverts` when an edit is proposed, trajectories).
    The layout of a forward (`_Layout`) is made once and reused by every step of a block with it."""

    def __init__(self, lm, cfg: DecodeConfig, mask_id: int, eos_id: int | None, generator, on_step=None,
                 on_block=None, cancelled=None):
        self.lm, self.cfg, self.mask_id, self.eos_id, self.generator = lm, cfg, mask_id, eos_id, generator
        self.on_step, self.on_block, self.cancelled = on_step, on_block, cancelled
        self.forward_calls = 0
        self.device = lm.device
        self.block_offsets = torch.arange(cfg.block_length, device=self.device)
        self.record = False
        # Layouts by (rows, canvas width, cache, per-row spans): most recur from block to block and from
        # one chunk of prompts to the next (a prompt's first forward depends on its block, not its tokens).
        self.layouts: dict[tuple, _Layout] = {}
        self.static = cfg.uses_static_shapes
        self.compiled = compiled_forward(lm, "reduce-overhead" if cfg.cuda_graphs else "default") if (
            cfg.compile or cfg.cuda_graphs) else None
        # A model with the edit-control rows: fills and substitutions choose over real tokens only, so
        # with Levenshtein editing off it decodes exactly as the model without the rows.
        ids = (lm.config.delete_token_id, lm.config.insert_token_id)
        self.controls = ids if None not in ids else None
        self.levenshtein = cfg.levenshtein  # validate() refused it on a model without the rows
        off = float("inf")  # a threshold nothing exceeds: that edit is off
        self.edit_thresholds = (off if cfg.delete_threshold is None else cfg.delete_threshold,
                                off if cfg.insert_threshold is None else cfg.insert_threshold)

    # ------------------------------------------------------------------ canvas access
    def row_canvas(self, row: _Row) -> torch.Tensor | list[int]:
        return row.canvas if row.canvas is not None else self.canvas[row.slot, :row.length]

    def answer(self, row: _Row, end: int | None = None) -> list[int]:
        """The row's generated tokens up to canvas position `end` (default: all), cut after the first EOS."""
        stop = row.prompt_length + self.cfg.gen_length
        stop = stop if end is None else min(end, stop)
        canvas = self.row_canvas(row)
        out = canvas[row.prompt_length:stop]
        out = out if isinstance(out, list) else out.tolist()
        if self.eos_id is not None and self.eos_id in out:
            out = out[:out.index(self.eos_id) + 1]
        return out

    def _final_end(self, row: _Row) -> int:
        """Canvas position up to which no later step can change the row: the blocks before the active one,
        less the Multi-Block Editing window that may still re-edit them; everything once the row is done."""
        if row.done:
            return row.length
        return max(row.prompt_length, (row.block - self.cfg.mbe_window) * self.cfg.block_length)

    def _report(self, rows: list[_Row]) -> None:
        """Hand each row's answer to `on_block` when its finished part has grown, and once when it is done."""
        for row in rows:
            if row.stopped or row.final_reported is None:
                continue
            end = self._final_end(row)
            if not row.done and end - row.prompt_length <= row.final_reported:
                continue  # nothing new can be final: no canvas read
            tokens = self.answer(row, end)
            if row.done or len(tokens) > row.final_reported:
                row.final_reported = None if row.done else len(tokens)  # None: the last call was made
                self.on_block(row.index, tokens, row.done)

    # ------------------------------------------------------------------ block bookkeeping
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
        B = self.cfg.block_length
        end = (row.block + 1) * B
        if self.cfg.eos_early_stop and self.eos_id is not None:
            # A block boundary: the one place EOS early stop reads the canvas.
            generated = self.canvas[row.slot, row.prompt_length:end]
            if not bool((generated == self.mask_id).any()) and bool((generated == self.eos_id).any()):
                row.done = True
                return
        if row.block + 1 == row.num_blocks:
            row.done = True
            return
        row.block += 1
        row.masks_left = B  # a block after the prompt's starts as all masks
        row.post_steps = 0

    def _prepare(self, row: _Row) -> str | None:
        """Resolve block ends that need no forward; return the kind of forward the row needs next."""
        while not row.done:
            if row.phase == "mbe":
                if row.mbe_steps >= max(1, self.cfg.max_post_steps):
                    self._advance(row)
                    continue
                return "mbe"
            if row.masks_left:
                return "draft"
            row.post_steps += 1
            if row.post_steps > self.cfg.max_post_steps:
                self._end_block(row)
                continue
            return "post"
        return None

    def _speculates(self, row: _Row, kind: str) -> bool:
        return self.cfg.speculative_verify and kind == "post" and row.block + 1 < row.num_blocks

    # ------------------------------------------------------------------ the batch
    def run(self, rows: list[_Row]) -> None:
        cfg, B = self.cfg, self.cfg.block_length
        width = max(r.length for r in rows)
        # Canvas width: every row's canvas, then room for a forward's padded query slots past its end.
        canvas = torch.full((len(rows), width + 2 * B), self.mask_id, dtype=torch.long)
        for slot, row in enumerate(rows):
            canvas[slot, :row.prompt_length] = torch.tensor(row.prompt, dtype=torch.long)
            row.slot = slot
        self.canvas = canvas.to(self.device)
        self.prompt_lengths = torch.tensor([r.prompt_length for r in rows], device=self.device)
        self.committed = torch.full_like(self.canvas, -1) if cfg.max_reverts is not None else None
        # Static shapes: a last block's step may also query the (ignored) block after it.
        cache = KVCache.for_model(self.lm, len(rows), self.canvas.shape[1] if self.static else width) if (
            cfg.use_cache) else None
        if cache is not None and cfg.cuda_graphs:
            cache.mark_static()
        active = list(rows)
        while True:
            if self.cancelled is not None:
                for r in active:
                    if self.cancelled(r.index):
                        r.done = r.stopped = True
            kinds = [self._prepare(r) for r in active]
            if self.on_block is not None:
                self._report(active)
            still = [i for i, r in enumerate(active) if not r.done]
            if len(still) < len(active):
                for r in active:
                    if r.done:
                        r.canvas = self.canvas[r.slot, :r.length].tolist()
                if not still:
                    return
                self._keep_rows(still, cache)
                active, kinds = [active[i] for i in still], [kinds[i] for i in still]
                for slot, r in enumerate(active):
                    r.slot = slot
            self._step(active, kinds, cache)

    def _keep_rows(self, still: list[int], cache: KVCache | None) -> None:
        index = torch.tensor(still, device=self.device)
        self.canvas = self.canvas.index_select(0, index)
        self.prompt_lengths = self.prompt_lengths.index_select(0, index)
        if self.committed is not None:
            self.committed = self.committed.index_select(0, index)
        if cache is not None:
            cache.keep_rows(still)
            if self.cfg.cuda_graphs:
                cache.mark_static()

    def _layout(self, rows: list[_Row], kinds: list[str], cache: KVCache | None) -> "_Layout":
        cfg, B = self.cfg, self.cfg.block_length
        starts, ends, logit_starts, bidir_from = [], [], [], []
        speculative = [self._speculates(row, kind) for row, kind in zip(rows, kinds)]
        blocks_queried = 2 if self.static and any(speculative) else None
        for slot, (row, kind) in enumerate(zip(rows, kinds)):
            spec = speculative[slot]
            end = (row.block + (blocks_queried if blocks_queried and kind != "mbe" else (2 if spec else 1))) * B
            cached = cache.lengths[slot] if cache is not None else 0
            if kind == "mbe":
                window_start = self._mbe_start(row) * B
                cached = min(cached, window_start)
                logit_starts.append(window_start)
                bidir_from.append(window_start)
            else:
                logit_starts.append(row.block * B)
                bidir_from.append(end)  # nothing bidirectional beyond the block structure
            starts.append(cached)
            ends.append(end)
        key = (len(rows), self.canvas.shape[1], cache.capacity if cache is not None else None, tuple(starts),
               tuple(ends), tuple(logit_starts), tuple(bidir_from))
        layout = self.layouts.get(key)
        if layout is None:
            if len(self.layouts) > 64:
                self.layouts.clear()
            layout = self.layouts[key] = _Layout.make(self, starts, ends, logit_starts, bidir_from, cache)
        layout.speculative = speculative
        return layout

    def _step(self, rows: list[_Row], kinds: list[str], cache: KVCache | None) -> None:
        cfg, B = self.cfg, self.cfg.block_length
        for slot, (row, kind) in enumerate(zip(rows, kinds)):
            if kind == "mbe" and cache is not None:
                cache.truncate(slot, min(cache.lengths[slot], self._mbe_start(row) * B))
        layout = self._layout(rows, kinds, cache)
        input_ids = self.canvas.gather(1, layout.input_index)
        forward = self.compiled if self.compiled is not None else self.lm
        with torch.no_grad():
            if forward is not self.lm and self.cfg.cuda_graphs:
                torch.compiler.cudagraph_mark_step_begin()
            out = forward(input_ids, past=cache, plan=layout.plan)
        self.forward_calls += 1
        sample = (self.mask_id, cfg.temperature, cfg.top_k, cfg.top_p, self.generator)
        full = None  # the choice over the whole head, edit controls included: it decides structure
        if self.controls is None:
            tokens, conf = choose_tokens(out.logits, *sample)
        else:
            tokens, conf = choose_tokens(real_token_choice(out.logits, self.controls), *sample)
            if self.levenshtein:
                full = choose_tokens(out.logits, *sample)

        block_slots = [s for s, k in enumerate(kinds) if k != "mbe"]
        stats = self._update_blocks(rows, block_slots, [kinds[s] for s in block_slots], tokens[:, :B], conf[:, :B],
                                    [rows[s].block * B for s in block_slots], layout=layout,
                                    full=None if full is None else (full[0][:, :B], full[1][:, :B]))
        store_counts = []
        speculating = []
        for slot, (row, kind) in enumerate(zip(rows, kinds)):
            row.forwards += 1
            if kind == "mbe":
                n = layout.ends[slot] - layout.logit_starts[slot]
                frozen_until = layout.logit_starts[slot]
                edits = self._mbe_edits(row, layout.logit_starts[slot], tokens[slot, :n], conf[slot, :n],
                                        None if full is None else full[0][slot, :n])
                row.mbe_steps += 1
                held, row.held_draft = row.held_draft, None
                if not edits:
                    block_before = row.block
                    self._advance(row)
                    if held is not None and not row.done and row.block == block_before + 1:
                        speculating.append((row, held))
            else:
                had_masks, _, edits, finished = stats[slot]
                frozen_until = row.block * B
                if finished:
                    self._end_block(row)  # no post step: the row is done, or its MBE window follows
                elif not had_masks and not edits:
                    frozen_until = (row.block + 1) * B  # the input was the block's final content
                    block_before = row.block
                    self._end_block(row)
                    spec = layout.speculative[slot]
                    if spec and not row.done and row.phase == "mbe":
                        row.held_draft = _Draft.of(slot, B, tokens, conf, full)
                    elif spec and not row.done and row.block == block_before + 1:
                        speculating.append((row, _Draft.of(slot, B, tokens, conf, full)))
            store_counts.append(max(0, frozen_until - layout.starts[slot]))
        if speculating:
            # The speculative drafts of blocks that just ended: the first step of each next block.
            slots = [r.slot for r, _ in speculating]
            drafts = [d for _, d in speculating]
            full_drafts = None if full is None else (torch.stack([d.full_tokens for d in drafts]),
                                                     torch.stack([d.full_conf for d in drafts]))
            drafted = self._update_blocks(rows, slots, ["speculative"] * len(slots),
                                          torch.stack([d.tokens for d in drafts]), torch.stack([d.conf for d in drafts]),
                                          [r.block * B for r, _ in speculating], gathered=True, full=full_drafts)
            for row, _ in speculating:
                if drafted[row.slot][3]:
                    self._end_block(row)
        for row in rows:
            if cfg.stop_at_answer_end and not row.done and self._answer_complete(row):
                row.done = True
            if self.on_step is not None:
                self.on_step(row.index, self.canvas[row.slot, :row.length], row.trajectory.steps[-1])
        if cache is not None:
            cache.keep(layout.starts, store_counts)

    def _answer_complete(self, row: _Row) -> bool:
        """True when the generated canvas holds an EOS and no mask before the first one."""
        if self.eos_id is None:
            return False
        generated = self.canvas[row.slot, row.prompt_length:row.length]
        eos_at = (generated == self.eos_id).nonzero()
        return len(eos_at) > 0 and not (generated[:int(eos_at[0])] == self.mask_id).any()

    # ------------------------------------------------------------------ the update rules
    def _update_blocks(self, rows: list[_Row], slots: list[int], kinds: list[str], tok: torch.Tensor,
                       cf: torch.Tensor, block_starts: list[int], gathered: bool = False,
                       layout: "_Layout | None" = None,
                       full: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict[int, tuple]:
        """M2T + T2T (+ Levenshtein) on the active blocks of the rows in `slots`, all at once on the device,
        from this step's choices `tok`/`cf` ((R, B) for every row of the batch, or (len(slots), B) when
        `gathered`); returns per slot (masks before, fills, edits, finished), structural edits counted as
        edits; `finished`: the step completes the answer's last block with no post step (`finish_threshold`).
        With the step's `layout` and every row in `slots`, the block positions are the layout's (made
        once per layout).

        `full` (Levenshtein editing on): the choice over the whole head, shaped like `tok`. A position
        whose full arg-max is an edit control gets no substitution, and in a post step (no mask in the
        block) it is deleted or gets a [MASK] put before it (`model.levenshtein`); the block's tokens,
        and `committed`, move with the edits."""
        if not slots:
            return {}
        cfg, mask_id = self.cfg, self.mask_id
        everyone = len(slots) == self.canvas.shape[0]
        if layout is not None and everyone and not gathered:
            row_index, pos = layout.block_view(self)
            protected = pos < self.prompt_lengths[:, None]
        else:
            index = torch.tensor(slots, device=self.device)
            if not gathered and not everyone:
                tok, cf = tok.index_select(0, index), cf.index_select(0, index)
                if full is not None:
                    full = (full[0].index_select(0, index), full[1].index_select(0, index))
            pos = torch.tensor(block_starts, device=self.device)[:, None] + self.block_offsets  # (n, B)
            row_index = index[:, None]
            protected = pos < self.prompt_lengths.index_select(0, index)[:, None]
        current = self.canvas[row_index, pos]
        is_mask = current == mask_id
        confident = is_mask & (cf > cfg.threshold)
        if cfg.left_to_right:
            fallback = is_mask & (is_mask.cumsum(1) <= cfg.num_to_transfer)
        else:
            top = cf.masked_fill(~is_mask, float("-inf")).topk(min(cfg.num_to_transfer, cf.shape[1]), dim=1).indices
            fallback = torch.zeros_like(is_mask).scatter_(1, top, True) & is_mask
        commit = torch.where((confident.sum(1) >= cfg.num_to_transfer)[:, None], confident, fallback)
        edit = ~is_mask & ~protected & (tok != current) & (cf > cfg.editing_threshold)
        moved = None
        if full is not None:
            edit = edit & ~self._is_control(full[0])
            # Structure only in post steps: elsewhere every position counts as protected. The moves depend
            # on the decisions alone, so they are known before the host read (edits dropped by
            # `max_reverts` below are at real-token positions, never at a structural one).
            post = ~is_mask.any(1, keepdim=True)
            delete, insert = edit_decisions(current, full[0], full[1], mask_id=mask_id, delete_id=self.controls[0],
                                            insert_id=self.controls[1], delete_threshold=self.edit_thresholds[0],
                                            insert_threshold=self.edit_thresholds[1], protected=protected | ~post,
                                            written=commit | edit)
            moved = apply_block_edits(current, delete, insert, mask_id=mask_id)
            columns = [is_mask.sum(1), commit.sum(1), edit.sum(1), moved.num_edits, (moved.source < 0).sum(1)]
        else:
            columns = [is_mask.sum(1), commit.sum(1), edit.sum(1)]
        finishing = cfg.finish_threshold is not None
        if finishing:
            columns += self._finish_columns(current, commit, edit, tok, cf, protected, full)
        counts = torch.stack(columns, 1).tolist()  # the one host read
        if self.committed is not None and any(c[2] for c in counts):
            edit, dropped = self._limit_reverts([rows[s] for s in slots], row_index, pos, tok, edit)
            for c, d in zip(counts, dropped):
                c[2] -= d
        update = commit | edit
        block = torch.where(update, tok, current)
        shifted = moved is not None and any(c[3] for c in counts)
        self.canvas[row_index, pos] = self._follow(moved, block, mask_id) if shifted else block
        if self.committed is not None:
            held = torch.where(commit, tok, self.committed[row_index, pos])
            self.committed[row_index, pos] = self._follow(moved, held, -1) if shifted else held
            if shifted:
                self._move_revert_history([rows[s] for s in slots], pos, moved, [c[3] for c in counts])
        if self.record:
            self._record_block(rows, slots, kinds, pos, current, tok, commit, edit,
                               (moved, block, [c[3] for c in counts]) if shifted else None)
        out = {}
        for i, s in enumerate(slots):
            masks, fills, edits = counts[i][:3]
            structural, created = counts[i][3:5] if moved is not None else (0, 0)
            row = rows[s]
            row.commits += fills
            row.edits += edits
            row.structural += structural
            row.masks_left = masks - fills + created  # an insert, and the padding after a delete, are masks
            finished = False
            if finishing:
                sure, has_eos = counts[i][-2:]
                ends_answer = (bool(has_eos) and cfg.eos_early_stop) or row.block + 1 == row.num_blocks
                finished = bool(sure) and ends_answer and masks > 0 and row.phase == "draft"
            out[s] = (masks, fills, edits + structural, finished)
        return out

    def _finish_columns(self, current, commit, edit, tok, cf, protected, full) -> list[torch.Tensor]:
        """Per row: whether the step leaves its block complete (no mask), proposes no edit and backs
        every generated token above `finish_threshold`; and whether the block holds a generated EOS."""
        after = torch.where(commit, tok, current)
        sure = (tok == after) & (cf > self.cfg.finish_threshold)
        if full is not None:  # a position Levenshtein editing might delete or insert at is not settled
            sure &= ~self._is_control(full[0])
        complete = ~(after == self.mask_id).any(1) & ~edit.any(1) & (sure | protected).all(1)
        eos = self.eos_id if self.eos_id is not None else -1
        has_eos = ((after == eos) & ~protected).any(1)
        return [complete.long(), has_eos.long()]

    def _is_control(self, tokens: torch.Tensor) -> torch.Tensor:
        return (tokens == self.controls[0]) | (tokens == self.controls[1])

    @staticmethod
    def _follow(moved, values: torch.Tensor, fill: int) -> torch.Tensor:
        """`values` ((n, B), per block position) moved as the tokens moved; `fill` where a mask was made."""
        return torch.where(moved.source >= 0, values.gather(1, moved.source.clamp(min=0)), fill)

    @staticmethod
    def _move_revert_history(rows: list[_Row], pos: torch.Tensor, moved, structural: list[int]) -> None:
        """`max_reverts`' host-side history (tokens held, reverts) follows each moved token, so a token
        counts its reverts wherever the block shifts it; a new mask starts with none. Host reads, only
        with `max_reverts` on and only for rows that made a structural edit."""
        for i, row in enumerate(rows):
            if not structural[i]:
                continue
            start, sources = int(pos[i, 0]), moved.source[i].tolist()
            for history in (row.held, row.reverts):
                old = {p: history.pop(p) for p in range(start, start + len(sources)) if p in history}
                for j, src in enumerate(sources):
                    if src >= 0 and start + src in old:
                        history[start + j] = old[start + src]

    def _limit_reverts(self, rows: list[_Row], row_index: torch.Tensor, pos: torch.Tensor, tok: torch.Tensor,
                       edit: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
        """`edit` ((n, m), rows[i]'s positions pos[i]) without the reverts (a token the position held
        before) past `max_reverts` per position, and the edits dropped per row; the reverts kept are
        counted. Runs on the host, only on steps that propose an edit."""
        where = edit.nonzero().tolist()
        positions, new = pos[edit].tolist(), tok[edit].tolist()
        committed = self.committed[row_index, pos][edit].tolist()
        dropped = [0] * len(rows)
        drop = []
        for (i, j), p, t, c in zip(where, positions, new, committed):
            row = rows[i]
            if t == c or t in row.held.get(p, ()):
                if row.reverts.get(p, 0) >= self.cfg.max_reverts:
                    drop.append((i, j))
                    dropped[i] += 1
                    continue
                row.reverts[p] = row.reverts.get(p, 0) + 1
            row.held.setdefault(p, set()).add(t)
        if drop:
            edit = edit.clone()
            edit[tuple(torch.tensor(drop, device=edit.device).T)] = False
        return edit, dropped

    def _mbe_edits(self, row: _Row, window_start: int, tok: torch.Tensor, cf: torch.Tensor,
                   full_tok: torch.Tensor | None = None) -> int:
        """T2T over a Multi-Block Editing window (no masks are left there); returns the number of edits.
        A pass substitutes only (a structural edit would shift the blocks after it); with Levenshtein
        editing on (`full_tok`), a position whose full arg-max is an edit control is left as it is."""
        n = tok.shape[0]
        pos = torch.arange(window_start, window_start + n, device=self.device)[None]
        row_index = torch.tensor([[row.slot]], device=self.device)
        current = self.canvas[row_index, pos]
        edit = (pos >= row.prompt_length) & (current != self.mask_id) & (tok[None] != current) & (
            cf[None] > self.cfg.editing_threshold)
        if full_tok is not None:
            edit = edit & ~self._is_control(full_tok[None])
        n_edits = int(edit.sum())
        if self.committed is not None and n_edits:
            edit, dropped = self._limit_reverts([row], row_index, pos, tok[None], edit)
            n_edits -= dropped[0]
        if row.trajectory is not None:
            record = StepRecord(kind="mbe", block=row.block)
            record.t2t = list(zip(pos[edit].tolist(), current[edit].tolist(), tok[None][edit].tolist()))
            row.trajectory.steps.append(record)
        self.canvas[row_index, pos] = torch.where(edit, tok[None], current)
        row.edits += n_edits
        return n_edits

    @staticmethod
    def _record_block(rows, slots, kinds, pos, current, tok, commit, edit, structure=None) -> None:
        """Trajectory records of one block update (host reads; only when trajectories are recorded).
        `structure`: (BlockEdit, the blocks after fills and substitutions, structural edits per slot)."""
        for i, s in enumerate(slots):
            row = rows[s]
            if row.trajectory is None:
                continue
            record = StepRecord(kind=kinds[i], block=row.block)
            record.m2t = list(zip(pos[i][commit[i]].tolist(), tok[i][commit[i]].tolist()))
            record.t2t = list(zip(pos[i][edit[i]].tolist(), current[i][edit[i]].tolist(), tok[i][edit[i]].tolist()))
            row.trajectory.steps.append(record)
            if structure is not None and structure[2][i]:
                moved, block, _ = structure
                row.trajectory.structural[len(row.trajectory.steps) - 1] = moved.record(i, block, int(pos[i, 0]))


@dataclass
class _Layout:
    """One forward's layout over the batch: per row where its input starts and ends, where its logits
    start, and from where attention is bidirectional (Multi-Block Editing). Everything derived from it
    -- the network's ForwardPlan, the canvas index of the input ids, the block positions the update
    reads -- is made once here and reused by every step with the same layout."""

    starts: list[int]
    ends: list[int]
    logit_starts: list[int]
    input_index: torch.Tensor  # (R, Tq) canvas positions of the input ids
    plan: object  # model.network.ForwardPlan
    steady: bool  # static shapes and every row queries whole blocks from its active one: the compiled shape
    speculative: list[bool] = field(default_factory=list)
    _block_view: tuple | None = None

    def block_view(self, decoder: "_Decoder") -> tuple[torch.Tensor, torch.Tensor]:
        """(row index (R, 1), active-block positions (R, B)) of a layout whose rows all update their
        active block, which starts where their logits do."""
        if self._block_view is None:
            device = decoder.device
            pos = torch.tensor(self.logit_starts, device=device)[:, None] + decoder.block_offsets
            self._block_view = (torch.arange(len(self.starts), device=device)[:, None], pos)
        return self._block_view

    @classmethod
    def make(cls, decoder: "_Decoder", starts, ends, logit_starts, bidir_from, cache: KVCache | None) -> "_Layout":
        B, device = decoder.cfg.block_length, decoder.device
        q_len = max(e - s for s, e in zip(starts, ends))
        n_logits = max(e - ls for e, ls in zip(ends, logit_starts))
        starts_t = torch.tensor(starts, device=device)
        ends_t = torch.tensor(ends, device=device)
        q_pos = starts_t[:, None] + torch.arange(q_len, device=device)[None, :]  # (R, Tq) absolute positions
        q_valid = q_pos < ends_t[:, None]
        key_width = cache.capacity if cache is not None and decoder.static else None
        if cache is not None:  # keys are the cache slots 0 .. max end (or all): kept prefix, then this step's queries
            k_pos = torch.arange(key_width or max(ends), device=device).expand(len(starts), -1)
            k_valid = k_pos < ends_t[:, None]
        else:
            k_pos, k_valid = q_pos, q_valid
        mask = additive_mask(window_block_mask(q_pos, k_pos, B, k_valid, torch.tensor(bidir_from, device=device)),
                             decoder.lm.dtype)
        logit_idx = (torch.tensor(logit_starts, device=device) - starts_t)[:, None] + torch.arange(n_logits, device=device)
        logit_idx = torch.minimum(logit_idx, (ends_t - starts_t - 1)[:, None])  # (R, K), padded by repetition
        steady = decoder.static and all(e - s == q_len and ls == s for s, e, ls in zip(starts, ends, logit_starts))
        plan = decoder.lm.plan(len(starts), q_len, mask, q_pos, cache, logit_idx, None if steady else q_valid,
                               key_width=key_width, indexed_cache_write=decoder.static)
        input_index = q_pos.clamp(max=decoder.canvas.shape[1] - 1)  # padded slots read anything: they are skipped
        return cls(list(starts), list(ends), list(logit_starts), input_index, plan, steady)


_COMPILED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def compiled_forward(lm, mode: str):
    """`lm.forward` through torch.compile, made once per network and mode: compiled code is reused by
    every later decode with the same shapes instead of being compiled again."""
    per_mode = _COMPILED.setdefault(lm, {})
    if mode not in per_mode:
        per_mode[mode] = torch.compile(lm.forward, mode=mode)
    return per_mode[mode]


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
    check_edit_thresholds(lm.config, cfg.delete_threshold, cfg.insert_threshold)
    if cfg.cuda_graphs and lm.device.type != "cuda":
        raise ValueError(f"DecodeConfig.cuda_graphs needs a model on a CUDA device, this one is on {lm.device}")
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
            row.trajectory = Trajectory(row.prompt_length, cfg.block_length, mask_id, row.initial_canvas(mask_id))
    decoder.record = record
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
        commits=[r.commits for r in rows], canvases=[r.canvas for r in rows],
        forward_calls=decoder.forward_calls, wall_seconds=wall,
        trajectories=[r.trajectory for r in rows] if record else None, stopped=[r.stopped for r in rows],
        structural_edits=[r.structural for r in rows])
