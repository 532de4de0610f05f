"""Do T2T edits repair or damage, and what do they buy in speed? The paper's Tables 1-2 and 4, small.

For each checkpoint and task family, decodes the held-out split greedily under S and Q mode with
editing on and off (tau_edit > 1), and with `--mbe W` also S and Q with Multi-Block Editing over W
blocks. Every cell reports score, TPF, TPS, the forwards split per sample (drafting / edit rounds /
verification / MBE passes, components.edits.forward_split) and every edit classified against the
reference answer (components.edits): fixes, breaks, neutral, oscillations and edit precision =
fixes / (fixes + breaks). Where a puzzle has several valid answers, edits are judged against the
final output when it is valid and left unjudged when it is not (components.families.has_unique_answer).
A summary follows: per model, S against Q (TPF ratio, score change), and every model against the
first one in S mode; with `--mbe`, each MBE setting against the same preset without it (the paper's
Table 4: score change, TPF, the extra forwards, and the MBE passes' edits in earlier blocks -- what
only MBE can repair -- and in the block just ended).

  python -m benchmarks.edit_table --model A=outputs/.../model --model B=outputs/.../model \
      --families sort sudoku4 --n 200 [--family-params '{"sort": {"max_value": 9}}'] [--mbe 1] \
      [--json out.json] [--mlflow-experiment speed-table]
  # any DecodeConfig field for every setting, e.g. the presets' revert guard off: --set max_reverts=null
  # models trained on different tasks in one table: LABEL@families=folder
  python -m benchmarks.edit_table --model pipeline@sort,sudoku4=A --model latin@latin=B --families sort sudoku4 latin
  # a grid of decoding settings on one preset (editing_threshold > 1 turns editing off), with the
  # best-scoring setting and the fastest within --max-loss points of it per model and family:
  python -m benchmarks.edit_table --model A=DIR --presets quality --grid threshold=0.5,0.7,0.9 \
      --grid editing_threshold=0.9,1.01 --grid max_post_steps=1,16
  # where each preset loses its points and its forwards (editing on, as the presets are):
  python -m benchmarks.edit_table --model A=DIR --families sort sudoku4 --presets speedy quality --attribution

Several `--model` entries with the same label (e.g. three seeds) are reported as mean ± spread
(half the max - min range) per cell. Settings with Levenshtein editing (`--set delete_threshold=0.5`,
or a grid over delete_threshold / insert_threshold) add a table of their deletions and insertions,
each judged a fix, break or neutral against the reference (components.edits.StructuralStats). TPS
is measured with the trajectory recorded (the edit accounting needs it), on `--threads` threads;
compare it within one run only. With `--grid KEY=V1,V2` (repeatable) the settings are every preset in `--presets` at every point of the grid instead.
With `--mlflow-experiment` the run's cells become MLflow metrics (mean over seeds), and the table, the
JSON and a score-vs-TPF plot become artifacts (tracking URI from MLFLOW_TRACKING_URI or
`--tracking-uri`).

With `--attribution` each preset is decoded as it is (editing on; with `--grid`, at every grid point)
and a second table traces every wrong token of a wrong answer to its cause (components.edits
ERROR_CAUSES): a wrong draft kept (accepted draft), a wrong draft the model would have edited to the
right token at block end but below tau_edit (edit never fired), an edit that took a right token away
(broken by edit), an edit between wrong tokens, or the answer's length (EOS early or late). Shares are
of the judged wrong tokens, and of wrong answers by the cause of their first wrong token; wrong answers
to puzzles with several valid answers are left unjudged.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
from collections import defaultdict
from pathlib import Path

import torch
import yaml

from benchmarks.common import (HELDOUT_SEED, decode_and_score, decode_overrides, encode_prompts, heldout_examples,
                               load_checkpoint, spread_cell)
from components.presets import EDITING_OFF, DecodeChoice, preset_names

SHORT = {"speedy": "S", "quality": "Q"}


def settings(presets: list[str], block_length: int | None, mbe_windows: list[int] = (),
             grid: dict[str, list] | None = None, editing_off: bool = True) -> dict[str, DecodeChoice]:
    """Each preset (S = speedy, Q = quality, ...) with editing on and off (`editing_off=False`: on only),
    and with editing on plus Multi-Block Editing over each window in `mbe_windows`; with a `grid`, each
    preset at every point of the grid instead (named by the values that differ from the preset)."""
    over = {} if block_length is None else {"block_length": block_length}
    out = {}
    for preset in presets:
        label = SHORT.get(preset, preset)
        if grid:
            for point in itertools.product(*grid.values()):
                fields = dict(zip(grid, point))
                name = f"{label} " + " ".join(f"{k}={v}" for k, v in fields.items())
                out[name] = DecodeChoice(preset, {**over, **fields})
            continue
        out[f"{label} edit"] = DecodeChoice(preset, dict(over))
        if editing_off:
            out[f"{label} no-edit"] = DecodeChoice(preset, {"editing_threshold": EDITING_OFF, **over})
        for w in mbe_windows:
            out[f"{label} edit MBE{w}"] = DecodeChoice(preset, {"mbe_window": w, **over})
    return out


def evaluate_checkpoint(path: str, families: list[str], params: dict, n: int, gen_length: int,
                        arms: dict[str, DecodeChoice], decode_fields: dict | None = None,
                        attribution: bool = False, sample_seed: int = HELDOUT_SEED) -> dict:
    """{(family, setting name): cell} for one checkpoint (cells as benchmarks.common.decode_and_score)."""
    lm, tok = load_checkpoint(path)
    out: dict = {}
    for fam in families:
        examples = heldout_examples([fam], n, params, seed=sample_seed)
        prompts = encode_prompts(tok, examples)
        for name, choice in arms.items():
            cfg = choice.load(overrides=decode_fields, gen_length=gen_length, eos_id=tok.eos_id, mask_id=tok.mask_id,
                              max_batch_size=64)
            where = mbe_edit_filters(cfg.block_length) if cfg.mbe_window else {}
            cell = decode_and_score(lm, tok, examples, prompts, cfg, params, where, attribution=attribution)
            cell.pop("families")  # one family per cell here
            out[(fam, name)] = cell
    return out


def mbe_edit_filters(block_length: int) -> dict:
    """The MBE passes' edits, split by where they land: in an earlier block of the window (what only
    MBE can repair: a later block revealed the error) or in the block that just ended (what its own
    post steps could have edited too)."""
    return {"mbe_earlier": lambda step, pos: step.kind == "mbe" and pos // block_length < step.block,
            "mbe_last": lambda step, pos: step.kind == "mbe" and pos // block_length >= step.block}


def table_lines(cells: dict) -> list[str]:
    lines = ["| model | family | decoding | score | TPF | TPS | forwards/sample (mean): draft / edit / verify / mbe "
             "| edits/sample | fixes | breaks | neutral | precision | osc/100 tok |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for (label, fam, name), runs in cells.items():
        col = lambda k, spec=".1f": spread_cell([r[k] for r in runs], spec)  # noqa: E731
        split = " / ".join(f"{statistics.mean(r[f'fw_{k}'] for r in runs):.1f}" for k in ("draft", "edit", "verify", "mbe"))
        lines.append(f"| {label} | {fam} | {name} | {col('score')} | {col('tpf', '.2f')} | {col('tps', '.0f')} | "
                     f"{split} | {col('edits_per_sample', '.2f')} | {col('fixes', '.0f')} | {col('breaks', '.0f')} | "
                     f"{col('neutral', '.0f')} | {col('precision', '.2f')} | {col('oscillations_per_100_tokens', '.2f')} |")
    return lines


def structural_lines(cells: dict) -> list[str]:
    """Every cell decoded with Levenshtein editing (a delete or insert threshold set): its deletions and
    insertions, each judged a fix, break or neutral (components.edits.StructuralStats); none without."""
    rows = {key: runs for key, runs in cells.items() if "deletion_fixes" in runs[0]}
    if not rows:
        return []
    lines = ["| model | family | decoding | deletions/sample | DELETE fix / break / neutral | insertions/sample "
             "| INSERT fix / break / neutral |", "|---|---|---|---|---|---|---|"]
    for (label, fam, name), runs in rows.items():
        col = lambda k, spec=".0f": spread_cell([r[k] for r in runs], spec)  # noqa: E731
        verdicts = lambda kind: " / ".join(col(f"{kind}_{v}") for v in ("fixes", "breaks", "neutral"))  # noqa: E731
        lines.append(f"| {label} | {fam} | {name} | {col('deletions_per_sample', '.3f')} | {verdicts('deletion')} | "
                     f"{col('insertions_per_sample', '.3f')} | {verdicts('insertion')} |")
    return lines


CAUSE_NAMES = {"accepted_draft": "accepted draft", "never_fired": "edit never fired",
               "broken_by_edit": "broken by edit", "wrong_edit": "wrong edit", "length": "length/EOS"}


def attribution_lines(cells: dict) -> list[str]:
    """Per cell, where the points and the forwards go: score, TPF, the forwards per answer (drafting,
    then the post-block steps: edit rounds and the verifying step), and each error cause's share of the
    wrong tokens and of the wrong answers (by first wrong token), per seed then mean ± spread; and the
    median block-end probability of the right token where an edit never fired (what tau_edit would
    have to be), and the share of kept wrong drafts the model, reading them at block end, still endorses
    with probability above 0.9 (ErrorAttribution.accepted_confidence: errors no edit threshold repairs)."""
    from components.edits import ERROR_CAUSES

    causes = " / ".join(CAUSE_NAMES[c] for c in ERROR_CAUSES)
    lines = ["| model | family | decoding | score | TPF | forwards/answer: draft / edit rounds / verify / mbe "
             f"| wrong answers (unjudged) | wrong tokens/judged answer | % of wrong tokens: {causes} "
             f"| % of wrong answers by first error: {causes} | never fired: median p(right) "
             "| accepted drafts endorsed at block end, p > 0.9 |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]

    def shares(runs, level: str) -> str:
        out = []
        for c in ERROR_CAUSES:
            per_seed = [100.0 * r[f"err_{level}_{c}"] / total if (total := sum(r[f"err_{level}_{k}"] for k in ERROR_CAUSES))
                        else float("nan") for r in runs]
            out.append(spread_cell(per_seed, ".0f"))
        return " / ".join(out)

    for (label, fam, name), runs in cells.items():
        if "wrong_answers" not in runs[0]:
            continue
        split = " / ".join(spread_cell([r[f"fw_{k}"] for r in runs], ".1f") for k in ("draft", "edit", "verify", "mbe"))
        per_answer = [sum(r[f"err_tokens_{c}"] for c in ERROR_CAUSES) / (r["wrong_answers"] - r["err_unjudged"])
                      if r["wrong_answers"] > r["err_unjudged"] else float("nan") for r in runs]
        confidence = [p for r in runs for p in r["never_fired_confidence"]]
        held = [p for r in runs for p in r["accepted_confidence"]]
        lines.append(f"| {label} | {fam} | {name} | {spread_cell([r['score'] for r in runs], '.1f')} | "
                     f"{spread_cell([r['tpf'] for r in runs], '.2f')} | {split} | "
                     f"{spread_cell([r['wrong_answers'] for r in runs], '.0f')} "
                     f"({spread_cell([r['err_unjudged'] for r in runs], '.0f')}) | {spread_cell(per_answer, '.1f')} | "
                     f"{shares(runs, 'tokens')} | {shares(runs, 'answers')} | "
                     f"{format(statistics.median(confidence), '.2f') if confidence else '-'} | "
                     f"{f'{100.0 * sum(p > 0.9 for p in held) / len(held):.0f}% of {len(held)}' if held else '-'} |")
    return lines


def summary_lines(cells: dict) -> list[str]:
    """The paper's comparisons, per seed then mean ± spread: S against Q within a model, and each model
    against the first one in S mode (the first model's better S-mode arm, editing on or off; on a tie
    the faster one, so an M2T-only baseline is not judged by edits it was never trained to make)."""
    labels = list(dict.fromkeys(k[0] for k in cells))
    families = list(dict.fromkeys(k[1] for k in cells))
    lines = ["| model | family | S/Q TPF (edit on) | S - Q score (edit on) | S edit - S no-edit score |",
             "|---|---|---|---|---|"]
    for label in labels:
        for fam in families:
            s, q, s_off = (cells.get((label, fam, n)) for n in ("S edit", "Q edit", "S no-edit"))
            if not (s and q):
                continue
            ratio = [a["tpf"] / b["tpf"] for a, b in zip(s, q)]
            editing_gain = [a["score"] - b["score"] for a, b in zip(s, s_off)] if s_off else []
            lines.append(f"| {label} | {fam} | {spread_cell(ratio, '.2f')} | "
                         f"{spread_cell([a['score'] - b['score'] for a, b in zip(s, q)], '+.1f')} | "
                         f"{spread_cell(editing_gain, '+.1f')} |")
    if len(labels) > 1:
        base = labels[0]
        rows = []
        for label in labels[1:]:
            for fam in families:
                mine = cells.get((label, fam, "S edit"))
                arms = [cells.get((base, fam, n)) for n in ("S edit", "S no-edit")]
                arms = [a for a in arms if a]
                if not mine or not arms:
                    continue
                best = max(arms, key=lambda runs: (statistics.mean(r["score"] for r in runs),
                                                   statistics.mean(r["tpf"] for r in runs)))
                m_score = [r["score"] for r in mine]
                b_score = [r["score"] for r in best]
                rows.append(f"| {label} | {fam} | {statistics.mean(m_score) - statistics.mean(b_score):+.1f} "
                            f"({spread_cell(m_score, '.1f')} vs {spread_cell(b_score, '.1f')}) | "
                            f"{statistics.mean(r['tpf'] for r in mine) / statistics.mean(r['tpf'] for r in best):.2f} |")
        if rows:  # models decoded on different families (LABEL@...) have nothing to compare
            lines += ["", f"| model vs {base} (S mode) | family | score difference | TPF ratio |", "|---|---|---|---|", *rows]
    return lines


def mbe_lines(cells: dict) -> list[str]:
    """The paper's Table 4 per model: each MBE setting against the same preset without MBE, per seed
    then mean ± spread -- score change, TPF, where the extra forwards go, and where the MBE passes'
    edits land (fixes / breaks over all answers)."""
    lines = ["| model | family | decoding | score change | TPF without → with MBE | extra forwards/answer: "
             "draft / edit / verify / mbe | MBE edits in earlier blocks: fixes / breaks | in the block just ended: "
             "fixes / breaks |", "|---|---|---|---|---|---|---|---|"]
    for (label, fam, name), runs in cells.items():
        preset, _, window = name.partition(" edit MBE")
        base = cells.get((label, fam, f"{preset} edit"))
        if not window or not base:
            continue
        mean = lambda rs, k: statistics.mean(r[k] for r in rs)  # noqa: E731
        extra = " / ".join(f"{mean(runs, f'fw_{k}') - mean(base, f'fw_{k}'):+.1f}"
                           for k in ("draft", "edit", "verify", "mbe"))
        judged = lambda part: f"{mean(runs, f'{part}_fixes'):.0f} / {mean(runs, f'{part}_breaks'):.0f}"  # noqa: E731
        lines.append(f"| {label} | {fam} | {name} | "
                     f"{spread_cell([a['score'] - b['score'] for a, b in zip(runs, base)], '+.1f')} | "
                     f"{mean(base, 'tpf'):.2f} → {mean(runs, 'tpf'):.2f} | {extra} | "
                     f"{judged('mbe_earlier')} | {judged('mbe_last')} |")
    return lines if len(lines) > 2 else []


def log_to_mlflow(experiment: str, tracking_uri: str | None, cells: dict, text: str, args) -> str:
    """One MLflow run: the cells' means as metrics, the table, the JSON and a score-vs-TPF plot."""
    import tempfile

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import mlflow

    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment(experiment)
    with mlflow.start_run(run_name="edit_table") as run:
        mlflow.log_params({"models": " ".join(args.model)[:500], "families": " ".join(args.families),
                           "family_params": args.family_params[:500], "n": args.n, "sample_seed": args.sample_seed,
                           "gen_length": args.gen_length,
                           "mbe": " ".join(map(str, args.mbe)), "threads": args.threads})
        metrics = {}
        for (label, fam, name), runs in cells.items():
            key = f"{label}/{fam}/{name.replace(' ', '_')}"
            for field in ("score", "tpf", "tps", "precision", "edits_per_sample"):
                values = [r[field] for r in runs if r[field] == r[field]]
                if values:
                    metrics[f"{key}/{field}"] = statistics.mean(values)
        mlflow.log_metrics({k.replace("+", "_"): v for k, v in metrics.items()})
        with tempfile.TemporaryDirectory() as tmp:
            Path(tmp, "edit_table.md").write_text(text)
            Path(tmp, "edit_table.json").write_text(json.dumps({"|".join(k): v for k, v in cells.items()}, indent=2))
            fig, ax = plt.subplots(figsize=(6, 4))
            for (label, fam, name), runs in cells.items():
                ax.errorbar(statistics.mean(r["tpf"] for r in runs), statistics.mean(r["score"] for r in runs),
                            yerr=(max(r["score"] for r in runs) - min(r["score"] for r in runs)) / 2, fmt="o")
                ax.annotate(f"{label} {fam} {name}", (statistics.mean(r["tpf"] for r in runs),
                                                      statistics.mean(r["score"] for r in runs)), fontsize=6)
            ax.set_xlabel("tokens per forward")
            ax.set_ylabel("score (%)")
            fig.tight_layout()
            fig.savefig(Path(tmp, "score_vs_tpf.png"), dpi=120)
            plt.close(fig)
            mlflow.log_artifacts(tmp)
        return run.info.run_id


