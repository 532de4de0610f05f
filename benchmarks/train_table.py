"""Which training objective makes a better drafter and editor? The paper's Tables 1-2, small.

Each variant (benchmarks/train_variants.yaml) trains the tiny model CPT -> SFT with the same data,
steps and seed; only the objective differs. Every model is then decoded on held-out synthetic tasks
under every decoding setting of SETTINGS (Q mode, S mode, and M2T-only threshold sweeps without
editing) and scored by the tasks' verifiers (benchmarks.common.decode_and_score). Score = % of valid
answers, TPF = generated tokens per forward (EOS included, as the decoder counts).

  # train + evaluate one variant (run several in parallel, one thread each), then print the table:
  python -m benchmarks.train_table run --variant m2t --out outputs/train_table
  python -m benchmarks.train_table run --variant t2t --out outputs/train_table
  python -m benchmarks.train_table run --variant t2t_mtf --out outputs/train_table
  python -m benchmarks.train_table report --out outputs/train_table

`--sft-steps/--cpt-steps/--sft-batch/--eval-n` shrink or grow the experiment, `--data-set` and `--set`
override the data and training configs of every variant; everything else is the default tiny
configuration (conf/train/cpt.yaml, conf/train/sft.yaml: model, optimiser, noise band, T2T rate 0-0.2
ramped in over 100 SFT steps) with block length 16 and CPT rows of 128 tokens.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import yaml

from benchmarks.common import (add_override_arguments, decode_and_score, encode_prompts, heldout_examples,
                               load_checkpoint)
from components.presets import EDITING_OFF, DecodeChoice
from model.files import atomic_write

VARIANTS_FILE = Path(__file__).with_name("train_variants.yaml")
VARIANT_KEYS = {"base", "overrides", "sft"}
FAMILIES = ["sudoku4", "permutation", "sum"]
# S and Q are the shipped presets themselves; the no-edit arms are the M2T-only threshold sweep
# (editing_threshold EDITING_OFF: no token is edited).
SETTINGS = {
    "Q": DecodeChoice("quality", {}),
    "S": DecodeChoice("speedy", {}),
    "S-lo": DecodeChoice("speedy", {"threshold": 0.3}),
    **{f"noedit@{tau}": DecodeChoice("quality", {"threshold": tau, "editing_threshold": EDITING_OFF})
       for tau in (0.95, 0.9, 0.7, 0.5, 0.3)},
}


def load_variants(path: Path = VARIANTS_FILE) -> dict[str, dict]:
    """{variant: {"both": overrides of CPT and SFT, "sft": SFT-only overrides}}; one line naming a bad key."""
    data = yaml.safe_load(path.read_text()) or {}
    bases, variants = data.get("bases", {}), data.get("variants")
    if not isinstance(variants, dict) or not variants:
        raise SystemExit(f"{path}: variants: expected a mapping of variant name -> {{base, overrides, sft}}")
    out = {}
    for name, spec in variants.items():
        spec = spec or {}
        unknown = set(spec) - VARIANT_KEYS
        if unknown:
            raise SystemExit(f"{path}: variants.{name}: unknown key(s) {sorted(unknown)}; expected {sorted(VARIANT_KEYS)}")
        base = spec.get("base", "none")
        if base not in bases:
            raise SystemExit(f"{path}: variants.{name}.base: {base!r} is not one of bases {sorted(bases)}")
        out[name] = {"both": [*bases[base], *spec.get("overrides", [])], "sft": list(spec.get("sft", []))}
    return out


VARIANTS = load_variants()


def variant_overrides(variant: str, sft_steps: int) -> tuple[list[str], list[str]]:
    """(overrides of both stages, SFT-only overrides) of one variant, "{half}" filled in."""
    spec = VARIANTS[variant]
    return list(spec["both"]), [item.format(half=sft_steps // 2) for item in spec["sft"]]


def data_overrides(out: Path, args) -> str:
    items = [f"cache_dir={out / 'data'}", f"block_length={args.block}", "cpt.seq_len=128",
             f"sft.synthetic.families=[{','.join(args.families)}]", f"sft.synthetic.num_examples={args.sft_examples}"]
    # CPT keeps its default mix; SFT gets exactly the given families and difficulty (none = defaults)
    items.append(f"sft.synthetic.params={args.family_params or '{}'}")
    items += args.data_overrides
    return "data.overrides=[" + ",".join(json.dumps(i) for i in items) + "]"


def train_variant(variant: str, out: Path, args) -> Path:
    from components.config import CONF_DIR
    from components.training import load_train_config, run_training

    both, sft_only = variant_overrides(variant, args.sft_steps)
    common = [data_overrides(out, args), f"trainer.block_length={args.block}", f"trainer.seed={args.seed}",
              "trainer.checkpoint_every_steps=100", *both]
    size = [f"model.overrides={args.model_overrides}"] if args.model_overrides else []  # CPT builds the model
    cpt = load_train_config(CONF_DIR / "train" / "cpt.yaml", [
        *common, f"trainer.max_steps={args.cpt_steps}", "trainer.batch_size=8", "objective.t2t_warmup_steps=50",
        "trainer.val_every_steps=1000000", *size, *args.train_overrides])
    r1 = run_training(cpt, out / variant / "cpt")
    sft = load_train_config(CONF_DIR / "train" / "sft.yaml", [
        *common, f"trainer.max_steps={args.sft_steps}", f"model.init_from={r1['checkpoint_dir']}",
        f"trainer.batch_size={args.sft_batch}", f"trainer.val_every_steps={max(1, args.sft_steps // 4)}",
        "objective.t2t_warmup_steps=100", *args.train_overrides, *sft_only])
    r2 = run_training(sft, out / variant / "sft")
    atomic_write(out / variant / "train.json", json.dumps({"cpt": r1, "sft": r2}, indent=2, default=str))
    return Path(r2["checkpoint_dir"])


def evaluate(checkpoint: Path, args) -> dict:
    """{setting: decode_and_score cell} on the held-out examples of every family, decoded together."""
    lm, tok = load_checkpoint(checkpoint)
    params = json.loads(args.family_params or "{}")
    examples = heldout_examples(args.families, args.eval_n, params)
    prompts = encode_prompts(tok, examples)
    results = {}
    for name, choice in SETTINGS.items():
        cfg = choice.load(block_length=args.block, speculative_verify=args.speculative, gen_length=args.gen_length,
                          eos_id=tok.eos_id, mask_id=tok.mask_id, max_batch_size=64)
        results[name] = cell = decode_and_score(lm, tok, examples, prompts, cfg, params)
        print(f"  {name:12s} score {cell['score']:5.1f}  TPF {cell['tpf']:.2f}  "
              + "  ".join(f"{f} {d['score']:.0f}" for f, d in cell["families"].items()), flush=True)
    return results


def cmd_run(args) -> int:
    torch.set_num_threads(args.threads)
    out = Path(args.out).resolve()
    t0 = time.perf_counter()
    ckpt = out / args.variant / "sft" / "model"
    if not (ckpt / "config.json").is_file() or args.retrain:
        ckpt = train_variant(args.variant, out, args)
    train_seconds = time.perf_counter() - t0
    print(f"[{args.variant}] trained in {train_seconds:.0f}s; evaluating {ckpt}", flush=True)
    results = evaluate(ckpt, args)
    train = json.loads((out / args.variant / "train.json").read_text())
    both, sft_only = variant_overrides(args.variant, args.sft_steps)
    record = {"variant": args.variant, "overrides": both + sft_only, "eval": results,
              "train_seconds": train_seconds, "cpt_tokens_per_s": train["cpt"].get("train/tokens_per_s"),
              "sft_tokens_per_s": train["sft"].get("train/tokens_per_s"),
              "cpt_wall_s": train["cpt"]["wall_seconds"], "sft_wall_s": train["sft"]["wall_seconds"],
              "sft_val_loss": train["sft"].get("val/loss"), "args": vars(args)}
    atomic_write(out / f"{args.variant}.json", json.dumps(record, indent=2))
    return 0


def _setting_label(name: str) -> str:
    cfg = SETTINGS[name].load()
    return f"{cfg.threshold} / {'off' if cfg.editing_threshold > 1 else cfg.editing_threshold}"


def cmd_report(args) -> int:
    out = Path(args.out)
    recs = {v: json.loads((out / f"{v}.json").read_text()) for v in VARIANTS if (out / f"{v}.json").is_file()}
    if not recs:
        print(f"no results under {out}")
        return 1
    families = next(iter(recs.values()))["args"].get("families", FAMILIES)
    print("| model | decoding | tau_mask / tau_edit | score | TPF | " + " | ".join(families) + " |")
    print("|---|---|---|---|---|" + "---|" * len(families))

    def row(v, label, name):
        r = recs[v]["eval"][name]
        fams = " | ".join(f"{r['families'][f]['score']:.1f}" for f in families)
        print(f"| {v} | {label} | {_setting_label(name)} | {r['score']:.1f} | {r['tpf']:.2f} | {fams} |")

    for v in recs:
        if v == "m2t":  # trained without editing: judged by its best no-edit threshold, and at S mode's
            noedit = [n for n in SETTINGS if n.startswith("noedit")]
            best = max(noedit, key=lambda n: (recs[v]["eval"][n]["score"], recs[v]["eval"][n]["tpf"]))
            row(v, "M2T only, best threshold", best)
            row(v, "M2T only, S-mode threshold", "noedit@0.5")
        else:
            row(v, "Q mode", "Q")
            row(v, "S mode", "S")
    print()
    nan = float("nan")
    for v, rec in recs.items():
        rec = {k: (nan if val is None else val) for k, val in rec.items()}  # a resumed-at-the-end run has no rate
        print(f"{v}: CPT {rec['cpt_tokens_per_s']:.0f} tok/s ({rec['cpt_wall_s']:.0f}s), "
              f"SFT {rec['sft_tokens_per_s']:.0f} tok/s ({rec['sft_wall_s']:.0f}s), SFT val loss {rec['sft_val_loss']:.3f}")
    print("\nall settings (score / TPF):")
    print("| model | " + " | ".join(SETTINGS) + " |")
    print("|---|" + "---|" * len(SETTINGS))
    for v, rec in recs.items():
        print(f"| {v} | " + " | ".join(f"{rec['eval'][n]['score']:.1f} / {rec['eval'][n]['tpf']:.2f}" for n in SETTINGS) + " |")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--variant", choices=sorted(VARIANTS), required=True)
    r.add_argument("--out", default="outputs/train_table")
    r.add_argument("--cpt-steps", type=int, default=150)
    r.add_argument("--sft-steps", type=int, default=800)
    r.add_argument("--sft-batch", type=int, default=32)
    r.add_argument("--families", nargs="+", default=FAMILIES, help="SFT and evaluation task families")
    r.add_argument("--sft-examples", type=int, default=4000, help="SFT conversations per family")
    r.add_argument("--family-params", default="", help='JSON difficulty per family, e.g. \'{"sort": {"max_value": 9}}\'')
    r.add_argument("--model-overrides", default="", help="ModelConfig fields for a larger model, e.g. "
                   "'{hidden_size: 192, num_hidden_layers: 6}' (CPT's random init; SFT continues from it)")
    r.add_argument("--block", type=int, default=16)
    r.add_argument("--gen-length", type=int, default=32, help="decoding budget (answers must fit, EOS included)")
    r.add_argument("--eval-n", type=int, default=100, help="held-out examples per family")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--threads", type=int, default=1)
    r.add_argument("--retrain", action="store_true")
    add_override_arguments(r, "training config override of both stages (before the variant's SFT-only ones), repeatable")
    r.add_argument("--no-speculative", dest="speculative", action="store_false",
                   help="decode without speculative verification (the S/Q presets have it on; outputs are "
                        "the same, only forwards differ)")
    rep = sub.add_parser("report")
    rep.add_argument("--out", default="outputs/train_table")
    args = p.parse_args(argv)
    return cmd_run(args) if args.cmd == "run" else cmd_report(args)


if __name__ == "__main__":
    raise SystemExit(main())
