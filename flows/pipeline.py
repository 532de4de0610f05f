"""The `pipeline` flow: data_prep -> cpt -> sft -> rl -> quantize -> benchmark -> evaluate.

One MLflow parent run per execution, one nested run per stage (see flows.runner). Stages hand each
other MLflow URIs (`runs:/<id>/checkpoint`), so every output stays addressable after the run. A
failed stage marks the parent run FAILED and leaves the finished stages' runs intact;
`draftedit pipeline --resume <parent_run_id>` re-opens that parent run with its stored config, reuses
the finished stages' outputs and continues from the first stage that did not finish. A pipeline that
was killed outright (SIGKILL, a lost machine) resumes the same way: the next command that opens the
store marks its runs FAILED (components.tracking.liveness), and the interrupted stage continues inside
its own run from its last checkpoint (flows.runner.run_stage reopens it).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from prefect import flow

from components.config import ConfigError, load_config
from components.tracking import (
    TAG_FAILED_STAGE,
    TAG_FAILURE,
    TAG_GIT,
    TAG_INTERRUPTED,
    TAG_PIPELINE,
    TAG_RESUMED_AT,
    TAG_STAGE,
    Heartbeat,
    TrackingError,
    child_runs,
    git_commit,
    log_config,
    log_metrics,
    owner_tags,
    reopen_run,
    resolve_tracking_uri,
    resolve_uri,
    run_outputs,
)

from .config import (
    DEFAULT_PRESET,
    MODEL_STAGES,
    PipelineConfig,
    load_pipeline_config,
    preset_path,
    stage_config_path,
    stage_overrides,
)
from .preflight import check_pipeline
from .pools import run_stage_on_pool
from .prefect_server import exit_forks_cleanly, start_ephemeral_server
from .report import plot_stages, print_summary
from .runner import RegistrationSpec, StageRequest, flow_run_tag, tracking_client
from .stage_flows import STAGE_FLOWS
from .stages import COMPONENTS


def _probe_overrides(cfg: PipelineConfig) -> list[str]:
    return list(cfg.stages.evaluate.overrides) + list(cfg.probe.overrides)


def _stored_config(client, run_id: str, tracking_uri: str, overrides: list[str]) -> PipelineConfig:
    """The pipeline config logged by parent run `run_id` (plus new overrides)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = resolve_uri(f"runs:/{run_id}/config.yaml", tracking_uri, what=f"config of pipeline run {run_id}", dst=tmp)
        return load_config(PipelineConfig, path, overrides)


def _pipeline_run(client, run_id: str):
    """The run `run_id`, which must exist and be a pipeline run (to be resumed)."""
    from mlflow.exceptions import MlflowException

    try:
        run = client.get_run(run_id)
    except MlflowException as exc:
        raise TrackingError(f"cannot resume: run {run_id!r} does not exist in {client.tracking_uri}") from exc
    if run.data.tags.get(TAG_STAGE) != "pipeline":
        raise TrackingError(f"cannot resume: run {run_id} is not a pipeline run (it is a "
                            f"{run.data.tags.get(TAG_STAGE, 'untagged')!r} run)")
    return run


def _open_parent(client, experiment_id: str, cfg: PipelineConfig, resume_run_id: str | None):
    """Create the parent run, or re-open `resume_run_id`."""
    if resume_run_id:
        parent = _pipeline_run(client, resume_run_id)
        reopen_run(client, resume_run_id)  # RUNNING again, owned by this process
        client.set_tag(resume_run_id, TAG_RESUMED_AT, str(int(time.time())))
        return parent
    tags = {TAG_STAGE: "pipeline", TAG_PIPELINE: cfg.name, TAG_GIT: git_commit(), **owner_tags(), **flow_run_tag()}
    parent = client.create_run(experiment_id, run_name=f"pipeline-{cfg.name}", tags=tags)
    log_config(client, parent.info.run_id, cfg)
    return parent


def _finished_children(client, parent_run_id: str) -> dict[str, Any]:
    """stage -> the latest FINISHED child run of that stage."""
    done: dict[str, Any] = {}
    for run in child_runs(client, parent_run_id):
        stage = run.data.tags.get(TAG_STAGE)
        if stage in COMPONENTS and run.info.status == "FINISHED":
            done[stage] = run  # oldest first, so the latest wins
    return done


def _stage_inputs(stage: str, state: dict[str, str | None]) -> dict[str, str]:
    """The stage's inputs (required and optional, flows.stages.COMPONENTS) that the pipeline has so far."""
    spec = COMPONENTS[stage]
    return {name: state[name] for name in spec.inputs + spec.optional if state.get(name)}


def _advance(stage: str, outputs: dict[str, str], state: dict[str, str | None]) -> None:
    if stage == "data_prep":
        state["data"] = outputs["data"]
    elif stage in MODEL_STAGES:
        state["checkpoint"] = outputs["checkpoint"]
    elif stage == "quantize":
        state["quantized"] = outputs["checkpoint"]  # the deployable quantized model (probed, not chained)


