"""Does EBPO improve the model, and how reliably? Held-out curves, gains over seeds, the control.

`run` trains RL arms from one checkpoint under one wall-clock budget, one arm per number of noise
levels N (`--levels`), and prints the report of the folders it wrote. `report` reads folders that
`draftedit rl --out DIR` (or `run`) wrote, summary.json and eval_curve.json, and prints every run's
held-out curve (decoded as the run's `eval.*` asked), then per arm the gain over the start as
mean ± sd over seeds, the peak, the change over the last third of the curve (a gain that decays
there is not one) and the final evaluation's edit accounting.

  python -m benchmarks.rl_table run --model outputs/sft/model --out outputs/ebpo --levels 1 4 --minutes 15 \
      [--config conf/rl/sort_demo.yaml] [--parallel] [--permute-advantages] [KEY=VALUE ...]
  python -m benchmarks.rl_table report --run N4=outputs/ebpo/levels_4 --run N4=outputs/ebpo_s1/levels_4 \
      --run control=outputs/ebpo_ctl/control_levels_4 [--json table.json]

Runs that share a label are seeds of one arm (a second seed is a second `run` with `seed=S`).
`--parallel` runs the arms side by side, one process each (set trainer.num_threads=1 so each has one
core for the whole budget). `--permute-advantages` makes every arm a control
(`optim.permute_advantages=true`): each group's advantages are shuffled among its responses, so the
updates keep their size and statistics but no longer depend on the reward. A real arm must beat it;
when it does not, update noise, not the reward signal, sets the outcome. Wall and CPU seconds are both
in the curve: on a shared machine the gap between them is contention. Scores of the final checkpoints
under other presets, or with editing off, come from benchmarks.edit_table.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

from benchmarks.common import spread_cell


def load_run(folder: Path) -> dict:
    """The held-out curve and the final metrics of one finished run; one clear line if it is not one."""
    summary, curve_file = folder / "summary.json", folder / "eval_curve.json"
    for f in (summary, curve_file):
        if not f.is_file():
            raise SystemExit(f"rl_table: {f} not found (is {folder} the --out of a finished `draftedit rl` run?)")
    try:
        curve, metrics = json.loads(curve_file.read_text()), json.loads(summary.read_text()).get("metrics", {})
    except json.JSONDecodeError as e:
        raise SystemExit(f"rl_table: {folder}: a results file is not valid JSON ({e})") from None
    if not isinstance(curve, list) or len(curve) < 2:
        raise SystemExit(f"rl_table: {curve_file} needs a list of at least two held-out evaluations (the start and one more)")
    return {"folder": str(folder), "curve": curve, "metrics": metrics}


def run_row(run: dict) -> dict:
    """Gain, peak and the last third's change of one run, in accuracy points."""
    acc = [100.0 * p["accuracy"] for p in run["curve"]]
    steps = [int(p["step"]) for p in run["curve"]]
    # the last third of the steps: from the first evaluation at or after 2/3 of the final step
    third = next(i for i, s in enumerate(steps) if s >= 2 * steps[-1] / 3)
    final = run["curve"][-1]
    return {"start": acc[0], "final": acc[-1], "gain": acc[-1] - acc[0], "peak": max(acc),
            "last_third_change": acc[-1] - acc[third], "last_third_from_step": steps[third],
            "steps": steps[-1], "minutes": run["metrics"].get("rl/wall_seconds", float("nan")) / 60,
            "tpf_ratio": run["metrics"].get("rl_eval/tpf_ratio", float("nan")),
            "edits_per_sample": final.get("edits_per_sample", float("nan")),
            "fixes": final.get("edit_fixes", float("nan")), "breaks": final.get("edit_breaks", float("nan"))}


