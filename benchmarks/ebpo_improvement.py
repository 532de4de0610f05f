"""Does EBPO improve the model? (issue 5, item 5) — the improvement curve and the N ablation.

Runs `components.rl.run.run_rl` from a checkpoint once per requested number of noise levels N
(default: 1 and 4), each under the same wall-clock budget, and prints for each the held-out
accuracy / TPF curve (greedy decoding in the rollout mode) and a summary: accuracy gain (absolute
points) and TPF ratio final/initial. The acceptance bar of item 5 is a gain >= 5 points within 15
minutes on two CPU cores with TPF not below 90% of the start.

    .venv/bin/python benchmarks/ebpo_improvement.py --model outputs/sft/checkpoint --out /tmp/ebpo \
        --levels 1 4 --minutes 15 [key=value overrides for conf/rl/default.yaml]

Wall and CPU seconds are both printed: on a shared machine the gap between them is contention.

`--parallel` runs the arms side by side, one process and one torch thread each (set
trainer.num_threads=1), so on two cores each arm has one core for the whole budget. The curve is
whatever `eval.*` asks for: greedy by default, the sampled policy EBPO trains with
`eval.temperature=1.0 eval.samples_per_prompt=K`.

`--permute-advantages` is a control (`optim.permute_advantages=true`): each group's advantages are
shuffled among its responses, so the updates keep their size and statistics but no longer depend on
the reward. A real run must beat it; when it does not, the update noise, not the reward signal, sets
the outcome.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from components.rl.run import DEFAULT_CONFIG, run_rl  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, type=Path, help="starting checkpoint (e.g. the tiny SFT model)")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    ap.add_argument("--levels", type=int, nargs="+", default=[1, 4], help="numbers of noise levels N to compare")
    ap.add_argument("--minutes", type=float, default=15.0, help="wall-clock budget per run, evaluations included")
    ap.add_argument("--permute-advantages", action="store_true", help="control run (see the docstring)")
    ap.add_argument("--parallel", action="store_true", help="run the arms side by side, one process each")
    ap.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    args = ap.parse_args()

    jobs = {}
    for n in args.levels:
        out = args.out / f"levels_{n}"
        overrides = list(args.overrides) + [f"estimator.num_levels={n}", f"max_minutes={args.minutes}",
                                            "max_steps=100000"]
        if args.permute_advantages:
            overrides.append("optim.permute_advantages=true")
        print(f"=== N = {n} noise level(s): run_rl {args.model} -> {out}\n    overrides: {' '.join(overrides)}",
              flush=True)
        jobs[n] = (out, overrides)
    if args.parallel:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(len(jobs), mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {n: pool.submit(run_rl, args.config, args.model, out, overrides=o) for n, (out, o) in jobs.items()}
            summaries = {n: f.result() for n, f in futures.items()}
    else:
        summaries = {n: run_rl(args.config, args.model, out, overrides=o) for n, (out, o) in jobs.items()}
    for n, summary in summaries.items():
        print(f"\n=== N = {n}: held-out curve")
        print(f"{'step':>5} {'wall s':>7} {'cpu s':>7} {'accuracy':>9} {'tpf':>6} {'length':>7}")
        for p in summary["eval_curve"]:
            print(f"{p['step']:>5} {p['elapsed_s']:>7.0f} {p['cpu_s']:>7.0f} {100 * p['accuracy']:>8.1f}% "
                  f"{p['tpf']:>6.2f} {p['length']:>7.1f}")
    print("\n=== summary (held-out accuracy in the rollout mode, decoded as eval.* says)")
    print(f"{'N':>3} {'steps':>6} {'initial':>8} {'final':>7} {'best':>7} {'gain pts':>9} {'tpf0':>6} {'tpf':>6} "
          f"{'tpf ratio':>9} {'wall s':>7}")
    table = {}
    for n, s in summaries.items():
        m, curve = s["metrics"], s["eval_curve"]
        best = max(p["accuracy"] for p in curve)
        row = {"steps": int(m["rl/steps"]), "initial": m["rl_eval/initial_accuracy"], "final": m["rl_eval/accuracy"],
               "best": best, "gain_points": 100 * m["rl_eval/accuracy_gain"], "tpf_initial": m["rl_eval/initial_tpf"],
               "tpf_final": m["rl_eval/tpf"], "tpf_ratio": m["rl_eval/tpf_ratio"], "wall_s": m["rl/wall_seconds"]}
        table[n] = row
        print(f"{n:>3} {row['steps']:>6} {100 * row['initial']:>7.1f}% {100 * row['final']:>6.1f}% "
              f"{100 * best:>6.1f}% {row['gain_points']:>+9.1f} {row['tpf_initial']:>6.2f} {row['tpf_final']:>6.2f} "
              f"{row['tpf_ratio']:>9.3f} {row['wall_s']:>7.0f}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ablation.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                        "table": table,
                                                        "curves": {n: s["eval_curve"] for n, s in summaries.items()}},
                                                       indent=2))


if __name__ == "__main__":
    main()
