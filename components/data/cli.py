"""`draftedit data`: prepare (or reuse from cache) the CPT/SFT data and tokenizer of a data config."""

from __future__ import annotations

import argparse
import json

from components.cli_errors import config_errors
from components.data import DEFAULT_DATA_CONFIG, load_data_config, prepare_data


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=str(DEFAULT_DATA_CONFIG), help="data config YAML (conf/data/*.yaml)")
    parser.add_argument("--force", action="store_true", help="rebuild even when a cached preparation exists")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. cpt.seq_len=512")


def run(args: argparse.Namespace) -> int:
    with config_errors(args.config, args.overrides):
        cfg = load_data_config(args.config, args.overrides)
    prepared = prepare_data(cfg, force=args.force)
    summary = {
        "path": str(prepared.root),
        "cache_hit": prepared.cache_hit,
        "tokenizer": prepared.manifest["tokenizer"],
        "cpt_rows": len(prepared.cpt) if prepared.cpt is not None else 0,
        "sft_rows": len(prepared.sft) if prepared.sft is not None else 0,
        "stats": prepared.manifest["stats"],
    }
    print(json.dumps(summary, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m components.data.cli`: the same command as `draftedit data`."""
    from components.cli_errors import component_main

    return component_main("data", add_arguments, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
