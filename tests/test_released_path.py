"""The released-model path end to end on CPU: `--preset llada2.1-mini hardware=cpu` from a scaled stand-in.

The preset as a user runs it on GPUs (its own tokenizer, LoRA SFT under FSDP, EBPO, per-block FP8, the
GPU benchmark, the full task suite, registration), with the one CPU switch and the sizes cut so that it
finishes in minutes: data from local files (chat JSONL and prompt/response parquet through `datasets`),
SFT on 2 CPU processes, then the registered model answering through `draftedit serve model`'s app."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import torch
import yaml
from fastapi.testclient import TestClient
from safetensors import safe_open

from components.config import CONF_DIR
from components.serving import ModelServer, ServeConfig, create_app
from components.tracking import TAG_STAGE, child_runs, run_outputs
from components.training import load_train_config
from flows import cli
from flows.config import STAGE_ORDER
from train_support import REPO

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]
pytest.importorskip("peft")

SHAPE = ["--shape", "cpu", "--layers", "3", "--dense-layers", "1", "--experts", "4", "--groups", "2",
         "--topk-groups", "1", "--experts-per-token", "2", "--shared-experts", "1"]
TRAIN = ["trainer.max_steps=2", "trainer.batch_size=2", "trainer.accumulate_grad_batches=1",
         "trainer.log_every_steps=1", "trainer.checkpoint_every_steps=2", "trainer.val_every_steps=1000",
         "trainer.num_threads=1", "data.val_fraction=0.0", "data.num_workers=0", "averaging.top_k=1",
         "optim.warmup_steps=1"]
# Every stage's own cuts, appended to the preset's overrides (the hardware switch comes after them).
CUTS = {
    "sft": TRAIN,
    "rl": ["max_steps=1", "max_minutes=0", "prompts.train_size=8", "prompts.eval_size=2", "rollout.group_size=2",
           "rollout.prompts_per_step=2", "rollout.gen_length=32", "eval.every_steps=0", "trainer.num_threads=1"],
    "benchmark": ["prompts.num_prompts=2", "repeats=1", "warmup=0", "baselines.max_prompts=1",
                  "decode_overrides={gen_length: 32}",
                  "settings=[{decode: {preset: speedy}, batch_size: 2}, {decode: {preset: quality}, batch_size: 1},"
                  " {decode: {preset: speedy}, batch_size: 2, quant: fp8}]"],
    "evaluate": ["limit=1", "task_overrides=[decode.overrides.gen_length=32]", "presets=[speedy]"],
}


def _local_data(folder: Path) -> list[dict]:
    """A chat JSONL and a prompt/response parquet, as a user's own SFT data."""
    folder.mkdir()
    chats = [{"messages": [{"role": "user", "content": f"What is {a} plus {b}?"},
                           {"role": "assistant", "content": f"{a} plus {b} is {a + b}."}]}
             for a in range(6) for b in range(4)]
    (folder / "chat.jsonl").write_text("".join(json.dumps(c) + "\n" for c in chats))
    pd.DataFrame({"prompt": [f"Repeat: {w}" for w in ("alpha", "beta", "gamma", "delta") * 4],
                  "response": [w for w in ("alpha", "beta", "gamma", "delta") * 4]}).to_parquet(folder / "pairs.parquet")
    return [{"kind": "file", "path": str(folder / "chat.jsonl"), "messages_field": "messages"},
            {"kind": "file", "path": str(folder / "pairs.parquet"), "prompt_field": "prompt",
             "response_field": "response"}]


def _pipeline_file(tmp_path: Path, mlflow_uri: str) -> Path:
    cfg = yaml.safe_load((CONF_DIR / "pipeline" / "llada2.1-mini.yaml").read_text())
    cfg.update(output_dir=str(tmp_path / "outputs"), retry_delay_seconds=0, retries=0)
    cfg["tracking"]["uri"] = mlflow_uri
    sources = json.dumps(_local_data(tmp_path / "files"))
    cfg["stages"]["data_prep"]["overrides"] += [
        f"cache_dir={tmp_path / 'data'}", "max_seq_len=256", f"sft.external={sources}",
        "sft.synthetic.num_examples=16", "sft.synthetic.families=[sum]", "sft.synthetic.params={}"]
    for stage, cuts in CUTS.items():
        cfg["stages"][stage].setdefault("overrides", []).extend(cuts)
    path = tmp_path / "llada2.1-mini-cpu.yaml"
    path.write_text(yaml.safe_dump(cfg, width=1000))
    return path


