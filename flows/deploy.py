"""Pipelines on workers: deployments on Prefect work pools, and the commands that trigger and watch them.

    draftedit deploy apply --pool draftedit-gpu [--preset small] [tracking.uri=http://mlflow:5000 ...]
    draftedit deploy trigger --pool draftedit-gpu [--preset small] [overrides ...] [--watch]
    draftedit deploy watch <flow run id>

`apply` registers, on one work pool, the pipeline flow (`pipeline/<pool>`, the preset and overrides
as its default parameters) and every stage flow (`cpt/<pool>`, `evaluate/<pool>`, ...). A pipeline
config places a stage with `stages.<stage>.pool: <pool>`: the pipeline then runs that stage as the
deployment `<stage flow>/<pool>` (flows/pools.py), a subflow run of its own flow run that some
worker of the pool picks up, and waits for it; a stage without a pool runs in the pipeline's process.

Workers share nothing but the two servers: the Prefect API (PREFECT_API_URL) and an MLflow server
whose artifact store it proxies (`mlflow server --artifacts-destination ...`). Stages hand each
other `runs:/` URIs, so a checkpoint logged by one worker is downloaded from the server by the next.
Deployments import the flows by module path (`flows.stage_flows.cpt_flow`): a worker runs the code
installed in its environment (the image of `Dockerfile`), nothing is pulled from storage.
"""

from __future__ import annotations

import argparse
import time
import urllib.error
import urllib.request
from typing import Any, Callable

from components.config import ConfigError
from components.tracking import TAG_FLOW_RUN, TAG_STAGE

from .config import DEFAULT_PRESET
from .pools import deployment_name, flow_run_state

PIPELINE_ENTRYPOINT = "flows.pipeline.pipeline_flow"
REEVAL_ENTRYPOINT = "flows.reeval.reevaluate_flow"
FINAL_STATES = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")


class DeployError(RuntimeError):
    """The Prefect server, a work pool or a deployment cannot be used as asked."""


def stage_entrypoint(stage: str) -> str:
    return f"flows.stage_flows.{stage}_flow"


# ---------------------------------------------------------------- the Prefect server
def prefect_api_url() -> str:
    """The configured Prefect API, answering; DeployError saying how to fix it otherwise."""
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        raise DeployError("PREFECT_API_URL is not set: deployments live on a Prefect server that the workers poll. "
                          "Start one (`prefect server start`, or `draftedit ui`) and export "
                          "PREFECT_API_URL=http://<host>:4200/api")
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/health", timeout=10) as resp:  # noqa: S310 - http(s)
            if resp.status >= 400:
                raise DeployError(f"Prefect server {url} answered HTTP {resp.status} on /health")
    except (urllib.error.URLError, OSError) as exc:
        raise DeployError(f"Prefect server {url} (PREFECT_API_URL) is unreachable "
                          f"({getattr(exc, 'reason', exc)}); start it or fix PREFECT_API_URL") from exc
    return url


def check_pool(pool: str) -> None:
    """The work pool exists (deployments on a missing pool would wait forever)."""
    from prefect import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(pool)
        except ObjectNotFound:
            raise DeployError(f"work pool {pool!r} does not exist on {client.api_url}; create it once: "
                              f"prefect work-pool create {pool} --type process") from None


# ---------------------------------------------------------------- deployments
def pool_deployments(pool: str, preset: str = DEFAULT_PRESET, overrides: list[str] | None = None) -> list:
    """The pipeline deployment (preset and overrides as its default parameters) and one per stage, on `pool`."""
    from prefect.types.entrypoint import EntrypointType

    from .pipeline import pipeline_flow
    from .stage_flows import STAGE_FLOWS

    pipeline = pipeline_flow.to_deployment(
        name=pool, work_pool_name=pool, entrypoint_type=EntrypointType.MODULE_PATH,
        parameters={"config": preset, "overrides": list(overrides or [])},
        description=f"The draftedit pipeline on pool {pool} (trigger: draftedit deploy trigger --pool {pool})",
        tags=["draftedit", "pipeline"],
    )
    pipeline.entrypoint = PIPELINE_ENTRYPOINT
    deployments = [pipeline]
    for stage, stage_flow in STAGE_FLOWS.items():
        deployment = stage_flow.to_deployment(
            name=pool, work_pool_name=pool, entrypoint_type=EntrypointType.MODULE_PATH,
            description=f"The {stage} stage on pool {pool} (placed by stages.{stage}.pool={pool})",
            tags=["draftedit", "stage"],
        )
        deployment.entrypoint = stage_entrypoint(stage)  # the module attribute, not the inner function's name
        deployments.append(deployment)
    return deployments


