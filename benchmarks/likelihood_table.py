"""Does the likelihood rank answers the way the model generates them?

Multiple-choice items are built from a task's held-out prompts whose answer is unique: the true answer
and near misses of the same length in tokens (a permutation of its tokens, one token changed to
another of its tokens, two neighbouring tokens swapped). The table prints, side by side, the greedy
decoder's accuracy on the same prompts (generation accuracy) and, per likelihood estimator and sample
count, how often the truth scores strictly above every near miss (ranking accuracy), per near-miss
kind, with the forwards each choice cost. Sampled estimators run under several seeds (mean and
spread). A last block says whether the model itself separates the truth from a one-token corruption:
with every other answer token visible, how often log p(true token) > log p(changed token) at the
changed position, and the mean gap.

    python -m benchmarks.likelihood_table --model DIR [--tasks sort16 latin] [--num 64]
        [--estimators crn:8 crn:16 antithetic:16 mc:8 mc:16 left_to_right decode_order] [--seeds 3] [--text]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

NEAR_MISSES = ("permutation", "one_token", "swap")


@dataclass
class Item:
    prompt: list[int]
    truth: list[int]
    misses: dict[str, list[int]]  # near-miss kind -> continuation
    generated_right: bool


def near_misses(truth: list[int], g: torch.Generator) -> dict[str, list[int]]:
    """Same-length wrong answers built from the truth's own tokens (kinds without a distinct one are left out)."""
    out: dict[str, list[int]] = {}
    if len(set(truth)) > 1:
        for _ in range(20):
            perm = [truth[i] for i in torch.randperm(len(truth), generator=g).tolist()]
            if perm != truth:
                out["permutation"] = perm
                break
        i = int(torch.randint(len(truth), (1,), generator=g))
        others = sorted(set(truth) - {truth[i]})
        changed = list(truth)
        changed[i] = others[int(torch.randint(len(others), (1,), generator=g))]
        out["one_token"] = changed
        pairs = [j for j in range(len(truth) - 1) if truth[j] != truth[j + 1]]
        j = pairs[int(torch.randint(len(pairs), (1,), generator=g))]
        swapped = list(truth)
        swapped[j], swapped[j + 1] = swapped[j + 1], swapped[j]
        out["swap"] = swapped
    return out


def build_items(lm, model_dir: Path, task: str, num: int, preset: str, end_with_eos: bool, seed: int) -> list[Item]:
    from components.bench.config import PromptSetConfig
    from components.bench.prompts import load_prompt_set
    from components.presets import load_decode_config
    from model import generate

    cfg = PromptSetConfig(task=task, task_overrides=[], num_prompts=num, tokenizer=None, use_task_decode=True,
                          random_min_length=1, random_max_length=1, seed=seed)
    prompts = load_prompt_set(cfg, model_dir, lm.config.vocab_size, lm.config.mask_token_id)
    decode = load_decode_config(preset, **prompts.decode_overrides)
    keep = [i for i, ref in enumerate(prompts.references or []) if ref]
    if not keep:
        raise SystemExit(f"likelihood_table: task {task!r} has no unique reference answers to rank")
    with torch.inference_mode():
        result = generate(lm, [prompts.ids[i] for i in keep], decode)
    g = torch.Generator().manual_seed(seed)
    items = []
    for i, out in zip(keep, result.sequences):
        truth = list(prompts.references[i])
        misses = near_misses(truth, g)
        if end_with_eos:  # the answer ends where the decoder would write EOS
            truth = truth + [lm.config.eos_token_id]
            misses = {k: v + [lm.config.eos_token_id] for k, v in misses.items()}
        items.append(Item(prompts.ids[i], truth, misses, bool(prompts.judges[i](out))))
    return items


