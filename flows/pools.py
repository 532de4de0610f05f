"""Stages on Prefect work pools, at run time: run a stage as its deployment and wait for its result.

A pipeline config places a stage with `stages.<stage>.pool: <pool>`; the pipeline then runs that
stage as the deployment `<stage flow>/<pool>` (created by `draftedit deploy apply`, flows/deploy.py),
a subflow run that some worker of the pool picks up. Workers share no result storage, so the result
is read back from the stage's MLflow run. Importing this module is cheap (deploy's commands use it);
the stage code is imported when a stage runs.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from components.tracking import TAG_FLOW_RUN

if TYPE_CHECKING:
    from .runner import StageRequest

SWEEP_EVERY_S = 10.0  # how often a pipeline waiting on a placed stage looks for runs of dead workers


def deployment_name(stage: str, pool: str) -> str:
    """`<flow name>/<pool>`: the deployment of `stage` (or of `pipeline`) on `pool`."""
    from .stage_flows import STAGE_FLOWS

    flow_name = "pipeline" if stage == "pipeline" else STAGE_FLOWS[stage].name
    return f"{flow_name}/{pool}"


def flow_run_state(flow_run_id: str):
    """The flow run's current Prefect state (None before it has one)."""
    from prefect import get_client

    with get_client(sync_client=True) as pc:
        return pc.read_flow_run(flow_run_id).state


def run_stage_on_pool(stage: str, pool: str, request: StageRequest, client, experiment_id: str,
                      poll_s: float = 2.0) -> dict:
    """Run `stage` as its deployment on `pool` (a subflow run of the calling flow run), wait for it, and
    return run_stage's result, read back from the stage's MLflow run (workers share no result storage)."""
    from prefect.deployments import run_deployment
    from prefect.exceptions import ObjectNotFound

    from .runner import stage_result_from_run, sweep_dead_owners
    from .stages import StageError

    name = deployment_name(stage, pool)
    try:
        flow_run = run_deployment(name, parameters={"request": request.to_params()}, timeout=0, as_subflow=True)
    except ObjectNotFound:
        raise StageError(f"stage {stage} is placed on pool {pool!r} (stages.{stage}.pool) but deployment "
                         f"{name!r} does not exist; create it: draftedit deploy apply --pool {pool}") from None
    last_sweep = time.monotonic()
    while (state := flow_run_state(flow_run.id)) is None or not state.is_final():
        time.sleep(poll_s)
        if time.monotonic() - last_sweep > SWEEP_EVERY_S:
            # A worker that died mid-stage cannot end its runs: this marks its MLflow run FAILED and its
            # flow run Crashed (components.tracking.liveness), which ends this wait.
            sweep_dead_owners(client, experiment_id)
            last_sweep = time.monotonic()
    if state.type.value != "COMPLETED":
        raise StageError(f"stage {stage}: flow run {flow_run.id} of {name} ended {state.name}: "
                         f"{state.message or 'see the flow run logs'}")
    runs = client.search_runs([experiment_id], filter_string=f"tags.`{TAG_FLOW_RUN}` = '{flow_run.id}'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        raise StageError(f"stage {stage}: flow run {flow_run.id} of {name} completed but logged no MLflow run "
                         f"in experiment {experiment_id}")
    return stage_result_from_run(stage, runs[0])
