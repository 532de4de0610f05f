"""Reading corpora: documents (str) for CPT, conversations (list of {role, content}) for SFT.

Every failure is a `DataError` that names the source (`cpt.external[1] (file data/x.jsonl)`) and the
problem, raised while reading, i.e. before the tokenizer is trained or anything is packed. Local
files are parsed by `components.data.records`, so a malformed line or non-UTF-8 bytes name the
file and the line.
"""

from __future__ import annotations

import glob
import hashlib
import os
import random
import sys
import sysconfig
from itertools import islice
from pathlib import Path
from typing import Any, Iterator

from components.data.config import ExternalSource, StdlibSource, SyntheticSource
from components.data.records import RecordFileError, iter_rows, read_text

Conversation = list[dict[str, str]]

# Parts of the stdlib tree that are not library code (or are huge generated tables).
STDLIB_EXCLUDED_DIRS = frozenset({
    "site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__", "lib2to3",
    "ensurepip", "turtledemo", "idlelib", "encodings", "pydoc_data",
})
_EXT_FORMAT = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
_CHAT_ROLES = ("system", "user", "assistant")


class DataError(ValueError):
    """A data source is missing, unreadable, empty or lacks the expected fields."""


def describe(key: str, src: object) -> str:
    """`cpt.external[0] (file data/x.jsonl)`, `cpt.stdlib`: how errors and the manifest name a source."""
    return f"{key} ({src.kind} {src.path})" if isinstance(src, ExternalSource) else key


