"""Scheduled re-evaluation: the deployment carries the cron schedule, and a run triggered from it (executed
the way a served deployment executes it, in its own process) evaluates the champion version, not the newest."""

from __future__ import annotations

import asyncio

import mlflow
import pytest
import yaml

from components.tracking import TAG_CHECKPOINT, TrackingError, get_or_create_experiment, register_model
from components.tracking.pyfunc import log_pyfunc_model
from flows.reeval import FLOW_NAME, TAG_LAST_REEVAL, TAG_MODEL_VERSION, reeval_deployment, reevaluate_flow
from pipeline_support import make_checkpoint

pytestmark = pytest.mark.usefixtures("prefect_harness")


def write_config(tmp_path, mlflow_uri, cron="15 4 * * 1"):
    cfg = {
        "name": "reeval-test",
        "output_dir": str(tmp_path / "outputs"),
        "tracking": {"uri": mlflow_uri, "experiment": "reeval", "registered_model": "dm"},
        "stages": {
            # the real evaluation stage, kept tiny: one synthetic task, two samples, short answers
            "evaluate": {"config": "eval/default.yaml",
                         "overrides": ["tasks=[sum]", "limit=2", "task_overrides=[decode.overrides.gen_length=8]"]},
            **{s: {"enabled": False} for s in ("data_prep", "cpt", "sft", "rl", "quantize", "benchmark")},
        },
        "init_checkpoint": str(tmp_path),  # the config needs a model source when training is off
        "reeval": {"cron": cron, "timezone": "Europe/Paris", "deployment": "nightly"},
    }
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def register_two_versions(tmp_path, mlflow_uri):
    """v1 scores 0.9 (champion); v2 is newer but scores 0.1 (not champion)."""
    client = mlflow.MlflowClient(mlflow_uri, registry_uri=mlflow_uri)
    mlflow.set_tracking_uri(mlflow_uri)
    exp = get_or_create_experiment(client, "reeval", (tmp_path / "artifacts").as_uri())
    versions = []
    for seed, score in ((1, 0.9), (2, 0.1)):
        ckpt = make_checkpoint(tmp_path / f"ckpt{seed}", seed=seed)
        with mlflow.start_run(experiment_id=exp) as run:
            info = log_pyfunc_model(ckpt, preset="quality")
            mlflow.log_metric("eval/score", score)
        versions.append(register_model(client, "dm", info.model_uri, run.info.run_id, "eval/score",
                                       checkpoint_uri=str(ckpt)))
    mlflow.set_tracking_uri(None)
    assert [v.champion for v in versions] == [True, False]
    return client


def test_deployment_schedule_is_registered(tmp_path, mlflow_uri):
    from prefect.client.orchestration import get_client

    config = write_config(tmp_path, mlflow_uri)
    deployment_id = reeval_deployment(str(config)).apply()
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment(deployment_id)
        assert deployment.name == "nightly"
        [schedule] = deployment.schedules
        assert schedule.active
        assert schedule.schedule.cron == "15 4 * * 1"
        assert schedule.schedule.timezone == "Europe/Paris"
        assert deployment.parameters["config"] == str(config.resolve())
        assert f"output_dir={(tmp_path / 'outputs').resolve()}" in deployment.parameters["overrides"]
        # The server really plans runs from it.
        flow = client.read_flow(deployment.flow_id)
        assert flow.name == FLOW_NAME


def test_triggered_run_evaluates_the_champion_version(tmp_path, mlflow_uri):
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.runner import Runner

    client = register_two_versions(tmp_path, mlflow_uri)
    config = write_config(tmp_path, mlflow_uri)
    reeval_deployment(str(config)).apply()
    flow_run = run_deployment(f"{FLOW_NAME}/nightly", timeout=0, as_subflow=False)  # trigger now
    asyncio.run(Runner().execute_flow_run(flow_run.id))  # what `draftedit serve reeval` does per run
    with get_client(sync_client=True) as prefect:
        assert prefect.read_flow_run(flow_run.id).state.is_completed()

    [run] = client.search_runs([client.get_experiment_by_name("reeval").experiment_id],
                               filter_string="tags.`draftedit.stage` = 'evaluate'")
    champion = client.get_model_version_by_alias("dm", "champion")
    assert str(champion.version) == "1"
    assert run.data.tags[TAG_MODEL_VERSION] == "1"
    assert run.data.tags["draftedit.input.checkpoint"] == champion.tags[TAG_CHECKPOINT]
    assert run.data.tags["draftedit.model_alias"] == "champion"
    assert "eval/sum/accuracy" in run.data.metrics and "eval/score" in run.data.metrics
    assert client.get_model_version("dm", "1").tags[TAG_LAST_REEVAL] == run.info.run_id
    assert TAG_LAST_REEVAL not in client.get_model_version("dm", "2").tags


def test_reeval_without_a_champion_says_so(tmp_path, mlflow_uri):
    config = write_config(tmp_path, mlflow_uri)
    with pytest.raises(TrackingError, match="registered model 'dm' has no version with alias 'champion'"):
        reevaluate_flow(config=str(config))