def _progress(message: str) -> None:
    """One line per stage on stdout, so a terminal shows where the pipeline is."""
    print(f"[draftedit] {message}", flush=True)


@flow(name="pipeline")
def pipeline_flow(
    config: str = DEFAULT_PRESET,
    overrides: list[str] | None = None,
    resume_run_id: str | None = None,
    from_stage: str | None = None,
) -> dict:
    """Run every enabled stage in order; return the parent run id and one summary row per stage."""
    exit_forks_cleanly()
    overrides = list(overrides or [])
    cfg = load_pipeline_config(config, overrides)
    output_dir = str(Path(cfg.output_dir).resolve())
    tracking_uri = resolve_tracking_uri(cfg.tracking.uri, output_dir)
    client, experiment_id = tracking_client(tracking_uri, cfg.tracking.experiment, output_dir)
    if resume_run_id:
        # The resumed run's own config, so the stages it already finished stay consistent.
        _pipeline_run(client, resume_run_id)
        cfg = _stored_config(client, resume_run_id, tracking_uri, overrides)
        output_dir = str(Path(cfg.output_dir).resolve())
    if from_stage is not None and from_stage not in COMPONENTS:
        raise ConfigError(f"--from-stage {from_stage!r}: stages are {', '.join(COMPONENTS)}")
    if from_stage is not None and not resume_run_id:
        raise ConfigError("--from-stage needs --resume <pipeline run id> (the run whose earlier outputs to reuse)")
    check_pipeline(cfg, tracking_uri)  # every config, task, preset, input and cross-stage value, before any work
    state: dict[str, str | None] = {"data": None, "checkpoint": None, "quantized": None}
    if cfg.init_checkpoint:
        resolve_uri(cfg.init_checkpoint, tracking_uri, what="init_checkpoint")
        state["checkpoint"] = cfg.init_checkpoint
    if cfg.init_data:
        resolve_uri(cfg.init_data, tracking_uri, what="init_data")
        state["data"] = cfg.init_data

    parent = _open_parent(client, experiment_id, cfg, resume_run_id)
    parent_id = parent.info.run_id
    _progress(f"pipeline run {parent_id} (if interrupted, continue it with: draftedit pipeline --resume {parent_id})")
    reusable = _finished_children(client, parent_id) if resume_run_id else {}
    stages = list(COMPONENTS)
    stop_reuse_at = stages.index(from_stage) if from_stage else len(stages)
    probe_config = (
        str(stage_config_path(cfg.stages.evaluate))
        if cfg.probe.enabled and cfg.stages.evaluate.config else None
    )
    rows: list[dict] = []
    rerun = False
    current = None
    beat = Heartbeat(client, parent_id).start()  # a killed pipeline's parent run is found and marked FAILED
    try:
        for index, stage in enumerate(stages):
            current = stage
            sc = cfg.stage(stage)
            if not sc.enabled:
                rows.append({"stage": stage, "status": "skipped", "run_id": None, "metrics": {}, "seconds": 0.0})
                continue
            if not rerun and index < stop_reuse_at and stage in reusable:
                prior = reusable[stage]
                _advance(stage, run_outputs(prior), state)
                rows.append({"stage": stage, "status": "reused", "run_id": prior.info.run_id,
                             "metrics": dict(prior.data.metrics), "seconds": 0.0})
                continue
            rerun = True
            enabled = [s for s in stages if cfg.stage(s).enabled]
            _progress(f"stage {enabled.index(stage) + 1}/{len(enabled)}: {stage} ({sc.config})")
            request = _stage_request(cfg, stage, state, parent_id, tracking_uri, output_dir, probe_config)
            result = _run_one_stage(stage, sc.pool, request, client, experiment_id)
            _advance(stage, result["outputs"], state)
            rows.append({"stage": stage, "status": "cached" if result["cached"] else "ran",
                         "run_id": result["run_id"], "metrics": result["metrics"],
                         "seconds": result["seconds"], "registration": result.get("registration")})
    except BaseException as exc:
        beat.stop()
        interrupted = isinstance(exc, (KeyboardInterrupt, SystemExit))
        client.set_tag(parent_id, TAG_FAILED_STAGE, current or "")
        client.set_tag(parent_id, TAG_FAILURE, f"stage {current}: {type(exc).__name__}: {exc}".splitlines()[0][:4000])
        client.set_tag(parent_id, TAG_INTERRUPTED, "true" if interrupted else "false")
        client.set_terminated(parent_id, status="KILLED" if interrupted else "FAILED")
        raise
    beat.stop()
    final = next((r for r in reversed(rows) if r["stage"] == "evaluate" and r["run_id"]), None)
    if final:
        log_metrics(client, parent_id, {k: v for k, v in final["metrics"].items() if k.startswith("eval/")})
    plot_path = _log_stage_plot(client, parent_id, rows, output_dir)
    client.set_tag(parent_id, TAG_FAILED_STAGE, "")
    client.set_terminated(parent_id, status="FINISHED")
    registration = next((r.get("registration") for r in rows if r.get("registration")), None)
    return {
        "parent_run_id": parent_id,
        "experiment": cfg.tracking.experiment,
        "experiment_id": experiment_id,
        "tracking_uri": tracking_uri,
        "output_dir": output_dir,
        "rows": rows,
        "registration": registration,
        "checkpoint": state["checkpoint"],
        "plot": plot_path,
    }


