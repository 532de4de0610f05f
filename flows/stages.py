"""One Prefect flow per stage, each a tracked MLflow run that calls ONE component entry function.

A stage flow takes small parameters (its config path, overrides, input URIs, where to track) and:
loads and validates its config with the component's schema, resolves the input URIs to local
folders, opens its MLflow run (nested under the pipeline's run when given), calls the component in a
Prefect task that retries transient failures, logs metrics and outputs, and returns the outputs as
URIs that the next stage (or a later pipeline) starts from.

`draftedit run <stage>` runs one stage on its own, e.g. re-running RL from a given SFT run:
    draftedit run rl --input checkpoint=runs:/<sft_run_id>/checkpoint
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from components.config import ConfigError, load_config, to_container
from components.tracking import (
    TAG_CONFIG_HASH,
    TAG_OUTPUT,
    TAG_PIPELINE,
    TAG_STAGE,
    TrackingError,
    artifact_root_for,
    check_tracking_uri,
    get_or_create_experiment,
    log_metrics,
    log_output,
    register_model,
    resolve_tracking_uri,
    resolve_uri,
    run_outputs,
    stage_run,
)

from .config import STAGE_ORDER, config_hash


@dataclass(frozen=True)
class Component:
    """A stage's config schema and the adapter (in flows.adapters) that calls its component."""

    schema: str  # "module:Class"
    entry: str  # "module:function", called as entry(cfg, out_dir, inputs) -> {"metrics", "<output>_dir"}
    inputs: tuple[str, ...]  # required input names (URIs resolved to local paths)
    optional: tuple[str, ...] = ()
    output: str | None = None  # name of the folder output the entry returns (key `<output>_dir`)


# See flows/adapters.py for the component function each adapter calls.
COMPONENTS: dict[str, Component] = {
    "data_prep": Component("components.data.config:DataConfig", "flows.adapters:prepare", (), ("checkpoint",), "data"),
    "cpt": Component("components.training.config:TrainConfig", "flows.adapters:train", ("data",), ("checkpoint",),
                     "checkpoint"),
    "sft": Component("components.training.config:TrainConfig", "flows.adapters:train", ("data",), ("checkpoint",),
                     "checkpoint"),
    "rl": Component("components.rl.config:RLConfig", "flows.adapters:reinforce", ("checkpoint",), ("data",),
                    "checkpoint"),
    "quantize": Component("components.quantize.config:QuantizeConfig", "flows.adapters:quantize", ("checkpoint",), (),
                          "checkpoint"),
    "benchmark": Component("components.bench.config:BenchConfig", "flows.adapters:benchmark", ("checkpoint",)),
    "evaluate": Component("components.evaluate.config:EvalConfig", "flows.adapters:evaluate", ("checkpoint",)),
}


class StageError(RuntimeError):
    """A stage cannot start (missing component, missing input) or its component broke its contract."""


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


def _import(ref: str, stage: str):
    module_name, _, attr = ref.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise StageError(f"stage {stage!r} needs {ref}, but module {module_name} is not installed") from exc
        raise
    try:
        return getattr(module, attr)
    except AttributeError:
        raise StageError(f"stage {stage!r} needs {ref}, but {module_name} has no {attr!r}") from None


def load_stage_config(stage: str, config_path: str | os.PathLike, overrides: list[str] | None = None):
    """The stage's config as its component's dataclass; errors name the stage and the key."""
    schema = _import(COMPONENTS[stage].schema, stage)
    try:
        return load_config(schema, config_path, overrides or [])
    except (ConfigError, ValueError, TypeError) as exc:
        raise ConfigError(f"stage {stage}: {exc}") from exc


@task(name="component", cache_policy=NO_CACHE)
def call_component(stage: str, cfg: Any, inputs: dict[str, str], out_dir: str) -> dict:
    """Call the stage's entry function (the only place a component runs)."""
    entry = _import(COMPONENTS[stage].entry, stage)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result = entry(cfg, out, {k: Path(v) for k, v in inputs.items()})
    return _check_result(stage, result)


