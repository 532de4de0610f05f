"""Model registry: every model becomes a version (alias newest); champion moves only on a better score;
a run registers once, even when it is resumed after its process died while registering."""

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


class Killed(BaseException):
    """The process dying at that point (not an Exception, so nothing on the way handles it)."""


def register_killed_after(client, run_id, alias_moves: int):
    """register() whose process dies after creating the version and making `alias_moves` alias moves."""
    real_move, moves = client.set_registered_model_alias, []

    def move(*args):
        if len(moves) == alias_moves:
            raise Killed
        moves.append(args)
        real_move(*args)

    client.set_registered_model_alias = move
    try:
        with pytest.raises(Killed):
            register(client, run_id)
    finally:
        client.set_registered_model_alias = real_move


def versions_of(client, run_id):
    return [str(v.version) for v in client.search_model_versions(f"name = 'm' and run_id = '{run_id}'")]


@pytest.mark.parametrize("alias_moves", [0, 1, 2])  # died before newest, before champion, before the run ended
def test_a_resumed_run_reuses_its_version_and_finishes_the_alias_moves(client, alias_moves):
    register(client, scored_run(client, 0.5))
    run_id = scored_run(client, 0.75)
    if alias_moves < 2:
        register_killed_after(client, run_id, alias_moves)
    else:
        register(client, run_id)
    assert versions_of(client, run_id) == ["2"]

    again = register(client, run_id)  # the rerun continues the same run id
    assert versions_of(client, run_id) == ["2"]  # registered once
    assert (again.version, again.champion, again.previous_champion, again.previous_score) == ("2", True, "1", 0.5)
    assert str(client.get_model_version_by_alias("m", ALIAS_CHAMPION).version) == "2"
    assert str(client.get_model_version_by_alias("m", ALIAS_LATEST).version) == "2"
    assert register(client, scored_run(client, 0.6)).previous_champion == "2"  # later versions compare with it


def test_a_resumed_worse_run_reuses_its_version_and_keeps_the_champion(client):
    register(client, scored_run(client, 0.5))
    run_id = scored_run(client, 0.25)
    register_killed_after(client, run_id, 0)

    again = register(client, run_id)
    assert versions_of(client, run_id) == ["2"]
    assert (again.version, again.champion, again.previous_champion, again.previous_score) == ("2", False, "1", 0.5)
    assert str(client.get_model_version_by_alias("m", ALIAS_CHAMPION).version) == "1"
    assert str(client.get_model_version_by_alias("m", ALIAS_LATEST).version) == "2"


def test_the_first_version_resumed_after_taking_the_champion_alias_had_no_previous_champion(client):
    run_id = scored_run(client, 0.5)
    register(client, run_id)
    again = register(client, run_id)
    assert (again.version, again.champion, again.previous_champion, again.previous_score) == ("1", True, None, None)


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
