"""Pipelines triggered as deployments on real servers: a Prefect server, an MLflow server that proxies
its artifact store, and two process workers (pools `pool-a` and `pool-b`) in separate folders that
share no files. All on loopback, on free ports. The pipeline runs on pool-a with its cpt stage placed on
pool-b and quantize back on pool-a, so data and checkpoints cross workers only through the MLflow server.
Then two pipelines run at once, each placing its cpt on the other's pool. The last test kills pool-b's
worker mid-stage and resumes the pipeline on pool-a.
"""

from __future__ import annotations

import os
import signal
import socket
import time
import subprocess
import sys
from pathlib import Path

import pytest

from flows.processes import stop
from flows.ui import wait_http

pytestmark = pytest.mark.slow

STARTUP_S = 300  # two busy cores: servers and workers can take minutes to answer
BIN = Path(sys.executable).parent
# The fast preset cut to the bone: data_prep -> cpt (2 steps) -> quantize (int8 of cpt's checkpoint).
OVERRIDES = [
    "stages.sft.enabled=false", "stages.rl.enabled=false", "stages.evaluate.enabled=false",
    "stages.benchmark.enabled=false", "probe.enabled=false", "retries=0",
    "stages.data_prep.overrides=[cpt.stdlib.max_files=2,cpt.stdlib.max_bytes=20000,"
    "cpt.synthetic.num_examples=50,sft.synthetic.num_examples=50]",
    "stages.cpt.overrides=[trainer.max_steps=2,trainer.checkpoint_every_steps=2,trainer.val_every_steps=2]",
]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    env.update(PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_LOGGING_LEVEL="INFO", **extra)
    return env


