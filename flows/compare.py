"""`draftedit compare`: runs side by side (score, TPF, TPS per measured arm) and a comparison plot.

    draftedit compare                      # the last 5 pipeline runs of the experiment
    draftedit compare --last 10
    draftedit compare RUN_ID RUN_ID ...    # pipeline runs or single stage runs
    draftedit compare --parent RUN_ID      # the stage runs of one pipeline

A pipeline run is shown with the metrics of its stage runs merged (evaluate: eval/*, benchmark:
bench/<setting>/*). The arms: `eval` (the evaluation suite), `eval/<preset or task>` and each benchmark setting.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from pathlib import Path

from .config import DEFAULT_PRESET
from .report import save_figure

QUANTITIES = ("score", "tpf", "tps")


@dataclass
class RunView:
    run_id: str
    label: str
    metrics: dict[str, float] = field(default_factory=dict)

    def arms(self) -> dict[str, dict[str, float]]:
        """arm -> {score, tpf, tps} from eval/* (arm `eval`), eval/<preset or task>/* and bench/<setting>/*."""
        out: dict[str, dict[str, float]] = {}
        for q in QUANTITIES:
            if f"eval/{q}" in self.metrics:
                out.setdefault("eval", {})[q] = self.metrics[f"eval/{q}"]
        for key, value in sorted(self.metrics.items()):
            parts = key.split("/")
            if len(parts) == 3 and parts[0] == "eval" and parts[2] in QUANTITIES:
                out.setdefault(f"eval/{parts[1]}", {})[parts[2]] = value  # a decoding preset or a task
        for key, value in sorted(self.metrics.items()):
            parts = key.split("/")
            if len(parts) == 3 and parts[0] == "bench" and parts[2] in QUANTITIES:
                out.setdefault(parts[1], {})[parts[2]] = value
        return out


def collect(client, run_ids: list[str]) -> list[RunView]:
    """One view per run; a pipeline run merges the metrics of its stage runs (later stages win)."""
    from mlflow.exceptions import MlflowException

    from components.tracking import TAG_STAGE, TrackingError, child_runs

    views = []
    for run_id in run_ids:
        try:
            run = client.get_run(run_id)
        except MlflowException as exc:
            raise TrackingError(f"run {run_id!r} does not exist in {client.tracking_uri}") from exc
        stage = run.data.tags.get(TAG_STAGE, "run")
        metrics: dict[str, float] = {}
        if stage == "pipeline":
            for child in child_runs(client, run_id):
                metrics.update(child.data.metrics)
        metrics.update(run.data.metrics)
        label = f"{run.info.run_name or stage} {run_id[:6]}"
        views.append(RunView(run_id, label, metrics))
    return views


def table_rows(views: list[RunView]) -> tuple[list[str], list[list[str]]]:
    """Header (arm, metric, run labels...) and one row per (arm, quantity) present in any run."""
    arms: list[str] = []
    for view in views:
        for arm in view.arms():
            if arm not in arms:
                arms.append(arm)
    header = ["arm", "metric"] + [v.label for v in views]
    rows = []
    for arm in arms:
        for q in QUANTITIES:
            values = [v.arms().get(arm, {}).get(q) for v in views]
            if all(x is None for x in values):
                continue
            fmt = {"score": ".3f", "tpf": ".2f", "tps": ".1f"}[q]
            rows.append([arm, q.upper() if q != "score" else q] + ["-" if x is None else format(x, fmt) for x in values])
    return header, rows


def plot(views: list[RunView], path: str | os.PathLike) -> Path:
    """Score against TPS, one marker per (run, arm); written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    markers = "osD^vP*X"
    for i, view in enumerate(views):
        for arm, values in view.arms().items():
            if "score" in values and "tps" in values:
                ax.scatter(values["tps"], values["score"], marker=markers[i % len(markers)], s=60,
                           label=f"{view.label} · {arm}")
    ax.set_xlabel("tokens per second (TPS)")
    ax.set_ylabel("score")
    ax.set_title("draftedit runs: score vs throughput")
    ax.grid(alpha=0.3)
    if ax.collections:
        ax.legend(fontsize=7, loc="best")
    return save_figure(fig, path)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="*", metavar="RUN_ID", help="runs to compare (default: the last pipeline runs)")
    parser.add_argument("--parent", metavar="RUN_ID", help="compare the stage runs of this pipeline run")
    parser.add_argument("--last", type=int, default=5, help="without RUN_IDs: this many latest pipeline runs")
    parser.add_argument("--preset", "-p", default=DEFAULT_PRESET, help="pipeline preset giving the tracking store")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="pipeline config override")
    parser.add_argument("--out", default=None, help="plot path (default: <output_dir>/compare.png)")


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from components.tracking import TAG_STAGE, TrackingError, child_runs, resolve_tracking_uri

    from components.cli_errors import UsageError, config_errors

    from .config import load_pipeline_config, preset_path
    from .runner import tracking_client

    if args.last < 1:
        raise UsageError(f"--last must be >= 1, got {args.last}")
    path = preset_path(args.preset)
    with config_errors(path, args.set):
        cfg = load_pipeline_config(path, args.set)
    output_dir = Path(cfg.output_dir).resolve()
    tracking_uri = resolve_tracking_uri(cfg.tracking.uri, output_dir)
    client, experiment_id = tracking_client(tracking_uri, cfg.tracking.experiment, str(output_dir))
    if args.parent:
        run_ids = [r.info.run_id for r in child_runs(client, args.parent)]
    elif args.runs:
        run_ids = list(args.runs)
    else:
        runs = client.search_runs([experiment_id], filter_string=f"tags.`{TAG_STAGE}` = 'pipeline'",
                                  order_by=["attributes.start_time DESC"], max_results=args.last)
        run_ids = [r.info.run_id for r in reversed(runs)]
    if not run_ids:
        raise TrackingError(f"no runs to compare in experiment {cfg.tracking.experiment!r} of {tracking_uri}")
    views = collect(client, run_ids)
    header, rows = table_rows(views)
    table = Table(title=f"draftedit compare ({tracking_uri})")
    for i, col in enumerate(header):
        table.add_column(col, justify="left" if i < 2 else "right")
    for row in rows:
        table.add_row(*row)
    console = Console()
    console.print(table)
    if not rows:
        console.print("(these runs logged no eval/* or bench/* metrics)")
    out = plot(views, args.out or output_dir / "compare.png")
    console.print(f"plot: {out}")
    return 0
