"""Issue 19's acceptance table from finished RL runs: held-out curves, gains over seeds, the control.

Reads the folders that `draftedit rl --out DIR` wrote (summary.json, eval_curve.json) and prints,
in one table, every run's held-out curve (greedy, in the rollout mode, as `eval.*` asked), then per
arm the gain over the start as mean ± sd over seeds, the peak, the change over the last third of
the curve (item 1: no decline there) and the final evaluation's edit accounting (item 3).

    python benchmarks/rl_table.py --run T0.6=outputs/rl/t06_s0 --run T0.6=outputs/rl/t06_s1 \
        --run control=outputs/rl/ctl_s0 [--json table.json]

Runs that share a label are seeds of one arm. The runs themselves come from
`./run draftedit rl --config ... --model ... --out DIR seed=S ...`; independent prompts and the
Q-mode / editing-off scores of the final checkpoints come from `benchmarks/edit_table.py`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from edit_table import spread_cell  # noqa: E402


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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", action="append", required=True, metavar="LABEL=DIR",
                   help="a finished run's --out folder (repeat; the same label = seeds of one arm)")
    p.add_argument("--json", default=None, help="also write the rows and curves here")
    args = p.parse_args()

    arms: dict[str, list[dict]] = defaultdict(list)
    for spec in args.run:
        label, sep, folder = spec.partition("=")
        if not sep or not label or not folder:
            raise SystemExit(f"rl_table: --run {spec!r}: expected LABEL=DIR")
        run = load_run(Path(folder))
        run["row"] = run_row(run)
        arms[label].append(run)

    print("held-out accuracy (%) per evaluation step")
    for label, runs in arms.items():
        for i, run in enumerate(runs):
            points = " ".join(f"{p['step']}:{100 * p['accuracy']:.1f}" for p in run["curve"])
            print(f"  {label} #{i} ({run['folder']}): {points}")

    print("\n| arm | seeds | start | final | gain (per seed) | gain mean ± sd | peak | last-third change | "
          "steps | minutes | TPF ratio | final edits/sample | fixes / breaks |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for label, runs in arms.items():
        rows = [r["row"] for r in runs]
        col = lambda k, spec="+.1f": spread_cell([r[k] for r in rows], spec, spread="sd")  # noqa: E731
        per_seed = " / ".join(f"{r['gain']:+.1f}" for r in rows)
        print(f"| {label} | {len(rows)} | {col('start', '.1f')} | {col('final', '.1f')} | {per_seed} | {col('gain')} | "
              f"{col('peak', '.1f')} | {col('last_third_change')} | {col('steps', '.0f')} | {col('minutes', '.1f')} | "
              f"{col('tpf_ratio', '.3f')} | {col('edits_per_sample', '.2f')} | "
              f"{col('fixes', '.0f')} / {col('breaks', '.0f')} |")
    if args.json:
        Path(args.json).write_text(json.dumps({label: [{"folder": r["folder"], **r["row"], "curve": r["curve"]}
                                                       for r in runs] for label, runs in arms.items()}, indent=2))


if __name__ == "__main__":
    sys.exit(main())