def rank(lm, items: list[Item], estimator: str, samples: int, seed: int, block_length: int, mask_id: int,
         threshold: float, batch: int = 32) -> tuple[dict[str, float], float]:
    """Ranking accuracy per near-miss kind (and 'all': above every near miss) and forwards per choice."""
    from components.evaluate.likelihood import LikelihoodConfig, continuation_scores
    from components.rl.estimator import SequenceLayout

    cfg = LikelihoodConfig(estimator=estimator, samples=samples, seed=seed, threshold=threshold)
    rows = [(n, "truth", it.prompt, it.truth) for n, it in enumerate(items)]
    rows += [(n, kind, it.prompt, cont) for n, it in enumerate(items) for kind, cont in it.misses.items()]
    scores: dict[tuple[int, str], float] = {}
    forwards = []
    for first in range(0, len(rows), batch):
        chunk = rows[first:first + batch]
        contexts, conts = [r[2] for r in chunk], [r[3] for r in chunk]
        layout = SequenceLayout.from_lists(contexts, conts, block_length, device=lm.device)
        with torch.inference_mode():
            total, fw = continuation_scores(lm, layout, cfg, mask_id, contexts, conts)
        scores.update({(r[0], r[1]): float(v) for r, v in zip(chunk, total)})
        forwards += fw.tolist()
    acc = {}
    for kind in NEAR_MISSES:
        hits = [scores[(n, "truth")] > scores[(n, kind)] for n, it in enumerate(items) if kind in it.misses]
        acc[kind] = sum(hits) / max(1, len(hits))
    acc["all"] = sum(all(scores[(n, "truth")] > scores[(n, k)] for k in it.misses)
                     for n, it in enumerate(items)) / len(items)
    return acc, statistics.mean(forwards)


def rank_text(lm, tokenizer, items: list[Item], estimator: str, samples: int, seed: int, preset: str,
              reply_lstrip: bool) -> float:
    """Ranking accuracy ('all') through lm-eval's text interface, as `lm_eval --model draftedit` scores a
    multiple-choice task: prompt text, then each choice with the usual target delimiter ' '."""
    from lm_eval.api.instance import Instance

    from components.evaluate.lm_eval_model import DraftEditLM

    harness = DraftEditLM(lm=lm, tokenizer=tokenizer, preset=preset, likelihood=estimator, mc_samples=samples,
                          seed=seed, greedy_check=False, batch_size=32, reply_lstrip=reply_lstrip)
    drop = {tokenizer.eos_id}
    requests, groups = [], []
    for it in items:
        context = tokenizer.decode(it.prompt)
        choices = [it.truth, *it.misses.values()]
        groups.append(len(choices))
        requests += [Instance("loglikelihood", {}, (context, " " + tokenizer.decode([t for t in c if t not in drop])),
                              len(requests)) for c in choices]
    scores = [s for s, _ in harness.loglikelihood(requests, disable_tqdm=True)]
    right, first = 0, 0
    for n in groups:
        right += all(scores[first] > scores[first + k] for k in range(1, n))
        first += n
    return right / len(groups)


def token_preference(lm, items: list[Item], block_length: int, mask_id: int) -> tuple[float, float, int]:
    """At the changed position of each one-token near miss, every other answer token visible: the share of
    items where log p(true token) > log p(changed token), the mean gap, and the item count."""
    from components.rl.estimator import SequenceLayout, block_log_likelihoods

    wins, gaps = [], []
    for it in items:
        wrong = it.misses.get("one_token")
        if wrong is None:
            continue
        i = next(k for k, (a, b) in enumerate(zip(it.truth, wrong)) if a != b)
        layout = SequenceLayout.from_lists([it.prompt, it.prompt], [it.truth, wrong], block_length, device=lm.device)
        mask = torch.zeros_like(layout.tokens, dtype=torch.bool)
        mask[:, len(it.prompt) + i] = True  # the same input for both rows: only the scored token differs
        with torch.inference_mode():
            lp = block_log_likelihoods(lm, layout, mask, mask_id).token_logp.sum(-1)
        gaps.append(float(lp[0] - lp[1]))
        wins.append(gaps[-1] > 0)
    return sum(wins) / max(1, len(wins)), statistics.mean(gaps) if gaps else float("nan"), len(wins)


