"""The `draftedit` command.

Each subcommand lives in the module that owns it, as `add_arguments(parser)` + `run(args) -> int`.
Modules are imported only when their subcommand is used, so `draftedit generate` never pays for
Prefect or MLflow imports, and a component that fails to import cannot break the other commands.
Each command parses its options and `key=value` overrides in any order (`parse_intermixed_args`).

`main` is where errors meet the user (components.cli_errors.run_guarded): a user error (see
components.cli_errors.USER_ERRORS; a bad config, option, input or checkpoint) is printed as one line and exits with code 2; any other exception is a
bug and keeps its traceback. `--debug` (or DRAFTEDIT_DEBUG=1) shows the traceback of user errors too.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from components.cli_errors import run_guarded, user_errors
from components.config import default_output_dir

# name -> (module, one-line help). Order is the order shown by `draftedit --help`.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "generate": ("components.generate_cli", "decode with a checkpoint, showing drafts and edits live"),
    "checkpoint": ("components.checkpoint_cli", "write a released model's layout with random weights, or check a folder"),
    "data": ("components.data.cli", "prepare (or reuse from cache) the CPT/SFT data and tokenizer"),
    "train": ("components.training.cli", "CPT / SFT training with the M2T + T2T objective"),
    "rl": ("components.rl.cli", "EBPO reinforcement learning from a checkpoint"),
    "quantize": ("components.quantize.cli", "quantize a checkpoint (per-block FP8, CPU int8)"),
    "bench": ("components.bench.cli", "throughput benchmark (TPS, TPF, latency) of a checkpoint"),
    "gpu-check": ("components.bench.gpu_check", "the released-model path on a GPU: decode TPS, SFT steps, FP8 (or --device cpu)"),
    "eval": ("components.evaluate.cli", "evaluate a checkpoint on a task suite"),
    "pipeline": ("flows.pipeline", "run the whole tracked pipeline (data -> ... -> evaluate)"),
    "run": ("flows.stage_cli", "run one tracked stage flow, optionally from an earlier run's output"),
    "compare": ("flows.compare", "print MLflow runs side by side and write a comparison plot"),
    "ui": ("flows.ui", "start the MLflow UI and a Prefect server on this machine"),
    "serve": ("flows.serve", "serve the scheduled champion re-evaluation, or the model over HTTP"),
    "deploy": ("flows.deploy", "deploy the pipeline on Prefect work pools, trigger a run there, watch it"),
}


class SubcommandUnavailable(RuntimeError):
    """The module implementing a subcommand is not present in this installation."""


def configure_environment() -> None:
    """Defaults that make a bare machine work offline; an explicit environment always wins.

    Prefect's home goes under the output directory so that the ephemeral runs of `draftedit pipeline`
    and the server of `draftedit ui` share one database (unless a Prefect API URL is configured).
    """
    if "PREFECT_API_URL" not in os.environ and "PREFECT_HOME" not in os.environ:
        home = default_output_dir() / "prefect"
        home.mkdir(parents=True, exist_ok=True)  # Prefect does not create missing parents
        os.environ["PREFECT_HOME"] = str(home)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # Two busy cores can take well over Prefect's default 20 s to start the ephemeral server.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def load_subcommand(name: str):
    """Import the module of subcommand `name`; SubcommandUnavailable if the module itself is absent."""
    module_name, _ = SUBCOMMANDS[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        # Only the module (or a parent package) being absent means "not available"; a missing
        # third-party dependency inside it is a real error and propagates.
        parts = module_name.split(".")
        own = {".".join(parts[: i + 1]) for i in range(len(parts))}
        if exc.name in own:
            raise SubcommandUnavailable(
                f"'draftedit {name}' is not available in this installation: module {module_name} "
                f"was not found"
            ) from exc
        raise
    for attr in ("add_arguments", "run"):
        if not callable(getattr(module, attr, None)):
            raise SubcommandUnavailable(
                f"'draftedit {name}': module {module_name} does not define {attr}()"
            )
    return module


def _add_debug(parser: argparse.ArgumentParser, default: Any) -> None:
    parser.add_argument("--debug", action="store_true", default=default,
                        help="show the full traceback of an error (same as DRAFTEDIT_DEBUG=1)")


def build_parser(selected: str | None = None) -> argparse.ArgumentParser:
    """The parser (for --help and the subcommand list); only `selected`'s module is imported."""
    parser = argparse.ArgumentParser(
        prog="draftedit",
        description="Draft-and-edit diffusion language models: train, decode, evaluate, track.",
    )
    _add_debug(parser, False)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in SUBCOMMANDS.items():
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        if name == selected:
            _fill(sub, name)
    return parser


def subcommand_parser(name: str) -> argparse.ArgumentParser:
    """The parser of one subcommand on its own, so that its options and overrides mix in any order."""
    parser = argparse.ArgumentParser(prog=f"draftedit {name}", description=SUBCOMMANDS[name][1])
    _fill(parser, name)
    return parser


def _fill(parser: argparse.ArgumentParser, name: str) -> None:
    module = load_subcommand(name)
    module.add_arguments(parser)
    _add_debug(parser, argparse.SUPPRESS)  # `draftedit train --debug ...` works too
    parser.set_defaults(_run=module.run, command=name)


LONG_RUNNING = ("ui", "serve", "pipeline")  # commands whose process trees `flows.processes` guards


def main(argv: Sequence[str] | None = None) -> int:
    """`draftedit [--debug] COMMAND [options and key=value overrides in any order]`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    index = next((i for i, a in enumerate(argv) if not a.startswith("-")), None)
    if index is None or argv[index] not in SUBCOMMANDS or set(argv[:index]) - {"--debug"}:
        # --help, no command, an unknown command or an unknown global option: argparse answers.
        parser = build_parser()
        parser.parse_args(argv)  # exits: help (0), unknown command or option (2)
        parser.print_help()  # no command given
        return 0
    name = argv[index]
    configure_environment()
    try:
        parser = subcommand_parser(name)
    except SubcommandUnavailable as exc:
        print(f"draftedit: {exc}", file=sys.stderr)
        return 2
    if any(action.nargs == argparse.REMAINDER for action in parser._actions):
        args = parser.parse_args(argv[index + 1:])  # a command that passes raw arguments on cannot intermix
    else:
        args = parser.parse_intermixed_args(argv[index + 1:])
    if "--debug" in argv[:index] or getattr(args, "debug", False):
        os.environ["DRAFTEDIT_DEBUG"] = "1"  # components that quiet their libraries keep them verbose too
    quiet = _QuietUserErrors()
    if not os.environ.get("DRAFTEDIT_DEBUG"):
        for logger_name in PREFECT_RUN_LOGGERS:
            logging.getLogger(logger_name).addFilter(quiet)
    try:
        if name in LONG_RUNNING:
            from .processes import guard_process_tree  # SIGTERM = Ctrl-C; no child outlives the command

            with guard_process_tree():
                return run_guarded(name, lambda: args._run(args))
        return run_guarded(name, lambda: args._run(args))
    finally:
        for logger_name in PREFECT_RUN_LOGGERS:
            logging.getLogger(logger_name).removeFilter(quiet)


# Prefect logs the traceback of every exception that leaves a flow or task run on these loggers.
PREFECT_RUN_LOGGERS = ("prefect.flow_runs", "prefect.task_runs")


class _QuietUserErrors(logging.Filter):
    """Drops Prefect's traceback of a user error: the CLI prints that error as one line instead.
    Other errors keep Prefect's log, and main() re-raises them with their traceback too."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return exc is None or not isinstance(exc, user_errors())


if __name__ == "__main__":
    sys.exit(main())
