"""Diagnostics for an EBPO run that does not improve the model (issue 5).

Three questions, one subcommand each:

  drift     How far did RL move the weights? Per-tensor mean |Δw| relative to mean |w|, and
            ‖Δθ‖/‖θ‖, between the starting checkpoint and the RL checkpoint.
  noise     Is the model fragile? Greedy accuracy after adding i.i.d. Gaussian noise to every
            weight (std = rel × the tensor's mean |w|), for a few sizes and seeds. If noise as large
            as the measured drift does not hurt, a fall during RL comes from the direction of the
            updates, not their size.
  decoding  Does the evaluation measure the policy RL optimises? Accuracy and TPF of each checkpoint
            greedy and sampled (rollouts sample at T = 1), in S and Q mode.

    .venv/bin/python benchmarks/ebpo_diagnostics.py drift START_MODEL RL_CHECKPOINT
    .venv/bin/python benchmarks/ebpo_diagnostics.py noise START_MODEL --family sudoku4 --block 16
    .venv/bin/python benchmarks/ebpo_diagnostics.py decoding START_MODEL RL_CHECKPOINT --family sudoku4 --block 16
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from components.presets import load_decode_config  # noqa: E402
from components.families import get_family  # noqa: E402
from model import DiffusionLM  # noqa: E402
from model.tokenizer import load_tokenizer  # noqa: E402
from threshold_sweep import add_heldout_args, decode_and_score, encode_prompts  # noqa: E402  (same folder)

MODES = {"S": "speedy", "Q": "quality"}  # the presets in conf/decode


def accuracy(lm, tok, family, examples, prompts, args, mode: str, temperature: float = 0.0,
             seed: int = 0) -> tuple[float, float]:
    """(score in %, TPF) of one decoding of `prompts` with the mode's preset."""
    cfg = load_decode_config(MODES[mode], block_length=args.block, gen_length=args.gen_length, max_batch_size=64,
                             temperature=temperature, seed=seed)
    score, res = decode_and_score(lm, tok, family, examples, prompts, cfg)
    return score, res.tokens_per_forward


def cmd_drift(args) -> None:
    start = DiffusionLM.from_pretrained(args.checkpoints[0]).state_dict()
    moved = DiffusionLM.from_pretrained(args.checkpoints[1]).state_dict()
    rows, delta_sq, total_sq = [], 0.0, 0.0
    for name, w in start.items():
        d = moved[name].float() - w.float()
        rows.append((float(d.abs().mean() / w.float().abs().mean().clamp_min(1e-12)), name, float(d.abs().mean())))
        delta_sq += float(d.pow(2).sum())
        total_sq += float(w.float().pow(2).sum())
    print(f"||Δθ|| / ||θ|| = {(delta_sq / total_sq) ** 0.5:.4g}")
    print("largest relative moves (mean |Δw| / mean |w|, mean |Δw|):")
    for rel, name, absolute in sorted(rows, reverse=True)[:args.top]:
        print(f"  {rel:.3e}  {absolute:.3e}  {name}")


def cmd_noise(args, family, examples) -> None:
    base = DiffusionLM.from_pretrained(args.checkpoints[0]).eval()
    tok = load_tokenizer(args.checkpoints[0])
    prompts = encode_prompts(tok, examples)
    unperturbed = accuracy(base, tok, family, examples, prompts, args, args.mode)[0]
    print(f"unperturbed ({args.mode} mode, greedy): accuracy {unperturbed:.1f}")
    for rel in args.rel:
        for seed in range(args.seeds):
            lm = copy.deepcopy(base)
            g = torch.Generator().manual_seed(seed)
            with torch.no_grad():
                for p in lm.parameters():
                    p.add_(torch.randn(p.shape, generator=g) * rel * p.abs().mean())
            acc, tpf = accuracy(lm, tok, family, examples, prompts, args, args.mode)
            print(f"noise {rel:g} x mean|w|, seed {seed}: accuracy {acc:.1f}  TPF {tpf:.2f}")


def cmd_decoding(args, family, examples) -> None:
    print("| checkpoint | mode | decoding | accuracy | TPF |\n|---|---|---|---|---|")
    for checkpoint in args.checkpoints:
        lm = DiffusionLM.from_pretrained(checkpoint).eval()
        tok = load_tokenizer(checkpoint)
        prompts = encode_prompts(tok, examples)
        for mode in MODES:
            for temperature in (0.0, 1.0):
                seeds = [0] if temperature == 0.0 else list(range(args.seeds))
                runs = [accuracy(lm, tok, family, examples, prompts, args, mode, temperature, s) for s in seeds]
                acc = sum(r[0] for r in runs) / len(runs)
                tpf = sum(r[1] for r in runs) / len(runs)
                label = "greedy" if temperature == 0.0 else f"T={temperature:g}, mean of {len(seeds)} seeds"
                print(f"| {checkpoint} | {mode} | {label} | {acc:.1f} | {tpf:.2f} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=["drift", "noise", "decoding"])
    add_heldout_args(ap, example_seed=1)  # 1: the RL stage's eval set for prompts.seed 0 (it uses seed + 1)
    ap.add_argument("--mode", choices=sorted(MODES), default="S", help="noise: the decoding mode to score")
    ap.add_argument("--rel", type=float, nargs="+", default=[1e-3, 3e-3, 1e-2], help="noise sizes")
    ap.add_argument("--seeds", type=int, default=3, help="noise draws / sampling seeds")
    ap.add_argument("--top", type=int, default=10, help="drift: tensors listed")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.command == "drift":
        if len(args.checkpoints) != 2:
            ap.error("drift needs exactly two checkpoints: START_MODEL RL_CHECKPOINT")
        cmd_drift(args)
        return
    family = get_family(args.family, **json.loads(args.params))
    examples = family.make("heldout", args.n, seed=args.example_seed)
    (cmd_noise if args.command == "noise" else cmd_decoding)(args, family, examples)


if __name__ == "__main__":
    main()