def parse_estimators(specs: list[str]) -> list[tuple[str, int]]:
    from components.evaluate.likelihood import ESTIMATORS, SAMPLED

    out = []
    for spec in specs:
        name, _, n = spec.partition(":")
        if name not in ESTIMATORS:
            raise SystemExit(f"likelihood_table: --estimators {spec!r}: expected one of {', '.join(ESTIMATORS)}"
                             f" (sampled ones as NAME:SAMPLES)")
        if name in SAMPLED and not n.isdigit():
            raise SystemExit(f"likelihood_table: --estimators {spec!r}: {name} needs a sample count, e.g. {name}:16")
        out.append((name, int(n) if name in SAMPLED else 1))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="checkpoint folder")
    ap.add_argument("--tasks", nargs="+", default=["sort16", "latin"])
    ap.add_argument("--num", type=int, default=64, help="prompts per task")
    ap.add_argument("--preset", default="quality", help="decoding preset of the generation column")
    ap.add_argument("--estimators", nargs="+",
                    default=["mc:8", "mc:16", "crn:8", "crn:16", "antithetic:16", "left_to_right", "decode_order"])
    ap.add_argument("--seeds", type=int, default=3, help="seeds per sampled estimator (mean and spread)")
    ap.add_argument("--end", choices=["eos", "none"], default="none",
                    help="eos: each choice ends with the EOS the decoder writes after an answer")
    ap.add_argument("--text", action="store_true",
                    help="also rank through lm-eval's text interface, with and without reply_lstrip")
    args = ap.parse_args(argv)
    estimators = parse_estimators(args.estimators)

    from components.presets import load_decode_config
    from components.quantize import load_model

    torch.manual_seed(0)
    lm = load_model(Path(args.model), device="cpu").eval()
    decode = load_decode_config(args.preset)
    block, mask_id = decode.block_length, lm.config.mask_token_id
    print(f"model {args.model}  preset {args.preset}  block {block}  choices end: {args.end}")
    for task in args.tasks:
        items = build_items(lm, Path(args.model), task, args.num, args.preset, args.end == "eos", seed=0)
        gen = sum(it.generated_right for it in items) / len(items)
        print(f"\n{task}: {len(items)} items, generation accuracy ({args.preset}, greedy) {gen:.3f}")
        print(f"  {'estimator':<18}{'fwd/choice':>11}" + "".join(f"{k:>18}" for k in (*NEAR_MISSES, "all")))
        for name, samples in estimators:
            seeds = range(args.seeds) if samples > 1 or name in ("mc", "crn", "antithetic") else range(1)
            runs = [rank(lm, items, name, samples, s, block, mask_id, decode.threshold) for s in seeds]
            cells = []
            for kind in (*NEAR_MISSES, "all"):
                vals = [r[0][kind] for r in runs]
                spread = f"±{(max(vals) - min(vals)) / 2:.3f}" if len(vals) > 1 else ""
                cells.append(f"{statistics.mean(vals):.3f}{spread:>7}")
            label = f"{name}:{samples}" if len(runs) > 1 else name
            print(f"  {label:<18}{runs[0][1]:>11.1f}" + "".join(f"{c:>18}" for c in cells))
        if args.text:
            from model.tokenizer import load_tokenizer

            tokenizer = load_tokenizer(Path(args.model))
            print("  through lm-eval's text interface (target delimiter ' '), 'all' column:")
            for name, samples in estimators:
                for strip in (False, True):
                    vals = [rank_text(lm, tokenizer, items, name, samples, s, args.preset, strip)
                            for s in (range(args.seeds) if name in ("mc", "crn", "antithetic") else range(1))]
                    spread = f" ±{(max(vals) - min(vals)) / 2:.3f}" if len(vals) > 1 else ""
                    print(f"    {name + ':' + str(samples):<18} reply_lstrip={str(strip).lower():<6} "
                          f"{statistics.mean(vals):.3f}{spread}")
        win, gap, n = token_preference(lm, items, block, mask_id)
        print(f"  the model at the changed token (rest visible): prefers the truth in {win:.3f} of {n}, "
              f"mean log-prob gap {gap:+.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