def apply(pool: str, preset: str = DEFAULT_PRESET, overrides: list[str] | None = None,
          reeval: bool = False) -> list[str]:
    """Register (create or update) the deployments of `pool_deployments`; return their names."""
    from .reeval import reeval_deployment

    prefect_api_url()
    check_pool(pool)
    deployments = pool_deployments(pool, preset, overrides)
    if reeval:
        scheduled = reeval_deployment(preset, overrides)
        scheduled.entrypoint = REEVAL_ENTRYPOINT
        # The preset and overrides as given: this machine's absolute paths mean nothing on a worker.
        scheduled.parameters = {"config": preset, "overrides": list(overrides or [])}
        scheduled.work_pool_name = pool
        deployments.append(scheduled)
    names = []
    for deployment in deployments:
        deployment.apply(work_pool_name=pool)
        names.append(deployment.full_name)
    return names


# ---------------------------------------------------------------- trigger and watch
def _pipeline_tracking(preset: str, overrides: list[str]):
    """(MLflow client, experiment name) of the pipeline config, validated here before anything is triggered."""
    from pathlib import Path

    import mlflow

    from components.cli_errors import config_errors
    from components.tracking import check_tracking_uri, resolve_tracking_uri

    from .config import load_pipeline_config, preset_path

    with config_errors(preset_path(preset), overrides):
        cfg = load_pipeline_config(preset, overrides)
    uri = resolve_tracking_uri(cfg.tracking.uri, Path(cfg.output_dir).resolve())
    if not uri.startswith(("http://", "https://")):
        raise ConfigError(f"tracking.uri: a pipeline on a worker must be tracked in an MLflow server "
                          f"(http://host:port) that this machine and the workers reach; it is {cfg.tracking.uri!r}")
    check_tracking_uri(uri)
    return mlflow.MlflowClient(tracking_uri=uri), cfg.tracking.experiment


def trigger(pool: str, preset: str | None, overrides: list[str], resume_run_id: str | None = None,
            timeout: float = 600.0, say: Callable[[str], None] = print) -> tuple[str, str]:
    """Start a run of `pipeline/<pool>` and wait until it has opened its MLflow parent run.

    The preset replaces the deployment's; the overrides follow the deployment's (a later one wins).
    Returns (Prefect flow run id, MLflow parent run id)."""
    from prefect import get_client
    from prefect.deployments import run_deployment
    from prefect.exceptions import ObjectNotFound

    prefect_api_url()
    name = deployment_name("pipeline", pool)
    with get_client(sync_client=True) as pc:
        try:
            deployment = pc.read_deployment_by_name(name)
        except ObjectNotFound:
            raise DeployError(f"deployment {name!r} does not exist; create it: draftedit deploy apply --pool {pool}") from None
    defaults = deployment.parameters or {}
    params = {"config": preset or defaults.get("config", DEFAULT_PRESET),
              "overrides": list(defaults.get("overrides") or []) + list(overrides)}
    if resume_run_id:
        params["resume_run_id"] = resume_run_id
    client, experiment = _pipeline_tracking(params["config"], params["overrides"])
    flow_run = run_deployment(name, parameters=params, timeout=0, as_subflow=False)
    say(f"Prefect flow run {flow_run.id} ({flow_run.name}) of deployment {name}")
    parent = resume_run_id or _wait_for_parent(client, experiment, str(flow_run.id), timeout)
    say(f"MLflow parent run {parent} (experiment {experiment!r}, {client.tracking_uri})")
    return str(flow_run.id), parent


def _wait_for_parent(client, experiment: str, flow_run_id: str, timeout: float) -> str:
    """The MLflow run the pipeline flow run `flow_run_id` opened (it does so after its preflight)."""
    deadline = time.monotonic() + timeout
    while True:
        exp = client.get_experiment_by_name(experiment)
        if exp is not None:
            runs = client.search_runs([exp.experiment_id], max_results=1,
                                      filter_string=f"tags.`{TAG_FLOW_RUN}` = '{flow_run_id}' and "
                                                    f"tags.`{TAG_STAGE}` = 'pipeline'")
            if runs:
                return runs[0].info.run_id
        state = flow_run_state(flow_run_id)
        if state is not None and state.type.value in FINAL_STATES:
            raise DeployError(f"flow run {flow_run_id} ended {state.name} before opening its MLflow run: "
                              f"{state.message or 'see its logs in the Prefect UI'}")
        if time.monotonic() > deadline:
            where = state.name if state else "unknown"
            raise DeployError(f"flow run {flow_run_id} opened no MLflow run within {timeout:.0f} s (it is {where}; "
                              f"is a worker polling its pool?); follow it with: draftedit deploy watch {flow_run_id}")
        time.sleep(2.0)


