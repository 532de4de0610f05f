"""Deployments on work pools (flows/deploy.py) and stage placement (stages.<stage>.pool), without workers.

The run on real servers and workers is tests/test_deploy_workers.py.
"""

from __future__ import annotations

import socket

import pytest

from components.config import ConfigError
from flows.config import STAGE_ORDER, load_pipeline_config
from flows.deploy import DeployError, pool_deployments, prefect_api_url, watch
from flows.pools import deployment_name, run_stage_on_pool
from flows.runner import StageRequest


@pytest.mark.parametrize("preset", ["tiny", "fast", "small", "llada2.1-mini"])
def test_every_stage_runs_in_process_by_default(preset):
    cfg = load_pipeline_config(preset, ["init_checkpoint=released/model"] if preset == "llada2.1-mini" else [])
    assert all(cfg.stage(stage).pool is None for stage in STAGE_ORDER)


def test_a_placed_stage_needs_a_tracking_server():
    with pytest.raises(ConfigError, match=r"^stages\.cpt\.pool: .*tracking\.uri .*http://host:port.*None"):
        load_pipeline_config("fast", ["stages.cpt.pool=gpu"])
    cfg = load_pipeline_config("fast", ["stages.cpt.pool=gpu", "tracking.uri=http://mlflow.internal:5000"])
    assert cfg.stages.cpt.pool == "gpu" and cfg.stages.sft.pool is None
    with pytest.raises(ConfigError, match=r"^tracking\.log_checkpoints: must be true .*stages\.cpt\.pool"):
        load_pipeline_config("fast", ["stages.cpt.pool=gpu", "tracking.uri=http://mlflow.internal:5000",
                                      "tracking.log_checkpoints=false"])
    # A disabled stage's placement does not matter.
    load_pipeline_config("fast", ["stages.rl.pool=gpu", "stages.rl.enabled=false"])


def test_pool_deployments_import_their_flows_by_module_path():
    from prefect.flows import load_flow_from_entrypoint

    from flows.pipeline import pipeline_flow
    from flows.stage_flows import STAGE_FLOWS

    deployments = pool_deployments("gpu", "small", ["tracking.uri=http://mlflow:5000"])
    assert [d.full_name for d in deployments] == [deployment_name(s, "gpu") for s in ("pipeline", *STAGE_ORDER)]
    assert deployment_name("data_prep", "gpu") == "data-prep/gpu"
    assert all(d.work_pool_name == "gpu" and ":" not in d.entrypoint for d in deployments)
    assert deployments[0].parameters == {"config": "small", "overrides": ["tracking.uri=http://mlflow:5000"]}
    flows = [load_flow_from_entrypoint(d.entrypoint) for d in deployments]
    assert flows[0] is pipeline_flow
    assert flows[1:] == [STAGE_FLOWS[s] for s in STAGE_ORDER]


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_an_unset_or_unreachable_prefect_server_is_one_clear_error():
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: None}), pytest.raises(DeployError, match="PREFECT_API_URL is not set"):
        prefect_api_url()
    url = f"http://127.0.0.1:{_closed_port()}/api"
    with temporary_settings(updates={PREFECT_API_URL: url}), pytest.raises(DeployError, match=f"{url}.* unreachable"):
        prefect_api_url()


def test_cli_errors_are_one_line(capsys, monkeypatch):
    from flows.cli import main

    assert main(["deploy", "apply"]) == 2
    assert capsys.readouterr().err.strip() == "draftedit deploy: error: draftedit deploy apply needs --pool <work pool name>"
    monkeypatch.setenv("PREFECT_API_URL", f"http://127.0.0.1:{_closed_port()}/api")
    assert main(["deploy", "apply", "--pool", "gpu", "--preset", "fast"]) == 2  # tracking.uri is not a server
    err = capsys.readouterr().err.strip()
    assert err.startswith("draftedit deploy: error: tracking.uri: ") and "\n" not in err
    assert main(["deploy", "watch", "not-a-uuid"]) == 2
    assert "'not-a-uuid' is not a flow run id" in capsys.readouterr().err


def test_a_stage_placed_on_a_pool_without_its_deployment_fails_naming_the_fix(prefect_harness):
    from flows.stages import StageError

    with pytest.raises(StageError, match=r"stage cpt is placed on pool 'nowhere'.*draftedit deploy apply --pool nowhere"):
        run_stage_on_pool("cpt", "nowhere", StageRequest("train/cpt.yaml"), client=None, experiment_id="0")


def test_watch_names_a_missing_flow_run(prefect_harness):
    import uuid

    missing = str(uuid.uuid4())
    with pytest.raises(DeployError, match=f"flow run {missing} does not exist"):
        watch(missing)


def test_apply_registers_the_pipeline_every_stage_and_the_schedule_on_a_pool(prefect_harness):
    from prefect import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.workers.process import ProcessWorker

    from flows.deploy import apply

    with pytest.raises(DeployError, match=r"work pool 'unit-pool' does not exist.*prefect work-pool create unit-pool"):
        apply("unit-pool", "fast")
    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name="unit-pool", type="process",
                                               base_job_template=ProcessWorker.get_default_base_job_template()))
    names = apply("unit-pool", "fast", ["tracking.uri=http://mlflow:5000"], reeval=True)
    assert names == [deployment_name(s, "unit-pool") for s in ("pipeline", *STAGE_ORDER)] + \
        ["reevaluate-champion/champion-reeval-fast"]
    assert apply("unit-pool", "fast", ["tracking.uri=http://mlflow:5001"]) == names[:-1]  # applying again updates
    with get_client(sync_client=True) as client:
        pipeline = client.read_deployment_by_name("pipeline/unit-pool")
        stage = client.read_deployment_by_name("cpt/unit-pool")
        reeval = client.read_deployment_by_name(names[-1])
    assert pipeline.parameters == {"config": "fast", "overrides": ["tracking.uri=http://mlflow:5001"]}
    assert (pipeline.work_pool_name, pipeline.entrypoint, pipeline.pull_steps) == (
        "unit-pool", "flows.pipeline.pipeline_flow", None)  # the installed code: nothing pulled
    assert (stage.work_pool_name, stage.entrypoint) == ("unit-pool", "flows.stage_flows.cpt_flow")
    assert reeval.work_pool_name == "unit-pool" and reeval.entrypoint == "flows.reeval.reevaluate_flow"
    assert [s.schedule.cron for s in reeval.schedules] == ["0 3 * * *"]
    assert reeval.parameters == {"config": "fast", "overrides": ["tracking.uri=http://mlflow:5000"]}
