"""Do T2T edits repair or damage? Score, TPF and edit classification of checkpoints, side by side.

For each checkpoint and task family, decodes the held-out split greedily under S and Q mode with
editing on and off (tau_edit > 1), and classifies every edit against the reference answer
(components.edits): fixes, breaks, neutral, oscillations and edit precision = fixes / (fixes + breaks).
Families with many valid answers judge edits against the final output when it is valid.

  python benchmarks/edit_table.py --model A=outputs/.../model --model B=outputs/.../model \
      --families sort sudoku4 --n 200 [--family-params '{"sort": {"max_value": 9}}'] [--json out.json]

Several `--model` entries with the same label (e.g. three seeds) are reported as mean ± spread
(half the max - min range) per cell.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402


def settings(block_length: int | None) -> dict[str, dict]:
    """Every preset in conf/decode/ (S = speedy, Q = quality, ...), each with editing on and off."""
    from components.decoding import EDITING_OFF, preset_names

    over = {} if block_length is None else {"block_length": block_length}
    out = {}
    for mode in preset_names():
        label = {"speedy": "S", "quality": "Q"}.get(mode, mode)
        out[f"{label} edit"] = {"preset": mode, **over}
        out[f"{label} no-edit"] = {"preset": mode, "editing_threshold": EDITING_OFF, **over}
    return out


def evaluate_checkpoint(path: str, families: list[str], params: dict, n: int, gen_length: int,
                        block_length: int | None) -> dict:
    from components.decoding import load_decode_config
    from components.edits import EditStats, judge_edits
    from components.rl.rollouts import encode_prompt
    from components.tasks import get_family
    from components.tasks.synthetic import MULTI_ANSWER_FAMILIES
    from model import DiffusionLM, generate
    from model.tokenizer import load_tokenizer

    lm = DiffusionLM.from_pretrained(path).eval()
    tok = load_tokenizer(path)
    out: dict = {}
    for fam in families:
        family = get_family(fam, **params.get(fam, {}))
        examples = family.make("heldout", n, seed=123)
        prompts = [encode_prompt(tok, e.prompt, "chat") for e in examples]
        for name, s in settings(block_length).items():
            fields = {k: v for k, v in s.items() if k != "preset"}
            cfg = load_decode_config(s["preset"], gen_length=gen_length, eos_id=tok.eos_id, mask_id=tok.mask_id,
                                     record_trajectory=True, max_batch_size=64, **fields)
            with torch.no_grad():
                res = generate(lm, prompts, cfg)
            stats, ok = EditStats(), 0
            for e, seq, traj in zip(examples, res.sequences, res.trajectories):
                text = tok.decode(seq, skip_special_tokens=True).strip()
                correct = bool(family.score(text, e))
                ok += correct
                reference = tok.encode(e.answer) if fam not in MULTI_ANSWER_FAMILIES else None
                stats = stats + judge_edits(traj, seq, tok.eos_id, correct=correct, reference=reference)
            out[(fam, name)] = {"score": 100.0 * ok / len(examples), "tpf": res.tokens_per_forward, **stats.as_dict()}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append", required=True, help="LABEL=checkpoint folder (repeat; same label = seeds)")
    p.add_argument("--families", nargs="+", default=["sort"])
    p.add_argument("--family-params", default="{}")
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--gen-length", type=int, default=32)
    p.add_argument("--block-length", type=int, default=None, help="default: the presets'")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    params = json.loads(args.family_params)
    cells: dict = defaultdict(list)  # (label, fam, setting) -> [result per seed]
    for item in args.model:
        label, _, path = item.partition("=")
        for key, res in evaluate_checkpoint(path, args.families, params, args.n, args.gen_length,
                                            args.block_length).items():
            cells[(label, *key)].append(res)

    def cell(values: list[float], spec: str) -> str:
        values = [v for v in values if v == v]
        if not values:
            return "-"
        if len(values) == 1:
            return format(values[0], spec)
        return f"{format(statistics.mean(values), spec)} ± {format((max(values) - min(values)) / 2, spec)}"

    print("| model | family | decoding | score | TPF | edits/sample | fixes | breaks | neutral | precision | osc/100 tok |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for (label, fam, name), runs in cells.items():
        col = lambda k, spec=".1f": cell([r[k] for r in runs], spec)  # noqa: E731
        print(f"| {label} | {fam} | {name} | {col('score')} | {col('tpf', '.2f')} | {col('edits_per_sample', '.2f')} | "
              f"{col('fixes', '.0f')} | {col('breaks', '.0f')} | {col('neutral', '.0f')} | {col('precision', '.2f')} | "
              f"{col('oscillations_per_100_tokens', '.2f')} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"|".join(k): v for k, v in cells.items()}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