def _check_result(stage: str, result: Any) -> dict:
    if not isinstance(result, dict):
        raise StageError(f"stage {stage}: {COMPONENTS[stage].entry} returned {type(result).__name__}, expected a dict")
    metrics = result.get("metrics", {})
    if not isinstance(metrics, dict):
        raise StageError(f"stage {stage}: result['metrics'] must be a dict, got {type(metrics).__name__}")
    output = COMPONENTS[stage].output
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
    return client, experiment_id


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
    """Latest finished data_prep run with this config hash whose data folder still exists."""
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
        if uri and Path(uri).is_dir():
            return run
    return None


def run_stage(
    stage: str,
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
    """Body shared by the stage flows. Returns {stage, run_id, outputs, metrics, cached, seconds}."""
    if stage not in COMPONENTS:
        raise StageError(f"unknown stage {stage!r}; stages are {', '.join(STAGE_ORDER)}")
    spec = COMPONENTS[stage]
    inputs = dict(inputs or {})
    unknown = sorted(set(inputs) - set(spec.inputs) - set(spec.optional))
    if unknown:
        raise StageError(f"stage {stage}: unknown inputs {unknown}; it takes {list(spec.inputs + spec.optional)}")
    if registry and stage != "evaluate":
        raise StageError(f"stage {stage}: only the evaluate stage registers models")
    missing = [name for name in spec.inputs if not inputs.get(name)]
    if missing:
        raise StageError(f"stage {stage}: missing input(s) {missing} (give them as URIs, e.g. runs:/<id>/{missing[0]})")

    # Everything that can be checked is checked before any work: config, tracking store, inputs.
    cfg = load_stage_config(stage, config_path, overrides)
    probe_cfg = load_stage_config("evaluate", probe_config, probe_overrides) if probe_config else None
    output_dir_abs = Path(output_dir).resolve()
    tracking_uri = resolve_tracking_uri(tracking_uri, output_dir_abs)
    client, experiment_id = tracking_client(tracking_uri, experiment, str(output_dir_abs))
    local_inputs = {
        name: str(resolve_uri(uri, tracking_uri, what=f"stage {stage} input {name!r}"))
        for name, uri in inputs.items()
        if uri
    }
    digest = config_hash({"config": to_container(cfg), "inputs": inputs})
    tags = {TAG_CONFIG_HASH: digest}
    if pipeline:
        tags[TAG_PIPELINE] = pipeline
    tags.update({f"draftedit.input.{k}": v for k, v in inputs.items() if v})
    tags.update(extra_tags or {})
    flow_run_id = _prefect_flow_run_id()
    if flow_run_id:
        tags["prefect.flow_run_id"] = flow_run_id

    cached = _cached_data_run(client, experiment_id, digest) if stage == "data_prep" else None
    start = time.perf_counter()
    with stage_run(client, experiment_id, stage, parent_run_id=parent_run_id, config=cfg, tags=tags) as run:
        run_id = run.info.run_id
        outputs: dict[str, str] = {}
        metrics: dict[str, float] = {}
        registration: dict | None = None
        if cached is not None:
            outputs["data"] = run_outputs(cached)["data"]
            client.set_tag(run_id, "draftedit.cache_hit", cached.info.run_id)
            client.set_tag(run_id, TAG_OUTPUT + "data", outputs["data"])
            metrics = log_metrics(client, run_id, cached.data.metrics)
        else:
            out_dir = output_dir_abs / "stages" / stage / run_id
            component = call_component.with_options(
                name=f"{stage}-component",
                retries=retries,
                retry_delay_seconds=retry_delay_seconds,
                retry_condition_fn=_retry_condition,
            )
            result = component(stage, cfg, local_inputs, str(out_dir))
            metrics = log_metrics(client, run_id, result.get("metrics", {}), step=result.get("step"))
            metrics.update(result.get("logged_metrics", {}))
            skip: list[Path] = []
            if spec.output == "data":
                # Prepared data stay in place (the cache); the run records their path.
                data_dir = Path(result["data_dir"]).resolve()
                outputs["data"] = log_output(client, run_id, "data", data_dir, copy=False)
                skip.append(data_dir)
            elif spec.output == "checkpoint":
                ckpt = Path(result["checkpoint_dir"]).resolve()
                outputs["checkpoint"] = log_output(client, run_id, "checkpoint", ckpt, copy=log_checkpoints)
                skip.append(ckpt)
                if probe_cfg is not None:
                    probe = call_component.with_options(name=f"{stage}-probe")(
                        "evaluate", probe_cfg, {"checkpoint": str(ckpt)}, str(out_dir / "probe")
                    )
                    probe_metrics = probe.get("metrics", {})
                    metrics.update(log_metrics(client, run_id, {**probe_metrics, **summarize_eval(probe_metrics)}))
            if not result.get("artifacts_logged"):
                _log_results(client, run_id, out_dir, skip)
            if stage == "evaluate":  # suite aggregates, when the component did not give them
                aggregates = {k: v for k, v in summarize_eval(metrics).items() if k not in metrics}
                metrics.update(log_metrics(client, run_id, aggregates))
            if registry:
                registration = _register(client, run_id, local_inputs["checkpoint"], inputs["checkpoint"], registry)
                client.set_tag(run_id, "draftedit.registered_version", registration["version"])
                outputs["model"] = f"models:/{registration['name']}/{registration['version']}"
    seconds = time.perf_counter() - start
    return {
        "stage": stage,
        "run_id": run_id,
        "outputs": outputs,
        "metrics": metrics,
        "cached": cached is not None,
        "seconds": seconds,
        "registration": registration,
    }


def summarize_eval(metrics: dict[str, float]) -> dict[str, float]:
    """`eval/score`, `eval/tpf`, `eval/tps`: the evaluation's aggregates, or the mean over its tasks.

    Per-task metrics are `eval/<task>/<name>`; the score of a task is its `score`, `accuracy` or
    `pass@1` (first found).
    """
    out: dict[str, float] = {}
    per_task: dict[str, dict[str, float]] = {}
    for key, value in metrics.items():
        parts = key.split("/")
        if len(parts) == 3 and parts[0] == "eval":
            per_task.setdefault(parts[1], {})[parts[2]] = value
    for name, candidates in (("score", ("score", "accuracy", "pass@1")), ("tpf", ("tpf",)), ("tps", ("tps",))):
        key = f"eval/{name}"
        if key in metrics:
            out[key] = metrics[key]
            continue
        values = []
        for task_metrics in per_task.values():
            found = next((task_metrics[c] for c in candidates if c in task_metrics), None)
            if found is not None:
                values.append(found)
        if values:
            out[key] = sum(values) / len(values)
    return out


def _register(client, run_id: str, checkpoint_dir: str, checkpoint_uri: str, spec: dict) -> dict:
    """Log the evaluated checkpoint as a pyfunc model in this run and register it (aliases newest/champion).

    spec: {name, metric, greater_is_better, preset, copy} (see PipelineConfig.tracking)."""
    from components.tracking.pyfunc import log_pyfunc_model

    info = log_pyfunc_model(
        checkpoint_dir, preset=spec.get("preset", "quality"), copy_checkpoint=spec.get("copy", True)
    )
    reg = register_model(
        client,
        spec["name"],
        info.model_uri,
        run_id,
        metric=spec.get("metric", "eval/score"),
        greater_is_better=spec.get("greater_is_better", True),
        checkpoint_uri=checkpoint_uri,
    )
    return dict(vars(reg))


def _prefect_flow_run_id() -> str | None:
    try:
        from prefect.runtime import flow_run

        return str(flow_run.id) if flow_run.id else None
    except Exception:  # noqa: BLE001 - outside a flow run there is simply no id
        return None


# One Prefect flow per stage. They share run_stage; separate flows give separate names, retries
# and histories in the Prefect UI, and let a deployment target any single stage.
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
            stage, config_path, overrides, inputs, output_dir, tracking_uri, experiment, parent_run_id,
            pipeline, retries, retry_delay_seconds, probe_config, probe_overrides, registry, log_checkpoints,
            extra_tags,
        )

    stage_flow.__doc__ = f"Tracked `{stage}` stage (see flows.stages.run_stage)."
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


