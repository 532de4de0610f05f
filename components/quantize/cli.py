"""`draftedit quantize --model DIR --out DIR [--config fp8|int8|YAML] [--set key=value ...]`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from components.cli_errors import UsageError, config_errors
from components.config import CONF_DIR, load_config

from .config import QuantizeConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="checkpoint folder (config.json + *.safetensors)")
    parser.add_argument("--out", required=True, help="where the quantized checkpoint folder is written")
    parser.add_argument("--config", default=None,
                        help="quantize config YAML, or a name in conf/quantize/ (fp8, int8); default fp8")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, repeatable: --set method=int8_dynamic --set check=false")


def _config_path(name: str | None):
    if name is None:
        return CONF_DIR / "quantize" / "fp8.yaml"
    candidate = CONF_DIR / "quantize" / f"{name}.yaml"
    return candidate if candidate.is_file() else name


def run(args: argparse.Namespace) -> int:
    from .stage import run_quantize

    path = _config_path(args.config)
    with config_errors(path, args.overrides):
        cfg = load_config(QuantizeConfig, path, overrides=args.overrides)
    if Path(args.out).resolve() == Path(args.model).resolve():
        raise UsageError(f"--out must differ from --model ({args.model}); the input would be overwritten")
    summary = run_quantize(cfg, args.model, args.out)  # CheckpointError, FileNotFoundError: one line
    print(json.dumps(summary, indent=2))
    return 0
