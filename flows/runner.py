"""Run one stage: validate its config and inputs, open its MLflow run, call its component, log results.

`run_stage` is the body of every stage flow (flows/stage_flows.py). It loads and validates the
config with the component's schema, resolves the input URIs to local folders, opens the MLflow run
(nested under the pipeline's run when given), calls the component in a Prefect task that retries
transient failures, logs metrics and outputs, and returns the outputs as URIs that the next stage
(or a later pipeline) starts from. The stage table it reads is flows/stages.py.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from components.config import to_container
from components.tracking import (
    TAG_CACHE_HIT,
    TAG_CONFIG_HASH,
    TAG_FAILURE,
    TAG_FLOW_RUN,
    TAG_FOLDER,
    TAG_INPUT,
    TAG_OUTPUT,
    TAG_PIPELINE,
    TAG_REGISTERED_VERSION,
    TAG_REGISTRATION,
    TAG_STAGE,
    TrackingError,
    artifact_root_for,
    check_tracking_uri,
    find_interrupted,
    get_or_create_experiment,
    log_metrics,
    log_output,
    logged_steps,
    register_model,
    resolve_tracking_uri,
    resolve_uri,
    run_outputs,
    stage_run,
    sweep_dead_runs,
    version_of_run,
)

from .config import config_hash
from .prefect_server import exit_forks_cleanly
from .stages import StageError, entry_name, load_stage_config, stage_spec


@dataclass
class RegistrationSpec:
    """How the evaluate stage registers the model it evaluated (see PipelineConfig.tracking)."""

    name: str
    preset: str  # decoding preset of the registered pyfunc model
    metric: str = "eval/score"  # the evaluate run's metric that ranks registered models
    greater_is_better: bool = True
    copy: bool = True  # copy the checkpoint into the model's artifacts (false: record its path)


@dataclass
class StageRequest:
    """Everything one stage run needs besides the stage's name: the parameters of every stage flow.

    Plain values only (paths and URIs as strings), so Prefect can validate it and a deployment on a
    work pool can pass it to a worker as JSON (`to_params`).
    """

    config_path: str
    overrides: list[str] = field(default_factory=list)
    inputs: dict[str, str] = field(default_factory=dict)  # input name -> URI
    output_dir: str = "outputs"
    tracking_uri: str | None = None
    experiment: str = "draftedit"
    parent_run_id: str | None = None  # the pipeline's run: this stage's run nests under it
    pipeline: str | None = None
    retries: int = 2
    retry_delay_seconds: float = 5.0
    probe_config: str | None = None  # evaluate config that probes a model stage's checkpoint
    probe_overrides: list[str] = field(default_factory=list)
    register: RegistrationSpec | None = None  # evaluate only
    log_checkpoints: bool = True
    extra_tags: dict[str, str] = field(default_factory=dict)

    def to_params(self) -> dict:
        """The request as JSON-safe flow parameters."""
        return dataclasses.asdict(self)


class TransientError(RuntimeError):
    """Raise (or wrap) this in a component for a failure worth retrying (network, busy resource)."""


_TRANSIENT_ERRNOS = {errno.EAGAIN, errno.EBUSY, errno.ECONNRESET, errno.ECONNREFUSED, errno.ETIMEDOUT}


def is_transient(exc: BaseException | None) -> bool:
    """Failures that a retry can fix: connections, timeouts, busy resources. Not bad configs or bugs."""
    if exc is None:
        return False
    if isinstance(exc, (TransientError, ConnectionError, TimeoutError)):
        return True
    return isinstance(exc, OSError) and exc.errno in _TRANSIENT_ERRNOS


def _retry_condition(task_, task_run, state) -> bool:
    try:
        state.result()
    except BaseException as exc:  # noqa: BLE001 - we classify whatever the component raised
        return is_transient(exc)
    return False


@task(name="component", cache_policy=NO_CACHE)
def call_component(stage: str, cfg: Any, inputs: dict[str, str], out_dir: str) -> dict:
    """Call the stage's entry function (the only place a component runs)."""
    entry = stage_spec(stage).entry
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result = entry(cfg, out, {k: Path(v) for k, v in inputs.items()})
    return _check_result(stage, result)


