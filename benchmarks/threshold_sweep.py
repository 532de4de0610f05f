"""Score and TPF over a grid of decoding settings, for one or more trained checkpoints (issue 7, item 4).

For each checkpoint it decodes the held-out split of a synthetic family under every
(τ_mask, τ_edit, max_post_steps) in the grid (τ_edit > 1 disables editing) and prints the grid, then
a summary per checkpoint: its best-scoring setting (the Q-mode candidate) and the fastest setting
that loses at most `--max-loss` points against it (the S-mode candidate), with their TPF ratio.
All checkpoints see the same prompts; decoding is greedy unless `--temperature` > 0 (seeded).
Every edit of every cell is classified against the reference answer as the evaluation does
(components.edits.judge_edits): fixes, breaks, neutral, oscillations, precision = fixes / (fixes + breaks).

    .venv/bin/python benchmarks/threshold_sweep.py outputs/train_table_sudoku1500/m2t/sft/model \
        outputs/train_table_sudoku1500/t2t_keep/sft/model --family sudoku4 --block 16 --n 200
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from components.edits import FORWARD_KINDS, EditStats, forward_split, judge_example_edits  # noqa: E402
from components.rl.rollouts import encode_prompt  # noqa: E402
from components.families import get_family  # noqa: E402
from model import DecodeConfig, DiffusionLM, generate  # noqa: E402
from model.tokenizer import load_tokenizer  # noqa: E402


def forward_kinds(res) -> dict:
    """Where the forwards go, per prompt on average (components.edits.forward_split): drafting steps
    (masks left in the block), post steps that edited (each buys another post step), verification
    steps (a post step with no edit, which ends the block; with speculation its forward also drafted
    the next block) and Multi-Block Editing passes."""
    n = len(res.trajectories)
    total = dict.fromkeys(FORWARD_KINDS, 0)
    for traj in res.trajectories:
        for kind, count in forward_split(traj).items():
            total[kind] += count
    return {"draft": total["draft"] / n, "post_edit": total["edit"] / n, "verify": total["verify"] / n,
            "mbe": total["mbe"] / n, "tokens": sum(len(s) for s in res.sequences) / n}


def add_heldout_args(ap: argparse.ArgumentParser, example_seed: int = 123) -> None:
    """The task, decoding shape and held-out sample options (shared with ebpo_diagnostics.py)."""
    ap.add_argument("checkpoints", type=Path, nargs="+")
    ap.add_argument("--family", default="sudoku4")
    ap.add_argument("--params", default="{}", help="family difficulty as JSON, e.g. '{\"min_clues\": 8}'")
    ap.add_argument("--block", type=int, default=16)
    ap.add_argument("--gen-length", type=int, default=32)
    ap.add_argument("--n", type=int, default=200, help="held-out examples")
    ap.add_argument("--example-seed", type=int, default=example_seed,
                    help="which held-out sample: choose thresholds on one seed, report on another")


def encode_prompts(tok, examples) -> list[list[int]]:
    """The prompts in the SFT chat format, exactly as the RL stage encodes them."""
    return [encode_prompt(tok, e.prompt, "chat") for e in examples]


def decode_and_score(lm, tok, family, examples, prompts, cfg: DecodeConfig):
    """(score in %, GenerationResult) of one decoding setting."""
    with torch.no_grad():
        res = generate(lm, prompts, cfg)
    ok = sum(bool(family.score(tok.decode(s, skip_special_tokens=True).strip(), e))
             for e, s in zip(examples, res.sequences))
    return 100.0 * ok / len(examples), res


def classify(tok, family, examples, res) -> EditStats:
    """Every edit of a recorded decode, judged as the evaluation judges it: against the reference
    answer where it is the one valid answer, or, for a correct output, against that output."""
    stats = EditStats()
    for e, seq, trajectory in zip(examples, res.sequences, res.trajectories):
        correct = bool(family.score(tok.decode(seq, skip_special_tokens=True).strip(), e))
        stats = stats + judge_example_edits(trajectory, seq, tok, e, correct=correct)
    return stats


def _cell(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def sweep(checkpoint: Path, family, examples, args) -> list[dict]:
    lm = DiffusionLM.from_pretrained(checkpoint).eval()
    tok = load_tokenizer(checkpoint)
    prompts = encode_prompts(tok, examples)
    rows = []
    for tau_mask in args.tau_mask:
        for tau_edit in args.tau_edit:
            for post in (args.max_post if tau_edit <= 1 else [args.max_post[-1]]):  # no edits: post steps moot
                cfg = DecodeConfig(block_length=args.block, gen_length=args.gen_length, threshold=tau_mask,
                                   editing_threshold=tau_edit, max_post_steps=post, eos_early_stop=True,
                                   max_batch_size=64, temperature=args.temperature, seed=args.seed,
                                   speculative_verify=args.speculative, record_trajectory=True)
                score, res = decode_and_score(lm, tok, family, examples, prompts, cfg)
                edits = classify(tok, family, examples, res)
                rows.append({"tau_mask": tau_mask, "tau_edit": tau_edit, "max_post_steps": post,
                             "score": score, "tpf": res.tokens_per_forward,
                             "edits": sum(res.edits), **forward_kinds(res), **edits.named(),
                             "edit_unjudged": edits.unjudged})
                r = rows[-1]
                print(f"| {checkpoint.parent.parent.name} | {tau_mask} | {'off' if tau_edit > 1 else tau_edit} | "
                      f"{post} | {r['score']:.1f} | {r['tpf']:.2f} | {r['edits']} | {r['edit_fixes']:.0f} | "
                      f"{r['edit_breaks']:.0f} | {r['edit_neutral']:.0f} | {_cell(r['edit_precision'], '.2f')} | "
                      f"{r['oscillations_per_100_tokens']:.2f} | {r['draft']:.2f} | "
                      f"{r['post_edit']:.2f} | {r['verify']:.2f} | {r['tokens']:.1f} |", flush=True)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_heldout_args(ap)
    ap.add_argument("--tau-mask", type=float, nargs="+", default=[0.3, 0.5, 0.7, 0.9])
    ap.add_argument("--tau-edit", type=float, nargs="+", default=[0.7, 0.9, 0.95, 1.01])
    ap.add_argument("--max-post", type=int, nargs="+", default=[1, 2, 16], help="max_post_steps values")
    ap.add_argument("--max-loss", type=float, default=3.0, help="points an S-mode candidate may lose")
    ap.add_argument("--temperature", type=float, default=0.0, help="> 0 samples (seeded by --seed)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-speculative", dest="speculative", action="store_false",
                    help="turn speculative verification off (the presets have it on)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    family = get_family(args.family, **json.loads(args.params))
    examples = family.make("heldout", args.n, seed=args.example_seed)
    print("| model | τ_mask | τ_edit | max_post_steps | score | TPF | edits | fixes | breaks | neutral | precision "
          "| osc/100 tok | draft fw | edit-post fw | verify fw | tokens |\n" + "|---" * 16 + "|")
    results = {str(c): sweep(c, family, examples, args) for c in args.checkpoints}
    print("\n| model | best score: setting | score | TPF | fastest within "
          f"{args.max_loss:g} pts: setting | score | TPF | TPF ratio |\n|---|---|---|---|---|---|---|---|")
    for name, rows in results.items():
        best = max(rows, key=lambda r: (r["score"], r["tpf"]))
        fast = max((r for r in rows if r["score"] >= best["score"] - args.max_loss), key=lambda r: r["tpf"])

        def label(r):
            return f"{r['tau_mask']}/{'off' if r['tau_edit'] > 1 else r['tau_edit']}/post {r['max_post_steps']}"

        print(f"| {Path(name).parent.parent.name} | {label(best)} | {best['score']:.1f} | {best['tpf']:.2f} | "
              f"{label(fast)} | {fast['score']:.1f} | {fast['tpf']:.2f} | {fast['tpf'] / best['tpf']:.2f} |")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": results},
                                        indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
