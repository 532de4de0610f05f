"""`draftedit ui`: the MLflow UI on the pipeline's tracking store and a Prefect server, locally.

Both run as child processes until Ctrl-C or SIGTERM, which stop them and all their workers
(`flows.processes`). The Prefect server uses the same PREFECT_HOME as
`draftedit pipeline` (outputs/prefect by default), so it shows the flow runs of earlier pipelines.
`--check` starts both, waits until they answer, and stops them (a smoke test of the setup).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from .config import DEFAULT_PRESET
from .processes import start, stop

# Where `draftedit ui` serves by default; the pipeline's closing lines link there.
UI_HOST = "127.0.0.1"
MLFLOW_UI_PORT = 5000
PREFECT_UI_PORT = 4200


def _bin(name: str) -> str:
    """An executable of this environment (the venv's bin), falling back to PATH."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


def mlflow_ui_command(tracking_uri: str, host: str, port: int) -> list[str]:
    return [_bin("mlflow"), "ui", "--backend-store-uri", tracking_uri, "--host", host, "--port", str(port)]


def prefect_server_command(host: str, port: int) -> list[str]:
    return [_bin("prefect"), "server", "start", "--host", host, "--port", str(port)]


def wait_http(url: str, timeout: float, proc: subprocess.Popen | None = None) -> None:
    """Poll `url` until it answers 200; fail early if `proc` exits."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{' '.join(proc.args[:3])} exited with code {proc.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310 - local http
                if resp.status == 200:
                    return
        except OSError as exc:
            last = exc
        time.sleep(1.0)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s ({last})")


def start_prefect_server(host: str = "127.0.0.1", port: int = 4200, timeout: float = 180.0) -> subprocess.Popen:
    """A Prefect server child process, answering on /api/health when this returns."""
    proc = start(prefect_server_command(host, port), env=dict(os.environ))
    try:
        wait_http(f"http://{host}:{port}/api/health", timeout, proc)
    except BaseException:
        stop(proc)
        raise
    return proc


def _experiment_id(tracking_uri: str, name: str) -> str | None:
    """Id of the pipeline's experiment in the store, or None before its first run."""
    from mlflow.tracking import MlflowClient

    exp = MlflowClient(tracking_uri).get_experiment_by_name(name)
    return None if exp is None or exp.lifecycle_stage == "deleted" else exp.experiment_id


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("overrides", nargs="*", help="pipeline config overrides (e.g. tracking.uri=...)")
    parser.add_argument("--preset", "-p", default=DEFAULT_PRESET, help="pipeline preset or YAML path")
    parser.add_argument("--host", default=UI_HOST)
    parser.add_argument("--mlflow-port", type=int, default=MLFLOW_UI_PORT)
    parser.add_argument("--prefect-port", type=int, default=PREFECT_UI_PORT)
    parser.add_argument("--no-prefect", action="store_true", help="start the MLflow UI only")
    parser.add_argument("--check", action="store_true", help="start, wait until both answer, then stop")
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for each service")


def run(args: argparse.Namespace) -> int:
    from components.tracking import check_tracking_uri, resolve_tracking_uri, runs_url

    from components.cli_errors import config_errors

    from .config import load_pipeline_config, preset_path

    path = preset_path(args.preset)
    with config_errors(path, args.overrides):
        cfg = load_pipeline_config(path, args.overrides)
    tracking_uri = resolve_tracking_uri(cfg.tracking.uri, Path(cfg.output_dir).resolve())
    check_tracking_uri(tracking_uri)
    procs: list[subprocess.Popen] = []
    try:
        mlflow_proc = start(mlflow_ui_command(tracking_uri, args.host, args.mlflow_port))
        procs.append(mlflow_proc)
        if not args.no_prefect:
            env = dict(os.environ)
            env.pop("PREFECT_API_URL", None)  # this process *is* the server
            procs.append(start(prefect_server_command(args.host, args.prefect_port), env=env))
        wait_http(f"http://{args.host}:{args.mlflow_port}/health", args.timeout, mlflow_proc)
        base = f"http://{args.host}:{args.mlflow_port}"
        print(f"MLflow UI:  {base}  (store {tracking_uri})")
        experiment = _experiment_id(tracking_uri, cfg.tracking.experiment)
        if experiment is not None:
            print(f"  runs of experiment '{cfg.tracking.experiment}': {runs_url(base, experiment)}")
        if not args.no_prefect:
            wait_http(f"http://{args.host}:{args.prefect_port}/api/health", args.timeout, procs[1])
            print(f"Prefect UI: http://{args.host}:{args.prefect_port}  (PREFECT_HOME {os.environ.get('PREFECT_HOME', '~/.prefect')})")
            print(f"  to run flows against it: export PREFECT_API_URL=http://{args.host}:{args.prefect_port}/api")
        if args.check:
            return 0
        print("Ctrl-C stops both.")
        while all(p.poll() is None for p in procs):
            time.sleep(1.0)
        return 1  # one of them died
    except KeyboardInterrupt:
        return 0
    finally:
        stop(*procs)
