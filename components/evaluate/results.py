"""Task results, their files (written atomically) and the compact table people read."""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional

from model.files import atomic_write, atomic_writer

RECORDS_FILE = "records.jsonl"
RESULT_FILE = "result.json"
SUMMARY_FILE = "summary.json"
METRICS_FILE = "metrics.json"  # every metric of a `draftedit eval` run, named as the pipeline logs them


@dataclass
class TaskResult:
    """Everything one task evaluation produced. `score` is the headline number: accuracy, or
    pass@k for the smallest k."""

    task: str
    metric: str
    score: float
    scores: dict[str, float]
    tpf: float
    mean_forwards: float
    mean_length: float
    tokens: int
    forwards: int
    num_problems: int
    num_generations: int
    num_errors: int
    wall_seconds: float
    generation_seconds: float
    tokens_per_second: float
    preset: str  # the decoding preset, or "custom" for a DecodeConfig given whole
    decode: dict[str, Any]
    sandbox: Optional[dict[str, str]] = None  # code tasks: which sandbox protections were active
    edits: Optional[dict[str, float]] = None  # components.edits.EditStats.as_dict() over the task
    structural: Optional[dict[str, int]] = None  # components.edits.StructuralStats counts (Levenshtein decoding)
    records_path: Optional[str] = None
    result_path: Optional[str] = None
    records: list[dict[str, Any]] = field(default_factory=list, repr=False)

    def summary(self) -> dict[str, Any]:
        """The result without its per-sample records (what result.json holds)."""
        out = asdict(self)
        out.pop("records")
        return out

    def metrics(self, prefix: str = "eval") -> dict[str, float]:
        """Flat metric names for tracking (`eval/<task>/accuracy`, `eval/<task>/tpf`, ...)."""
        base = f"{prefix}/{self.task}"
        out = {f"{base}/{name}": float(v) for name, v in self.scores.items()}
        out.update({
            f"{base}/score": self.score,
            f"{base}/tpf": self.tpf,
            f"{base}/mean_forwards": self.mean_forwards,
            f"{base}/mean_length": self.mean_length,
            f"{base}/tokens": float(self.tokens),
            f"{base}/wall_seconds": self.wall_seconds,
            f"{base}/tps": self.tokens_per_second,
            f"{base}/errors": float(self.num_errors),
        })
        if self.edits is not None:
            out.update(edit_stats(self.edits).metrics(base))
        if self.structural is not None:
            out.update(structural_stats(self.structural).metrics(base))
        return out


def edit_stats(edits: dict[str, float]):
    """The EditStats behind a result's `edits` dict (its counts; the derived rates are recomputed)."""
    from dataclasses import fields as dc_fields

    from components.edits import EditStats

    return EditStats(**{f.name: int(edits[f.name]) for f in dc_fields(EditStats)})


def structural_stats(structural: dict[str, int]):
    """The StructuralStats behind a result's `structural` dict."""
    from components.edits import StructuralStats

    return StructuralStats(**structural)


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write(path, json.dumps(_jsonable(obj), indent=2, ensure_ascii=False))


def write_jsonl(path: str | os.PathLike, records: Iterable[dict[str, Any]]) -> Path:
    with atomic_writer(path) as fh:
        for rec in records:
            fh.write(json.dumps(_jsonable(rec), ensure_ascii=False) + "\n")
    return Path(path)


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def save_task_result(result: TaskResult, output_dir: str | os.PathLike) -> TaskResult:
    """Write `<output_dir>/<task>/records.jsonl` and `result.json`; fills in the paths."""
    folder = Path(output_dir) / result.task
    result.records_path = str(write_jsonl(folder / RECORDS_FILE, result.records))
    result.result_path = str(folder / RESULT_FILE)
    write_json(result.result_path, result.summary())
    return result


def _fmt(value: float, digits: int = 3) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


TABLE_COLUMNS = ("task", "metric", "score", "preset", "TPF", "fwd/sample", "len", "n", "errors", "tok/s", "time s")


def table_rows(results: Iterable[TaskResult]) -> list[list[str]]:
    rows = []
    for r in results:
        metric = "accuracy" if r.metric == "accuracy" else ", ".join(r.scores)
        score = _fmt(r.score) if r.metric == "accuracy" else " / ".join(_fmt(v) for v in r.scores.values())
        rows.append([
            r.task, metric, score, r.preset, _fmt(r.tpf, 2), _fmt(r.mean_forwards, 1), _fmt(r.mean_length, 1),
            str(r.num_generations), str(r.num_errors), _fmt(r.tokens_per_second, 1), _fmt(r.wall_seconds, 1),
        ])
    return rows


def render_table(results: Iterable[TaskResult], title: str = "evaluation"):
    """A rich Table of the results (print it with rich.console.Console().print)."""
    from rich.table import Table

    table = Table(title=title)
    for col in TABLE_COLUMNS:
        table.add_column(col, justify="left" if col in ("task", "metric", "preset") else "right")
    for row in table_rows(results):
        table.add_row(*row)
    return table