def _check_result(stage: str, result: Any) -> dict:
    spec = stage_spec(stage)
    if not isinstance(result, dict):
        raise StageError(f"stage {stage}: {entry_name(spec)} returned {type(result).__name__}, expected a dict")
    metrics = result.get("metrics", {})
    if not isinstance(metrics, dict):
        raise StageError(f"stage {stage}: result['metrics'] must be a dict, got {type(metrics).__name__}")
    output = spec.output
    if output is not None:
        key = f"{output}_dir"
        if key not in result or not Path(result[key]).is_dir():
            raise StageError(f"stage {stage}: result[{key!r}] must be an existing folder, got {result.get(key)!r}")
    return result


def tracking_client(tracking_uri: str, experiment: str, output_dir: str):
    """(client, experiment_id) for an explicit URI, failing fast when the store is unreachable."""
    import mlflow

    check_tracking_uri(tracking_uri)
    client = mlflow.MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    try:
        experiment_id = get_or_create_experiment(client, experiment, artifact_root_for(tracking_uri, output_dir))
    except mlflow.exceptions.MlflowException as exc:
        raise TrackingError(f"cannot open experiment {experiment!r} in {tracking_uri}: {exc.message}") from exc
    sweep_dead_owners(client, experiment_id)
    return client, experiment_id


def sweep_dead_owners(client, experiment_id: str) -> None:
    """Runs left RUNNING by killed processes become FAILED (with their cause), in MLflow and in Prefect."""
    from .prefect_server import mark_flow_runs_crashed

    swept = sweep_dead_runs(client, [experiment_id])
    mark_flow_runs_crashed({run.data.tags[TAG_FLOW_RUN]: client.get_run(run_id).data.tags[TAG_FAILURE]
                            for run_id, run in swept.items() if run.data.tags.get(TAG_FLOW_RUN)})


def _log_results(client, run_id: str, out_dir: Path, skip: list[Path], max_bytes: int = 50 * 2**20) -> None:
    """Small result files the component left in out_dir (tables, plots, records) -> artifacts `results/`."""
    skip = [p.resolve() for p in skip]
    for path in sorted(out_dir.rglob("*")):
        if not path.is_file() or path.stat().st_size > max_bytes:
            continue
        resolved = path.resolve()
        if any(resolved.is_relative_to(s) for s in skip):
            continue
        rel_parent = path.parent.relative_to(out_dir)
        artifact_path = "results" if str(rel_parent) == "." else f"results/{rel_parent.as_posix()}"
        client.log_artifact(run_id, str(path), artifact_path=artifact_path)


def _cached_data_run(client, experiment_id: str, digest: str):
    """Latest finished data_prep run with this config hash whose data still exist: a local folder, or
    artifacts in the tracking server (`runs:/<id>/data`: with a server data_prep uploads them, and a
    stage on another host downloads them from there)."""
    from mlflow.exceptions import MlflowException

    runs = client.search_runs(
        [experiment_id],
        filter_string=(
            f"tags.`{TAG_STAGE}` = 'data_prep' and tags.`{TAG_CONFIG_HASH}` = '{digest}' "
            f"and attributes.status = 'FINISHED'"
        ),
        order_by=["attributes.start_time DESC"],
        max_results=20,
    )
    for run in runs:
        uri = run_outputs(run).get("data")
        if uri and uri.startswith("runs:/"):
            from components.tracking.artifacts import split_runs_uri

            data_run_id, artifact_path = split_runs_uri(uri)
            try:
                if client.list_artifacts(data_run_id, artifact_path):
                    return run
            except MlflowException:  # the run holding the data was deleted
                continue
        elif uri and Path(uri).is_dir():
            return run
    return None


