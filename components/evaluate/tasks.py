"""Tasks by name or path: load a task file and check it before any data are read or any model runs.

The checks name the file and the key (`conf/task/gsm8k.yaml: source.path: is required for kind
'file'`). They resolve the extractor, scorer and verifier a task names, so they live above the schema
(`config`) and the plugin modules (`extractors`, `scorers`), which depend on the schema only.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from components.config import ConfigError, check_choice, check_min, conf_names, fail, load_config, resolve_conf
from components.data.records import COLUMN_TYPES
from components.evaluate.config import (
    FILE_FORMATS,
    METRICS,
    ON_MISSING,
    REFERENCE_SCORERS,
    SOURCE_KINDS,
    TaskConfig,
    TaskConfigError,
)
from components.evaluate.extractors import resolve_extractor
from components.evaluate.prompts import TemplateError, parse_template
from components.evaluate.scorers import resolve_scorer, resolve_verifier, task_dir


def validate_task(cfg: TaskConfig, where: str = "task") -> TaskConfig:
    """Semantic checks the schema cannot express; raises TaskConfigError naming the key."""

    src = cfg.source
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", cfg.name or ""):
        fail(f"{where}: name", f"must be a simple name (letters, digits, _ - .; it names the output folder), got {cfg.name!r}")
    check_choice(f"{where}: source.kind", src.kind, SOURCE_KINDS)
    if src.kind == "synthetic":
        from components.families import SPLITS, SYNTHETIC_FAMILIES

        if src.name not in SYNTHETIC_FAMILIES:
            fail(f"{where}: source.name", f"must name a synthetic family {sorted(SYNTHETIC_FAMILIES)}, got {src.name!r}")
        if src.split is not None and src.split not in SPLITS:
            fail(f"{where}: source.split", f"must be one of {SPLITS}, got {src.split!r}")
        check_min(f"{where}: source.num_examples", src.num_examples, 1)
    if src.kind == "file" and not src.path:
        fail(f"{where}: source.path", "is required for kind 'file' (a JSONL/JSON/parquet/CSV file)")
    if src.kind == "file" and not src.answer_field and cfg.scorer in REFERENCE_SCORERS:
        fail(f"{where}: source.answer_field", f"is required for kind 'file' with scorer {cfg.scorer!r} (the column "
              "holding the reference answer)")
    if src.kind == "hub" and not src.name:
        fail(f"{where}: source.name", "is required for kind 'hub' (a Hugging Face dataset name)")
    if src.kind == "hub" and not src.answer_field and cfg.scorer in REFERENCE_SCORERS:
        fail(f"{where}: source.answer_field", f"is required for kind 'hub' with scorer {cfg.scorer!r} (the column "
              "holding the reference answer)")
    for column, kind in src.columns.items():
        check_choice(f"{where}: source.columns.{column}", kind, COLUMN_TYPES)
    if src.columns and src.kind not in ("file", "hub"):
        fail(f"{where}: source.columns", f"applies to sources of kind 'file' or 'hub', not {src.kind!r}")
    check_choice(f"{where}: source.on_missing", src.on_missing, ON_MISSING)
    check_choice(f"{where}: source.format", src.format, FILE_FORMATS)
    try:
        parse_template(cfg.prompt.template)
    except TemplateError as exc:
        fail(f"{where}: prompt.template", str(exc))
    try:
        resolve_extractor(cfg.extractor, task_dir(cfg))
    except ValueError as exc:
        fail(f"{where}: extractor", str(exc))
    try:
        resolve_scorer(cfg)
    except ValueError as exc:
        fail(f"{where}: scorer", str(exc))
    if cfg.scorer == "verifier":
        try:
            resolve_verifier(cfg)
        except ValueError as exc:
            fail(f"{where}: verifier", str(exc))
    elif cfg.verifier:
        fail(f"{where}: verifier", f"is only used by scorer 'verifier', but the scorer is {cfg.scorer!r}")
    if cfg.scorer == "synthetic" and src.kind != "synthetic":
        fail(f"{where}: scorer", "'synthetic' needs source.kind 'synthetic' (it calls the family's verifier)")
    if cfg.scorer == "unit_tests" and src.kind != "humaneval":
        fail(f"{where}: scorer", "'unit_tests' needs a source with tests (source.kind 'humaneval')")
    check_choice(f"{where}: metric", cfg.metric, METRICS)
    check_min(f"{where}: samples_per_prompt", cfg.samples_per_prompt, 1)
    if cfg.metric == "pass_at_k":
        if not cfg.k or any(k < 1 for k in cfg.k):
            fail(f"{where}: k", f"must be a non-empty list of positive ints, got {list(cfg.k)}")
        if max(cfg.k) > cfg.samples_per_prompt:
            fail(f"{where}: k", f"pass@{max(cfg.k)} needs samples_per_prompt >= {max(cfg.k)}, got {cfg.samples_per_prompt}")
    elif cfg.samples_per_prompt != 1:
        fail(f"{where}: samples_per_prompt", "must be 1 for metric 'accuracy' (use metric 'pass_at_k' for several samples)")
    check_min(f"{where}: limit", cfg.limit, 1, allow_none=True)
    check_min(f"{where}: batch_size", cfg.batch_size, 1)
    check_min(f"{where}: sandbox.workers", cfg.sandbox.workers, 1)
    cfg.decode.check(f"{where}: decode")
    return cfg


def resolve_task_path(name_or_path: str | os.PathLike) -> Path:
    """`gsm8k` -> conf/task/gsm8k.yaml; an existing path is used as is."""
    return resolve_conf("task", name_or_path, what="task")


def load_task(name_or_path: str | os.PathLike, overrides: list[str] | None = None) -> TaskConfig:
    """Load and validate a task config (schema ⊕ YAML ⊕ dotlist overrides)."""
    path = resolve_task_path(name_or_path)
    try:
        cfg = load_config(TaskConfig, path, overrides=list(overrides or []))
    except ConfigError as exc:
        raise TaskConfigError(f"task {path}: {exc}") from exc
    cfg.origin = str(path.resolve())
    return validate_task(cfg, where=str(path))


def list_tasks() -> list[str]:
    """Names of the built-in tasks (files in conf/task/)."""
    return conf_names("task")
