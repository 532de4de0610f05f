"""`draftedit serve`: one command for each long-running service.

    draftedit serve reeval            # the champion re-evaluation deployment on its cron schedule
    draftedit serve reeval --now      # ... and trigger one run right away
    draftedit serve model --port 5001 # the champion as an MLflow pyfunc over HTTP (mlflow models serve)

`serve reeval` registers the deployment with the Prefect API (a server started by `draftedit ui`, or
PREFECT_API_URL) and executes its scheduled runs until stopped.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from .config import DEFAULT_PRESET


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("target", choices=("reeval", "model"), help="what to serve")
    parser.add_argument("overrides", nargs="*", help="pipeline config overrides, key.sub=value")
    parser.add_argument("--preset", "-p", default=DEFAULT_PRESET, help="pipeline preset or YAML path")
    parser.add_argument("--now", action="store_true", help="reeval: also run one re-evaluation immediately")
    parser.add_argument("--alias", default=None, help="model: registry alias to serve (default: reeval.alias)")
    parser.add_argument("--host", default="127.0.0.1", help="model: address to bind")
    parser.add_argument("--port", type=int, default=5001, help="model: port")
    parser.add_argument("--prefect-port", type=int, default=4200,
                        help="reeval: port of the Prefect server started when PREFECT_API_URL is not set")


def serve_env(tracking_uri: str) -> dict[str, str]:
    """Environment for `mlflow models serve`: the store, and this venv's bin first on PATH (it runs
    `uvicorn` by name)."""
    bin_dir = str(Path(sys.executable).parent)
    path = os.environ.get("PATH", "")
    return dict(os.environ, MLFLOW_TRACKING_URI=tracking_uri, MLFLOW_REGISTRY_URI=tracking_uri,
                PATH=f"{bin_dir}{os.pathsep}{path}" if path else bin_dir)


def model_serve_command(model_uri: str, host: str, port: int) -> list[str]:
    """`mlflow models serve` in this environment (no per-model virtualenv: we run offline)."""
    mlflow_bin = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or "mlflow"
    return [mlflow_bin, "models", "serve", "-m", model_uri, "--env-manager", "local",
            "--host", host, "--port", str(port)]


def run(args: argparse.Namespace) -> int:
    from components.tracking import resolve_alias, resolve_tracking_uri

    from .config import load_pipeline_config
    from .stages import tracking_client

    cfg = load_pipeline_config(args.preset, args.overrides)
    output_dir = str(Path(cfg.output_dir).resolve())
    tracking_uri = resolve_tracking_uri(cfg.tracking.uri, output_dir)
    client, _ = tracking_client(tracking_uri, cfg.tracking.experiment, output_dir)
    alias = args.alias or cfg.reeval.alias
    version = resolve_alias(client, cfg.tracking.registered_model, alias)  # fail now, not at the first cron tick
    if args.target == "model":
        uri = f"models:/{cfg.tracking.registered_model}@{alias}"
        cmd = model_serve_command(uri, args.host, args.port)
        print(f"serving {uri} (version {version.version}) at http://{args.host}:{args.port}/invocations")
        print('try: curl -s -X POST -H "Content-Type: application/json" '
              f'-d \'{{"inputs": {{"prompt": ["3+4="]}}, "params": {{"preset": "speedy"}}}}\' http://{args.host}:{args.port}/invocations')
        os.execvpe(cmd[0], cmd, serve_env(tracking_uri))  # replaces this process

    from prefect import serve

    from .reeval import reeval_deployment, reevaluate_flow

    deployment = reeval_deployment(args.preset, args.overrides)
    print(f"deployment {reevaluate_flow.name}/{cfg.reeval.deployment}: cron '{cfg.reeval.cron}' "
          f"({cfg.reeval.timezone}), evaluates models:/{cfg.tracking.registered_model}@{alias} "
          f"(now version {version.version}). Ctrl-C stops it.")
    from contextlib import nullcontext

    from prefect.settings import PREFECT_API_URL, temporary_settings

    server = None
    settings = nullcontext()
    if not PREFECT_API_URL.value():
        # Schedules need a real server (an ephemeral one runs no scheduler): start one for this command.
        from .ui import start_prefect_server, stop

        server = start_prefect_server(port=args.prefect_port)
        settings = temporary_settings(updates={PREFECT_API_URL: f"http://127.0.0.1:{args.prefect_port}/api"})
        print(f"started a Prefect server at http://127.0.0.1:{args.prefect_port} (stops with this command)")
    try:
        with settings:
            if args.now:
                reevaluate_flow(config=deployment.parameters["config"], overrides=deployment.parameters["overrides"])
            serve(deployment)
    finally:
        if server is not None:
            stop(server)
    return 0
