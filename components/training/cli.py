"""`draftedit train`: one CPT or SFT run from a config in conf/train/ plus key=value overrides.

Re-running the same command continues from `<out>/checkpoints/last.ckpt` (exact resume).
"""

from __future__ import annotations

import argparse
import json

from components.config import CONF_DIR

DEFAULT_CONFIG = CONF_DIR / "train" / "cpt.yaml"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=str(DEFAULT_CONFIG),
                        help="training config YAML (conf/train/cpt.yaml, sft.yaml, ...)")
    parser.add_argument("--out", required=True, help="run directory (checkpoints, logs, exported model)")
    parser.add_argument("--mlflow-run", default=None, metavar="RUN_ID",
                        help="log the training curves into this existing MLflow run (rank 0), e.g. a pipeline "
                             "stage's run that started this command on several processes")
    parser.add_argument("--tracking-uri", default=None, help="MLflow tracking URI of --mlflow-run")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="config overrides, e.g. trainer.max_steps=100 model.init_from=outputs/cpt/model")


def run(args: argparse.Namespace) -> int:
    from components.cli_errors import UsageError, config_errors
    from components.training.run import load_train_config, run_training

    with config_errors(args.config, args.overrides):
        cfg = load_train_config(args.config, args.overrides)
    loggers = None
    if args.mlflow_run is not None:
        if args.tracking_uri is None:
            raise UsageError("--mlflow-run needs --tracking-uri (the MLflow server or sqlite:///... database)")
        from components.tracking.runs import continuing_mlflow_logger

        loggers = [continuing_mlflow_logger(args.tracking_uri, args.mlflow_run)]
    result = run_training(cfg, args.out, loggers=loggers)
    if result:  # empty on non-zero ranks of a data-parallel run
        print(json.dumps(result, indent=2, sort_keys=True))
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m components.training.cli`: the same command as `draftedit train`."""
    from components.cli_errors import component_main

    return component_main("train", add_arguments, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
