"""What the recipes share: a checkpoint, the held-out prompts, one decode-and-score, table cells.

Held-out prompts are encoded exactly as the RL stage encodes them (components.rl.rollouts.encode_prompt,
the SFT chat format), scored by the family's verifier, and every T2T edit is judged as the evaluation
judges it (components.edits).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
from pathlib import Path
from typing import Callable, Optional

import torch
import yaml

from model import DecodeConfig

DECODE_FIELDS = {f.name for f in dataclasses.fields(DecodeConfig)}
HELDOUT_SEED = 123  # the held-out sample every recipe decodes (choose settings on another seed)


def load_checkpoint(path: str | Path):
    """(model in eval mode, tokenizer) of a checkpoint folder, quantized or not; one clear line if it is not one."""
    from components.quantize import load_checkpoint as load

    try:
        return load(path)
    except FileNotFoundError as exc:
        raise SystemExit(str(exc)) from None


def add_override_arguments(parser: argparse.ArgumentParser, train_help: str) -> None:
    """`--data-set` and `--set`: dotlist overrides of the data config and of the training config."""
    parser.add_argument("--data-set", dest="data_overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="data config override (conf/data), repeatable")
    parser.add_argument("--set", dest="train_overrides", action="append", default=[], metavar="KEY=VALUE",
                        help=train_help)


def heldout_examples(families: list[str], n: int, params: dict | None = None, seed: int = HELDOUT_SEED) -> list:
    """`n` held-out examples of each family (components.families), in the order of `families`."""
    from components.families import get_family

    params = params or {}
    return [e for fam in families for e in get_family(fam, **params.get(fam, {})).make("heldout", n, seed=seed)]


def encode_prompts(tok, examples) -> list[list[int]]:
    """The prompts in the SFT chat format, as the RL stage encodes them."""
    from components.rl.rollouts import encode_prompt

    return [encode_prompt(tok, e.prompt, "chat") for e in examples]


def decode_and_score(lm, tok, examples, prompts, cfg: DecodeConfig, params: dict | None = None,
                     edit_filters: Optional[dict[str, Callable]] = None, attribution: bool = False) -> dict:
    """Decode `prompts` once under `cfg` and score every output with its example's family verifier.

    Returns the score (% correct), TPF, TPS, the forwards per sample split by kind
    (components.edits.forward_split: `fw_draft`, `fw_edit`, `fw_verify`, `fw_mbe`), the edit accounting
    (components.edits.EditStats.as_dict), per-family `families: {name: {score, tpf}}`, and for each
    named filter in `edit_filters` (components.edits.EditFilter) `<name>_{edits,fixes,breaks}`, with
    Levenshtein decoding on (a delete or insert threshold set) every deletion and insertion judged
    (components.edits.StructuralStats.named: `deletion_fixes`, `insertion_breaks`, ...). With
    `attribution`, also every wrong token's cause (components.edits.ErrorAttribution.as_dict:
    `err_tokens_<cause>`, `err_answers_<cause>`, `wrong_answers`, ...), which costs one extra forward per
    wrong answer, outside the timed decode.
    """
    from components.edits import (FORWARD_KINDS, EditStats, ErrorAttribution, StructuralStats, attribute_example_errors,
                                  forward_split, judge_example_edits, judge_example_structural_edits)
    from components.families import get_family
    from model import generate

    params = params or {}
    edit_filters = edit_filters or {}
    cfg = dataclasses.replace(cfg, record_trajectory=True)
    with torch.no_grad():
        res = generate(lm, prompts, cfg)
    verifiers = {}
    stats, split = EditStats(), dict.fromkeys(FORWARD_KINDS, 0)
    filtered = dict.fromkeys(edit_filters, EditStats())
    errors = ErrorAttribution()
    structural = StructuralStats()
    levenshtein = cfg.levenshtein
    per_family: dict[str, list[int]] = {}  # family -> [correct, examples, tokens, forwards]
    for e, seq, fw, traj, canvas in zip(examples, res.sequences, res.forwards, res.trajectories, res.canvases):
        family = verifiers.setdefault(e.family, get_family(e.family, **params.get(e.family, {})))
        correct = bool(family.score(tok.decode(seq, skip_special_tokens=True).strip(), e))
        acc = per_family.setdefault(e.family, [0, 0, 0, 0])
        acc[0], acc[1], acc[2], acc[3] = acc[0] + correct, acc[1] + 1, acc[2] + len(seq), acc[3] + fw
        for kind, count in forward_split(traj).items():
            split[kind] += count
        stats = stats + judge_example_edits(traj, seq, tok, e, correct=correct)
        if levenshtein:
            structural = structural + judge_example_structural_edits(traj, seq, tok, e, correct=correct)
        for name, select in edit_filters.items():
            filtered[name] = filtered[name] + judge_example_edits(traj, seq, tok, e, correct=correct, select=select)
        if attribution:
            errors = errors + attribute_example_errors(lm, traj, seq, canvas, tok, e, correct=correct)
    n = len(examples)
    return {"score": 100.0 * sum(v[0] for v in per_family.values()) / n, "tpf": res.tokens_per_forward,
            "tps": res.num_tokens / res.wall_seconds if res.wall_seconds else float("nan"),
            **{f"fw_{k}": v / n for k, v in split.items()}, **stats.as_dict(),
            **{f"{name}_{k}": getattr(st, k) for name, st in filtered.items() for k in ("edits", "fixes", "breaks")},
            **(errors.as_dict() if attribution else {}),
            **(structural.named() if levenshtein else {}),
            "families": {f: {"score": 100.0 * v[0] / v[1], "tpf": v[2] / max(1, v[3])} for f, v in per_family.items()}}


def spread_cell(values: list[float], spec: str, spread: str = "half-range") -> str:
    """`mean ± half-range` (or `± sd`) over seeds (NaNs dropped); one value as is; none as '-'."""
    values = [v for v in values if v == v]
    if not values:
        return "-"
    if len(values) == 1:
        return format(values[0], spec)
    width = statistics.stdev(values) if spread == "sd" else (max(values) - min(values)) / 2
    return f"{format(statistics.mean(values), spec)} ± {format(width, spec.lstrip('+'))}"


def decode_overrides(items: list[str], parser: argparse.ArgumentParser, option: str = "--set") -> dict:
    """`KEY=VALUE` items (values as YAML) naming DecodeConfig fields; a bad one stops with one line."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            parser.error(f"{option} {item!r}: expected KEY=VALUE, e.g. max_reverts=null")
        if key not in DECODE_FIELDS:
            parser.error(f"{option} {item!r}: {key!r} is not a DecodeConfig field; known: {sorted(DECODE_FIELDS)}")
        out[key] = yaml.safe_load(value)
    return out
