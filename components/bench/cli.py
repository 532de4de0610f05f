"""`draftedit bench --model DIR [--config default|table3|gpu|YAML] [--out DIR] [--track] [--set key=value ...]`."""

from __future__ import annotations

import argparse
from pathlib import Path

from components.cli_errors import config_errors
from components.config import CONF_DIR, default_output_dir, load_config

from .config import BenchConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True,
                        help="checkpoint folder (plain, FP8 or int8 as written by draftedit quantize)")
    parser.add_argument("--config", default="default",
                        help="bench config YAML, or a name in conf/bench/ (default, table3, gpu)")
    parser.add_argument("--out", default=None, help="output folder (default: <outputs>/bench/<model folder name>)")
    parser.add_argument("--track", action="store_true", help="log to MLflow (tracking URI below or the local SQLite store)")
    parser.add_argument("--tracking-uri", default=None)
    parser.add_argument("--experiment", default="draftedit-bench")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, repeatable: --set repeats=5 --set prompts.task=null "
                             "--set 'settings=[{mode: speedy, batch_size: 8}]'")


def _config_path(name: str) -> Path:
    candidate = CONF_DIR / "bench" / f"{name}.yaml"
    return candidate if candidate.is_file() else Path(name)


def _print_table(result: dict) -> None:
    from .report import markdown_table

    cols = ["name", "batch_size", "quant", "tps", "tpf", "forwards", "latency_p50_s", "latency_p95_s",
            "peak_mem_mb", "score", "edits_per_sample", "edit_precision", "x_reference", "x_autoregressive"]
    print(markdown_table(result["records"], cols))
    for kind, path in result["files"].items():
        print(f"{kind}: {path}")


def run(args: argparse.Namespace) -> int:
    from .runner import run_benchmark

    path = _config_path(args.config)
    with config_errors(path, args.overrides):
        cfg = load_config(BenchConfig, path, overrides=args.overrides)
    out = Path(args.out) if args.out else default_output_dir() / "bench" / Path(args.model).resolve().name
    if not args.track:
        result = run_benchmark(cfg, args.model, out)
    else:
        import mlflow

        from components.tracking.runs import stage_run
        from components.tracking.store import (artifact_root_for, check_tracking_uri, get_or_create_experiment,
                                               resolve_tracking_uri)

        uri = resolve_tracking_uri(args.tracking_uri, default_output_dir())
        check_tracking_uri(uri)
        client = mlflow.MlflowClient(tracking_uri=uri)
        exp = get_or_create_experiment(client, args.experiment, artifact_root_for(uri, default_output_dir()))
        with stage_run(client, exp, "bench", config=cfg) as mlrun:
            result = run_benchmark(cfg, args.model, out, run=mlrun, client=client)
        print(f"MLflow run {mlrun.info.run_id} in {uri}")
    _print_table(result)
    return 0
