"""User errors at the command line: one line that says what is wrong and where, exit code 2.

`flows.cli.main` is the one boundary that turns these errors into that line (`--debug` shows the
traceback instead). Commands raise `UsageError` for a bad option value and load configs inside
`config_errors(...)`, which turns a schema's validation error (a ValueError from `__post_init__`) into
a `ConfigError` naming where the bad value came from: the override that set it, or the YAML file and
line. Only config loading is wrapped, so a ValueError from a real bug elsewhere still shows its traceback.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from components.config import ConfigError, names_source, source_of

class UsageError(Exception):
    """A bad command-line value (an option, a prompt): shown as one line, exit code 2."""


@contextmanager
def config_errors(
    yaml_path: str | os.PathLike | None = None,
    overrides: Sequence[str] | Mapping[str, Any] | None = None,
    context: str = "",
) -> Iterator[None]:
    """Config loading inside this block fails with a ConfigError naming the key and its source.

    `context` (e.g. "stage sft") prefixes the message. A message that already names its source (an
    OmegaConf error names the file or "overrides") is kept as it is.
    """
    try:
        yield
    except ValueError as exc:
        message = " ".join(str(exc).split())
        if not names_source(message, yaml_path):
            message += source_of(message, yaml_path, overrides)
        if context:
            message = f"{context}: {message}"
        raise ConfigError(message) from exc


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (YAML and library messages can span several)."""
    text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
    return " ".join(text.split()) or type(exc).__name__
