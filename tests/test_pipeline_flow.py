"""The pipeline flow with stand-in stages: nesting, URIs between stages, caching, retries, failure,
resume, registration, and the bad-input messages. (tests/test_pipeline_real.py runs the real stages.)"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import mlflow
import pytest

import pipeline_support as ps
from components.config import ConfigError
from components.tracking import (
    TAG_CHECKPOINT,
    TAG_FAILED_STAGE,
    TAG_PARENT,
    TAG_STAGE,
    TrackingError,
    child_runs,
    log_output,
    resolve_uri,
    run_outputs,
)
from flows.config import STAGE_ORDER
from flows.pipeline import pipeline_flow
from flows.report import summary_rows
from flows.stages import StageError
from flows.runner import StageRequest, is_transient, stage_result_from_run

pytestmark = pytest.mark.usefixtures("prefect_harness")


@pytest.fixture
def fakes(monkeypatch):
    ps.install_fakes(monkeypatch)
    return ps.CALLS


def client_for(uri: str) -> mlflow.MlflowClient:
    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)


def test_full_pipeline_tracks_every_stage(fakes, tmp_path, mlflow_uri):
    config = ps.write_pipeline(tmp_path, mlflow_uri)
    result = pipeline_flow(config=str(config))
    client = client_for(mlflow_uri)

    parent = client.get_run(result["parent_run_id"])
    assert parent.info.status == "FINISHED"
    assert parent.data.tags[TAG_STAGE] == "pipeline"
    assert parent.data.metrics["eval/score"] == 0.5  # the final evaluation, copied up
    children = child_runs(client, result["parent_run_id"])
    assert [c.data.tags[TAG_STAGE] for c in children] == list(STAGE_ORDER)
    for child in children:
        assert child.info.status == "FINISHED"
        assert child.data.tags[TAG_PARENT] == parent.info.run_id
        assert child.data.tags["mlflow.source.git.commit"]
        artifacts = {a.path for a in client.list_artifacts(child.info.run_id)}
        assert "config.yaml" in artifacts
    by_stage = {c.data.tags[TAG_STAGE]: c for c in children}
    assert by_stage["cpt"].data.metrics["train/loss_m2t"] == 1.0
    assert by_stage["cpt"].data.params["seed"] == "1"
    assert by_stage["benchmark"].data.metrics["bench/speedy/tps"] == 10.0
    assert "results" in {a.path for a in client.list_artifacts(by_stage["benchmark"].info.run_id)}

    # Each stage started from the previous stage's output URI.
    outputs = {stage: run_outputs(run) for stage, run in by_stage.items()}
    assert outputs["cpt"]["checkpoint"] == f"runs:/{by_stage['cpt'].info.run_id}/checkpoint"
    assert by_stage["sft"].data.tags["draftedit.input.checkpoint"] == outputs["cpt"]["checkpoint"]
    assert by_stage["rl"].data.tags["draftedit.input.checkpoint"] == outputs["sft"]["checkpoint"]
    assert by_stage["quantize"].data.tags["draftedit.input.checkpoint"] == outputs["rl"]["checkpoint"]
    assert by_stage["benchmark"].data.tags["draftedit.input.checkpoint"] == outputs["rl"]["checkpoint"]
    assert by_stage["evaluate"].data.tags["draftedit.input.checkpoint"] == outputs["rl"]["checkpoint"]
    lineage = json.loads((Path(fakes[3][1]["checkpoint"]) / "lineage.json").read_text())
    assert lineage["stage"] == "sft"  # rl really received the SFT checkpoint's files

    # The final model is registered, champion (first one), with its checkpoint URI.
    reg = result["registration"]
    assert reg["champion"] and reg["version"] == "1"
    version = client.get_model_version_by_alias("draftedit", "champion")
    assert version.tags[TAG_CHECKPOINT] == outputs["rl"]["checkpoint"]
    assert version.run_id == by_stage["evaluate"].info.run_id
    # A pipeline whose evaluate stage ran on a work pool reads the registration back from the run.
    assert stage_result_from_run("evaluate", by_stage["evaluate"])["registration"] == reg

    rows = summary_rows(result["rows"])
    assert [r[0] for r in rows][:6] == ["data_prep", "cpt", "sft", "rl", "quantize", "benchmark"]
    assert ("  speedy", "", "", "-", "2.00", "10.0", "", "", "", "", "") in rows
    evaluate_row = next(r for r in rows if r[0] == "evaluate")
    assert evaluate_row[3:6] == ("0.500", "3.00", "40.0")


def test_data_prep_is_cached_by_config_and_champion_needs_a_better_score(fakes, tmp_path, mlflow_uri):
    config = ps.write_pipeline(tmp_path, mlflow_uri, evaluate={"score": 0.25})
    pipeline_flow(config=str(config), overrides=["stages.rl.enabled=false", "stages.quantize.enabled=false",
                                                 "stages.benchmark.enabled=false"])
    prepares = sum(1 for name, _ in fakes if name == "prepare")
    second = pipeline_flow(config=str(config), overrides=["stages.rl.enabled=false", "stages.quantize.enabled=false",
                                                          "stages.benchmark.enabled=false",
                                                          "stages.evaluate.overrides=[score=0.2]"])
    assert sum(1 for name, _ in fakes if name == "prepare") == prepares  # not prepared again
    rows = {r["stage"]: r for r in second["rows"]}
    assert rows["data_prep"]["status"] == "cached"
    assert rows["rl"]["status"] == "skipped"
    assert not second["registration"]["champion"]  # 0.2 < 0.25
    third = pipeline_flow(config=str(config), overrides=["stages.rl.enabled=false", "stages.quantize.enabled=false",
                                                         "stages.benchmark.enabled=false", "stages.data_prep.overrides=[size=4]",
                                                         "stages.evaluate.overrides=[score=0.9]"])
    assert {r["stage"]: r for r in third["rows"]}["data_prep"]["status"] == "ran"  # new config, new data
    assert third["registration"]["champion"] and third["registration"]["previous_champion"] == "1"


def test_cached_data_prep_whose_data_were_uploaded_is_reused(fakes, tmp_path, mlflow_uri):
    """With a tracking server data_prep uploads its data (runs:/<id>/data) and its folder stays on the
    worker that prepared them: the cache is the uploaded copy, and the next stage gets its URI."""
    config = ps.write_pipeline(tmp_path, mlflow_uri)
    only_cpt = ["stages.sft.enabled=false", "stages.rl.enabled=false", "stages.quantize.enabled=false",
                "stages.benchmark.enabled=false", "stages.evaluate.enabled=false"]
    first = pipeline_flow(config=str(config), overrides=only_cpt)
    client = client_for(mlflow_uri)
    prepared = {r["stage"]: r for r in first["rows"]}["data_prep"]["run_id"]
    folder = Path(run_outputs(client.get_run(prepared))["data"])
    uploaded = log_output(client, prepared, "data", folder, copy=True)  # as run_stage does with a server
    shutil.rmtree(folder)  # the preparing host is gone

    fakes.clear()
    second = pipeline_flow(config=str(config), overrides=only_cpt)
    rows = {r["stage"]: r for r in second["rows"]}
    assert rows["data_prep"]["status"] == "cached" and [name for name, _ in fakes] == ["train:cpt"]
    cpt = client.get_run(rows["cpt"]["run_id"])
    assert uploaded == f"runs:/{prepared}/data" and cpt.data.tags["draftedit.input.data"] == uploaded

    # Uploaded data that are gone (the artifacts were deleted) are prepared again.
    shutil.rmtree(resolve_uri(uploaded, mlflow_uri))
    third = pipeline_flow(config=str(config), overrides=only_cpt)
    assert {r["stage"]: r for r in third["rows"]}["data_prep"]["status"] == "ran"


def test_transient_failures_are_retried(fakes, tmp_path, mlflow_uri):
    config = ps.write_pipeline(tmp_path, mlflow_uri, cpt={"fail_times": 2})
    result = pipeline_flow(config=str(config), overrides=["stages.sft.enabled=false", "stages.rl.enabled=false",
                                                          "stages.quantize.enabled=false", "stages.benchmark.enabled=false"])
    assert [name for name, _ in fakes].count("train:cpt") == 3  # two simulated failures, then success
    assert client_for(mlflow_uri).get_run(result["parent_run_id"]).info.status == "FINISHED"


def test_a_failed_stage_keeps_earlier_results_and_the_pipeline_resumes(fakes, tmp_path, mlflow_uri):
    config = ps.write_pipeline(tmp_path, mlflow_uri, rl={"fail_hard": True})
    with pytest.raises(ValueError, match="deliberate failure"):
        pipeline_flow(config=str(config))
    assert [name for name, _ in fakes].count("train:rl") == 1  # not a transient error: no retry
    client = client_for(mlflow_uri)
    parent = client.search_runs([client.get_experiment_by_name("test").experiment_id],
                                filter_string=f"tags.`{TAG_STAGE}` = 'pipeline'")[0]
    assert parent.info.status == "FAILED"
    assert parent.data.tags[TAG_FAILED_STAGE] == "rl"
    status = {c.data.tags[TAG_STAGE]: c.info.status for c in child_runs(client, parent.info.run_id)}
    assert status == {"data_prep": "FINISHED", "cpt": "FINISHED", "sft": "FINISHED", "rl": "FAILED"}
    sft_ckpt = run_outputs(next(c for c in child_runs(client, parent.info.run_id)
                                if c.data.tags[TAG_STAGE] == "sft"))["checkpoint"]

    fakes.clear()
    result = pipeline_flow(config=str(config), overrides=["stages.rl.overrides=[fail_hard=false]"],
                           resume_run_id=parent.info.run_id)
    assert [name for name, _ in fakes] == ["train:rl", "quantize", "benchmark", "evaluate"]
    statuses = {r["stage"]: r["status"] for r in result["rows"]}
    assert statuses == {"data_prep": "reused", "cpt": "reused", "sft": "reused", "rl": "ran", "quantize": "ran",
                        "benchmark": "ran", "evaluate": "ran"}
    assert result["parent_run_id"] == parent.info.run_id
    resumed = client.get_run(parent.info.run_id)
    assert resumed.info.status == "FINISHED" and resumed.data.tags[TAG_FAILED_STAGE] == ""
    rl_run = [c for c in child_runs(client, parent.info.run_id) if c.data.tags[TAG_STAGE] == "rl"][-1]
    assert rl_run.data.tags["draftedit.input.checkpoint"] == sft_ckpt

    # --from-stage re-runs from an earlier stage with the outputs before it reused.
    fakes.clear()
    pipeline_flow(config=str(config), overrides=["stages.rl.overrides=[fail_hard=false]"],
                  resume_run_id=parent.info.run_id, from_stage="sft")
    assert [name for name, _ in fakes] == ["train:sft", "train:rl", "quantize", "benchmark", "evaluate"]


def test_probe_evaluates_every_model_stage(fakes, tmp_path, mlflow_uri):
    config = ps.write_pipeline(tmp_path, mlflow_uri)
    result = pipeline_flow(config=str(config), overrides=["probe.enabled=true", "probe.overrides=[score=0.125]",
                                                          "stages.benchmark.enabled=false"])
    rows = {r["stage"]: r for r in result["rows"]}
    for stage in ("cpt", "sft", "rl", "quantize"):
        assert rows[stage]["metrics"]["eval/score"] == 0.125
        assert rows[stage]["metrics"]["eval/tps"] == 40.0
    assert rows["evaluate"]["metrics"]["eval/score"] == 0.5  # the full evaluation, not the probe


def test_bad_inputs_fail_before_any_stage_runs(fakes, tmp_path, mlflow_uri):
    config = ps.write_pipeline(tmp_path, mlflow_uri)
    with pytest.raises(TrackingError, match="cannot resume: run 'no-such-run' does not exist"):
        pipeline_flow(config=str(config), resume_run_id="no-such-run")
    with pytest.raises(ConfigError, match="init_checkpoint: not found: .*nowhere"):
        pipeline_flow(config=str(config), overrides=[f"init_checkpoint={tmp_path / 'nowhere'}"])
    with pytest.raises(ConfigError, match="init_checkpoint runs:/0123abcd/checkpoint: run '0123abcd' not found"):
        pipeline_flow(config=str(config), overrides=["init_checkpoint=runs:/0123abcd/checkpoint"])
    with pytest.raises(TrackingError, match="unreachable"):
        pipeline_flow(config=str(config), overrides=["tracking.uri=http://127.0.0.1:9"])
    with pytest.raises(ConfigError, match="stage sft: .*nope"):
        pipeline_flow(config=str(config), overrides=["stages.sft.overrides=[nope=1]"])
    with pytest.raises(ConfigError, match="--from-stage needs --resume"):
        pipeline_flow(config=str(config), from_stage="rl")
    assert fakes == []  # nothing ran


def test_single_stage_from_an_earlier_runs_output(fakes, tmp_path, mlflow_uri):
    """`draftedit run evaluate --from-run <rl run>` style: a stage flow on its own, from a URI."""
    from flows.runner import run_stage
    from flows.stage_flows import STAGE_FLOWS

    config = ps.write_pipeline(tmp_path, mlflow_uri)
    result = pipeline_flow(config=str(config), overrides=["stages.quantize.enabled=false",
                                                          "stages.benchmark.enabled=false"])
    rl_row = next(r for r in result["rows"] if r["stage"] == "rl")
    uri = f"runs:/{rl_row['run_id']}/checkpoint"
    fakes.clear()
    request = StageRequest(config_path=str(tmp_path / "conf" / "evaluate.yaml"), overrides=["score=0.7"],
                           inputs={"checkpoint": uri}, output_dir=str(tmp_path / "outputs"), tracking_uri=mlflow_uri,
                           experiment="test")
    out = STAGE_FLOWS["evaluate"](request=request.to_params())  # as a deployment passes it: JSON values
    assert fakes[0][0] == "evaluate"
    assert out["metrics"]["eval/score"] == 0.7
    with pytest.raises(StageError, match="missing input"):
        run_stage("rl", StageRequest(str(tmp_path / "conf" / "rl.yaml"), tracking_uri=mlflow_uri))
    with pytest.raises(TrackingError, match="has no artifact 'checkpoint'"):
        run_stage("evaluate", StageRequest(
            str(tmp_path / "conf" / "evaluate.yaml"), inputs={"checkpoint": f"runs:/{result['parent_run_id']}/checkpoint"},
            tracking_uri=mlflow_uri, output_dir=str(tmp_path / "outputs"), experiment="test"))


def test_transient_classification():
    assert is_transient(ConnectionResetError())
    assert is_transient(TimeoutError())
    assert not is_transient(FileNotFoundError("x"))
    assert not is_transient(ValueError("bad config"))
    assert not is_transient(None)


def _child_work(queue) -> None:
    queue.put("done")


def test_a_process_forked_after_a_flow_exits_cleanly():
    """Prefect's log and event workers leave exit hooks that fail in a forked child (exit code 1 after
    the child did its work: DataLoader workers, metric processes); flows.prefect_server drops them
    (every stage and pipeline flow asks for that first)."""
    import multiprocessing as mp

    from prefect import flow

    from flows.prefect_server import exit_forks_cleanly

    exit_forks_cleanly()

    @flow
    def trivial() -> int:
        return 1

    assert trivial() == 1
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_child_work, args=(queue,))
    child.start()
    assert queue.get(timeout=60) == "done"
    child.join(timeout=60)
    assert child.exitcode == 0
