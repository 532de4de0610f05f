"""`draftedit bench --model DIR | --random-model [SIZE=VALUE ...] [--config default|table3|gpu|YAML] [--out DIR]
[--track] [--set key=value ...]`.

`--random-model` measures a randomly initialised model (components.bench.random_model) on random
token prompts: speed figures and output agreement without a trained checkpoint. Its FP8 checkpoint
(the stored, portable format) is written beside it and its size reported.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from components.cli_errors import config_errors
from components.config import CONF_DIR, default_output_dir, load_config

from .config import BenchConfig
from .random_model import prepare_random_model, random_model_sizes


def add_arguments(parser: argparse.ArgumentParser) -> None:
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument("--model", help="checkpoint folder (plain, FP8 or int8 as written by draftedit quantize)")
    model.add_argument("--random-model", nargs="*", metavar="SIZE=VALUE", default=None,
                       help="build a random model instead (sizes of components.bench.random_model.build_random_model, "
                            "e.g. hidden=256 layers=4); the prompts are then random token ids")
    parser.add_argument("--config", default="default",
                        help="bench config YAML, or a name in conf/bench/ (default, table3, gpu)")
    parser.add_argument("--out", default=None, help="output folder (default: <outputs>/bench/<model folder name>)")
    parser.add_argument("--track", action="store_true", help="log to MLflow (tracking URI below or the local SQLite store)")
    parser.add_argument("--tracking-uri", default=None)
    parser.add_argument("--experiment", default="draftedit-bench")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, repeatable: --set repeats=5 --set prompts.task=null "
                             "--set 'settings=[{preset: speedy, batch_size: 8}]'")


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
    random = args.random_model is not None
    overrides = (["prompts.task=null"] if random else []) + list(args.overrides)  # random ids: nothing to score
    with config_errors(path, overrides):
        cfg = load_config(BenchConfig, path, overrides=overrides)
        sizes = random_model_sizes(args.random_model) if random else {}
    name = "random_model" if random else Path(args.model).resolve().name
    out = Path(args.out) if args.out else default_output_dir() / "bench" / name
    model_dir = args.model
    if random:
        model_dir, fp8 = prepare_random_model(out, sizes)
        print(f"FP8 checkpoint: {fp8['bytes_in'] / 2**20:.1f} MiB -> {fp8['bytes_out'] / 2**20:.1f} MiB, "
              f"max relative weight error {fp8['weight_rel_error_max']:.4f}")
    if not args.track:
        result = run_benchmark(cfg, model_dir, out)
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
            result = run_benchmark(cfg, model_dir, out, run=mlrun, client=client)
        print(f"MLflow run {mlrun.info.run_id} in {uri}")
    _print_table(result)
    return 0
