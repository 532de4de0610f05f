"""The paper's Tables 1-2, reproduced small: M2T-only vs M2T+T2T (Q and S mode), with and without MTF.

Each variant trains the tiny model CPT -> SFT with the same data, steps and seed; only the objective
differs. Every model is then decoded on held-out synthetic tasks under every decoding setting
(Q mode, S mode, and M2T-only threshold sweeps without editing) and scored by the tasks' verifiers.
Score = % of valid answers, TPF = generated tokens per forward (EOS included, as the decoder counts).

  # train + evaluate one variant (run the three in parallel, one thread each), then print the table:
  python benchmarks/train_table.py run --variant m2t --out outputs/train_table
  python benchmarks/train_table.py run --variant t2t --out outputs/train_table
  python benchmarks/train_table.py run --variant t2t_mtf --out outputs/train_table
  python benchmarks/train_table.py report --out outputs/train_table

`--sft-steps/--cpt-steps/--sft-batch/--eval-n` shrink or grow the experiment; everything else is the
default tiny configuration (conf/train/cpt.yaml, conf/train/sft.yaml: model, optimiser, noise band,
T2T rate 0-0.2 ramped in over 100 SFT steps, MTF on half the steps) with block length 16 and CPT rows
of 128 tokens. The variants differ only in the objective overrides of VARIANTS.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from components.presets import EDITING_OFF, load_decode_config  # noqa: E402
from model.files import atomic_write  # noqa: E402

# The variants measured before issue 22 keep its per-stream visible losses and no editing-stream
# rows, so their tables reproduce; t2t_pooled and t2t_stream are the issue-22 recipe in two steps
# (t2t_stream is what conf/train/sft.yaml now ships).
BEFORE_22 = ["objective.visible_normalizer=per_stream", "objective.t2t_stream_prob=0.0"]
# The shipped SFT recipe (conf/train/sft.yaml): the base of every t2t_stream* variant, which differ
# from it only in their SFT_EXTRA overrides, so their CPT stage is t2t_stream's.
STREAM = ["objective.t2t_rate_min=0.0", "objective.t2t_rate_max=0.2", "objective.mtf_prob=0.0",
          "objective.keep_weight=1.0", "objective.t2t_stream_prob=0.25", "objective.visible_normalizer=pooled"]
VARIANTS = {
    "m2t": [*BEFORE_22, "objective.keep_weight=0.0", "objective.t2t_rate_min=0.0", "objective.t2t_rate_max=0.0", "objective.mtf_prob=0.0"],
    "t2t": [*BEFORE_22, "objective.keep_weight=0.0", "objective.t2t_rate_min=0.0", "objective.t2t_rate_max=0.2", "objective.mtf_prob=0.0"],
    "t2t_mtf": [*BEFORE_22, "objective.keep_weight=0.0", "objective.t2t_rate_min=0.0", "objective.t2t_rate_max=0.2", "objective.mtf_prob=0.5"],
    # With the "keep" loss: visible noisable tokens that are correct are also trained (target = input).
    # Without it every visible token the T2T stream trains on is wrong, so the model learns that
    # visible tokens are always wrong and its edits destroy correct drafts.
    "t2t_keep": [*BEFORE_22, "objective.t2t_rate_min=0.0", "objective.t2t_rate_max=0.2", "objective.mtf_prob=0.0",
                 "objective.keep_weight=1.0"],
    "t2t_keep_mtf": [*BEFORE_22, "objective.t2t_rate_min=0.0", "objective.t2t_rate_max=0.2", "objective.mtf_prob=0.5",
                     "objective.keep_weight=1.0"],
    # MTF only in the second half of SFT (set in SFT_EXTRA): the model's own drafts are worth
    # learning from once it drafts well; CPT runs without MTF.
    "t2t_keep_mtf_late": [*BEFORE_22, "objective.t2t_rate_min=0.0", "objective.t2t_rate_max=0.2", "objective.mtf_prob=0.0",
                          "objective.keep_weight=1.0"],
    # Editing-stream rows (a quarter of the rows unmasked, T2T noise only): the fully drafted block
    # that decoding's post steps judge is then in the training distribution (issue 22).
    "t2t_stream": STREAM,
    # The shipped recipe plus Multi-Turn Forward in the second half of SFT (SFT_EXTRA): the model's own
    # drafts become T2T targets once it drafts well (issue 22's next lever).
    "t2t_stream_mtf_late": STREAM,
    # The shipped recipe with half of SFT's T2T replacements as position-shift errors (an adjacent
    # different token, set in SFT_EXTRA): the off-by-one run boundaries of sorted answers (issue 22).
    "t2t_stream_shift": STREAM,
    # The shipped recipe with SFT's T2T tokens drawn from the row's own reply (set in SFT_EXTRA): a
    # token placed twice, the duplicate parallel drafting makes (issue 22).
    "t2t_stream_row": STREAM,
    # t2t_stream_row with twice the T2T rate and twice the editing-stream rows (SFT_EXTRA): more of the
    # duplicates the editor must learn to see (issue 22).
    "t2t_stream_row_heavy": STREAM,
    # The shipped recipe with half of SFT's editing-stream rows read in the Multi-Block Editing view
    # (window of 2 blocks, set in SFT_EXTRA): MBE decoding in the training distribution (issue 18).
    "t2t_stream_mbe": STREAM,
    # Pooled visible losses without editing-stream rows (issue 22, step 2).
    "t2t_pooled": ["objective.t2t_rate_min=0.0", "objective.t2t_rate_max=0.2", "objective.mtf_prob=0.0",
                   "objective.keep_weight=1.0", "objective.t2t_stream_prob=0.0",
                   "objective.visible_normalizer=pooled"],
    # A gentler corruption schedule: half the T2T rate, ramped in over most of SFT.
    "t2t_slow": [*BEFORE_22, "objective.keep_weight=0.0", "objective.t2t_rate_min=0.0", "objective.t2t_rate_max=0.1", "objective.mtf_prob=0.0"],
}
# SFT-only overrides per variant (applied last); the default ramps T2T in over the first 100 SFT steps.
# "{half}" stands for half the SFT steps.
SFT_EXTRA = {"t2t_slow": ["objective.t2t_warmup_steps=400"],
             "t2t_keep_mtf_late": ["objective.mtf_prob=0.5", "objective.mtf_start_step={half}"],
             "t2t_stream_mtf_late": ["objective.mtf_prob=0.5", "objective.mtf_start_step={half}"],
             "t2t_stream_shift": ["objective.t2t_shift_prob=0.5"],
             "t2t_stream_mbe": ["objective.mbe_prob=0.5", "objective.mbe_window=1"],
             "t2t_stream_row": ["objective.t2t_source=row"],
             "t2t_stream_row_heavy": ["objective.t2t_source=row", "objective.t2t_rate_max=0.4",
                                      "objective.t2t_stream_prob=0.5"]}
FAMILIES = ["sudoku4", "permutation", "sum"]
# name -> (decoding preset in conf/decode/, its overrides): S and Q are the shipped presets themselves;
# the no-edit arms are the M2T-only threshold sweep (editing_threshold EDITING_OFF: no token is edited).
SETTINGS = {
    "Q": ("quality", {}),
    "S": ("speedy", {}),
    "S-lo": ("speedy", {"threshold": 0.3}),
    **{f"noedit@{tau}": ("quality", {"threshold": tau, "editing_threshold": EDITING_OFF})
       for tau in (0.95, 0.9, 0.7, 0.5, 0.3)},
}


def sft_extra(variant: str, args) -> list[str]:
    return [item.format(half=args.sft_steps // 2) for item in SFT_EXTRA.get(variant, [])]


def data_overrides(out: Path, args) -> str:
    items = [f"cache_dir={out / 'data'}", f"block_length={args.block}", "cpt.seq_len=128",
             f"sft.synthetic.families=[{','.join(args.families)}]", f"sft.synthetic.num_examples={args.sft_examples}"]
    # CPT keeps its default mix; SFT gets exactly the given families and difficulty (none = defaults)
    items.append(f"sft.synthetic.params={args.family_params or '{}'}")
    return "data.overrides=[" + ",".join(json.dumps(i) for i in items) + "]"


def train_variant(variant: str, out: Path, args) -> Path:
    from components.training import load_train_config, run_training

    common = [data_overrides(out, args), f"trainer.block_length={args.block}", f"trainer.seed={args.seed}",
              "trainer.checkpoint_every_steps=100", *VARIANTS[variant]]
    size = [f"model.overrides={args.model_overrides}"] if args.model_overrides else []  # CPT builds the model
    cpt = load_train_config("conf/train/cpt.yaml", [*common, f"trainer.max_steps={args.cpt_steps}",
                                                    "trainer.batch_size=8", "objective.t2t_warmup_steps=50",
                                                    "trainer.val_every_steps=1000000", *size])
    r1 = run_training(cpt, out / variant / "cpt")
    sft = load_train_config("conf/train/sft.yaml", [
        *common, f"trainer.max_steps={args.sft_steps}", f"model.init_from={r1['checkpoint_dir']}",
        f"trainer.batch_size={args.sft_batch}",
        f"trainer.val_every_steps={max(1, args.sft_steps // 4)}", "objective.t2t_warmup_steps=100",
        *sft_extra(variant, args)])
    r2 = run_training(sft, out / variant / "sft")
    (out / variant / "train.json").write_text(json.dumps({"cpt": r1, "sft": r2}, indent=2))
    return Path(r2["checkpoint_dir"])


def evaluate(checkpoint: Path, args) -> dict:
    from components.rl.rollouts import encode_prompt
    from components.families import get_family
    from model import DiffusionLM, generate
    from model.tokenizer import load_tokenizer

    lm = DiffusionLM.from_pretrained(checkpoint).eval()
    tok = load_tokenizer(checkpoint)
    examples = []
    for fam in args.families:
        examples += get_family(fam, **json.loads(args.family_params or "{}").get(fam, {})).make(
            "heldout", args.eval_n, seed=123)
    prompts = [encode_prompt(tok, e.prompt, "chat") for e in examples]
    results = {}
    for name, (preset, overrides) in SETTINGS.items():
        cfg = load_decode_config(preset, block_length=args.block, gen_length=args.gen_length, max_batch_size=64,
                                 speculative_verify=args.speculative, **overrides)
        with torch.no_grad():
            res = generate(lm, prompts, cfg)
        per_family: dict[str, list] = {f: [0, 0, 0, 0] for f in args.families}  # ok, n, tokens, forwards
        for e, seq, fw in zip(examples, res.sequences, res.forwards):
            text = tok.decode(seq, skip_special_tokens=True).strip()
            acc = per_family[e.family]
            acc[0] += bool(get_family(e.family).score(text, e))
            acc[1] += 1
            acc[2] += len(seq)
            acc[3] += fw
        results[name] = {
            "score": 100.0 * sum(v[0] for v in per_family.values()) / len(examples),
            "tpf": res.tokens_per_forward,
            "edits": sum(res.edits),
            "families": {f: {"score": 100.0 * v[0] / v[1], "tpf": v[2] / max(1, v[3])} for f, v in per_family.items()},
        }
        print(f"  {name:12s} score {results[name]['score']:5.1f}  TPF {results[name]['tpf']:.2f}  "
              + "  ".join(f"{f} {d['score']:.0f}" for f, d in results[name]["families"].items()), flush=True)
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
    record = {"variant": args.variant, "overrides": VARIANTS[args.variant] + sft_extra(args.variant, args),
              "eval": results,
              "train_seconds": train_seconds, "cpt_tokens_per_s": train["cpt"].get("train/tokens_per_s"),
              "sft_tokens_per_s": train["sft"].get("train/tokens_per_s"),
              "cpt_wall_s": train["cpt"]["wall_seconds"], "sft_wall_s": train["sft"]["wall_seconds"],
              "sft_val_loss": train["sft"].get("val/loss"), "args": vars(args)}
    atomic_write(out / f"{args.variant}.json", json.dumps(record, indent=2))
    return 0


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
        preset, overrides = SETTINGS[name]
        cfg = load_decode_config(preset, **overrides)
        tm, te = cfg.threshold, cfg.editing_threshold
        fams = " | ".join(f"{r['families'][f]['score']:.1f}" for f in families)
        print(f"| {v} | {label} | {tm} / {'off' if te > 1 else te} | {r['score']:.1f} | {r['tpf']:.2f} | {fams} |")

    if "m2t" in recs:
        noedit = [n for n in SETTINGS if n.startswith("noedit")]
        best = max(noedit, key=lambda n: (recs["m2t"]["eval"][n]["score"], recs["m2t"]["eval"][n]["tpf"]))
        row("m2t", "M2T only, best threshold", best)
        row("m2t", "M2T only, S-mode threshold", "noedit@0.5")
    for v in ("t2t", "t2t_mtf", "t2t_slow", "t2t_keep", "t2t_pooled", "t2t_stream", "t2t_keep_mtf", "t2t_keep_mtf_late"):
        if v in recs:
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
    r.add_argument("--no-speculative", dest="speculative", action="store_false",
                   help="decode without speculative verification (the S/Q presets have it on; outputs are "
                        "the same, only forwards differ)")
    rep = sub.add_parser("report")
    rep.add_argument("--out", default="outputs/train_table")
    args = p.parse_args(argv)
    return cmd_run(args) if args.cmd == "run" else cmd_report(args)


if __name__ == "__main__":
    raise SystemExit(main())
