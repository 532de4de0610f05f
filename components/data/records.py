"""Reading record files (JSON Lines, JSON arrays, CSV, parquet) with errors that name file and line.

The evaluation tasks (`components.evaluate.sources`) and the training corpora
(`components.data.sources`) both read users' files through here, so a malformed line, bytes that
are not UTF-8 or a bad value are one `RecordFileError` line such as
`data/q.jsonl:28: invalid JSON: Expecting ',' delimiter (column 14)`. Values keep the types the
file gives them: CSV cells stay strings (`"0123"` keeps its leading zero) unless a column type is
declared (`{"n": "int"}`); an empty CSV cell is a missing value (None), as JSON `null` is.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Any, Iterator, Optional

FORMATS = ("json", "csv", "parquet")
COLUMN_TYPES = ("str", "int", "float", "bool")
_TRUE, _FALSE = ("true", "yes", "1"), ("false", "no", "0")
_BOM = b"\xef\xbb\xbf"


class RecordFileError(ValueError):
    """A record file cannot be parsed (message starts with the file and, where there is one, the line)."""


@dataclass(frozen=True)
class Row:
    where: str  # `path:line` (JSON Lines, CSV), `path: record i` (JSON array), `path: row i` (parquet)
    values: dict[str, Any]


def _not_utf8(path: Path, line: int, data: bytes, exc: UnicodeDecodeError, line_start: int = 0) -> RecordFileError:
    return RecordFileError(
        f"{path}:{line}: not UTF-8 text (byte 0x{data[exc.start]:02x} at column {exc.start - line_start + 1}); "
        "save the file as UTF-8"
    )


def read_text(path: Path) -> str:
    """A whole file's text; bytes that are not UTF-8 name the file, line and column."""
    data = Path(path).read_bytes().removeprefix(_BOM)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line, line_start = data.count(b"\n", 0, exc.start) + 1, data.rfind(b"\n", 0, exc.start) + 1
        raise _not_utf8(path, line, data, exc, line_start) from None


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of each line, read and decoded one at a time (split on "\n" only)."""
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if lineno == 1:
                raw = raw.removeprefix(_BOM)
            try:
                yield lineno, raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise _not_utf8(path, lineno, raw, exc) from None


def iter_rows(path: Path, fmt: str) -> Iterator[Row]:
    """The records of one file in order. JSON Lines and CSV are read line by line, so a caller that
    stops early (a pre-flight check of the first rows) reads only the start of a large file."""
    path = Path(path)
    if fmt == "parquet":
        yield from _parquet_rows(path)
    elif fmt == "csv":
        yield from _csv_rows(path)
    elif fmt == "json":
        yield from _json_rows(path)
    else:
        raise ValueError(f"unknown record format {fmt!r}; expected one of {FORMATS}")


def _json_rows(path: Path) -> Iterator[Row]:
    lines = _lines(path)
    for lineno, line in lines:
        if line.strip():
            break
    else:
        return
    if line.lstrip().startswith("["):  # one JSON document holding an array of objects
        lines.close()
        try:
            items = json.loads(read_text(path))
        except json.JSONDecodeError as exc:
            raise RecordFileError(f"{path}:{exc.lineno}: invalid JSON: {exc.msg} (column {exc.colno})") from None
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                raise RecordFileError(f"{path}: record {i}: expected a JSON object, got {type(item).__name__}")
            yield Row(f"{path}: record {i}", item)
        return
    for lineno, line in chain([(lineno, line)], lines):  # JSON Lines: one object per line
        if not line.strip():
            continue
        try:
            item = json.loads(line.rstrip("\r\n"))
        except json.JSONDecodeError as exc:
            raise RecordFileError(f"{path}:{lineno}: invalid JSON: {exc.msg} (column {exc.colno})") from None
        if not isinstance(item, dict):
            raise RecordFileError(f"{path}:{lineno}: expected a JSON object per line, got {type(item).__name__}")
        yield Row(f"{path}:{lineno}", item)


def _csv_rows(path: Path) -> Iterator[Row]:
    reader = csv.reader((line for _, line in _lines(path)), strict=True)
    try:
        header = next(reader, None)
        if header is None:
            return
        dupes = sorted({h for h in header if header.count(h) > 1})
        if dupes or not all(h.strip() for h in header):
            raise RecordFileError(f"{path}:1: the header needs distinct, non-empty column names, got {header}")
        for cells in reader:
            if not any(c.strip() for c in cells):
                continue
            if len(cells) > len(header):
                raise RecordFileError(
                    f"{path}:{reader.line_num}: {len(cells)} fields but the header has {len(header)} (quote fields "
                    "that contain commas)"
                )
            values = {h: (cells[i] if i < len(cells) and cells[i] != "" else None) for i, h in enumerate(header)}
            yield Row(f"{path}:{reader.line_num}", values)
    except csv.Error as exc:
        raise RecordFileError(f"{path}:{reader.line_num}: invalid CSV: {exc}") from None


def _parquet_rows(path: Path) -> Iterator[Row]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises ArrowInvalid, OSError, ... for a file that is not parquet
        raise RecordFileError(f"{path}: cannot read as parquet: {type(exc).__name__}: {exc}") from None
    for i, values in enumerate(table.to_pylist()):
        yield Row(f"{path}: row {i}", values)


def convert(value: Any, kind: str) -> Any:
    """`value` as the declared column type (None stays None); raises ValueError saying what was expected."""
    if value is None or kind == "str":
        return value if value is None or isinstance(value, str) else str(value)
    if kind == "int":
        if isinstance(value, bool):
            raise ValueError(f"expected int, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
        raise ValueError(f"expected int, got {value!r}")
    if kind == "float":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        try:
            out = float(value.strip()) if isinstance(value, str) else None
        except ValueError:
            out = None
        if out is None or math.isnan(out):
            raise ValueError(f"expected float, got {value!r}")
        return out
    if kind == "bool":
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in _TRUE or text in _FALSE:
            return text in _TRUE
        raise ValueError(f"expected bool (true/false, yes/no, 1/0), got {value!r}")
    raise ValueError(f"unknown column type {kind!r}; expected one of {COLUMN_TYPES}")


def typed(row: Row, columns: Optional[dict[str, str]]) -> Row:
    """The row with its declared columns converted; a bad value names file, line and column."""
    if not columns:
        return row
    values = dict(row.values)
    for name, kind in columns.items():
        if name in values:
            try:
                values[name] = convert(values[name], kind)
            except ValueError as exc:
                raise RecordFileError(f"{row.where}: column {name!r}: {exc}") from None
    return Row(row.where, values)