def _spawn(cmd: list[str], folder: Path, env: dict[str, str]) -> subprocess.Popen:
    folder.mkdir(parents=True, exist_ok=True)
    log = open(folder / "process.log", "wb")  # noqa: SIM115 - the child keeps it open
    return subprocess.Popen(cmd, cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """{prefect, mlflow, artifacts, workers}: the servers up, both pools holding the deployments, one worker each."""
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect.workers.process import ProcessWorker

    from flows.deploy import apply

    root = tmp_path_factory.mktemp("cluster")
    prefect_port, mlflow_port = _free_port(), _free_port()
    api = f"http://127.0.0.1:{prefect_port}/api"
    tracking = f"http://127.0.0.1:{mlflow_port}"
    procs: list[subprocess.Popen] = []
    try:
        procs.append(_spawn([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(prefect_port)],
                            root / "prefect-server", _env(PREFECT_HOME=str(root / "prefect-server" / "home"))))
        artifacts = root / "mlflow-server" / "artifacts"
        procs.append(_spawn([str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(mlflow_port),
                             "--backend-store-uri", f"sqlite:///{root / 'mlflow-server' / 'mlflow.db'}",
                             "--artifacts-destination", str(artifacts), "--workers", "1"],
                            root / "mlflow-server", _env()))
        wait_http(f"{tracking}/health", STARTUP_S, procs[1])
        wait_http(f"{api}/health", STARTUP_S, procs[0])
        with temporary_settings(updates={PREFECT_API_URL: api}):
            from prefect import get_client

            with get_client(sync_client=True) as client:
                for pool in ("pool-a", "pool-b"):
                    client.create_work_pool(WorkPoolCreate(
                        name=pool, type="process", base_job_template=ProcessWorker.get_default_base_job_template()))
            for pool in ("pool-a", "pool-b"):
                apply(pool, "fast", [f"tracking.uri={tracking}"])
            workers = {}
            for pool in ("pool-a", "pool-b"):
                folder = root / f"worker-{pool}"
                # Each flow run works in a fresh temporary folder under the worker's own TMPDIR.
                (folder / "tmp").mkdir(parents=True)
                workers[pool] = folder
                procs.append(_spawn([str(BIN / "prefect"), "worker", "start", "--pool", pool, "--type", "process"],
                                    folder, _env(PREFECT_API_URL=api, TMPDIR=str(folder / "tmp"), PREFECT_WORKER_QUERY_SECONDS="2",
                                                 PREFECT_HOME=str(folder / ".prefect"))))
            yield {"prefect": api, "mlflow": tracking, "artifacts": artifacts, "workers": workers,
                   "worker_procs": dict(zip(("pool-a", "pool-b"), procs[2:]))}
    finally:
        stop(*procs, grace=5.0)


def test_pipeline_deployment_runs_a_stage_on_another_pool(cluster):
    import mlflow
    from prefect import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.deploy import trigger, watch

    lines: list[str] = []
    with temporary_settings(updates={PREFECT_API_URL: cluster["prefect"]}):
        flow_run_id, parent_id = trigger("pool-a", None, [*OVERRIDES, "stages.cpt.pool=pool-b"],
                                         timeout=STARTUP_S, say=lines.append)
        final = watch(flow_run_id, poll_s=2.0, say=lines.append)
        logs = {p: (f / "process.log").read_text(errors="replace")[-3000:] for p, f in cluster["workers"].items()}
        assert final == "COMPLETED", (lines, logs)
        with get_client(sync_client=True) as pc:
            pipeline_run = pc.read_flow_run(flow_run_id)
            client = mlflow.MlflowClient(tracking_uri=cluster["mlflow"])
            parent = client.get_run(parent_id)
            children = {r.data.tags["draftedit.stage"]: r for r in client.search_runs(
                [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'")}
            cpt_flow_run = pc.read_flow_run(children["cpt"].data.tags["prefect.flow_run_id"])
            link = pc.read_task_run(cpt_flow_run.parent_task_run_id)

    assert any(parent_id in line for line in lines) and any(flow_run_id in line for line in lines)
    assert pipeline_run.work_pool_name == "pool-a"
    assert parent.info.status == "FINISHED" and parent.data.tags["prefect.flow_run_id"] == flow_run_id
    assert set(children) == {"data_prep", "cpt", "quantize"}
    assert all(r.info.status == "FINISHED" for r in children.values())
    # cpt ran as the deployment `cpt/pool-b`, a subflow run linked to the pipeline's flow run.
    assert cpt_flow_run.work_pool_name == "pool-b" and link.flow_run_id == pipeline_run.id
    assert any("cpt" in line and "pool-b" in line and "Completed" in line for line in lines)
    # Every output went through the MLflow server: runs:/ URIs, artifacts in the server's store.
    data_uri = children["cpt"].data.tags["draftedit.input.data"]
    ckpt_uri = children["quantize"].data.tags["draftedit.input.checkpoint"]
    assert data_uri == f"runs:/{children['data_prep'].info.run_id}/data"
    assert ckpt_uri == f"runs:/{children['cpt'].info.run_id}/checkpoint"
    assert all(r.info.artifact_uri.startswith("mlflow-artifacts:") for r in children.values())
    stored = {part for path in cluster["artifacts"].rglob("*.safetensors") for part in path.parts}
    assert {children["cpt"].info.run_id, children["quantize"].info.run_id} <= stored  # <exp>/<run>/artifacts/...


def test_two_pipelines_at_once_keep_their_stages_configs_and_inputs_apart(cluster):
    """Two pipelines triggered together, each on one pool with its cpt (own seed) on the other: every
    stage run lands under its own parent with its own config and reads its inputs from the server. Their
    data_prep reuses the data uploaded by an earlier pipeline of this module: a cache on the server."""
    import mlflow
    from prefect import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from components.tracking import run_outputs
    from flows.deploy import trigger, watch

    client = mlflow.MlflowClient(tracking_uri=cluster["mlflow"])
    experiment = client.get_experiment_by_name("draftedit-fast")
    prepared_before = {r.info.run_id for r in client.search_runs(
        [experiment.experiment_id], filter_string="tags.`draftedit.stage` = 'data_prep'")} if experiment else set()
    plans = {"pool-a": ("pool-b", 11), "pool-b": ("pool-a", 12)}  # pipeline pool -> (cpt pool, cpt seed)
    lines: list[str] = []
    with temporary_settings(updates={PREFECT_API_URL: cluster["prefect"]}):
        started = {}
        for pool, (cpt_pool, seed) in plans.items():
            cpt = ("stages.cpt.overrides=[trainer.max_steps=2,trainer.checkpoint_every_steps=2,"
                   f"trainer.val_every_steps=2,trainer.seed={seed}]")
            started[pool] = trigger(pool, None, [*OVERRIDES, cpt, f"stages.cpt.pool={cpt_pool}"],
                                    timeout=STARTUP_S, say=lines.append)
        finals = {pool: watch(flow_run_id, say=lines.append) for pool, (flow_run_id, _) in started.items()}
        logs = {p: (f / "process.log").read_text(errors="replace")[-3000:] for p, f in cluster["workers"].items()}
        assert finals == {"pool-a": "COMPLETED", "pool-b": "COMPLETED"}, (lines, logs)
        parents = {pool: client.get_run(parent) for pool, (_, parent) in started.items()}
        children = {pool: {r.data.tags["draftedit.stage"]: r for r in client.search_runs(
            [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")}
            for pool, parent in parents.items()}
        with get_client(sync_client=True) as pc:
            cpt_pools = {pool: pc.read_flow_run(runs["cpt"].data.tags["prefect.flow_run_id"]).work_pool_name
                         for pool, runs in children.items()}

    assert parents["pool-a"].info.run_id != parents["pool-b"].info.run_id
    for pool, (cpt_pool, seed) in plans.items():
        runs, parent = children[pool], parents[pool]
        assert parent.info.status == "FINISHED" and parent.data.params["stages.cpt.pool"] == cpt_pool
        assert set(runs) == {"data_prep", "cpt", "quantize"}
        assert all(r.info.status == "FINISHED" and r.info.artifact_uri.startswith("mlflow-artifacts:")
                   for r in runs.values())
        assert runs["cpt"].data.params["trainer.seed"] == str(seed) and cpt_pools[pool] == cpt_pool
        # Each stage read what a stage of its own pipeline handed on, through the server.
        data_uri = runs["cpt"].data.tags["draftedit.input.data"]
        assert data_uri == run_outputs(runs["data_prep"])["data"] and data_uri.startswith("runs:/")
        assert runs["quantize"].data.tags["draftedit.input.checkpoint"] == f"runs:/{runs['cpt'].info.run_id}/checkpoint"
        if prepared_before:  # the data uploaded by an earlier pipeline, not prepared again
            assert "draftedit.cache_hit" in runs["data_prep"].data.tags  # that run, or a cache hit of it
            data_run_id, _, data_path = data_uri[len("runs:/"):].partition("/")
            assert data_run_id in prepared_before and client.list_artifacts(data_run_id, data_path)


def _child_runs(client, parent_id: str, stage: str) -> list:
    exp = client.get_run(parent_id).info.experiment_id
    return client.search_runs([exp], order_by=["attributes.start_time ASC"], filter_string=(
        f"tags.mlflow.parentRunId = '{parent_id}' and tags.`draftedit.stage` = '{stage}'"))


def test_a_worker_killed_mid_stage_fails_its_runs_and_the_pipeline_resumes_on_the_other_pool(cluster):
    """Must run last in this module: it kills pool-b's worker."""
    import mlflow
    from prefect import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from components.tracking.liveness import process_start_time
    from flows.deploy import trigger, watch
    from flows.processes import descendants

    client = mlflow.MlflowClient(tracking_uri=cluster["mlflow"])
    endless_cpt = "stages.cpt.overrides=[trainer.max_steps=100000,trainer.checkpoint_every_steps=100000]"
    lines: list[str] = []
    with temporary_settings(updates={PREFECT_API_URL: cluster["prefect"]}):
        flow_run_id, parent_id = trigger("pool-a", None, [*OVERRIDES, endless_cpt, "stages.cpt.pool=pool-b"],
                                         timeout=STARTUP_S, say=lines.append)
        deadline = time.monotonic() + STARTUP_S
        while not _child_runs(client, parent_id, "cpt"):  # cpt has started on pool-b's worker
            assert time.monotonic() < deadline, lines
            time.sleep(1.0)
        worker = cluster["worker_procs"]["pool-b"]
        tree = [worker.pid, *descendants(worker.pid)]
        for pid in tree:  # the worker and its flow run, as a lost machine
            os.kill(pid, signal.SIGKILL)
        worker.wait()
        while any(process_start_time(pid) for pid in tree):  # SIGKILLed, but a big process takes a while to exit
            assert time.monotonic() < deadline, tree
            time.sleep(0.2)
        # The pipeline, waiting on pool-a, finds the dead owner: MLflow run FAILED, flow run Crashed, pipeline FAILED.
        assert watch(flow_run_id, say=lines.append) == "FAILED", lines
        killed = _child_runs(client, parent_id, "cpt")[0]
        assert killed.info.status == "FAILED" and "died" in killed.data.tags["draftedit.failure"]
        with get_client(sync_client=True) as pc:
            assert pc.read_flow_run(killed.data.tags["prefect.flow_run_id"]).state.type.value == "CRASHED"
        parent = client.get_run(parent_id)
        assert parent.info.status == "FAILED" and parent.data.tags["draftedit.failed_stage"] == "cpt"

        # Resume on the remaining worker: data_prep is reused, cpt runs again there (inside the pipeline's
        # flow run on pool-a), the pipeline finishes.
        resumed_id, same_parent = trigger("pool-a", None, [*OVERRIDES, "stages.cpt.pool=null"],
                                          resume_run_id=parent_id, say=lines.append)
        assert same_parent == parent_id
        assert watch(resumed_id, say=lines.append) == "COMPLETED", lines
        cpt_runs = _child_runs(client, parent_id, "cpt")
        with get_client(sync_client=True) as pc:
            cpt_flow_run = pc.read_flow_run(cpt_runs[-1].data.tags["prefect.flow_run_id"])
            pipeline_pool = pc.read_flow_run(pc.read_task_run(cpt_flow_run.parent_task_run_id).flow_run_id).work_pool_name

    assert client.get_run(parent_id).info.status == "FINISHED"
    assert [r.info.status for r in cpt_runs] == ["FAILED", "FINISHED"] and pipeline_pool == "pool-a"
    assert len(_child_runs(client, parent_id, "data_prep")) == 1  # reused, not run again
    quantize = _child_runs(client, parent_id, "quantize")[-1]
    assert quantize.data.tags["draftedit.input.checkpoint"] == f"runs:/{cpt_runs[-1].info.run_id}/checkpoint"