# ---------------------------------------------------------------- `draftedit run <stage>`
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("stage", choices=STAGE_ORDER, help="the stage to run")
    parser.add_argument("overrides", nargs="*", help="overrides of the stage config, key.sub=value")
    parser.add_argument("--preset", default="tiny", help="pipeline preset (or YAML) giving the stage config")
    parser.add_argument("--config", help="stage config YAML (default: the preset's config for this stage)")
    parser.add_argument(
        "--input", action="append", default=[], metavar="NAME=URI",
        help="an input as a URI, e.g. checkpoint=runs:/<run_id>/checkpoint or data=/path (repeatable)",
    )
    parser.add_argument(
        "--from-run", metavar="RUN_ID", help="take every input from the outputs of this earlier MLflow run"
    )
    parser.add_argument("--register", action="store_true", help="evaluate: register the evaluated model")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override of the pipeline preset (e.g. tracking.uri=...)")


def run(args: argparse.Namespace) -> int:
    from .config import load_pipeline_config, stage_config_path

    pcfg = load_pipeline_config(args.preset, args.set)
    stage_cfg = pcfg.stage(args.stage)
    config_path = args.config or (str(stage_config_path(stage_cfg)) if stage_cfg.config else None)
    if not config_path:
        raise ConfigError(f"no config for stage {args.stage}: give --config or set stages.{args.stage}.config")
    output_dir = str(Path(pcfg.output_dir).resolve())
    tracking_uri = resolve_tracking_uri(pcfg.tracking.uri, output_dir)
    inputs: dict[str, str] = {}
    if args.from_run:
        client, _ = tracking_client(tracking_uri, pcfg.tracking.experiment, output_dir)
        try:
            source = client.get_run(args.from_run)
        except Exception as exc:  # MlflowException: RESOURCE_DOES_NOT_EXIST
            raise TrackingError(f"--from-run {args.from_run}: no such run in {tracking_uri}") from exc
        outputs = run_outputs(source)
        if not outputs:
            raise TrackingError(f"--from-run {args.from_run}: that run recorded no outputs")
        spec = COMPONENTS[args.stage]
        inputs.update({k: v for k, v in outputs.items() if k in spec.inputs + spec.optional})
    for item in args.input:
        name, sep, uri = item.partition("=")
        if not sep or not name or not uri:
            raise StageError(f"--input must look like NAME=URI, got {item!r}")
        inputs[name] = uri
    registry = None
    if args.register:
        if args.stage != "evaluate":
            raise StageError("--register applies to the evaluate stage only")
        registry = {
            "name": pcfg.tracking.registered_model,
            "metric": pcfg.tracking.champion_metric,
            "greater_is_better": pcfg.tracking.greater_is_better,
            "preset": pcfg.serve_preset,
            "copy": pcfg.tracking.log_checkpoints,
        }
    result = STAGE_FLOWS[args.stage](
        config_path=config_path,
        overrides=list(stage_cfg.overrides) + list(args.overrides),
        inputs=inputs,
        output_dir=output_dir,
        tracking_uri=tracking_uri,
        experiment=pcfg.tracking.experiment,
        retries=pcfg.retries,
        retry_delay_seconds=pcfg.retry_delay_seconds,
        registry=registry,
        log_checkpoints=pcfg.tracking.log_checkpoints,
    )
    print(f"{args.stage}: run {result['run_id']} ({result['seconds']:.1f} s)")
    for name, uri in result["outputs"].items():
        print(f"  output {name}: {uri}")
    for key, value in sorted(result["metrics"].items()):
        print(f"  {key} = {value:.4g}")
    return 0