def run_stage(stage: str, request: StageRequest) -> dict:
    """Body shared by the stage flows. Returns {stage, run_id, outputs, metrics, cached, seconds, registration}."""
    exit_forks_cleanly()  # the component's forked workers (DataLoader, metrics) must not inherit Prefect's exit hooks
    spec = stage_spec(stage)
    config_path, overrides, output_dir = request.config_path, request.overrides, request.output_dir
    parent_run_id, retries, retry_delay_seconds = request.parent_run_id, request.retries, request.retry_delay_seconds
    register = request.register
    inputs = dict(request.inputs)
    unknown = sorted(set(inputs) - set(spec.inputs) - set(spec.optional))
    if unknown:
        raise StageError(f"stage {stage}: unknown inputs {unknown}; it takes {list(spec.inputs + spec.optional)}")
    if register and stage != "evaluate":
        raise StageError(f"stage {stage}: only the evaluate stage registers models")
    missing = [name for name in spec.inputs if not inputs.get(name)]
    if missing:
        raise StageError(f"stage {stage}: missing input(s) {missing} (give them as URIs, e.g. runs:/<id>/{missing[0]})")

    # Everything that can be checked is checked before any work: config, tracking store, inputs.
    cfg = load_stage_config(stage, config_path, overrides)
    probe_cfg = (load_stage_config("evaluate", request.probe_config, request.probe_overrides)
                 if request.probe_config else None)
    output_dir_abs = Path(output_dir).resolve()
    tracking_uri = resolve_tracking_uri(request.tracking_uri, output_dir_abs)
    client, experiment_id = tracking_client(tracking_uri, request.experiment, str(output_dir_abs))
    local_inputs = {
        name: str(resolve_uri(uri, tracking_uri, what=f"stage {stage} input {name!r}"))
        for name, uri in inputs.items()
        if uri
    }
    if parent_run_id is None:  # a pipeline ran the whole preflight before its first stage
        from .preflight import check_stage

        check_stage(stage, cfg, local_inputs, tracking_uri)
    digest = config_hash({"config": to_container(cfg), "inputs": inputs})
    tags = {TAG_CONFIG_HASH: digest}
    if request.pipeline:
        tags[TAG_PIPELINE] = request.pipeline
    tags.update({TAG_INPUT + k: v for k, v in inputs.items() if v})
    tags.update(request.extra_tags)
    tags.update(flow_run_tag())

    cached = _cached_data_run(client, experiment_id, digest) if stage == "data_prep" else None
    # A run of this stage, config and inputs (and pipeline run) that was killed continues: same run, same folder.
    interrupted = find_interrupted(client, experiment_id, stage, digest, parent_run_id)
    resume_run_id = interrupted.info.run_id if interrupted is not None else None
    if interrupted is not None:
        print(f"[draftedit] {stage}: continuing run {resume_run_id} ({interrupted.data.tags.get(TAG_FAILURE)})",
              flush=True)
    start = time.perf_counter()
    with stage_run(client, experiment_id, stage, parent_run_id=parent_run_id, config=cfg, tags=tags,
                   resume_run_id=resume_run_id) as run:
        run_id = run.info.run_id
        outputs: dict[str, str] = {}
        metrics: dict[str, float] = {}
        registration: dict | None = None
        if cached is not None:
            outputs["data"] = run_outputs(cached)["data"]
            client.set_tag(run_id, TAG_CACHE_HIT, cached.info.run_id)
            client.set_tag(run_id, TAG_OUTPUT + "data", outputs["data"])
            metrics = log_metrics(client, run_id, cached.data.metrics)
        else:
            out_dir = output_dir_abs / "stages" / stage / run_id
            client.set_tag(run_id, TAG_FOLDER, str(out_dir))  # where its checkpoints are, for a person
            component = call_component.with_options(
                name=f"{stage}-component",
                retries=retries,
                retry_delay_seconds=retry_delay_seconds,
                retry_condition_fn=_retry_condition,
            )
            result = component(stage, cfg, local_inputs, str(out_dir))
            # The final figures at the final step, except those the component's logger already put there.
            metrics = log_metrics(client, run_id, result.get("metrics", {}), step=result.get("step"),
                                  skip=logged_steps(client, run_id))
            metrics.update(result.get("logged_metrics", {}))
            skip: list[Path] = []
            if spec.output == "data":
                # Prepared data stay in place (the cache) and the run records their path; with a tracking
                # server they are uploaded, so stages on other hosts (flows/deploy.py) can read them.
                data_dir = Path(result["data_dir"]).resolve()
                remote = tracking_uri.startswith(("http://", "https://"))
                outputs["data"] = log_output(client, run_id, "data", data_dir, copy=remote)
                skip.append(data_dir)
            elif spec.output == "checkpoint":
                ckpt = Path(result["checkpoint_dir"]).resolve()
                outputs["checkpoint"] = log_output(client, run_id, "checkpoint", ckpt, copy=request.log_checkpoints)
                skip.append(ckpt)
                if probe_cfg is not None:
                    probe = call_component.with_options(name=f"{stage}-probe")(
                        "evaluate", probe_cfg, {"checkpoint": str(ckpt)}, str(out_dir / "probe")
                    )
                    probe_metrics = probe.get("metrics", {})
                    metrics.update(log_metrics(client, run_id, probe_metrics))
            if not result.get("artifacts_logged"):
                _log_results(client, run_id, out_dir, skip)
            if register:
                registration = _register(client, run_id, local_inputs["checkpoint"], inputs["checkpoint"], register)
                client.set_tag(run_id, TAG_REGISTERED_VERSION, registration["version"])
                client.set_tag(run_id, TAG_REGISTRATION, json.dumps(registration))
                outputs["model"] = f"models:/{registration['name']}/{registration['version']}"
    return stage_result(stage, run_id, outputs, metrics, cached is not None, time.perf_counter() - start, registration)


