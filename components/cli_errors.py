"""User errors at the command line: one line that says what is wrong and where, exit code 2.

`run_guarded` is the one boundary that turns these errors into that line (`--debug` shows the
traceback instead): `draftedit` (flows.cli.main) runs every command through it, and `component_main`
gives a component's own `python -m components.<x>.cli` (e.g. under torchrun) the same command without
flows. Commands raise `UsageError` for a bad option value and load configs inside
`config_errors(...)`, which turns a schema's validation error (a ValueError from `__post_init__`) into
a `ConfigError` naming where the bad value came from: the override that set it, or the YAML file and
line. Only config loading is wrapped, so a ValueError from a real bug elsewhere still shows its traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
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


# (module, class): errors that describe bad input, not a bug. Looked up only when their module is
# already imported (a command that raised one has imported it), so this imports nothing heavy.
USER_ERRORS: tuple[tuple[str, str], ...] = (
    ("components.cli_errors", "UsageError"),
    ("components.config", "ConfigError"),
    ("components.tracking.store", "TrackingError"),
    ("flows.stages", "StageError"),
    ("flows.deploy", "DeployError"),
    ("model.checkpoint", "CheckpointError"),
    ("model.tokenizer", "TokenizerError"),
    ("components.rl.run", "RLInputError"),
    ("components.bench.config", "BenchmarkError"),
    ("components.data.sources", "DataError"),
    ("components.evaluate.sources", "TaskDataError"),
    ("components.evaluate.scorers", "SandboxUnavailableError"),
)


def user_errors() -> tuple[type[BaseException], ...]:
    """The exception classes shown as one line with exit code 2 (plus FileNotFoundError)."""
    errors: list[type[BaseException]] = [FileNotFoundError]
    for module_name, attr in USER_ERRORS:
        cls = getattr(sys.modules.get(module_name), attr, None)
        if isinstance(cls, type):
            errors.append(cls)
    return tuple(errors)


def run_guarded(name: str, command: Callable[[], int | None]) -> int:
    """Run `draftedit NAME`'s body: a user error prints `draftedit NAME: error: <one line>` and returns 2,
    Ctrl-C returns 130; any other exception is a bug and keeps its traceback (so do user errors with
    DRAFTEDIT_DEBUG set)."""
    try:
        return int(command() or 0)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if os.environ.get("DRAFTEDIT_DEBUG") or not isinstance(exc, user_errors()):
            raise
        print(f"draftedit {name}: error: {one_line(exc)}", file=sys.stderr)
        return 2


def component_main(name: str, add_arguments: Callable[[argparse.ArgumentParser], None],
                   run: Callable[[argparse.Namespace], int | None], argv: Sequence[str] | None = None) -> int:
    """`python -m components.<x>.cli ...`: the command `draftedit NAME` with its options and overrides
    in any order, `--debug`, and one-line user errors."""
    parser = argparse.ArgumentParser(prog=f"draftedit {name}")
    add_arguments(parser)
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of an error (same as DRAFTEDIT_DEBUG=1)")
    args = parser.parse_intermixed_args(list(sys.argv[1:] if argv is None else argv))
    if args.debug:
        os.environ["DRAFTEDIT_DEBUG"] = "1"
    return run_guarded(name, lambda: run(args))
