"""Stage runs: one MLflow run per stage, nested under the pipeline's parent run.

Each run records the resolved config (flattened params + `config.yaml`), the git commit, its stage,
metrics with stable names, and its outputs as artifacts whose URIs are kept as `draftedit.output.*`
tags, so a later stage (or a later pipeline) can start from them.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from components.config import to_container, to_yaml

from .liveness import TAG_FAILURE, TAG_INTERRUPTED, TAG_RESUMED, Heartbeat, owner_tags, reopen_run
from .store import git_commit

TAG_STAGE = "draftedit.stage"
TAG_PIPELINE = "draftedit.pipeline"
TAG_CONFIG_HASH = "draftedit.config_hash"
TAG_OUTPUT = "draftedit.output."  # + output name -> URI
TAG_GIT = "mlflow.source.git.commit"
TAG_PARENT = "mlflow.parentRunId"
TAG_INPUT = "draftedit.input."  # + input name -> the URI a stage started from
TAG_FLOW_RUN = "prefect.flow_run_id"  # the Prefect flow run that opened a pipeline or stage run
TAG_CACHE_HIT = "draftedit.cache_hit"  # a data_prep run that reused this earlier run's data
TAG_FOLDER = "draftedit.folder"  # where a stage's files are on its host, for a person
TAG_REGISTRATION = "draftedit.registration"  # evaluate's Registration as JSON: a pipeline on another host reads it
TAG_REGISTERED_VERSION = "draftedit.registered_version"
TAG_RESUMED_AT = "draftedit.resumed"  # epoch seconds a pipeline run was last resumed
TAG_FAILED_STAGE = "draftedit.failed_stage"  # the stage a pipeline run failed in ("" once it finished)

_MAX_PARAM_VALUE = 6000  # MLflow's limit on a param value
_BATCH = 100  # MLflow's limit on params per log_batch


def flatten(cfg: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """`{"a": {"b": 1}}` -> `{"a.b": "1"}`; lists stay one value (their repr)."""
    out: dict[str, str] = {}
    for key, value in cfg.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, prefix=f"{name}."))
        else:
            text = "null" if value is None else str(value)
            out[name] = text if len(text) <= _MAX_PARAM_VALUE else text[: _MAX_PARAM_VALUE - 3] + "..."
    return out


def log_config(client, run_id: str, cfg: Any, prefix: str = "", artifact_name: str = "config.yaml") -> None:
    """The resolved config as params (flattened) and as a YAML artifact (params truncate; YAML does not)."""
    from mlflow.entities import Param

    params = flatten(to_container(cfg), prefix=prefix)
    items = [Param(k[:250], v) for k, v in params.items()]
    for i in range(0, len(items), _BATCH):
        client.log_batch(run_id, params=items[i : i + _BATCH])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / artifact_name
        path.write_text(to_yaml(cfg))
        client.log_artifact(run_id, str(path))


def metric_name(key: str) -> str:
    """`key` as an MLflow metric name, which may hold only letters, digits and `_-. :/`: the field's
    `pass@1` becomes `pass_at_1`, a config path's `external[0]` becomes `external.0`, anything else
    MLflow refuses becomes `_`."""
    key = re.sub(r"\[(\d+)\]", r".\1", key.replace("@", "_at_"))
    return re.sub(r"[^\w\-. :/]", "_", key)


def log_metrics(client, run_id: str, metrics: Mapping[str, Any], step: int | None = None,
                skip: Mapping[str, int] | None = None) -> dict[str, float]:
    """Log the finite numeric entries of `metrics` under their MLflow names (`metric_name`); return them.

    `skip` (metric -> highest step already logged, see `logged_steps`) leaves out the entries the run
    already holds at this step or later, so a final summary never duplicates a point of a curve.
    """
    from mlflow.entities import Metric
    import time

    now = int(time.time() * 1000)
    logged = {}
    for key, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        value = float(value)
        if math.isfinite(value):
            logged[metric_name(key)] = value
    items = [Metric(k, v, now, step or 0) for k, v in logged.items() if (step or 0) > (skip or {}).get(k, -1)]
    for i in range(0, len(items), _BATCH):
        client.log_batch(run_id, metrics=items[i : i + _BATCH])
    return logged


def log_output(client, run_id: str, name: str, local_path: str | os.PathLike, copy: bool = True) -> str:
    """Record an output of the run and return its URI.

    With `copy`, the files become run artifacts under `name/` and the URI is `runs:/<id>/<name>`;
    without (checkpoints too big to duplicate), the URI is the absolute local path.
    """
    local_path = Path(local_path)
    if not local_path.exists():
        raise FileNotFoundError(f"stage output {name!r} does not exist: {local_path}")
    if copy:
        if local_path.is_dir():
            client.log_artifacts(run_id, str(local_path), artifact_path=name)
        else:
            client.log_artifact(run_id, str(local_path), artifact_path=name)
        uri = f"runs:/{run_id}/{name}"
    else:
        uri = str(local_path.resolve())
    client.set_tag(run_id, TAG_OUTPUT + name, uri)
    return uri


def run_outputs(run) -> dict[str, str]:
    """Output name -> URI recorded on a run."""
    return {k[len(TAG_OUTPUT):]: v for k, v in run.data.tags.items() if k.startswith(TAG_OUTPUT)}


@contextlib.contextmanager
def stage_run(
    client,
    experiment_id: str,
    stage: str,
    run_name: str | None = None,
    parent_run_id: str | None = None,
    config: Any = None,
    tags: Mapping[str, str] | None = None,
    resume_run_id: str | None = None,
) -> Iterator[Any]:
    """Create a run (nested when `parent_run_id`) or reopen the interrupted run `resume_run_id`, make it
    the active fluent run, and end it FINISHED, FAILED (an error) or KILLED (interrupted).

    Being the active run lets components log step metrics with plain `mlflow.log_metric`. The run
    records its owner process and a heartbeat (components.tracking.liveness), so a run whose process
    is killed is found and marked FAILED later instead of staying RUNNING. A reopened run keeps its
    id, params and metric history; its config is not logged again (same config hash, same config).
    """
    import mlflow

    if resume_run_id:
        reopen_run(client, resume_run_id)
        for key, value in (tags or {}).items():  # e.g. the new Prefect flow run's id
            client.set_tag(resume_run_id, key, value)
        run = client.get_run(resume_run_id)
    else:
        run_tags = {TAG_STAGE: stage, TAG_GIT: git_commit(), **owner_tags(), **(tags or {})}
        if parent_run_id:
            run_tags[TAG_PARENT] = parent_run_id
        run = client.create_run(experiment_id, run_name=run_name or stage, tags=run_tags)
    run_id = run.info.run_id
    if config is not None and not resume_run_id:
        log_config(client, run_id, config)
    # The fluent API's tracking URI must be the client's so that components log to this store.
    previous_uri = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(client.tracking_uri)
    active = mlflow.start_run(run_id=run_id, nested=mlflow.active_run() is not None)
    try:
        with Heartbeat(client, run_id):
            yield run
    except (KeyboardInterrupt, SystemExit) as exc:
        _record_failure(client, run_id, f"interrupted: {type(exc).__name__} {exc}".strip(), interrupted=True)
        mlflow.end_run(status="KILLED")
        raise
    except BaseException as exc:
        _record_failure(client, run_id, f"{type(exc).__name__}: {exc}", interrupted=False)
        mlflow.end_run(status="FAILED")
        raise
    else:
        mlflow.end_run(status="FINISHED")
    finally:
        del active
        mlflow.set_tracking_uri(previous_uri)


def _record_failure(client, run_id: str, reason: str, interrupted: bool) -> None:
    """The cause as the run's `draftedit.failure` tag (first line, within MLflow's tag limit)."""
    line = (reason.strip().splitlines() or [reason])[0]
    try:
        client.set_tag(run_id, TAG_FAILURE, line[:4000])
        client.set_tag(run_id, TAG_INTERRUPTED, "true" if interrupted else "false")
    except Exception:  # noqa: BLE001 - the original error matters more than a failed tag
        pass


def logged_steps(client, run_id: str) -> dict[str, int]:
    """Metric name -> the highest step already logged in the run (what a continued run must not log again)."""
    run = client.get_run(run_id)
    return {key: max(m.step for m in client.get_metric_history(run_id, key)) for key in run.data.metrics}


def continuing_mlflow_logger(tracking_uri: str, run_id: str):
    """stage_mlflow_logger on `run_id`; a continued (reopened) run already holds the steps replayed
    since its last checkpoint, so those are skipped."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    skip = logged_steps(client, run_id) if TAG_RESUMED in client.get_run(run_id).data.tags else None
    return stage_mlflow_logger(tracking_uri, run_id, skip)


