"""Model registry: every model becomes a version (alias newest); champion moves only on a better score."""

from __future__ import annotations

import mlflow
import pytest

from components.tracking import (
    ALIAS_CHAMPION,
    ALIAS_LATEST,
    TAG_CHECKPOINT,
    TrackingError,
    get_or_create_experiment,
    is_better,
    register_model,
    resolve_alias,
)


@pytest.fixture
def client(mlflow_uri, tmp_path):
    c = mlflow.MlflowClient(tracking_uri=mlflow_uri, registry_uri=mlflow_uri)
    c.experiment_id = get_or_create_experiment(c, "reg", (tmp_path / "artifacts").as_uri())
    return c


def scored_run(client, score: float | None, metric: str = "eval/score") -> str:
    run = client.create_run(client.experiment_id)
    if score is not None:
        client.log_metric(run.info.run_id, metric, score)
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def register(client, run_id, **kw):
    return register_model(client, "m", f"runs:/{run_id}/model", run_id, metric="eval/score",
                          checkpoint_uri=f"runs:/{run_id}/checkpoint", **kw)


def test_champion_moves_only_when_beaten(client):
    first = register(client, scored_run(client, 0.5))
    assert (first.version, first.champion, first.previous_champion) == ("1", True, None)

    worse = register(client, scored_run(client, 0.4))
    assert not worse.champion and worse.previous_champion == "1" and worse.previous_score == 0.5
    assert str(client.get_model_version_by_alias("m", ALIAS_CHAMPION).version) == "1"
    assert str(client.get_model_version_by_alias("m", ALIAS_LATEST).version) == "2"

    tie = register(client, scored_run(client, 0.5))
    assert not tie.champion  # a tie keeps the current champion

    better = register(client, scored_run(client, 0.75))
    assert better.champion and better.previous_champion == "1"
    champion = resolve_alias(client, "m")
    assert str(champion.version) == "4"
    assert champion.tags[TAG_CHECKPOINT] == f"runs:/{champion.run_id}/checkpoint"
    assert client.get_model_version("m", "4").tags["draftedit.score"] == "0.75"
    # MLflow's own models:/<name>/latest (why `latest` is a reserved alias name) is the newest version.
    from mlflow.store.artifact.utils.models import get_model_name_and_version

    assert get_model_name_and_version(client, "models:/m/latest") == ("m", "4")


def test_lower_is_better_metrics(client):
    register(client, scored_run(client, 2.0), greater_is_better=False)
    assert register(client, scored_run(client, 1.0), greater_is_better=False).champion
    assert not register(client, scored_run(client, 1.5), greater_is_better=False).champion


def test_missing_metric_is_an_error_naming_what_exists(client):
    run_id = scored_run(client, None)
    client.log_metric(run_id, "eval/tpf", 2.0)
    with pytest.raises(TrackingError, match=r"no metric 'eval/score'.*eval/tpf"):
        register(client, run_id)


def test_no_champion_yet_is_a_clear_error(client):
    with pytest.raises(TrackingError, match="no version with alias 'champion'"):
        resolve_alias(client, "never-registered")


@pytest.mark.parametrize("score,than,gib,expected", [
    (1.0, None, True, True), (1.0, 0.5, True, True), (0.5, 0.5, True, False), (0.4, 0.5, False, True),
])
def test_is_better(score, than, gib, expected):
    assert is_better(score, than, gib) is expected
