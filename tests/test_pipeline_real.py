"""The real stages end to end through `draftedit pipeline` (every component, tiny sizes), then the
registered champion answers through the MLflow pyfunc and `draftedit compare` reads the runs."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
import yaml

from components.tracking import TAG_STAGE, child_runs
from flows import cli
from flows.config import STAGE_ORDER

pytestmark = pytest.mark.usefixtures("prefect_harness")

TINY_MODEL = ("model.overrides={hidden_size: 32, intermediate_size: 64, num_hidden_layers: 2, "
              "num_attention_heads: 2, num_key_value_heads: 1, head_dim: 16}")
TRAIN = ["trainer.max_steps=2", "trainer.batch_size=2", "trainer.val_every_steps=2",
         "trainer.checkpoint_every_steps=2", "trainer.log_every_steps=1", "objective.t2t_warmup_steps=0"]


def write_config(tmp_path: Path, mlflow_uri: str) -> Path:
    stages = {
        "data_prep": {"config": "data/default.yaml", "overrides": [
            f"cache_dir={tmp_path / 'data'}", "tokenizer.vocab_size=400", "tokenizer.max_train_bytes=60000",
            "cpt.stdlib.max_files=4", "cpt.stdlib.max_bytes=40000", "cpt.synthetic.families=[sum]",
            "cpt.synthetic.params={}", "cpt.synthetic.num_examples=40", "sft.synthetic.families=[sum]",
            "sft.synthetic.params={}", "sft.synthetic.num_examples=40"]},
        "cpt": {"config": "train/cpt.yaml", "overrides": [TINY_MODEL, *TRAIN]},
        "sft": {"config": "train/sft.yaml", "overrides": [*TRAIN, "objective.mtf_prob=0.5"]},
        "rl": {"config": "rl/default.yaml", "overrides": [
            "max_steps=1", "max_minutes=0", "prompts.train_size=8", "prompts.eval_size=4", "rollout.group_size=2",
            "rollout.prompts_per_step=2", "rollout.gen_length=8", "eval.every_steps=0"]},
        "quantize": {"config": "quantize/int8.yaml"},
        "benchmark": {"config": "bench/default.yaml", "overrides": [
            "prompts.num_prompts=2", "repeats=1", "warmup=0", "baselines.max_prompts=1", "decode_overrides={gen_length: 8}",
            "settings=[{decode: {preset: speedy}, batch_size: 2}, {decode: {preset: quality}, batch_size: 1}, "
            "{decode: {preset: speedy}, batch_size: 2, quant: int8_dynamic}]"]},
        "evaluate": {"config": "eval/default.yaml", "overrides": [
            "tasks=[sum, sort]", "limit=2", "task_overrides=[decode.overrides.gen_length=8]"]},
    }
    cfg = {
        "name": "real-test",
        "output_dir": str(tmp_path / "outputs"),
        "retry_delay_seconds": 0,
        "tracking": {"uri": mlflow_uri, "experiment": "real", "registered_model": "real"},
        "stages": stages,
        "probe": {"enabled": True, "overrides": ["limit=1", "tasks=[sum]"]},
    }
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(cfg, width=1000))
    return path


def test_real_pipeline_end_to_end(tmp_path, mlflow_uri, monkeypatch, capsys):
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect"))  # cli.main would set a default otherwise
    monkeypatch.setenv("DRAFTEDIT_OUTPUT_DIR", str(tmp_path / "outputs"))
    config = write_config(tmp_path, mlflow_uri)

    assert cli.main(["pipeline", "--preset", str(config)]) == 0
    printed = capsys.readouterr().out
    for stage in STAGE_ORDER:
        assert stage in printed
    assert "speedy_b2_int8_dynamic" in printed and "reference" in printed and "Registered model real version 1" in printed
    # live progress of the training and RL stages reaches the terminal through Prefect's log_prints
    assert "[cpt] step 2/2 (100%)" in printed and "[sft] step 2/2 (100%)" in printed and "[rl] step 1/1" in printed
    assert "final model (evaluate stage)" in printed

    client = mlflow.MlflowClient(mlflow_uri, registry_uri=mlflow_uri)
    [parent] = client.search_runs([client.get_experiment_by_name("real").experiment_id],
                                  filter_string=f"tags.`{TAG_STAGE}` = 'pipeline'")
    assert parent.info.status == "FINISHED"
    runs = {r.data.tags[TAG_STAGE]: r for r in child_runs(client, parent.info.run_id)}
    assert list(runs) == list(STAGE_ORDER)
    assert all(r.info.status == "FINISHED" for r in runs.values())
    assert "train/loss_m2t" in runs["cpt"].data.metrics and "train/loss_t2t" in runs["sft"].data.metrics
    assert "rl/steps" in runs["rl"].data.metrics
    for stage in ("cpt", "sft", "rl", "quantize"):  # the probe gives every model stage a score row
        assert {"eval/score", "eval/tpf", "eval/tps"} <= set(runs[stage].data.metrics)
    assert {"bench/speedy/tps", "bench/quality/tpf"} <= set(runs["benchmark"].data.metrics)
    assert {"eval/sum/accuracy", "eval/sort/tpf", "eval/score"} <= set(runs["evaluate"].data.metrics)
    files = {a.path for a in client.list_artifacts(runs["sft"].info.run_id, "checkpoint")}
    assert {"checkpoint/config.json", "checkpoint/model.safetensors", "checkpoint/tokenizer.json"} <= files

    # The registered champion decodes through MLflow's pyfunc interface.
    champion = client.get_model_version_by_alias("real", "champion")
    assert champion.run_id == runs["evaluate"].info.run_id
    mlflow.set_tracking_uri(mlflow_uri)
    try:
        model = mlflow.pyfunc.load_model("models:/real@champion")
        out = model.predict({"prompt": ["3 + 4 ="]}, params={"preset": "speedy", "gen_length": 8})
    finally:
        mlflow.set_tracking_uri(None)
    assert len(out) == 1 and out["forwards"][0] >= 1

    # `draftedit compare` on the pipeline run prints the table and writes the plot.
    plot = tmp_path / "cmp.png"
    assert cli.main(["compare", parent.info.run_id, "--preset", str(config), "--out", str(plot)]) == 0
    table = capsys.readouterr().out
    assert "speedy" in table and "eval" in table and "TPS" in table
    assert plot.stat().st_size > 1000