def registration_spec(cfg: PipelineConfig) -> RegistrationSpec:
    """How the evaluate stage registers the final model (the config's tracking section)."""
    return RegistrationSpec(name=cfg.tracking.registered_model, preset=cfg.serve_preset,
                            metric=cfg.tracking.champion_metric, greater_is_better=cfg.tracking.greater_is_better,
                            copy=cfg.tracking.log_checkpoints)


def _stage_request(cfg: PipelineConfig, stage: str, state: dict[str, str | None], parent_id: str,
                   tracking_uri: str, output_dir: str, probe_config: str | None) -> StageRequest:
    sc = cfg.stage(stage)
    return StageRequest(
        config_path=str(stage_config_path(sc)),
        overrides=stage_overrides(cfg, stage),
        inputs=_stage_inputs(stage, state),
        output_dir=cfg.output_dir if sc.pool else output_dir,  # a worker writes under its own folder
        tracking_uri=tracking_uri,
        experiment=cfg.tracking.experiment,
        parent_run_id=parent_id,
        pipeline=cfg.name,
        retries=cfg.retries,
        retry_delay_seconds=cfg.retry_delay_seconds,
        probe_config=probe_config if stage in cfg.probe.stages else None,
        probe_overrides=_probe_overrides(cfg),
        register=registration_spec(cfg) if stage == "evaluate" else None,
        log_checkpoints=cfg.tracking.log_checkpoints,
    )


def _run_one_stage(stage: str, pool: str | None, request: StageRequest, client, experiment_id: str) -> dict:
    """The stage's flow in this process, or its deployment on `pool` (a subflow run a worker there picks up)."""
    if pool:
        return run_stage_on_pool(stage, pool, request, client, experiment_id)
    return STAGE_FLOWS[stage](request=request)


def _log_stage_plot(client, parent_id: str, rows: list[dict], output_dir: str) -> str | None:
    """The parent run's `stages.png`: score and TPF per stage and decoding preset (None when nothing was probed)."""
    path = Path(output_dir) / "pipelines" / parent_id / "stages.png"
    if plot_stages(rows, path) is None:
        return None
    client.log_artifact(parent_id, str(path))
    return str(path)


# ---------------------------------------------------------------- `draftedit pipeline`
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("overrides", nargs="*", help="config overrides, key.sub=value (e.g. stages.rl.enabled=false)")
    parser.add_argument("--preset", "-p", default=DEFAULT_PRESET,
                        help="pipeline preset name in conf/pipeline/ (tiny, small, llada2.1-mini) or a YAML path")
    parser.add_argument("--resume", metavar="RUN_ID",
                        help="continue the pipeline run RUN_ID from its first unfinished stage")
    parser.add_argument("--from-stage", choices=list(COMPONENTS),
                        help="with --resume: re-run from this stage on (earlier stages' outputs are reused)")
    parser.add_argument("--dry-run", action="store_true", help="validate every config and print the plan, run nothing")


def run(args: argparse.Namespace) -> int:
    from components.cli_errors import config_errors

    path = preset_path(args.preset)
    with config_errors(path, args.overrides):
        cfg = load_pipeline_config(path, args.overrides)
    if args.dry_run:
        output_dir = Path(cfg.output_dir).resolve()
        tracking_uri = resolve_tracking_uri(cfg.tracking.uri, output_dir)
        check_pipeline(cfg, tracking_uri)
        print(f"pipeline {cfg.name}: every check passed; tracking {tracking_uri}, outputs {output_dir}")
        for stage in COMPONENTS:
            sc = cfg.stage(stage)
            state = f"{sc.config} {' '.join(stage_overrides(cfg, stage))}".strip() if sc.enabled else "disabled"
            state += f"  (on work pool {sc.pool})" if sc.enabled and sc.pool else ""
            print(f"  {stage:10s} {state}")
        return 0
    start = time.perf_counter()
    start_ephemeral_server()  # Prefect's server, bound to this process: a SIGKILL cannot orphan it
    result = pipeline_flow(config=args.preset, overrides=args.overrides, resume_run_id=args.resume,
                           from_stage=args.from_stage)
    print_summary(result, time.perf_counter() - start)
    return 0