def test_the_released_preset_runs_end_to_end_on_a_cpu_standin(tmp_path, mlflow_uri, monkeypatch, capsys):
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect"))
    monkeypatch.setenv("DRAFTEDIT_OUTPUT_DIR", str(tmp_path / "outputs"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("PYTHONPATH", str(REPO))  # the torchrun processes of the SFT stage import this tree
    standin = tmp_path / "standin"
    assert cli.main(["checkpoint", "init", "--like", "llada2.1-mini", *SHAPE, "--out", str(standin)]) == 0
    config = _pipeline_file(tmp_path, mlflow_uri)

    assert cli.main(["pipeline", "--preset", str(config), "hardware=cpu", f"init_checkpoint={standin}"]) == 0
    printed = capsys.readouterr().out
    assert "Registered model llada2.1-mini version 1" in printed

    client = mlflow.MlflowClient(mlflow_uri, registry_uri=mlflow_uri)
    [parent] = client.search_runs([client.get_experiment_by_name("llada2.1-mini").experiment_id],
                                  filter_string=f"tags.`{TAG_STAGE}` = 'pipeline'")
    runs = {r.data.tags[TAG_STAGE]: r for r in child_runs(client, parent.info.run_id)}
    assert list(runs) == [s for s in STAGE_ORDER if s != "cpt"]  # the preset fine-tunes, no CPT
    assert parent.info.status == "FINISHED" and all(r.info.status == "FINISHED" for r in runs.values())
    sft, rl = runs["sft"].data, runs["rl"].data
    assert sft.params["trainer.strategy"] == "fsdp" and sft.params["lora.enabled"] == "True"
    assert sft.metrics["train/world_size"] == 2 and "train/loss_m2t" in sft.metrics
    assert "rl/steps" in rl.metrics and "quantize/bytes_out" in runs["quantize"].data.metrics
    assert {"bench/speedy_b2_fp8/tps", "bench/speedy/tpf"} <= set(runs["benchmark"].data.metrics)
    evaluated = runs["evaluate"].data.metrics
    assert {"eval/gsm8k/accuracy", "eval/humaneval/pass_at_1", "eval/score", "eval/speedy/score"} <= set(evaluated)

    # The SFT export: LoRA merged into the released layout, only the adapted modules changed.
    sft_dir = Path(run_outputs(runs["sft"])["checkpoint"].removeprefix("file://"))  # recorded by path
    base = _tensors(standin)
    merged = _tensors(sft_dir)
    assert merged.keys() == base.keys()
    changed = {k for k in base if not torch.equal(base[k].float(), merged[k].float())}
    targets = load_train_config(CONF_DIR / "train" / "sft_lora_checkpoint.yaml").lora.target_modules
    assert changed and all(k.endswith(tuple(f".{t}.weight" for t in targets)) for k in changed), changed

    # The registered model answers through the server `draftedit serve model` runs.
    mlflow.set_tracking_uri(mlflow_uri)  # the registry follows it (a set registry URI would outlive the test)
    try:
        model = mlflow.pyfunc.load_model("models:/llada2.1-mini@champion").unwrap_python_model()
    finally:
        mlflow.set_tracking_uri(None)
    with TestClient(create_app(ModelServer(model, ServeConfig()))) as http:
        resp = http.post("/invocations", json={"inputs": {"prompt": ["What is 2 plus 3?"]},
                                               "params": {"preset": "speedy", "gen_length": 32}})
    assert resp.status_code == 200, resp.text
    [answer] = resp.json()["predictions"]
    assert answer["forwards"] >= 1 and isinstance(answer["completion"], str)


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    out = {}
    for shard in sorted(folder.glob("*.safetensors")):
        with safe_open(str(shard), "pt") as f:
            out.update({k: f.get_tensor(k) for k in f.keys()})
    return out