# ---------------------------------------------------------------------------------------------- stdlib


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files(src: StdlibSource) -> list[tuple[Path, int]]:
    """Deterministic seeded subset of stdlib .py files within the byte / file-count budget."""
    root = stdlib_root()
    if not root.is_dir():
        raise DataError(f"stdlib source: standard library directory {root} not found")
    candidates: list[tuple[Path, int]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(
            d for d in dirnames if d not in STDLIB_EXCLUDED_DIRS and not d.startswith("config-")
        )
        for name in sorted(filenames):
            if name.endswith(".py"):
                path = Path(dirpath) / name
                try:
                    size = path.stat().st_size
                except OSError:
                    continue
                if 0 < size <= src.max_file_bytes:
                    candidates.append((path, size))
    random.Random(f"stdlib:{src.seed}").shuffle(candidates)
    chosen, total = [], 0
    for path, size in candidates:
        if len(chosen) >= src.max_files or total >= src.max_bytes:
            break
        chosen.append((path, size))
        total += size
    return sorted(chosen)


def read_stdlib(src: StdlibSource) -> list[str]:
    docs = []
    for path, _ in stdlib_files(src):
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue  # a few stdlib files are not UTF-8; skipping them changes nothing essential
        if text.strip():
            docs.append(text)
    if not docs:
        raise DataError(f"stdlib source: no readable .py files under {stdlib_root()}")
    return docs


# ---------------------------------------------------------------------------------------------- synthetic


def synthetic_examples(src: SyntheticSource) -> list:
    from components.families import get_family

    out = []
    for name in src.families:
        family = get_family(name, **dict(src.params.get(name, {})))
        out.extend(family.make("train", src.num_examples, src.seed))  # held-out is for evaluation
    return out


def synthetic_documents(src: SyntheticSource) -> list[str]:
    return [f"{e.prompt}\n{e.answer}" for e in synthetic_examples(src)]


def synthetic_conversations(src: SyntheticSource) -> list[Conversation]:
    from components.families import to_messages

    return [to_messages(e, with_answer=True) for e in synthetic_examples(src)]


# ---------------------------------------------------------------------------------------------- files / hub


def resolve_files(key: str, src: ExternalSource) -> list[Path]:
    """The files of a `file` source (glob expanded), checked to exist, be readable and non-empty."""
    where = describe(key, src)
    pattern = os.path.expanduser(src.path)
    files = sorted(Path(p) for p in glob.glob(pattern, recursive=True)) if glob.has_magic(pattern) else [Path(pattern)]
    if not files:
        raise DataError(f"{where}: no file matches {src.path!r}")
    for f in files:
        if not f.exists():
            raise DataError(f"{where}: file not found: {f}")
        if not f.is_file():
            raise DataError(f"{where}: not a regular file: {f}")
        if not os.access(f, os.R_OK):
            raise DataError(f"{where}: file is not readable: {f}")
    if all(_is_blank(f) for f in files):
        raise DataError(f"{where}: dataset is empty ({', '.join(map(str, files))}: no content)")
    return files


def _is_blank(path: Path, limit: int = 1 << 20) -> bool:
    """Empty or whitespace-only (files above `limit` bytes are assumed to hold something)."""
    size = path.stat().st_size
    return size == 0 or (size <= limit and not path.read_bytes().strip())


def file_format(key: str, src: ExternalSource, files: list[Path]) -> str:
    if src.format != "auto":
        return src.format
    formats = {_EXT_FORMAT.get(f.suffix.lower(), "text") for f in files}
    if len(formats) != 1:
        raise DataError(f"{describe(key, src)}: files mix formats {sorted(formats)}; set format explicitly")
    return formats.pop()


def fingerprint_files(files: list[Path]) -> list[list]:
    """Identity of local files for the cache key: a changed file means a new preparation."""
    out = []
    for f in files:
        st = f.stat()
        out.append([str(f.resolve()), st.st_size, st.st_mtime_ns])
    return out


def _chain(exc: BaseException) -> str:
    """The exception and its causes on one line (datasets wraps the useful message)."""
    parts = []
    while exc is not None and len(parts) < 4:
        parts.append(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
        exc = exc.__cause__ or exc.__context__
    return " <- ".join(parts)


def _file_records(files: list[Path], fmt: str) -> Iterator[dict]:
    """Records of local files in order; a text file is one record {"text": its content}."""
    for f in files:
        if fmt == "text":
            yield {"text": read_text(f)}
        else:
            yield from (row.values for row in iter_rows(f, fmt))


def load_records(key: str, src: ExternalSource, hf_cache_dir: str | None) -> tuple[list[dict], str]:
    """Records of a file source (components.data.records) or a hub source (`datasets`), capped at
    `max_examples` (0 = all)."""
    import datasets

    where = describe(key, src)
    if src.kind == "file":
        files = resolve_files(key, src)
        fmt = file_format(key, src, files)
        try:
            records = list(islice(_file_records(files, fmt), src.max_examples or None))
        except RecordFileError as exc:
            raise DataError(f"{where}: {exc}") from None
        if not records:
            raise DataError(f"{where}: dataset is empty (0 records)")
        return records, fmt
    try:
        if src.max_examples:
            stream = datasets.load_dataset(src.path, src.name, split=src.split, streaming=True)
            records = list(stream.take(src.max_examples))
            if not records:
                raise DataError(f"{where}: dataset split {src.split!r} is empty")
            return records, "hub"
        ds = datasets.load_dataset(src.path, src.name, split=src.split, cache_dir=hf_cache_dir)
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"{where}: cannot load hub dataset: {_chain(exc)}") from exc
    if len(ds) == 0:
        raise DataError(f"{where}: dataset is empty (0 records)")
    return ds.to_list(), "hub"


def records_to_documents(key: str, src: ExternalSource, records: list[dict], fmt: str) -> list[str]:
    where = describe(key, src)
    field = "text" if fmt == "text" else src.text_field
    if not any(field in r for r in records):
        raise DataError(
            f"{where}: field {field!r} not found; record fields are {sorted(set().union(*records))} (set text_field)"
        )
    docs = [r[field] for r in records if isinstance(r.get(field), str) and r[field].strip()]
    if not docs:
        raise DataError(f"{where}: dataset is empty: no non-empty {field!r} values in {len(records)} records")
    return docs


def _conversation_from(record: dict, src: ExternalSource) -> Conversation | None:
    if src.messages_field in record and record[src.messages_field] is not None:
        msgs = record[src.messages_field]
        if not isinstance(msgs, list):
            return None
        conv = []
        for m in msgs:
            if not isinstance(m, dict) or m.get("role") not in _CHAT_ROLES or not isinstance(m.get("content"), str):
                return None
            conv.append({"role": m["role"], "content": m["content"]})
        return conv if any(m["role"] == "assistant" for m in conv) else None
    prompt, response = record.get(src.prompt_field), record.get(src.response_field)
    if isinstance(prompt, str) and isinstance(response, str) and response:
        return [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
    return None


def records_to_conversations(key: str, src: ExternalSource, records: list[dict], fmt: str) -> list[Conversation]:
    where = describe(key, src)
    if fmt == "text":
        raise DataError(f"{where}: plain text files have no conversations; use JSONL/parquet for sft")
    fields = set().union(*records)
    if src.messages_field not in fields and not {src.prompt_field, src.response_field} <= fields:
        raise DataError(
            f"{where}: need a {src.messages_field!r} field or both {src.prompt_field!r} and "
            f"{src.response_field!r}; record fields are {sorted(fields)}"
        )
    convs = [c for c in (_conversation_from(r, src) for r in records) if c is not None]
    if not convs:
        raise DataError(
            f"{where}: dataset is empty: none of {len(records)} records is a conversation with an assistant "
            f"reply (roles must be {list(_CHAT_ROLES)}, contents strings)"
        )
    return convs


# ---------------------------------------------------------------------------------------------- dispatch


def cpt_documents(key: str, src: object, hf_cache_dir: str | None) -> list[str]:
    if isinstance(src, StdlibSource):
        return read_stdlib(src)
    if isinstance(src, SyntheticSource):
        return synthetic_documents(src)
    records, fmt = load_records(key, src, hf_cache_dir)
    return records_to_documents(key, src, records, fmt)


def sft_conversations(key: str, src: object, hf_cache_dir: str | None) -> list[Conversation]:
    if isinstance(src, SyntheticSource):
        return synthetic_conversations(src)
    if isinstance(src, StdlibSource):
        raise DataError(f"{key}: the stdlib corpus has no conversations")
    records, fmt = load_records(key, src, hf_cache_dir)
    return records_to_conversations(key, src, records, fmt)


def source_fingerprint(key: str, src: object) -> Any:
    """What beyond the config identifies a source's content (for the cache key)."""
    if isinstance(src, StdlibSource):
        files = stdlib_files(src)
        listing = "\n".join(f"{p.relative_to(stdlib_root())}:{s}" for p, s in files)
        return {"python": sys.version, "root": str(stdlib_root()),
                "files": hashlib.sha256(listing.encode()).hexdigest()}
    if isinstance(src, SyntheticSource):
        from components.families import get_family

        return [repr(get_family(name, **dict(src.params.get(name, {})))) for name in src.families]
    if src.kind == "file":
        return fingerprint_files(resolve_files(key, src))
    return None  # hub: identified by name / config / split only


def iter_texts_for_tokenizer(docs: list[str], convs: list[Conversation], max_bytes: int, seed: int) -> Iterator[str]:
    """Corpus for BPE training: every document and message content, shuffled, capped at max_bytes."""
    texts = list(docs) + [m["content"] for c in convs for m in c]
    random.Random(f"bpe:{seed}").shuffle(texts)
    used = 0
    for t in texts:
        if used >= max_bytes:
            break
        chunk = t[: max_bytes - used]
        used += len(chunk.encode("utf-8", "ignore"))
        yield chunk
