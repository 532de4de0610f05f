"""The two baselines of design §9, measured beside our decoder on the same weights.

`reference_generate` re-implements the authors' reference `generate()` loop on its own, deliberately
simply and without any of our decoder's machinery (no cache, no batching, no shared code with
`model/decoding.py`), following the quirk list of shared/golden/README.md:
  * the canvas is ceil((P+G)/B)*B tokens; the first processed block is P // B;
  * every forward re-encodes the whole prefix [0, (b+1)*B) under the block-causal mask, given as an
    additive float mask (0 / -inf) as the reference builds it, and computes logits for every window
    position (the reference's cost) although only the last B are read;
  * greedy scoring: arg-max and its float32 softmax probability over the whole vocabulary;
  * M2T commits every mask strictly above the threshold when at least `num_to_transfer` qualify,
    otherwise the min(num_to_transfer, #masks) most confident; T2T edits non-mask, non-prompt
    positions (as they were when the step began) strictly above the editing threshold;
  * a step that starts with no mask bumps the post-step counter, and the block ends before the forward
    once it exceeds `max_post_steps`; after a forward the block ends if it had no mask and no edit;
  * EOS early stop after a block; the output is canvas[P, P+G) cut after the first EOS.
`finish_threshold`, which the reference lacks, ends the answer's last block on the drafting step
that completes it, as `model/decoding.py` describes.
Levenshtein editing (LLaDA2.2 §3.1; `delete_threshold` / `insert_threshold`), which the reference
lacks, follows `model.levenshtein`'s per-step order: on a model with the edit-control rows, fills and
substitutions choose over real tokens only; with Levenshtein on, a position whose arg-max over the
whole head is a control is not substituted, and in a post step `levenshtein_step` deletes / inserts
there; a step with structural edits counts as editing (the block goes on).
One deliberate deviation: where the reference would commit the mask token itself (its arg-max is the
mask id) and then loop forever, we take the best non-mask token, as our decoder does.

`autoregressive_config` gives the autoregressive-equivalent baseline: our decoder forced to commit
exactly one token per forward, left to right (threshold 1 can never be exceeded, so the fallback
commits the leftmost mask each step; editing and post steps off), ending a prompt on the forward that
writes its EOS. That is what an AR model of the same size spends: one forward per answer token. (In
confidence order the model fills the EOS padding after the answer first, and a block-end stop pays
for every padded position: about half the true AR throughput.)
"""

from __future__ import annotations

import dataclasses
import time

import torch

from model.decoding import DecodeConfig, GenerationResult
from model.levenshtein import check_edit_thresholds, levenshtein_step, real_token_choice


def _ids(lm, cfg: DecodeConfig) -> tuple[int, int | None]:
    mask_id = cfg.mask_id if cfg.mask_id is not None else lm.config.mask_token_id
    eos_id = cfg.eos_id if cfg.eos_id is not None else lm.config.eos_token_id
    if mask_id is None:
        raise ValueError("reference_generate: no mask id (DecodeConfig.mask_id and config.mask_token_id are unset)")
    return mask_id, eos_id


