"""What a pipeline run shows: its summary tables, the decoding arms of an evaluation, the stage plot.

Used by the pipeline (flows/pipeline.py) and `draftedit compare` (flows/compare.py).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from components.tracking.links import compare_url, runs_url

from .ui import MLFLOW_UI_PORT, UI_HOST

SUMMARY_COLUMNS = ("stage", "status", "run", "score", "TPF", "TPS", "S score", "S TPF", "S edits", "val acc", "seconds")
FINAL_COLUMNS = ("decoding", "score", "TPF", "TPS", "edits/sample", "edit precision")


def _fmt(value: float | None, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


def summary_rows(rows: list[dict]) -> list[tuple[str, ...]]:
    """Table rows (see SUMMARY_COLUMNS); the benchmark adds one row per decoding setting.

    score / TPF / TPS are the stage's evaluation in its tasks' own preset (Q mode); the S columns are
    the same suite in S mode (`eval/speedy/*`), with the T2T edits per sample. `val acc` is a training
    stage's masked-token accuracy on its own held-out data (`val/acc_masked`): what CPT, which cannot
    answer the chat tasks yet, adds.
    """
    out = []
    for row in rows:
        m = row["metrics"]
        run = (row["run_id"] or "-")[:8]
        out.append((row["stage"], row["status"], run, _fmt(m.get("eval/score")), _fmt(m.get("eval/tpf"), ".2f"),
                    _fmt(m.get("eval/tps"), ".1f"), _fmt(m.get("eval/speedy/score")),
                    _fmt(m.get("eval/speedy/tpf"), ".2f"), _fmt(m.get("eval/speedy/edits_per_sample"), ".2f"),
                    _fmt(m.get("val/acc_masked")), _fmt(row["seconds"], ".1f")))
        if row["stage"] == "benchmark":
            names = sorted({k.split("/")[1] for k in m if k.startswith("bench/") and k.count("/") == 2})
            # `bench/<preset>/*` repeats the first unquantized setting of that preset (`<preset>_b1`): skip it.
            aliases = {n for n in names if any(other.startswith(n + "_b") for other in names)}
            for name in (n for n in names if n not in aliases):
                out.append((f"  {name}", "", "", _fmt(m.get(f"bench/{name}/score")),
                            _fmt(m.get(f"bench/{name}/tpf"), ".2f"), _fmt(m.get(f"bench/{name}/tps"), ".1f"),
                            "", "", "", "", ""))
    return out


def final_model_rows(rows: list[dict]) -> list[tuple[str, ...]]:
    """The evaluate stage's suite per decoding preset, editing on and off (score, TPF, TPS, edits, precision)."""
    final = next((r for r in reversed(rows) if r["stage"] == "evaluate" and r["run_id"]), None)
    if final is None:
        return []
    m = final["metrics"]
    out = []
    for key, label in decoding_arms(m):
        out.append((label, _fmt(m.get(f"eval/{key}/score")), _fmt(m.get(f"eval/{key}/tpf"), ".2f"),
                    _fmt(m.get(f"eval/{key}/tps"), ".1f"), _fmt(m.get(f"eval/{key}/edits_per_sample"), ".2f"),
                    _fmt(m.get(f"eval/{key}/edit_precision"), ".2f")))
    return out


def rl_line(rows: list[dict]) -> str | None:
    """What RL did to its held-out accuracy (its own curve, in its rollout preset)."""
    rl = next((r for r in rows if r["stage"] == "rl" and r["run_id"]), None)
    if rl is None or "rl_eval/initial_accuracy" not in rl["metrics"]:
        return None
    m = rl["metrics"]
    first, last = 100 * m["rl_eval/initial_accuracy"], 100 * m["rl_eval/accuracy"]
    return (f"RL: held-out accuracy {first:.1f}% -> {last:.1f}% ({last - first:+.1f} points) in "
            f"{int(m.get('rl/steps', 0))} steps")


