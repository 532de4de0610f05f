"""The `draftedit` command.

Each subcommand lives in the module that owns it, as `add_arguments(parser)` + `run(args) -> int`.
Modules are imported only when their subcommand is used, so `draftedit generate` never pays for
Prefect or MLflow imports, and a component that fails to import cannot break the other commands.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path

# name -> (module, one-line help). Order is the order shown by `draftedit --help`.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "generate": ("components.generate_cli", "decode with a checkpoint, showing drafts and edits live"),
    "data": ("components.data.cli", "prepare (or reuse from cache) the CPT/SFT data and tokenizer"),
    "train": ("components.training.cli", "CPT / SFT training with the M2T + T2T objective"),
    "rl": ("components.rl.cli", "EBPO reinforcement learning from a checkpoint"),
    "quantize": ("components.quantize.cli", "quantize a checkpoint (per-block FP8, CPU int8)"),
    "bench": ("components.bench.cli", "throughput benchmark (TPS, TPF, latency) of a checkpoint"),
    "eval": ("components.evaluate.cli", "evaluate a checkpoint on a task suite"),
    "pipeline": ("flows.pipeline", "run the whole tracked pipeline (data -> ... -> evaluate)"),
    "run": ("flows.stages", "run one tracked stage flow, optionally from an earlier run's output"),
    "compare": ("flows.compare", "print MLflow runs side by side and write a comparison plot"),
    "ui": ("flows.ui", "start the MLflow UI and a Prefect server on this machine"),
    "serve": ("flows.serve", "serve the scheduled champion re-evaluation, or the model over HTTP"),
}


class SubcommandUnavailable(RuntimeError):
    """The module implementing a subcommand is not present in this installation."""


def default_output_dir() -> Path:
    """Where runs write by default: $DRAFTEDIT_OUTPUT_DIR or ./outputs."""
    return Path(os.environ.get("DRAFTEDIT_OUTPUT_DIR", "outputs")).resolve()


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


def build_parser(selected: str | None = None) -> argparse.ArgumentParser:
    """The parser; only `selected`'s module is imported to fill in its arguments."""
    parser = argparse.ArgumentParser(
        prog="draftedit",
        description="Draft-and-edit diffusion language models: train, decode, evaluate, track.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in SUBCOMMANDS.items():
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        if name == selected:
            module = load_subcommand(name)
            module.add_arguments(sub)
            sub.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    selected = next((a for a in argv if not a.startswith("-")), None)
    if selected is not None and selected not in SUBCOMMANDS:
        build_parser().parse_args(argv)  # argparse prints "invalid choice" and exits 2
    configure_environment()
    try:
        parser = build_parser(selected)
    except SubcommandUnavailable as exc:
        print(f"draftedit: {exc}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if os.environ.get("DRAFTEDIT_DEBUG") or not isinstance(exc, _user_errors()):
            raise
        print(f"draftedit {args.command}: error: {exc}", file=sys.stderr)
        print("(set DRAFTEDIT_DEBUG=1 for the traceback)", file=sys.stderr)
        return 2


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that describe bad input (config, missing run or file): shown as one message.

    Only classes whose modules are already imported are looked up, so this imports nothing heavy.
    """
    errors: list[type[BaseException]] = [FileNotFoundError]
    for module_name, attr in (
        ("components.config", "ConfigError"),
        ("components.tracking.store", "TrackingError"),
        ("flows.stages", "StageError"),
        ("model.checkpoint", "CheckpointError"),
    ):
        cls = getattr(sys.modules.get(module_name), attr, None)
        if isinstance(cls, type):
            errors.append(cls)
    return tuple(errors)


if __name__ == "__main__":
    sys.exit(main())
