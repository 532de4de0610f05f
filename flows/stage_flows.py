"""One Prefect flow per stage (one per entry of flows.stages.COMPONENTS), each a tracked MLflow run
around flows.runner.run_stage.

Separate flows give separate names, retries and histories in the Prefect UI, and let a deployment
target any single stage. A deployment names its flow by module attribute: `flows.stage_flows.cpt_flow`.
"""

from __future__ import annotations

from prefect import flow

from .runner import StageRequest, run_stage
from .stages import COMPONENTS


def _stage_flow(stage: str):
    @flow(name=stage.replace("_", "-"), log_prints=True, validate_parameters=True)
    def stage_flow(request: StageRequest) -> dict:
        return run_stage(stage, request)

    stage_flow.__doc__ = f"Tracked `{stage}` stage (see flows.runner.run_stage)."
    return stage_flow


STAGE_FLOWS = {stage: _stage_flow(stage) for stage in COMPONENTS}


def __getattr__(name: str):
    """`<stage>_flow`: the stage's flow, the attribute a deployment's entrypoint names."""
    stage = name.removesuffix("_flow")
    if name.endswith("_flow") and stage in STAGE_FLOWS:
        return STAGE_FLOWS[stage]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