def report(runs: list[tuple[str, Path]], json_out: str | None = None) -> dict[str, list[dict]]:
    """Print the curves and the per-arm table of (label, folder) runs; returns {label: [row + curve]}."""
    arms: dict[str, list[dict]] = defaultdict(list)
    for label, folder in runs:
        run = load_run(Path(folder))
        run["row"] = run_row(run)
        arms[label].append(run)

    print("held-out accuracy (%) per evaluation step [wall s / cpu s]")
    for label, members in arms.items():
        for i, run in enumerate(members):
            points = " ".join(f"{p['step']}:{100 * p['accuracy']:.1f}[{p.get('elapsed_s', float('nan')):.0f}/"
                              f"{p.get('cpu_s', float('nan')):.0f}]" for p in run["curve"])
            print(f"  {label} #{i} ({run['folder']}): {points}")

    print("\n| arm | seeds | start | final | gain (per seed) | gain mean ± sd | peak | last-third change | "
          "steps | minutes | TPF ratio | final edits/sample | fixes / breaks |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for label, members in arms.items():
        rows = [r["row"] for r in members]
        col = lambda k, spec="+.1f": spread_cell([r[k] for r in rows], spec, spread="sd")  # noqa: E731
        per_seed = " / ".join(f"{r['gain']:+.1f}" for r in rows)
        print(f"| {label} | {len(rows)} | {col('start', '.1f')} | {col('final', '.1f')} | {per_seed} | {col('gain')} | "
              f"{col('peak', '.1f')} | {col('last_third_change')} | {col('steps', '.0f')} | {col('minutes', '.1f')} | "
              f"{col('tpf_ratio', '.3f')} | {col('edits_per_sample', '.2f')} | "
              f"{col('fixes', '.0f')} / {col('breaks', '.0f')} |")
    table = {label: [{"folder": r["folder"], **r["row"], "curve": r["curve"]} for r in members]
             for label, members in arms.items()}
    if json_out:
        Path(json_out).write_text(json.dumps(table, indent=2))
    return table


def run_arms(model: Path, out: Path, config: Path, levels: list[int], minutes: float, control: bool,
             parallel: bool, overrides: list[str]) -> list[tuple[str, Path]]:
    """One `run_rl` per number of noise levels, each under the same budget; returns (label, folder) per arm."""
    from components.rl.run import run_rl

    jobs = {}
    for n in levels:
        label = f"control N={n}" if control else f"N={n}"
        folder = out / (f"control_levels_{n}" if control else f"levels_{n}")
        # the budget ends every arm, not a step count; explicit KEY=VALUE overrides still win
        arm = [f"max_minutes={minutes}", "max_steps=100000", f"estimator.num_levels={n}",
               *(["optim.permute_advantages=true"] if control else []), *overrides]
        print(f"=== {label}: run_rl {model} -> {folder}\n    overrides: {' '.join(arm)}", flush=True)
        jobs[label] = (folder, arm)
    if parallel:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(len(jobs), mp_context=multiprocessing.get_context("spawn")) as pool:
            for f in [pool.submit(run_rl, config, model, folder, overrides=arm) for folder, arm in jobs.values()]:
                f.result()
    else:
        for folder, arm in jobs.values():
            run_rl(config, model, folder, overrides=arm)
    return [(label, folder) for label, (folder, _) in jobs.items()]


def _labelled(spec: str) -> tuple[str, Path]:
    label, sep, folder = spec.partition("=")
    if not sep or not label or not folder:
        raise SystemExit(f"rl_table: --run {spec!r}: expected LABEL=DIR")
    return label, Path(folder)


def main(argv: list[str] | None = None) -> int:
    from components.rl.run import DEFAULT_CONFIG

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="train the arms, then report them")
    r.add_argument("--model", required=True, type=Path, help="starting checkpoint (e.g. the tiny SFT model)")
    r.add_argument("--out", required=True, type=Path, help="one folder per arm is written under it")
    r.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    r.add_argument("--levels", type=int, nargs="+", default=[1, 4], help="numbers of noise levels N, one arm each")
    r.add_argument("--minutes", type=float, default=15.0, help="wall-clock budget per arm, evaluations included")
    r.add_argument("--permute-advantages", action="store_true", help="control arms (see above)")
    r.add_argument("--parallel", action="store_true", help="run the arms side by side, one process each")
    r.add_argument("--json", default=None, help="also write the rows and curves here (default: OUT/table.json)")
    r.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="RL config overrides for every arm")
    rep = sub.add_parser("report", help="report finished runs")
    rep.add_argument("--run", action="append", required=True, metavar="LABEL=DIR",
                     help="a finished run's --out folder (repeat; the same label = seeds of one arm)")
    rep.add_argument("--json", default=None, help="also write the rows and curves here")
    args = p.parse_args(argv)
    if args.cmd == "report":
        report([_labelled(s) for s in args.run], args.json)
        return 0
    runs = run_arms(args.model, args.out, args.config, args.levels, args.minutes, args.permute_advantages,
                    args.parallel, args.overrides)
    report(runs, args.json or str(args.out / "table.json"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