def grid_lines(cells: dict, max_loss: float) -> list[str]:
    """Per model, family and preset of a grid: the best-scoring setting (on a tie the faster) and the
    fastest setting that loses at most `max_loss` points against it, with their TPF ratio."""
    groups: dict = defaultdict(list)
    for (label, fam, name), runs in cells.items():
        groups[(label, fam, name.split(" ", 1)[0])].append(
            (name, statistics.mean(r["score"] for r in runs), statistics.mean(r["tpf"] for r in runs)))
    lines = [f"| model | family | best score: setting | score | TPF | fastest within {max_loss:g} points: setting | "
             "score | TPF | TPF ratio |", "|---|---|---|---|---|---|---|---|---|"]
    for (label, fam, _), rows in groups.items():
        best = max(rows, key=lambda r: (r[1], r[2]))
        fast = max((r for r in rows if r[1] >= best[1] - max_loss), key=lambda r: r[2])
        lines.append(f"| {label} | {fam} | {best[0]} | {best[1]:.1f} | {best[2]:.2f} | {fast[0]} | {fast[1]:.1f} | "
                     f"{fast[2]:.2f} | {fast[2] / best[2]:.2f} |")
    return lines


def parse_grid(items: list[str], parser: argparse.ArgumentParser) -> dict[str, list]:
    """`KEY=V1,V2,...` items naming DecodeConfig fields (values as YAML) -> {key: [values]}."""
    grid = {}
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or not values:
            parser.error(f"--grid {item!r}: expected KEY=V1,V2,..., e.g. threshold=0.5,0.7")
        grid[key] = [decode_overrides([f"{key}={v}"], parser, "--grid")[key] for v in values.split(",")]
    return grid


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append", required=True,
                   help="LABEL=checkpoint folder (repeat; same label = seeds); LABEL@fam1,fam2=folder decodes that "
                        "checkpoint on those of --families only (models trained on different tasks, one table)")
    p.add_argument("--families", nargs="+", default=["sort"])
    p.add_argument("--presets", nargs="+", default=None, help="decoding presets in conf/decode/ (default: all)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a DecodeConfig field for every setting, e.g. --set max_reverts=null (the presets' guard off)")
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                   help="decode every preset at every point of this grid (repeat for more fields)")
    p.add_argument("--max-loss", type=float, default=3.0, help="--grid: points the fastest setting may lose")
    p.add_argument("--family-params", default="{}")
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--sample-seed", type=int, default=HELDOUT_SEED,
                   help=f"which draw of the held-out split (default {HELDOUT_SEED}, the one every recipe reports); "
                        "choose settings on another draw, e.g. with --grid, then report on the default")
    p.add_argument("--gen-length", type=int, default=32)
    p.add_argument("--block-length", type=int, default=None, help="default: the presets'")
    p.add_argument("--mbe", type=int, nargs="*", default=[], help="also decode with Multi-Block Editing over these windows")
    p.add_argument("--attribution", action="store_true",
                   help="decode the presets as they are (editing on) and trace every wrong token to its cause")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None)
    p.add_argument("--mlflow-experiment", default=None, help="log the table to this MLflow experiment")
    p.add_argument("--tracking-uri", default=None)
    args = p.parse_args(argv)
    models = []  # (label, checkpoint folder, families it is decoded on)
    for item in args.model:
        spec, sep, path = item.partition("=")
        label, at, only = spec.partition("@")
        families = only.split(",") if at else args.families
        if not sep or not label or not (Path(path) / "config.json").is_file():
            p.error(f"--model {item!r}: expected LABEL=<checkpoint folder with config.json>")
        if not set(families) <= set(args.families):
            p.error(f"--model {item!r}: families {sorted(set(families) - set(args.families))} are not in --families")
        models.append((label, path, families))
    fields = decode_overrides(args.set, p)
    grid = parse_grid(args.grid, p)
    presets = args.presets or preset_names()
    unknown = sorted(set(presets) - set(preset_names()))
    if unknown:
        p.error(f"--presets: unknown {unknown}; known: {preset_names()}")
    if any(w < 1 for w in args.mbe):
        p.error(f"--mbe {args.mbe}: windows are whole blocks, >= 1")
    if grid and args.mbe:
        p.error("--grid and --mbe: put mbe_window in the grid instead (--grid mbe_window=0,1)")
    try:
        params = json.loads(args.family_params)
    except json.JSONDecodeError as exc:
        p.error(f"--family-params: not JSON ({exc}); expected e.g. '{{\"sort\": {{\"max_value\": 9}}}}'")
    torch.set_num_threads(args.threads)
    arms = settings(presets, args.block_length, args.mbe, grid, editing_off=not args.attribution)
    cells: dict = defaultdict(list)  # (label, fam, setting) -> [result per seed]
    for label, path, families in models:
        for key, res in evaluate_checkpoint(path, families, params, args.n, args.gen_length, arms, fields,
                                            args.attribution, args.sample_seed).items():
            cells[(label, *key)].append(res)
    extra = grid_lines(cells, args.max_loss) if grid else mbe_lines(cells)
    structural = structural_lines(cells)
    if structural:
        extra = [*structural, *(["", *extra] if extra else [])]
    if args.attribution:
        extra = [*attribution_lines(cells), *(["", *extra] if extra else [])]
    text = "\n".join([*table_lines(cells), "", *summary_lines(cells), *(["", *extra] if extra else [])])
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps({"|".join(k): v for k, v in cells.items()}, indent=2))
    if args.mlflow_experiment:
        run_id = log_to_mlflow(args.mlflow_experiment, args.tracking_uri, cells, text, args)
        print(f"\nlogged to MLflow experiment {args.mlflow_experiment!r}, run {run_id}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
