"""Where runs are tracked: the tracking URI, its reachability, the experiment, the git commit.

The URI is always explicit. By default a local SQLite store under the output directory (the plain
`./mlruns` file store is deprecated); a team server is configured by URI. An unreachable server
fails fast with a message that says how to fix it, before any stage starts working.
"""

from __future__ import annotations

import os
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

DEFAULT_DB_NAME = "mlflow.db"
DEFAULT_ARTIFACTS_DIR = "mlartifacts"


class TrackingError(RuntimeError):
    """The tracking backend cannot be used (unreachable server, bad URI, missing run or model)."""


def default_tracking_uri(output_dir: str | os.PathLike) -> str:
    """`sqlite:///<abs output_dir>/mlflow.db`."""
    return f"sqlite:///{Path(output_dir).resolve() / DEFAULT_DB_NAME}"


def resolve_tracking_uri(uri: str | None, output_dir: str | os.PathLike) -> str:
    """The configured URI, or the local SQLite default when none is set.

    A bare filesystem path is refused: MLflow's file store is deprecated, and a typo should not
    silently create a second store.
    """
    if uri is None or str(uri).strip() == "":
        return default_tracking_uri(output_dir)
    uri = str(uri).strip()
    scheme = uri.split(":", 1)[0] if ":" in uri else ""
    if scheme not in {"sqlite", "http", "https", "postgresql", "mysql", "mssql", "databricks", "file"}:
        raise TrackingError(
            f"tracking.uri={uri!r} is not a tracking URI; expected sqlite:///path/to/mlflow.db, "
            f"http(s)://host:port, or a database URI (postgresql://...)"
        )
    return uri


def check_tracking_uri(uri: str, timeout: float = 5.0) -> None:
    """Fail fast when the store cannot be reached.

    For a server: GET <uri>/health. For SQLite: the database's folder must exist or be creatable.
    """
    if uri.startswith(("http://", "https://")):
        url = uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 (http only)
                if resp.status >= 400:
                    raise TrackingError(f"MLflow tracking server {uri} answered HTTP {resp.status} on /health")
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            reason = getattr(exc, "reason", exc)
            raise TrackingError(
                f"MLflow tracking server {uri} is unreachable ({reason}). Start it "
                f"(`mlflow server --host 0.0.0.0 --port 5000 ...`), fix tracking.uri, or leave "
                f"tracking.uri unset to use the local SQLite store."
            ) from exc
    elif uri.startswith("sqlite:///"):
        db_path = Path(uri[len("sqlite:///"):])
        try:
            db_path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise TrackingError(f"cannot create the folder of the tracking database {db_path}: {exc}") from exc


def artifact_root_for(uri: str, output_dir: str | os.PathLike) -> str | None:
    """Where a new experiment stores artifacts: beside the SQLite DB locally, the server's default otherwise."""
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///"):]).parent / DEFAULT_ARTIFACTS_DIR).resolve().as_uri()
    return None


# The kind MLflow records for an experiment: ours hold training runs, not GenAI traces. The UI still
# starts in GenAI mode whatever the tag says, so the links we print also ask for the training view
# (components/tracking/links.py).
TAG_EXPERIMENT_KIND = "mlflow.experimentKind"
EXPERIMENT_KIND_TRAINING = "custom_model_development"


def get_or_create_experiment(client, name: str, artifact_location: str | None = None) -> str:
    """Experiment id of `name`, creating it (restoring it if deleted), marked as holding training runs
    unless someone already chose its kind."""
    exp = client.get_experiment_by_name(name)
    if exp is None:
        return client.create_experiment(name, artifact_location=artifact_location,
                                        tags={TAG_EXPERIMENT_KIND: EXPERIMENT_KIND_TRAINING})
    if exp.lifecycle_stage == "deleted":
        client.restore_experiment(exp.experiment_id)
    if TAG_EXPERIMENT_KIND not in exp.tags:
        client.set_experiment_tag(exp.experiment_id, TAG_EXPERIMENT_KIND, EXPERIMENT_KIND_TRAINING)
    return exp.experiment_id


def git_commit(repo_dir: str | os.PathLike | None = None) -> str:
    """HEAD commit of the source tree (suffixed `-dirty` with uncommitted changes), or `unknown`."""
    repo_dir = Path(repo_dir) if repo_dir else Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo_dir, capture_output=True, text=True, timeout=10
        )
        if head.returncode != 0:
            return "unknown"
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=repo_dir, capture_output=True, text=True, timeout=10,
        )
        suffix = "-dirty" if dirty.returncode == 0 and dirty.stdout.strip() else ""
        return head.stdout.strip() + suffix
    except (OSError, subprocess.SubprocessError):
        return "unknown"
