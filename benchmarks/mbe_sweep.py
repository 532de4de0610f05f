"""Multi-Block Editing on a trained model: score, TPF and edits per MBE window (paper Table 4, small).

Decodes the held-out split of a synthetic family with the given checkpoint at Q-mode and S-like
thresholds, each with mbe_window 0 (off), 1 and 2, and prints score / TPF / edits side by side.

    .venv/bin/python benchmarks/mbe_sweep.py outputs/train_table_sudoku1500/t2t_keep/sft/model \
        --family sudoku4 --block 16 --n 200
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from components.families import get_family  # noqa: E402
from model import DecodeConfig, DiffusionLM, generate  # noqa: E402
from model.tokenizer import load_tokenizer  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--family", default="sudoku4")
    ap.add_argument("--block", type=int, default=16)
    ap.add_argument("--gen-length", type=int, default=32)
    ap.add_argument("--n", type=int, default=200, help="held-out examples")
    ap.add_argument("--windows", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    lm = DiffusionLM.from_pretrained(args.checkpoint).eval()
    tok = load_tokenizer(args.checkpoint)
    family = get_family(args.family)
    examples = family.make("heldout", args.n, seed=123)
    prompts = [tok.encode(tok.apply_chat_template([{"role": "user", "content": e.prompt}])) for e in examples]
    print("| τ_mask / τ_edit | MBE window | score | TPF | edits |\n|---|---|---|---|---|")
    for tau_mask, tau_edit in [(0.9, 0.95), (0.7, 0.9)]:
        for window in args.windows:
            cfg = DecodeConfig(block_length=args.block, gen_length=args.gen_length, threshold=tau_mask,
                               editing_threshold=tau_edit, max_post_steps=16, eos_early_stop=True,
                               max_batch_size=64, mbe_window=window)
            with torch.no_grad():
                res = generate(lm, prompts, cfg)
            ok = sum(bool(family.score(tok.decode(s, skip_special_tokens=True).strip(), e))
                     for e, s in zip(examples, res.sequences))
            print(f"| {tau_mask} / {tau_edit} | {window} | {100 * ok / len(examples):.1f} | "
                  f"{res.tokens_per_forward:.2f} | {sum(res.edits)} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