def stage_mlflow_logger(tracking_uri: str, run_id: str, skip: Mapping[str, int] | None = None):
    """A Lightning MLflow logger on the stage's run `run_id` that leaves the run's status to the stage
    and drops (metric, step) pairs the run already holds.

    Lightning's logger ends the run FINISHED when fit ends, while the stage still logs its outputs,
    probes and registers: a kill then would leave a FINISHED run without outputs. And a run continued
    from its last checkpoint replays the steps between that checkpoint and the kill; resume is exact,
    so those values are already in the history, and logging them again would duplicate points.
    """
    from lightning.pytorch.loggers import MLFlowLogger

    skip = dict(skip or {})

    class StageMLFlowLogger(MLFlowLogger):
        def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
            if skip and step is not None:
                metrics = {k: v for k, v in metrics.items() if step > skip.get(k, -1)}
                if not metrics:
                    return
            super().log_metrics(metrics, step)

        def finalize(self, status: str = "success") -> None:
            pass  # components.tracking.runs.stage_run ends the run, with the stage's status

    return StageMLFlowLogger(tracking_uri=tracking_uri, run_id=run_id)


def child_runs(client, parent_run_id: str) -> list:
    """Runs nested under `parent_run_id`, oldest first."""
    parent = client.get_run(parent_run_id)
    return list(
        reversed(
            client.search_runs(
                [parent.info.experiment_id],
                filter_string=f"tags.`{TAG_PARENT}` = '{parent_run_id}'",
                order_by=["attributes.start_time DESC"],
                max_results=1000,
            )
        )
    )
