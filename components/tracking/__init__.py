"""MLflow helpers: explicit tracking URI, nested stage runs, config logging, outputs as URIs,
the model registry with `latest`/`champion` aliases, and the pyfunc that serves a checkpoint.

MLflow is imported lazily inside the functions, so importing this package is cheap.
"""

from .artifacts import resolve_uri
from .registry import ALIAS_CHAMPION, ALIAS_LATEST, TAG_CHECKPOINT, Registration, is_better, register_model, resolve_alias
from .runs import (
    TAG_CONFIG_HASH,
    TAG_OUTPUT,
    TAG_PARENT,
    TAG_PIPELINE,
    TAG_STAGE,
    child_runs,
    flatten,
    log_config,
    log_metrics,
    log_output,
    run_outputs,
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
    "ALIAS_CHAMPION", "ALIAS_LATEST", "TAG_CHECKPOINT", "TAG_CONFIG_HASH", "TAG_OUTPUT", "TAG_PARENT",
    "TAG_PIPELINE", "TAG_STAGE", "Registration", "TrackingError", "artifact_root_for", "check_tracking_uri",
    "child_runs", "default_tracking_uri", "flatten", "get_or_create_experiment", "git_commit", "is_better",
    "log_config", "log_metrics", "log_output", "register_model", "resolve_alias", "resolve_tracking_uri",
    "resolve_uri", "run_outputs", "stage_run",
]
