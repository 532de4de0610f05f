"""Stage runs: nesting, resolved config as params + config.yaml, git tag, outputs as URIs, failures."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import pytest
import yaml

from components.tracking import (
    TAG_PARENT,
    TAG_STAGE,
    TrackingError,
    child_runs,
    get_or_create_experiment,
    log_metrics,
    log_output,
    resolve_uri,
    run_outputs,
    stage_run,
)


@dataclass
class Inner:
    lr: float = 0.001
    layers: list[int] = field(default_factory=lambda: [1, 2])


@dataclass
class Cfg:
    name: str = "tiny"
    inner: Inner = field(default_factory=Inner)


@pytest.fixture
def client(mlflow_uri, tmp_path):
    c = mlflow.MlflowClient(tracking_uri=mlflow_uri)
    c.experiment_id = get_or_create_experiment(c, "t", (tmp_path / "artifacts").as_uri())
    return c


def test_nested_stage_run_logs_config_git_and_metrics(client):
    parent = client.create_run(client.experiment_id, run_name="pipeline", tags={TAG_STAGE: "pipeline"})
    with stage_run(client, client.experiment_id, "sft", parent_run_id=parent.info.run_id, config=Cfg()) as run:
        # Components log with the plain fluent API; it must land in this run.
        mlflow.log_metric("train/loss_m2t", 0.5, step=3)
        logged = log_metrics(client, run.info.run_id, {"eval/score": 0.25, "skip": "text", "nan": float("nan"),
                                                       "flag": True})
    assert logged == {"eval/score": 0.25}
    got = client.get_run(run.info.run_id)
    assert got.info.status == "FINISHED"
    assert got.data.tags[TAG_PARENT] == parent.info.run_id
    assert got.data.tags[TAG_STAGE] == "sft"
    assert got.data.tags["mlflow.source.git.commit"]
    assert got.data.params["inner.lr"] == "0.001"
    assert got.data.params["inner.layers"] == "[1, 2]"
    assert got.data.metrics["train/loss_m2t"] == 0.5
    assert got.data.metrics["eval/score"] == 0.25
    config = yaml.safe_load(Path(resolve_uri(f"runs:/{run.info.run_id}/config.yaml", client.tracking_uri)).read_text())
    assert config == {"name": "tiny", "inner": {"lr": 0.001, "layers": [1, 2]}}
    assert [r.info.run_id for r in child_runs(client, parent.info.run_id)] == [run.info.run_id]
    assert mlflow.active_run() is None


def test_failed_stage_run_is_marked_failed(client):
    with pytest.raises(RuntimeError, match="boom"):
        with stage_run(client, client.experiment_id, "rl") as run:
            raise RuntimeError("boom")
    assert client.get_run(run.info.run_id).info.status == "FAILED"
    assert mlflow.active_run() is None


def test_outputs_round_trip_as_uris(client, tmp_path):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text("{}")
    with stage_run(client, client.experiment_id, "cpt") as run:
        uri = log_output(client, run.info.run_id, "checkpoint", ckpt)
        path_uri = log_output(client, run.info.run_id, "data", ckpt, copy=False)
    assert uri == f"runs:/{run.info.run_id}/checkpoint"
    assert path_uri == str(ckpt.resolve())
    assert run_outputs(client.get_run(run.info.run_id)) == {"checkpoint": uri, "data": path_uri}
    local = resolve_uri(uri, client.tracking_uri)
    assert (local / "config.json").read_text() == "{}"
    assert local != ckpt  # a copy inside the artifact store, not the original folder


def test_bad_uris_name_the_problem(client, tmp_path):
    with stage_run(client, client.experiment_id, "cpt") as run:
        pass
    with pytest.raises(TrackingError, match="run 'deadbeef' not found"):
        resolve_uri("runs:/deadbeef/checkpoint", client.tracking_uri, what="checkpoint")
    with pytest.raises(TrackingError, match="has no artifact 'checkpoint'"):
        resolve_uri(f"runs:/{run.info.run_id}/checkpoint", client.tracking_uri, what="checkpoint")
    with pytest.raises(TrackingError, match="checkpoint not found: .*missing"):
        resolve_uri(str(tmp_path / "missing"), client.tracking_uri, what="checkpoint")
    with pytest.raises(TrackingError, match="empty"):
        resolve_uri("", client.tracking_uri)


def test_metric_names_mlflow_refuses_are_logged_under_names_it_takes(client):
    """The evaluation's `pass@1` and the data stage's per-source counts (`sft.external[0]`) reach MLflow."""
    with stage_run(client, client.experiment_id, "evaluate") as run:
        run_id = run.info.run_id
        logged = log_metrics(client, run_id, {"eval/humaneval/pass@1": 0.5,
                                              "data/sources/sft.external[0]/conversations": 24,
                                              "eval/lm_eval/acc,none": 0.25})
    assert logged == {"eval/humaneval/pass_at_1": 0.5, "data/sources/sft.external.0/conversations": 24.0,
                      "eval/lm_eval/acc_none": 0.25}
    assert client.get_run(run_id).data.metrics == logged
