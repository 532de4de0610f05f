"""`draftedit rl`: EBPO reinforcement learning from a checkpoint.

    draftedit rl --model outputs/sft/checkpoint --out outputs/rl [--config conf/rl/default.yaml] \
        rollout.mode=quality estimator.num_levels=1 max_minutes=5

Prints the summary (held-out accuracy and TPF before / after, checkpoint folder) as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from .run import DEFAULT_CONFIG

    parser.add_argument("--model", required=True, type=Path, help="starting checkpoint (HF layout, with tokenizer)")
    parser.add_argument("--out", required=True, type=Path, help="output folder (checkpoint/, metrics.jsonl, ...)")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="RL config YAML (default: %(default)s)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="config overrides, e.g. rollout.group_size=4 optim.lr=5e-5")


def run(args: argparse.Namespace) -> int:
    from .run import RLInputError, run_rl

    try:
        summary = run_rl(args.config, args.model, args.out, overrides=list(args.overrides))
    except RLInputError as exc:
        print(f"draftedit rl: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"checkpoint_dir": summary["checkpoint_dir"], "metrics": summary["metrics"]}, indent=2))
    return 0
