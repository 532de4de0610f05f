"""Turn an output URI (runs:/, models:/, mlflow-artifacts:/, file:, or a path) into a local folder."""

from __future__ import annotations

import os
from pathlib import Path

from .store import TrackingError

_MLFLOW_SCHEMES = ("runs:/", "models:/", "mlflow-artifacts:/", "s3://", "gs://", "wasbs://", "dbfs:/")


def resolve_uri(uri: str, tracking_uri: str, what: str = "artifact", dst: str | os.PathLike | None = None) -> Path:
    """Local path of `uri`. Local artifact stores are read in place; remote ones are downloaded to `dst`.

    Raises TrackingError naming `what` and the URI when it does not exist (a missing run, a path
    that is not there, a run without that artifact).
    """
    if not uri or not str(uri).strip():
        raise TrackingError(f"{what} URI is empty")
    uri = str(uri).strip()
    if uri.startswith("file://"):
        uri = uri[len("file://"):]
    if not uri.startswith(_MLFLOW_SCHEMES):
        path = Path(uri).expanduser()
        if not path.exists():
            raise TrackingError(f"{what} not found: {path} does not exist")
        return path.resolve()

    import mlflow
    from mlflow.exceptions import MlflowException

    in_place = _local_run_artifact(uri, tracking_uri, what)
    if in_place is not None:
        return in_place
    try:
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=uri, dst_path=None if dst is None else str(dst), tracking_uri=tracking_uri
        )
    except MlflowException as exc:
        raise TrackingError(f"{what} {uri} cannot be resolved in {tracking_uri}: {exc.message}") from exc
    except OSError as exc:
        raise TrackingError(f"{what} {uri} cannot be read from {tracking_uri}: {exc}") from exc
    path = Path(local)
    if not path.exists():
        raise TrackingError(f"{what} {uri} resolved to {path}, which does not exist")
    return path


def split_runs_uri(uri: str) -> tuple[str, str]:
    """`runs:/<run id>/<artifact path>` -> (run id, artifact path)."""
    run_id, _, sub = uri[len("runs:/"):].partition("/")
    return run_id, sub


def _local_run_artifact(uri: str, tracking_uri: str, what: str) -> Path | None:
    """For `runs:/<id>/<path>` on a local artifact store, the file's own path (no copy); else None."""
    if not uri.startswith("runs:/"):
        return None
    from urllib.parse import unquote, urlparse

    import mlflow
    from mlflow.exceptions import MlflowException

    run_id, sub = split_runs_uri(uri)
    try:
        run = mlflow.MlflowClient(tracking_uri=tracking_uri).get_run(run_id)
    except MlflowException as exc:
        raise TrackingError(f"{what} {uri}: run {run_id!r} not found in {tracking_uri}") from exc
    root = run.info.artifact_uri or ""
    parsed = urlparse(root)
    if parsed.scheme not in ("", "file"):
        return None
    path = Path(unquote(parsed.path)) / sub
    if not path.exists():
        raise TrackingError(f"{what} {uri}: run {run_id} has no artifact {sub!r} (looked in {path})")
    return path.resolve()
