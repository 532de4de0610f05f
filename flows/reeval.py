"""Scheduled re-evaluation of the registered champion.

`reevaluate_flow` looks up the model version holding the alias (default `champion`), evaluates its
checkpoint with the pipeline's evaluate stage config (plus `reeval.overrides`), and logs an MLflow
run tagged with the model name and version; the version gets a tag pointing back at that run.
`reeval_deployment` is the same flow with the cron schedule of the pipeline config;
`draftedit serve reeval` serves it (one command, runs until stopped).
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow

from components.tracking import (
    TAG_CHECKPOINT,
    TrackingError,
    resolve_alias,
    resolve_tracking_uri,
)

from .config import DEFAULT_PRESET, load_pipeline_config, preset_path, stage_config_path
from .runner import StageRequest, tracking_client
from .stage_flows import STAGE_FLOWS

FLOW_NAME = "reevaluate-champion"
TAG_MODEL_NAME = "draftedit.model_name"
TAG_MODEL_VERSION = "draftedit.model_version"
TAG_MODEL_ALIAS = "draftedit.model_alias"
TAG_LAST_REEVAL = "draftedit.last_reeval_run"


@flow(name=FLOW_NAME, log_prints=True)
def reevaluate_flow(config: str = DEFAULT_PRESET, overrides: list[str] | None = None, alias: str | None = None) -> dict:
    """Evaluate the model version holding `alias` (default: the config's reeval.alias)."""
    cfg = load_pipeline_config(config, list(overrides or []))
    output_dir = str(Path(cfg.output_dir).resolve())
    tracking_uri = resolve_tracking_uri(cfg.tracking.uri, output_dir)
    client, _ = tracking_client(tracking_uri, cfg.tracking.experiment, output_dir)
    alias = alias or cfg.reeval.alias
    name = cfg.tracking.registered_model
    version = resolve_alias(client, name, alias)
    checkpoint_uri = version.tags.get(TAG_CHECKPOINT)
    if not checkpoint_uri:
        raise TrackingError(f"model {name} version {version.version} has no {TAG_CHECKPOINT} tag; "
                            f"it was not registered by the draftedit pipeline")
    print(f"re-evaluating {name} version {version.version} (alias {alias}) from {checkpoint_uri}")
    evaluate = cfg.stages.evaluate
    if not evaluate.config:
        raise TrackingError("stages.evaluate.config is empty: nothing to re-evaluate with")
    result = STAGE_FLOWS["evaluate"](request=StageRequest(
        config_path=str(stage_config_path(evaluate)),
        overrides=list(evaluate.overrides) + list(cfg.reeval.overrides),
        inputs={"checkpoint": checkpoint_uri},
        output_dir=output_dir,
        tracking_uri=tracking_uri,
        experiment=cfg.tracking.experiment,
        pipeline=f"reeval-{cfg.name}",
        retries=cfg.retries,
        retry_delay_seconds=cfg.retry_delay_seconds,
        extra_tags={TAG_MODEL_NAME: name, TAG_MODEL_VERSION: str(version.version), TAG_MODEL_ALIAS: alias},
    ))
    client.set_model_version_tag(name, str(version.version), TAG_LAST_REEVAL, result["run_id"])
    return {"model": name, "version": str(version.version), "alias": alias, **result}


def reeval_deployment(config: str = DEFAULT_PRESET, overrides: list[str] | None = None):
    """The re-evaluation flow as a deployment on the config's cron schedule (not yet applied)."""
    from prefect.schedules import Cron

    cfg = load_pipeline_config(config, list(overrides or []))
    # Absolute paths, so the scheduled runs find the same config and store from any working directory.
    params = {
        "config": str(preset_path(config).resolve()),
        "overrides": list(overrides or []) + [f"output_dir={Path(cfg.output_dir).resolve()}"],
    }
    return reevaluate_flow.to_deployment(
        name=cfg.reeval.deployment,
        schedule=Cron(cfg.reeval.cron, timezone=cfg.reeval.timezone),
        parameters=params,
        description=f"Re-evaluate models:/{cfg.tracking.registered_model}@{cfg.reeval.alias} on a schedule",
        tags=["draftedit", "reeval"],
    )