def print_summary(result: dict, wall_seconds: float) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 150)  # a log file gets the whole table
    table = Table(title=f"draftedit pipeline — parent run {result['parent_run_id']}")
    for col in SUMMARY_COLUMNS:
        table.add_column(col, justify="left" if col in ("stage", "status", "run") else "right", no_wrap=True)
    for row in summary_rows(result["rows"]):
        table.add_row(*row)
    console.print(table)
    final = final_model_rows(result["rows"])
    if final:
        ftable = Table(title="final model (evaluate stage): decoding modes, T2T editing on and off")
        for col in FINAL_COLUMNS:
            ftable.add_column(col, justify="left" if col == "decoding" else "right", no_wrap=True)
        for row in final:
            ftable.add_row(*row)
        console.print(ftable)
    line = rl_line(result["rows"])
    if line:
        console.print(line)
    reg = result.get("registration")
    if reg:
        champ = "now champion" if reg["champion"] else f"champion stays version {reg['previous_champion']}"
        console.print(f"Registered model [bold]{reg['name']}[/] version {reg['version']} "
                      f"(score {reg['score']:.4g}; models:/{reg['name']}/latest; {champ})")
    if result.get("plot"):
        console.print(f"Plot (score and TPF per stage and preset): {result['plot']}")
    console.print(f"Wall time: {wall_seconds:.0f} s")
    console.print(f"Tracking: {result['tracking_uri']}  (experiment '{result['experiment']}')")
    console.print(f"Outputs:  {result['output_dir']}")
    base = f"http://{UI_HOST}:{MLFLOW_UI_PORT}"
    stage_runs = [r["run_id"] for r in result["rows"] if r["run_id"]]
    # soft_wrap: a link broken over two lines no longer opens when clicked
    console.print(f"Look at it: [bold]draftedit ui[/], then its runs {runs_url(base, result['experiment_id'])}",
                  soft_wrap=True)
    if stage_runs:
        console.print(f"  and its stages side by side {compare_url(base, result['experiment_id'], stage_runs)}",
                      soft_wrap=True)
    console.print(f"Compare its stages: [bold]draftedit compare --parent {result['parent_run_id']}[/]")


NOEDIT = "_noedit"  # the evaluate stage's suffix for a preset re-run with T2T editing off


def decoding_arms(metrics) -> list[tuple[str, str]]:
    """(metric key, label) of every decoding preset the evaluation reported, `eval/<preset>/score` and
    `eval/<preset>_noedit/score`, presets in conf/decode/ order, editing on before off. The presets
    are discovered (components.presets.preset_names), never listed here."""
    from components.presets import preset_names

    arms = []
    for preset in preset_names():
        for key, label in ((preset, f"{preset}, editing on"), (preset + NOEDIT, f"{preset}, editing off")):
            if f"eval/{key}/score" in metrics:
                arms.append((key, label))
    return arms


def plot_stages(rows: list[dict], path: str | os.PathLike) -> Path | None:
    """Score and TPF of every evaluated stage (probes and the final evaluation) per decoding preset:
    what each stage adds. `rows` are the pipeline's summary rows; None when no stage has eval metrics."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = [r for r in rows if r.get("run_id") and decoding_arms(r["metrics"])]
    if not stages:
        return None
    arms = list(dict.fromkeys(arm for r in stages for arm in decoding_arms(r["metrics"])))
    fig, (ax_score, ax_tpf) = plt.subplots(1, 2, figsize=(10, 4))
    x = list(range(len(stages)))
    for arm, label in arms:
        for ax, quantity in ((ax_score, "score"), (ax_tpf, "tpf")):
            ys = [r["metrics"].get(f"eval/{arm}/{quantity}", float("nan")) for r in stages]
            if any(y == y for y in ys):
                ax.plot(x, ys, marker="o", label=label)
    for ax, title in ((ax_score, "held-out score"), (ax_tpf, "tokens per forward (TPF)")):
        ax.set_xticks(x, [r["stage"] for r in stages])
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    fig.suptitle("draftedit pipeline: what each stage adds")
    return save_figure(fig, path)


def save_figure(fig, path: str | os.PathLike) -> Path:
    """Write a figure atomically and close it. The format comes from `path`'s suffix (png without one):
    the temporary file's own suffix says nothing."""
    import matplotlib.pyplot as plt

    from model.files import atomic_path  # imported here: `model` pulls in torch, the CLI should not

    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", dpi=120, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path
