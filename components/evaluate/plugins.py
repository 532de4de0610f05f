"""Finding a task's extractor, scorer or verifier: a registered name, or a user's `module:function`.

`module` is a dotted import path (`my_pkg.checks:valid`), or a `.py` file (`checks.py:valid`)
resolved against the task file's folder first, then the current directory, so a task YAML can
ship beside its own small Python file. Failures are ValueErrors of one line naming the spec.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Optional

_FILE_MODULES: dict[Path, ModuleType] = {}


def _load_file(spec: str, file: str, base_dir: Optional[str]) -> ModuleType:
    path = Path(os.path.expanduser(file))
    if not path.is_absolute() and base_dir and (Path(base_dir) / path).is_file():
        path = Path(base_dir) / path
    path = path.resolve()
    if not path.is_file():
        where = f" (looked beside the task file in {base_dir} and in the current directory)" if base_dir else ""
        raise ValueError(f"{spec!r}: file {file} not found{where}")
    if path not in _FILE_MODULES:
        name = f"draftedit_user_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
        module_spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(module_spec)
        try:
            module_spec.loader.exec_module(module)
        except Exception as exc:  # the user's file failed while importing; name it and the cause
            raise ValueError(f"{spec!r}: importing {path} failed: {type(exc).__name__}: {exc}") from exc
        _FILE_MODULES[path] = module
    return _FILE_MODULES[path]


def resolve(spec: str, registry: dict[str, Callable[..., Any]], what: str,
            base_dir: Optional[str] = None) -> Callable[..., Any]:
    """`registry[spec]`, or the function `module:function` names (module: dotted path or .py file)."""
    if spec in registry:
        return registry[spec]
    if ":" not in spec:
        raise ValueError(f"unknown {what} {spec!r}; known: {sorted(registry)} (or use 'package.module:function')")
    module_name, _, attr = spec.rpartition(":")
    if not module_name or not attr.isidentifier():
        raise ValueError(f"{what} {spec!r}: expected 'package.module:function' or 'file.py:function'")
    if module_name.endswith(".py"):
        module = _load_file(spec, module_name, base_dir)
    else:
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ValueError(f"{what} {spec!r}: cannot import module {module_name!r}: {exc}") from exc
    fn = getattr(module, attr, None)
    if fn is None:
        raise ValueError(f"{what} {spec!r}: module {module_name!r} has no attribute {attr!r}")
    if not callable(fn):
        raise ValueError(f"{what} {spec!r} is not callable")
    return fn