def watch(flow_run_id: str, poll_s: float = 2.0, say: Callable[[str], None] = print) -> str:
    """Print each state change of the flow run and of its subflow runs (the stages) until it ends;
    return its final state type (COMPLETED, FAILED, CRASHED or CANCELLED)."""
    from uuid import UUID

    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId
    from prefect.exceptions import ObjectNotFound

    try:
        run_uuid = UUID(flow_run_id)
    except ValueError:
        raise DeployError(f"{flow_run_id!r} is not a flow run id (a UUID, as printed by draftedit deploy trigger)") from None

    prefect_api_url()
    seen: dict[str, str] = {}  # flow run id -> last state printed
    flow_names: dict[Any, str] = {}
    with get_client(sync_client=True) as pc:
        while True:
            try:
                root = pc.read_flow_run(run_uuid)
            except ObjectNotFound:
                raise DeployError(f"flow run {flow_run_id} does not exist on {pc.api_url}") from None
            children = pc.read_flow_runs(flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[run_uuid])))
            for run in [root, *children]:
                state = run.state.name if run.state else "Pending"
                if seen.get(str(run.id)) == state:
                    continue
                seen[str(run.id)] = state
                if run.flow_id not in flow_names:
                    flow_names[run.flow_id] = pc.read_flow(run.flow_id).name
                where = f" on pool {run.work_pool_name}" if run.work_pool_name else ""
                final = run.state is not None and run.state.is_final() and run.state.message
                label = flow_names[run.flow_id] if run.id == root.id else f"  {flow_names[run.flow_id]}"
                say(f"{time.strftime('%H:%M:%S')} {label} {run.name}{where}: {state}"
                    + (f": {run.state.message}" if final else ""))
            if root.state is not None and root.state.type.value in FINAL_STATES:
                return root.state.type.value
            time.sleep(poll_s)


# ---------------------------------------------------------------- `draftedit deploy`
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("apply", "trigger", "watch"),
                        help="apply: register the deployments on a pool; trigger: start a pipeline there; "
                             "watch: follow a flow run")
    parser.add_argument("args", nargs="*", metavar="OVERRIDE|FLOW_RUN_ID",
                        help="apply/trigger: pipeline config overrides key.sub=value; watch: the flow run id")
    parser.add_argument("--pool", help="apply/trigger: the Prefect work pool")
    parser.add_argument("--preset", "-p", default=None,
                        help=f"pipeline preset or YAML path (apply: default {DEFAULT_PRESET}; trigger: the deployment's)")
    parser.add_argument("--reeval", action="store_true",
                        help="apply: also deploy the scheduled champion re-evaluation on the pool")
    parser.add_argument("--resume", metavar="RUN_ID", help="trigger: continue the pipeline run RUN_ID")
    parser.add_argument("--watch", action="store_true", help="trigger: then follow the run until it ends")
    parser.add_argument("--timeout", type=float, default=600.0,
                        help="trigger: seconds to wait for the run to open its MLflow parent run")


def run(args: argparse.Namespace) -> int:
    if args.action == "watch":
        if len(args.args) != 1:
            raise DeployError("usage: draftedit deploy watch <flow run id>")
        return 0 if watch(args.args[0]) == "COMPLETED" else 1
    if not args.pool:
        raise DeployError(f"draftedit deploy {args.action} needs --pool <work pool name>")
    if args.action == "apply":
        preset = args.preset or DEFAULT_PRESET
        _pipeline_tracking(preset, args.args)  # a deployment whose runs could not be tracked is refused now
        for name in apply(args.pool, preset, args.args, reeval=args.reeval):
            print(f"deployment {name}")
        print(f"start a worker: prefect worker start --pool {args.pool}; "
              f"trigger: draftedit deploy trigger --pool {args.pool} [overrides]")
        return 0
    flow_run_id, _ = trigger(args.pool, args.preset, args.args, args.resume, args.timeout)
    if args.watch:
        return 0 if watch(flow_run_id) == "COMPLETED" else 1
    print(f"follow it: draftedit deploy watch {flow_run_id}")
    return 0
