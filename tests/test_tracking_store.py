"""Tracking store: explicit URIs, fast failure on an unreachable server, git commit, config flattening."""

from __future__ import annotations

import socket
import subprocess

import pytest

from components.tracking import (
    TrackingError,
    artifact_root_for,
    check_tracking_uri,
    default_tracking_uri,
    flatten,
    git_commit,
    resolve_tracking_uri,
)


def test_default_uri_is_sqlite_under_the_output_dir(tmp_path):
    uri = resolve_tracking_uri(None, tmp_path / "out")
    assert uri == f"sqlite:///{(tmp_path / 'out').resolve()}/mlflow.db"
    assert resolve_tracking_uri("", tmp_path) == default_tracking_uri(tmp_path)
    assert resolve_tracking_uri("http://mlflow:5000", tmp_path) == "http://mlflow:5000"
    assert artifact_root_for(uri, tmp_path) == (tmp_path / "out" / "mlartifacts").resolve().as_uri()
    assert artifact_root_for("http://mlflow:5000", tmp_path) is None


@pytest.mark.parametrize("bad", ["mlruns", "./outputs/mlflow.db", "ftp://host/x"])
def test_a_path_is_not_a_tracking_uri(tmp_path, bad):
    with pytest.raises(TrackingError, match="not a tracking URI"):
        resolve_tracking_uri(bad, tmp_path)


def test_unreachable_server_fails_fast_with_a_fix():
    # A port held by this test but not listening: connecting is refused at once, and no other process
    # (a second copy of the suite, a server another test starts) can take it meanwhile.
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        uri = f"http://127.0.0.1:{held.getsockname()[1]}"
        with pytest.raises(TrackingError) as info:
            check_tracking_uri(uri, timeout=3)
    message = str(info.value)
    assert uri in message and "unreachable" in message and "tracking.uri" in message


def test_sqlite_store_folder_is_created(tmp_path):
    db = tmp_path / "deep" / "er" / "mlflow.db"
    check_tracking_uri(f"sqlite:///{db}")
    assert db.parent.is_dir()


def test_sqlite_store_in_an_unwritable_place_is_reported(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(TrackingError, match="cannot create the folder"):
        check_tracking_uri(f"sqlite:///{blocker}/sub/mlflow.db")


def test_git_commit(tmp_path):
    assert git_commit(tmp_path) == "unknown"  # not a repository
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    assert git_commit(tmp_path) == "unknown"  # no commit yet
    (tmp_path / "a.txt").write_text("1")
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t",
           "PATH": "/usr/bin:/bin"}
    subprocess.run(["git", "add", "a.txt"], cwd=tmp_path, check=True)
    subprocess.run(["git", "commit", "-qm", "x"], cwd=tmp_path, check=True, env=env)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True).stdout.strip()
    assert git_commit(tmp_path) == head
    (tmp_path / "a.txt").write_text("2")
    assert git_commit(tmp_path) == head + "-dirty"


def test_flatten_nested_config():
    flat = flatten({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": None, "f": "x" * 7000, "g": {}})
    assert flat["a.b"] == "1"
    assert flat["a.c.d"] == "[1, 2]"
    assert flat["e"] == "null"
    assert len(flat["f"]) == 6000 and flat["f"].endswith("...")
    assert flat["g"] == "{}"


def test_experiments_open_on_their_training_runs(mlflow_uri):
    """New and earlier experiments are tagged so MLflow's UI shows the runs table, not the GenAI overview;
    a kind someone chose stays."""
    from mlflow import MlflowClient

    from components.tracking import get_or_create_experiment
    from components.tracking.store import EXPERIMENT_KIND_TRAINING, TAG_EXPERIMENT_KIND

    client = MlflowClient(tracking_uri=mlflow_uri)
    new = get_or_create_experiment(client, "fresh")
    assert client.get_experiment(new).tags[TAG_EXPERIMENT_KIND] == EXPERIMENT_KIND_TRAINING
    earlier = client.create_experiment("earlier")
    assert get_or_create_experiment(client, "earlier") == earlier
    assert client.get_experiment(earlier).tags[TAG_EXPERIMENT_KIND] == EXPERIMENT_KIND_TRAINING
    chosen = client.create_experiment("chosen", tags={TAG_EXPERIMENT_KIND: "genai_development"})
    get_or_create_experiment(client, "chosen")
    assert client.get_experiment(chosen).tags[TAG_EXPERIMENT_KIND] == "genai_development"