def _greedy(logits: torch.Tensor, mask_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Arg-max token and its softmax probability over the full vocabulary (mask token included)."""
    probs = logits.float().softmax(-1)  # (B, V)
    conf, tok = probs.max(-1)
    if (tok == mask_id).any():  # the reference would loop forever here; take the best real token
        probs = probs.clone()
        probs[:, mask_id] = -1.0
        alt_conf, alt_tok = probs.max(-1)
        conf = torch.where(tok == mask_id, alt_conf, conf)
        tok = torch.where(tok == mask_id, alt_tok, tok)
    return tok, conf


@torch.no_grad()
def reference_generate(lm, prompt: list[int], cfg: DecodeConfig) -> GenerationResult:
    """Decode one prompt exactly as the reference loop does (batch of one, no cache)."""
    if cfg.temperature != 0.0:
        raise ValueError("reference_generate is greedy only (temperature must be 0)")
    if cfg.mbe_window:
        raise ValueError("reference_generate has no Multi-Block Editing (mbe_window must be 0)")
    if not prompt:
        raise ValueError("reference_generate: the prompt is empty")
    mask_id, eos_id = _ids(lm, cfg)
    check_edit_thresholds(lm.config, cfg.delete_threshold, cfg.insert_threshold)
    controls = (lm.config.delete_token_id, lm.config.insert_token_id)
    controls = None if None in controls else controls
    off = float("inf")
    B, G, P = cfg.block_length, cfg.gen_length, len(prompt)
    num_blocks = -(-(P + G) // B)
    total = num_blocks * B
    device = lm.device
    x = torch.full((1, total), mask_id, dtype=torch.long, device=device)
    x[0, :P] = torch.tensor(prompt, dtype=torch.long, device=device)
    block_of = torch.arange(total, device=device) // B
    additive = torch.zeros(total, total, device=device).masked_fill(block_of[None, :] > block_of[:, None],
                                                                   float("-inf"))[None, None]  # (1, 1, T, T)
    positions = torch.arange(total, device=device)
    forwards = edits = commits = structural = 0
    was_training = lm.training
    lm.eval()
    start = time.perf_counter()
    try:
        for b in range(P // B, num_blocks):
            lo, W = b * B, (b + 1) * B
            post_steps = 0
            while True:
                active = x[0, lo:W]  # a view: writes go to the canvas
                is_mask = active == mask_id
                had_masks = bool(is_mask.any())
                if not had_masks:
                    post_steps += 1
                    if post_steps > cfg.max_post_steps:
                        break
                logits = lm(x[:, :W], attention_mask=additive[:, :, :W, :W],
                            position_ids=positions[None, :W]).logits[0, -B:]  # (B, V)
                forwards += 1
                full_tok, full_conf = _greedy(logits, mask_id)
                tok, conf = (full_tok, full_conf) if controls is None else _greedy(
                    real_token_choice(logits, controls), mask_id)
                commit = torch.zeros_like(is_mask)
                if had_masks:
                    above = is_mask & (conf > cfg.threshold)
                    if int(above.sum()) >= cfg.num_to_transfer:
                        commit = above
                    else:
                        k = min(cfg.num_to_transfer, int(is_mask.sum()))
                        commit[conf.masked_fill(~is_mask, float("-inf")).topk(k).indices] = True
                editable = ~is_mask & (positions[lo:W] >= P)
                edit = editable & (tok != active) & (conf > cfg.editing_threshold)
                if cfg.levenshtein:
                    edit &= (full_tok != controls[0]) & (full_tok != controls[1])
                write = commit | edit
                active[write] = tok[write]
                commits += int(commit.sum())
                edits += int(edit.sum())
                moves = 0
                if cfg.levenshtein and not had_masks:
                    step = levenshtein_step(
                        active, full_tok, full_conf, mask_id=mask_id, delete_id=controls[0], insert_id=controls[1],
                        delete_threshold=off if cfg.delete_threshold is None else cfg.delete_threshold,
                        insert_threshold=off if cfg.insert_threshold is None else cfg.insert_threshold,
                        protected=positions[lo:W] < P, written=write)
                    active[:] = step.tokens
                    moves = int(step.num_edits)
                    structural += moves
                if not had_masks and not bool(edit.any()) and not moves:
                    break
                if had_masks and cfg.finish_threshold is not None and not bool(edit.any()):
                    # The finish rule: the answer's last block, complete and backed above the threshold,
                    # ends without its verify forward.
                    generated = positions[lo:W] >= P
                    sure = (tok == active) & (conf > cfg.finish_threshold)
                    if cfg.levenshtein:
                        sure &= (full_tok != controls[0]) & (full_tok != controls[1])
                    has_eos = eos_id is not None and bool((active[generated] == eos_id).any())
                    ends_answer = (has_eos and cfg.eos_early_stop) or b == num_blocks - 1
                    if ends_answer and not bool((active == mask_id).any()) and bool(sure[generated].all()):
                        break
            if cfg.eos_early_stop and eos_id is not None:
                generated = x[0, P:W]
                if not bool((generated == mask_id).any()) and bool((generated == eos_id).any()):
                    break
    finally:
        lm.train(was_training)
    wall = time.perf_counter() - start
    out = x[0, P:P + G].tolist()
    if eos_id is not None and eos_id in out:
        out = out[:out.index(eos_id) + 1]
    return GenerationResult(sequences=[out], forwards=[forwards], edits=[edits], commits=[commits],
                            canvases=[x[0].tolist()], forward_calls=forwards, wall_seconds=wall,
                            structural_edits=[structural])


def autoregressive_config(cfg: DecodeConfig) -> DecodeConfig:
    """`cfg` turned into the one-token-per-forward baseline (cache on, same block/gen lengths)."""
    return dataclasses.replace(cfg, threshold=1.0, editing_threshold=2.0, num_to_transfer=1, max_post_steps=0,
                               mbe_window=0, speculative_verify=False, temperature=0.0, use_cache=True,
                               left_to_right=True, stop_at_answer_end=True)