def stage_result(stage: str, run_id: str, outputs: dict[str, str], metrics: dict[str, float], cached: bool,
                 seconds: float, registration: dict | None) -> dict:
    """What run_stage returns (a flow's result: plain values)."""
    return {"stage": stage, "run_id": run_id, "outputs": outputs, "metrics": metrics, "cached": cached,
            "seconds": seconds, "registration": registration}


def stage_result_from_run(stage: str, run) -> dict:
    """run_stage's result, rebuilt from the stage's finished MLflow run (what a worker on another host left)."""
    end = run.info.end_time or run.info.start_time
    registration = run.data.tags.get(TAG_REGISTRATION)
    return stage_result(stage, run.info.run_id, run_outputs(run), dict(run.data.metrics), TAG_CACHE_HIT in run.data.tags,
                        (end - run.info.start_time) / 1000, json.loads(registration) if registration else None)


def _register(client, run_id: str, checkpoint_dir: str, checkpoint_uri: str, spec: RegistrationSpec) -> dict:
    """Log the evaluated checkpoint as a pyfunc model in this run and register it (aliases newest/champion)."""
    from components.tracking.pyfunc import log_pyfunc_model

    earlier = version_of_run(client, spec.name, run_id)  # this run was killed after registering: reuse it
    if earlier is not None:
        model_uri = earlier.source
    else:
        model_uri = log_pyfunc_model(checkpoint_dir, preset=spec.preset, copy_checkpoint=spec.copy).model_uri
    reg = register_model(
        client,
        spec.name,
        model_uri,
        run_id,
        metric=spec.metric,
        greater_is_better=spec.greater_is_better,
        checkpoint_uri=checkpoint_uri,
    )
    return dict(vars(reg))


def flow_run_tag() -> dict[str, str]:
    """{TAG_FLOW_RUN: id} of the Prefect flow run this code runs in; {} outside a flow run."""
    try:
        from prefect.runtime import flow_run

        return {TAG_FLOW_RUN: str(flow_run.id)} if flow_run.id else {}
    except Exception:  # noqa: BLE001 - outside a flow run there is simply no id
        return {}
