"""Runs of dead processes: owner tags, the sweep that marks them FAILED, reopening, continuous metrics."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import mlflow
import pytest

from components.tracking import (
    TAG_FAILURE,
    TAG_HEARTBEAT,
    TAG_INTERRUPTED,
    find_interrupted,
    get_or_create_experiment,
    owner_tags,
    stage_run,
    sweep_dead_runs,
)
from components.tracking.liveness import (
    TAG_HOST,
    TAG_PID,
    TAG_PIDNS,
    TAG_PROC_START,
    TAG_RESUMED,
    Heartbeat,
    pid_namespace,
    process_start_time,
)
from components.tracking.runs import logged_steps, stage_mlflow_logger


@pytest.fixture
def client(mlflow_uri, tmp_path):
    c = mlflow.MlflowClient(tracking_uri=mlflow_uri)
    c.experiment_id = get_or_create_experiment(c, "t", (tmp_path / "artifacts").as_uri())
    return c


@pytest.fixture(scope="module")
def dead_owner() -> dict[str, str]:
    """Owner tags of a process that has exited (captured while it lived)."""
    proc = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    started = process_start_time(proc.pid)
    proc.kill()
    proc.wait()
    return {TAG_HOST: socket.gethostname(), TAG_PIDNS: pid_namespace(), TAG_PID: str(proc.pid),
            TAG_PROC_START: started, TAG_HEARTBEAT: f"{time.time():.0f}"}


def _running(client, tags: dict[str, str], stage: str = "sft"):
    return client.create_run(client.experiment_id, tags={"draftedit.stage": stage, **tags})


def test_a_run_whose_process_died_is_marked_failed_with_its_cause(client, dead_owner):
    run = _running(client, dead_owner)
    assert list(sweep_dead_runs(client, [client.experiment_id])) == [run.info.run_id]
    got = client.get_run(run.info.run_id)
    assert got.info.status == "FAILED" and got.info.end_time is not None
    assert f"process {dead_owner[TAG_PID]}" in got.data.tags[TAG_FAILURE]
    assert got.data.tags[TAG_FAILURE].startswith("interrupted: ")
    assert got.data.tags[TAG_INTERRUPTED] == "true"
    assert not sweep_dead_runs(client, [client.experiment_id])  # swept once


def test_live_unknown_and_foreign_fresh_runs_are_left_running(client, dead_owner):
    mine = _running(client, owner_tags())
    untagged = _running(client, {})
    elsewhere = {TAG_HOST: socket.gethostname(), TAG_PIDNS: "other-boot/pid:[1]"}  # e.g. another container
    foreign = _running(client, {**owner_tags(), **elsewhere})
    reused_pid = _running(client, {**owner_tags(), TAG_PROC_START: "1"})  # our pid, but not our process
    stale = _running(client, {**owner_tags(), **elsewhere, TAG_HEARTBEAT: f"{time.time() - 3600:.0f}"})
    swept = sweep_dead_runs(client, [client.experiment_id], stale_after_s=600)
    assert sorted(swept) == sorted([reused_pid.info.run_id, stale.info.run_id])
    for run in (mine, untagged, foreign):
        assert client.get_run(run.info.run_id).info.status == "RUNNING"
    assert "another process" in client.get_run(reused_pid.info.run_id).data.tags[TAG_FAILURE]
    assert "no heartbeat for 60 min" in client.get_run(stale.info.run_id).data.tags[TAG_FAILURE]


def test_an_interrupted_stage_run_is_reopened_with_its_id_and_history(client, dead_owner):
    with stage_run(client, client.experiment_id, "cpt", tags={"draftedit.config_hash": "abc"}) as run:
        mlflow.log_metric("train/loss", 3.0, step=1)
        mlflow.log_metric("train/loss", 2.0, step=2)
    run_id = run.info.run_id
    # The process dies: the run is RUNNING again with a dead owner, as a SIGKILL leaves it.
    client.update_run(run_id, status="RUNNING")
    for key, value in dead_owner.items():
        client.set_tag(run_id, key, value)
    assert find_interrupted(client, client.experiment_id, "cpt", "abc") is None  # still RUNNING: not yet judged
    sweep_dead_runs(client, [client.experiment_id])
    found = find_interrupted(client, client.experiment_id, "cpt", "abc")
    assert found is not None and found.info.run_id == run_id
    assert find_interrupted(client, client.experiment_id, "cpt", "other-hash") is None
    assert find_interrupted(client, client.experiment_id, "cpt", "abc", parent_run_id="p") is None

    with stage_run(client, client.experiment_id, "cpt", resume_run_id=run_id) as again:
        assert again.info.run_id == run_id
        assert client.get_run(run_id).info.status == "RUNNING"
        assert logged_steps(client, run_id) == {"train/loss": 2}
        logger = stage_mlflow_logger(client.tracking_uri, run_id, logged_steps(client, run_id))
        logger.log_metrics({"train/loss": 2.5}, step=2)  # replayed since the checkpoint: dropped
        logger.log_metrics({"train/loss": 1.0}, step=3)
        logger.finalize("success")  # the end of fit does not end the stage's run
        assert client.get_run(run_id).info.status == "RUNNING"
    got = client.get_run(run_id)
    assert got.info.status == "FINISHED"
    assert got.data.tags[TAG_RESUMED] == "1" and got.data.tags[TAG_INTERRUPTED] == "false"
    assert got.data.tags[TAG_PID] != dead_owner[TAG_PID]
    history = [(m.step, m.value) for m in client.get_metric_history(run_id, "train/loss")]
    assert sorted(history) == [(1, 3.0), (2, 2.0), (3, 1.0)]
    assert find_interrupted(client, client.experiment_id, "cpt", "abc") is None  # finished now


def test_stage_run_records_the_cause_of_a_failure_or_an_interrupt(client):
    with pytest.raises(ValueError):
        with stage_run(client, client.experiment_id, "rl") as failed:
            raise ValueError("bad reward\nsecond line")
    got = client.get_run(failed.info.run_id)
    assert got.info.status == "FAILED"
    assert got.data.tags[TAG_FAILURE] == "ValueError: bad reward"
    assert got.data.tags[TAG_INTERRUPTED] == "false"

    with pytest.raises(KeyboardInterrupt):
        with stage_run(client, client.experiment_id, "rl") as stopped:
            raise KeyboardInterrupt
    got = client.get_run(stopped.info.run_id)
    assert got.info.status == "KILLED" and got.data.tags[TAG_INTERRUPTED] == "true"
    assert mlflow.active_run() is None


def test_heartbeat_refreshes_the_tag(client):
    run = _running(client, {TAG_HEARTBEAT: "0"})
    with Heartbeat(client, run.info.run_id, interval_s=0.01):
        for _ in range(1000):  # wait for the first beat (no fixed sleep)
            if client.get_run(run.info.run_id).data.tags[TAG_HEARTBEAT] != "0":
                break
            time.sleep(0.01)
    assert float(client.get_run(run.info.run_id).data.tags[TAG_HEARTBEAT]) > 0
