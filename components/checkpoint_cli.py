"""`draftedit checkpoint init|check`: write a stand-in of a released checkpoint, or check a folder.

  draftedit checkpoint init --like llada2.1-mini --out DIR                 # the release's full shape
  draftedit checkpoint init --like llada2.1-mini --shape cpu --out DIR     # scaled (conf/standin/shapes/)
  draftedit checkpoint init --like llada2.1-mini --layers 3 --experts 8 --groups 4 --hidden 128 ... --out DIR
  draftedit checkpoint check DIR

`check` reads the safetensors headers only, so a downloaded 16B folder is checked in seconds: a missing
config, tokenizer or shard, or a tensor whose shape does not match config.json, is one line.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from components.cli_errors import UsageError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("verb", choices=("init", "check"),
                        help="init: write a random-initialised checkpoint in a released model's layout; "
                             "check: check a checkpoint folder against its config.json (headers only)")
    parser.add_argument("path", nargs="?", default=None, help="check: the checkpoint folder")
    parser.add_argument("--like", default=None, help="init: released model, a name in conf/standin/ "
                                                     "(llada2.1-mini) or a YAML path")
    parser.add_argument("--out", default=None, help="init: folder to write (replaced only with --force)")
    parser.add_argument("--shape", default=None, help="init: scaled shape, a name in conf/standin/shapes/ (cpu) "
                                                      "or a YAML path; the options below override it")
    from components.standin import SHAPE_FIELDS

    for option, field in SHAPE_FIELDS.items():
        parser.add_argument(f"--{option.replace('_', '-')}", dest=option, type=int, default=None, metavar="N",
                            help=f"init: config.json {field}")
    parser.add_argument("--seed", type=int, default=None, help="init: weight seed (default: the conf's)")
    parser.add_argument("--shard-bytes", type=int, default=None, help="init: largest shard in bytes (default: conf)")
    parser.add_argument("--force", action="store_true", help="init: replace an existing non-empty --out")


def run(args: argparse.Namespace) -> int:
    if args.verb == "check":
        if args.path is None:
            raise UsageError("check needs the checkpoint folder: draftedit checkpoint check DIR")
        summary = check_folder(args.path)
    else:
        if args.path is not None:
            raise UsageError(f"init takes no folder argument (got {args.path!r}); write it with --out DIR")
        if args.like is None or args.out is None:
            raise UsageError("init needs --like (a released model, e.g. llada2.1-mini) and --out DIR")
        summary = _init(args)
    print(json.dumps(summary, indent=2))
    return 0


def _init(args: argparse.Namespace) -> dict:
    from components.standin import SHAPE_FIELDS, load_shape, load_standin, write_standin

    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not args.force:
        raise UsageError(f"--out {out} exists and is not empty; pass --force to replace it")
    if args.shard_bytes is not None and args.shard_bytes < 1:
        raise UsageError(f"--shard-bytes must be >= 1, got {args.shard_bytes}")
    cfg = load_standin(args.like)
    shape = load_shape(args.shape) if args.shape is not None else {}
    for option in SHAPE_FIELDS:
        value = getattr(args, option)
        if value is not None:
            if value < 0:
                raise UsageError(f"--{option.replace('_', '-')} must be >= 0, got {value}")
            shape[option] = value
    return write_standin(cfg, shape, out, shard_bytes=args.shard_bytes, seed=args.seed)


def check_folder(path: str) -> dict:
    """The checkpoint and its tokenizer, as a reader would find them; one error line for the first problem."""
    from model import DiffusionLM
    from model.checkpoint import CheckpointError, check_pretrained
    from model.config import ModelConfig
    from model.tokenizer import load_tokenizer

    summary = check_pretrained(DiffusionLM, path)
    config = ModelConfig.from_pretrained(path)
    tokenizer = load_tokenizer(path)
    if tokenizer.vocab_size > config.vocab_size:
        raise CheckpointError(f"{Path(path) / 'tokenizer.json'} has {tokenizer.vocab_size} tokens but config.json "
                              f"vocab_size is {config.vocab_size}; expected at most vocab_size")
    return {"path": str(path), **summary, "vocab_size": config.vocab_size, "tokenizer_tokens": tokenizer.vocab_size,
            "mask_id": tokenizer.mask_id, "eos_id": tokenizer.eos_id}
