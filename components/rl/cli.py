"""`draftedit rl`: EBPO reinforcement learning from a checkpoint.

    draftedit rl --model outputs/sft/checkpoint --out outputs/rl [--config conf/rl/default.yaml] \
        rollout.decode.preset=quality estimator.num_levels=1 max_minutes=5

Prints the summary (held-out accuracy and TPF before / after, checkpoint folder) as JSON.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from .run import DEFAULT_CONFIG

    parser.add_argument("--model", required=True, type=Path, help="starting checkpoint (HF layout, with tokenizer)")
    parser.add_argument("--out", required=True, type=Path, help="output folder (checkpoint/, metrics.jsonl, ...)")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="RL config YAML (default: %(default)s)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="config overrides, e.g. rollout.group_size=4 optim.lr=5e-5")


def run(args: argparse.Namespace) -> int:
    from components.cli_errors import config_errors

    from .run import resolve_config, run_rl

    with config_errors(args.config, args.overrides):
        cfg = resolve_config(args.config, list(args.overrides))
    summary = run_rl(cfg, args.model, args.out)  # RLInputError: one line at the CLI boundary
    print(json.dumps({"checkpoint_dir": summary["checkpoint_dir"], "metrics": summary["metrics"]}, indent=2))
    return 0
