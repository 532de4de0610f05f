"""EBPO's vectorised block likelihood (issue 5, item 3): one forward per noise level vs per-block loops.

For a batch of S responses of `blocks` blocks each, one noise level, it times
  (a) loop   : the definition, one forward per (sequence, block) over clean blocks < b ⊕ noisy block b
               (components.rl.estimator.block_log_likelihoods_reference);
  (b) blocks : one forward per block over the whole batch (the best a per-block loop can batch);
  (c) vector : ONE forward over prefix ⊕ noisy ⊕ clean under the block-causal training mask
               (components.rl.estimator.block_log_likelihoods);
checks that all three give the same per-block log-likelihoods, and prints medians and ratios,
forward only (no grad) and forward+backward (what an EBPO step pays; (a) is skipped there, it is
(b) with batch 1). The last column is (c) with the edit terms (issue 19: 10% of the visible response
tokens substituted, their log p of being edited back added; the same one forward). Repeats are
interleaved so machine contention hits every variant alike.

    .venv/bin/python benchmarks/ebpo_estimator_speed.py --threads 1 --blocks 8 16 32
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from components.rl.estimator import (  # noqa: E402
    SequenceLayout,
    block_log_likelihoods,
    block_log_likelihoods_reference,
    draw_masks,
    draw_substitutes,
)
from model import DiffusionLM, ModelConfig  # noqa: E402
from model.masks import block_causal_mask  # noqa: E402


def per_block_batched(lm, layout: SequenceLayout, masked: torch.Tensor, mask_id: int) -> torch.Tensor:
    """One forward per block, all sequences at once (equal prompt and response lengths)."""
    B = layout.block_length
    P, L = int(layout.prompt_lengths[0]), int(layout.lengths[0])
    first, nb = P // B, int(layout.num_blocks()[0])
    out = []
    for rb in range(nb):
        start, end = (first + rb) * B, min((first + rb + 1) * B, L)
        ids = layout.tokens[:, :end].clone()
        hide = masked[:, start:end] & layout.response_positions()[:, start:end]
        ids[:, start:end] = torch.where(hide, torch.full_like(ids[:, start:end], mask_id), ids[:, start:end])
        logits = lm(ids, attention_mask=block_causal_mask(end, B)).logits[:, start:end]
        lp = F.log_softmax(logits.float(), -1).gather(-1, layout.tokens[:, start:end, None])[..., 0]
        out.append(torch.where(hide, lp, torch.zeros_like(lp)).sum(-1))
    return torch.stack(out, 1)  # (S, NB)


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--blocks", type=int, nargs="+", default=[8, 16, 32])
    ap.add_argument("--block-length", type=int, default=8)
    ap.add_argument("--batch", type=int, default=8, help="sequences (S)")
    ap.add_argument("--prompt-length", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--loop-repeats", type=int, default=2, help="repeats of the slow per-(sequence, block) loop")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=512)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    mask_id = args.vocab - 1
    cfg = ModelConfig.tiny(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=3 * args.hidden,
                           num_hidden_layers=args.layers, mask_token_id=mask_id, eos_token_id=1, pad_token_id=0,
                           max_position_embeddings=4096)
    lm = DiffusionLM(cfg)
    print(f"model: hidden {args.hidden}, {args.layers} layers, vocab {args.vocab}, "
          f"{lm.num_parameters() / 1e6:.2f}M params; S={args.batch}, block_length={args.block_length}, "
          f"prompt={args.prompt_length}, threads={args.threads}")
    results = []
    header = (f"{'blocks':>6} {'tokens':>6} | {'loop ms':>9} {'blocks ms':>9} {'vector ms':>9} | {'loop/vec':>8} "
              f"{'blk/vec':>7} | {'fwd+bwd blk ms':>14} {'vec ms':>8} {'blk/vec':>7} | {'vec+edit ms':>11} {'edit/vec':>8} | "
              f"{'max |diff|':>10}")
    print(header)
    print("-" * len(header))
    for nb in args.blocks:
        g = torch.Generator().manual_seed(nb)
        R = nb * args.block_length - args.prompt_length % args.block_length  # responses end on a block boundary
        prompts = torch.randint(3, mask_id, (args.batch, args.prompt_length), generator=g).tolist()
        responses = torch.randint(3, mask_id, (args.batch, R), generator=g).tolist()
        layout = SequenceLayout.from_lists(prompts, responses, args.block_length)
        assert int(layout.num_blocks()[0]) == nb
        masks = draw_masks(layout, torch.tensor([0.5], dtype=torch.float64), mask_id, g)
        masked = masks[0]
        subs = draw_substitutes(layout, masks, 0.1, args.vocab, {mask_id}, g)[0]

        lm.eval()
        with torch.no_grad():
            vec = block_log_likelihoods(lm, layout, masked, mask_id).per_block
            blk = per_block_batched(lm, layout, masked, mask_id)
            ref = block_log_likelihoods_reference(lm, layout, masked, mask_id)[0]
        diff = max(float((vec - blk).abs().max()), float((vec - ref).abs().max()))

        def fwd_vec():
            with torch.no_grad():
                block_log_likelihoods(lm, layout, masked, mask_id)

        def fwd_blk():
            with torch.no_grad():
                per_block_batched(lm, layout, masked, mask_id)

        def fwd_loop():
            with torch.no_grad():
                block_log_likelihoods_reference(lm, layout, masked, mask_id)

        def train_vec():
            block_log_likelihoods(lm, layout, masked, mask_id).per_block.sum().backward()
            lm.zero_grad(set_to_none=True)

        def train_edit():
            out = block_log_likelihoods(lm, layout, masked, mask_id, subs)
            (out.per_block.sum() + out.edit_logp.sum()).backward()
            lm.zero_grad(set_to_none=True)

        def train_blk():
            per_block_batched(lm, layout, masked, mask_id).sum().backward()
            lm.zero_grad(set_to_none=True)

        times: dict[str, list[float]] = {k: [] for k in ("loop", "blocks", "vector", "train_blocks", "train_vector",
                                                         "train_vector_edit")}
        for fn in (fwd_vec, fwd_blk, train_vec, train_blk, train_edit):  # warm-up
            fn()
        for r in range(args.repeats):
            times["vector"].append(timed(fwd_vec))
            times["blocks"].append(timed(fwd_blk))
            times["train_vector"].append(timed(train_vec))
            times["train_blocks"].append(timed(train_blk))
            times["train_vector_edit"].append(timed(train_edit))
            if r < args.loop_repeats:
                times["loop"].append(timed(fwd_loop))
        med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
        row = {"blocks": nb, "response_tokens": R, "median_ms": med, "max_abs_diff": diff,
               "loop_over_vector": med["loop"] / med["vector"], "blocks_over_vector": med["blocks"] / med["vector"],
               "train_blocks_over_vector": med["train_blocks"] / med["train_vector"],
               "train_edit_over_vector": med["train_vector_edit"] / med["train_vector"]}
        results.append(row)
        print(f"{nb:>6} {R:>6} | {med['loop']:>9.1f} {med['blocks']:>9.1f} {med['vector']:>9.1f} | "
              f"{row['loop_over_vector']:>7.1f}x {row['blocks_over_vector']:>6.1f}x | {med['train_blocks']:>14.1f} "
              f"{med['train_vector']:>8.1f} {row['train_blocks_over_vector']:>6.1f}x | {med['train_vector_edit']:>11.1f} "
              f"{row['train_edit_over_vector']:>7.2f}x | {diff:>10.2e}")
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)}, "results": results}, indent=2))


if __name__ == "__main__":
    main()
