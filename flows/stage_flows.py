"""One Prefect flow per stage, each a tracked MLflow run around flows.runner.run_stage.

Separate flows give separate names, retries and histories in the Prefect UI, and let a deployment
target any single stage.
"""

from __future__ import annotations

from prefect import flow

from .runner import run_stage


def _stage_flow(stage: str):
    @flow(name=stage.replace("_", "-"), log_prints=True, validate_parameters=True)
    def stage_flow(
        config_path: str,
        overrides: list[str] | None = None,
        inputs: dict[str, str] | None = None,
        output_dir: str = "outputs",
        tracking_uri: str | None = None,
        experiment: str = "draftedit",
        parent_run_id: str | None = None,
        pipeline: str | None = None,
        retries: int = 2,
        retry_delay_seconds: float = 5.0,
        probe_config: str | None = None,
        probe_overrides: list[str] | None = None,
        registry: dict | None = None,
        log_checkpoints: bool = True,
        extra_tags: dict[str, str] | None = None,
    ) -> dict:
        return run_stage(
            stage, config_path=config_path, overrides=overrides, inputs=inputs, output_dir=output_dir,
            tracking_uri=tracking_uri, experiment=experiment, parent_run_id=parent_run_id, pipeline=pipeline,
            retries=retries, retry_delay_seconds=retry_delay_seconds, probe_config=probe_config,
            probe_overrides=probe_overrides, registry=registry, log_checkpoints=log_checkpoints,
            extra_tags=extra_tags,
        )

    stage_flow.__doc__ = f"Tracked `{stage}` stage (see flows.runner.run_stage)."
    return stage_flow


data_prep_flow = _stage_flow("data_prep")
cpt_flow = _stage_flow("cpt")
sft_flow = _stage_flow("sft")
rl_flow = _stage_flow("rl")
quantize_flow = _stage_flow("quantize")
benchmark_flow = _stage_flow("benchmark")
evaluate_flow = _stage_flow("evaluate")

STAGE_FLOWS = {
    "data_prep": data_prep_flow,
    "cpt": cpt_flow,
    "sft": sft_flow,
    "rl": rl_flow,
    "quantize": quantize_flow,
    "benchmark": benchmark_flow,
    "evaluate": evaluate_flow,
}
