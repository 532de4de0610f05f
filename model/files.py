"""Atomic file and folder writes: the one helper every writer in the project uses.

A reader (a resumed run, another worker, the MLflow UI) must see either the old file or the new one,
never half of one, even when the writer is killed mid-write: write a temporary sibling, then rename.
Folders (checkpoints, prepared data) work the same way with `atomic_dir`. Stdlib only, so any layer can use it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, permissions: int = 0o644) -> Iterator[Path]:
    """A temporary sibling of `path` for writers that want a file name (torch.save, safetensors,
    savefig): on a clean exit it replaces `path`; on an error it is removed and `path` is untouched.
    `permissions`: mkstemp's 0600 is wrong for files meant to be shared (reports, plots, weights)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, permissions)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike, mode: str = "w", *, fsync: bool = False,
                  permissions: int = 0o644) -> Iterator[IO]:
    """An open file handle (text as UTF-8, or binary with mode 'wb') that replaces `path` on a clean exit."""
    with atomic_path(path, permissions=permissions) as tmp:
        with open(tmp, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as fh:
            yield fh
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())


def atomic_write(path: str | os.PathLike, data: str | bytes, *, fsync: bool = False,
                 permissions: int = 0o644) -> Path:
    """Write `data` (text as UTF-8, or bytes) to `path` atomically; returns the path."""
    with atomic_writer(path, "wb" if isinstance(data, bytes) else "w", fsync=fsync, permissions=permissions) as fh:
        fh.write(data)
    return Path(path)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, *, keep_existing: bool = False, permissions: int = 0o755) -> Iterator[Path]:
    """A temporary sibling folder of `path` to fill (a checkpoint, a prepared data set): on a clean exit it
    takes `path`'s place; on an error it is removed and `path` is untouched. An existing `path` is moved
    aside first and deleted only once the new folder is in place (for an instant between the two renames
    `path` is absent, but it is never half-written).
    `keep_existing`: for caches whose folder name is their content hash, a `path` that appeared meanwhile
    (a concurrent writer of the same content finished first) is kept and the new folder dropped.
    `permissions`: mkdtemp's 0700 would hide a checkpoint from the other users of a shared machine."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        yield tmp
        os.chmod(tmp, permissions)
        if keep_existing and path.exists():
            shutil.rmtree(tmp)
            return
        old = None
        if path.exists():
            old = tmp.with_name(tmp.name + ".old")  # unique: derived from mkdtemp's unique name
            os.replace(path, old)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
