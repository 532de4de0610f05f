"""`draftedit serve`: one command for each long-running service.

    draftedit serve reeval            # the champion re-evaluation deployment on its cron schedule
    draftedit serve reeval --now      # ... and trigger one run right away
    draftedit serve model --port 5001 # the champion pyfunc over HTTP (MLflow's /invocations and OpenAI's /v1)
    draftedit serve model serve.max_prompts=64   # serve.* overrides set the server's limits

`serve model` runs `components.serving` (limits from conf/serve/default.yaml, JSON errors, a deadline
that stops decoding) rather than `mlflow models serve`, which has none of these.

`serve reeval` registers the deployment with the Prefect API (a server started by `draftedit ui`, or
PREFECT_API_URL) and executes its scheduled runs until stopped.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from components.config import CONF_DIR

from .config import DEFAULT_PRESET


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("target", choices=("reeval", "model"), help="what to serve")
    parser.add_argument("overrides", nargs="*",
                        help="pipeline config overrides, key.sub=value; model: serve.KEY=VALUE sets a server limit")
    parser.add_argument("--preset", "-p", default=DEFAULT_PRESET, help="pipeline preset or YAML path")
    parser.add_argument("--now", action="store_true", help="reeval: also run one re-evaluation immediately")
    parser.add_argument("--alias", default=None, help="model: registry alias to serve (default: reeval.alias)")
    parser.add_argument("--host", default="127.0.0.1", help="model: address to bind")
    parser.add_argument("--port", type=int, default=5001, help="model: port")
    parser.add_argument("--prefect-port", type=int, default=4200,
                        help="reeval: port of the Prefect server started when PREFECT_API_URL is not set")


SERVE_CONFIG = CONF_DIR / "serve" / "default.yaml"  # limits of `serve model`


def run(args: argparse.Namespace) -> int:
    from components.tracking import resolve_alias, resolve_tracking_uri

    from components.cli_errors import config_errors

    from .config import load_pipeline_config, preset_path
    from .runner import tracking_client

    serve_overrides = [o[len("serve."):] for o in args.overrides if o.startswith("serve.")]
    args.overrides = [o for o in args.overrides if not o.startswith("serve.")]
    path = preset_path(args.preset)
    with config_errors(path, args.overrides):
        cfg = load_pipeline_config(path, args.overrides)
    output_dir = str(Path(cfg.output_dir).resolve())
    tracking_uri = resolve_tracking_uri(cfg.tracking.uri, output_dir)
    client, _ = tracking_client(tracking_uri, cfg.tracking.experiment, output_dir)
    alias = args.alias or cfg.reeval.alias
    version = resolve_alias(client, cfg.tracking.registered_model, alias)  # fail now, not at the first cron tick
    if args.target == "model":
        import mlflow

        from components.config import load_config
        from components.serving import ServeConfig
        from components.serving import serve as serve_http

        with config_errors(SERVE_CONFIG, serve_overrides, context="serve"):
            limits = load_config(ServeConfig, SERVE_CONFIG, serve_overrides)
        uri = f"models:/{cfg.tracking.registered_model}@{alias}"
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_registry_uri(tracking_uri)
        model = mlflow.pyfunc.load_model(uri).unwrap_python_model()
        name = limits.model_name or cfg.tracking.registered_model
        print(f"serving {uri} (version {version.version}) at http://{args.host}:{args.port}/invocations and "
              f"http://{args.host}:{args.port}/v1 (OpenAI clients: model={name!r})")
        print('try: curl -s -X POST -H "Content-Type: application/json" '
              f'-d \'{{"inputs": {{"prompt": ["3+4="]}}, "params": {{"preset": "speedy"}}}}\' http://{args.host}:{args.port}/invocations')
        serve_http(model, limits, args.host, args.port, model_name=name)
        return 0

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
        from .processes import stop
        from .ui import start_prefect_server

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
