"""MLflow helpers: explicit tracking URI, nested stage runs, config logging, outputs as URIs,
the model registry with `latest`/`champion` aliases, the pyfunc that serves a checkpoint, and the
liveness of RUNNING runs (runs of killed processes are marked FAILED and can be continued).

MLflow is imported lazily inside the functions, so importing this package is cheap.
"""

from .artifacts import resolve_uri
from .links import compare_url, runs_url
from .liveness import (
    TAG_FAILURE,
    TAG_HEARTBEAT,
    TAG_INTERRUPTED,
    Heartbeat,
    find_interrupted,
    mark_interrupted,
    owner_tags,
    reopen_run,
    sweep_dead_runs,
)
from .registry import (
    ALIAS_CHAMPION, ALIAS_LATEST, TAG_CHECKPOINT, Registration, is_better, register_model, resolve_alias, version_of_run,
)
from .runs import (
    TAG_CACHE_HIT,
    TAG_CONFIG_HASH,
    TAG_FAILED_STAGE,
    TAG_FLOW_RUN,
    TAG_FOLDER,
    TAG_GIT,
    TAG_INPUT,
    TAG_OUTPUT,
    TAG_PARENT,
    TAG_PIPELINE,
    TAG_REGISTERED_VERSION,
    TAG_REGISTRATION,
    TAG_RESUMED_AT,
    TAG_STAGE,
    child_runs,
    flatten,
    log_config,
    log_metrics,
    log_output,
    logged_steps,
    run_outputs,
    stage_mlflow_logger,
    stage_run,
)
from .store import (
    TrackingError,
    artifact_root_for,
    check_tracking_uri,
    default_tracking_uri,
    get_or_create_experiment,
    git_commit,
    resolve_tracking_uri,
)

__all__ = [
    "ALIAS_CHAMPION", "ALIAS_LATEST", "TAG_CACHE_HIT", "TAG_CHECKPOINT", "TAG_CONFIG_HASH", "TAG_FAILED_STAGE",
    "TAG_FAILURE", "TAG_FLOW_RUN", "TAG_FOLDER", "TAG_GIT", "TAG_HEARTBEAT", "TAG_INPUT", "TAG_INTERRUPTED", "TAG_OUTPUT",
    "TAG_PARENT", "TAG_PIPELINE", "TAG_REGISTERED_VERSION", "TAG_REGISTRATION", "TAG_RESUMED_AT", "TAG_STAGE", "Heartbeat", "Registration",
    "TrackingError", "artifact_root_for", "check_tracking_uri", "child_runs", "compare_url", "default_tracking_uri",
    "find_interrupted", "flatten", "get_or_create_experiment", "git_commit", "is_better", "log_config", "log_metrics",
    "log_output", "logged_steps", "mark_interrupted", "owner_tags", "register_model", "reopen_run", "resolve_alias",
    "resolve_tracking_uri", "resolve_uri", "run_outputs", "runs_url", "stage_mlflow_logger", "stage_run", "sweep_dead_runs",
    "version_of_run",
]
