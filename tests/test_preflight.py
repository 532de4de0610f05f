"""Preflight: a bad configuration is caught before any stage runs, in one line naming the key.

The table holds mistakes users make, each given as overrides of the fast preset (or a task file of
their own), each caught by `check_pipeline` — what `pipeline --dry-run` runs and what every pipeline
runs before its first stage. One test shows a real pipeline stops there, before any MLflow stage run.
"""

from __future__ import annotations

import json

import pytest

from components.config import ConfigError
from flows.config import load_pipeline_config
from flows.preflight import check_pipeline

EVAL = "stages.evaluate.overrides"
SFT = "stages.sft.overrides"
CPT = "stages.cpt.overrides"
RL = "stages.rl.overrides"
DATA = "stages.data_prep.overrides"
BENCH = "stages.benchmark.overrides"


def _task_file(tmp_path, name: str, data: str | None, **fields) -> str:
    """A user's task YAML over a JSONL file in tmp_path (`data` None: no data file)."""
    path = tmp_path / f"{name}.jsonl"
    if data is not None:
        path.write_text(data)
    task = {"name": name, "source": {"kind": "file", "path": str(path), "answer_field": "answer"},
            "prompt": {"template": "{question}"}, **fields}
    yaml_path = tmp_path / f"{name}.yaml"
    yaml_path.write_text(json.dumps(task))
    return str(yaml_path)


MALFORMED = '{"question": 1,}\n'
COLS = json.dumps({"q": "1+1", "answer": "2"}) + "\n"

# (overrides of the fast preset, or a callable(tmp_path) returning them; regex the message must match)
BAD = [
    # training stages: values, types, unknown keys
    ([f"{SFT}=[optim.lr=-1]"], r"stage sft: train\.optim\.lr: must be > 0"),
    ([f"{CPT}=[trainer.batch_size=-4]"], r"stage cpt: train\.trainer\.batch_size: must be >= 1"),
    ([f"{SFT}=[optim.lrr=1]"], r"stage sft: .*optim\.lrr"),
    ([f"{SFT}=[trainer.max_steps=many]"], r"stage sft: .*trainer\.max_steps"),
    ([f"{SFT}=[objective.t2t_rate_min=0.5,objective.t2t_rate_max=0.1]"], r"objective\.t2t_rate_min: exceeds"),
    ([f"{SFT}=[model.preset=huge]"], r"train\.model\.preset: must be one of"),
    ([f"{SFT}=[data.val_fraction=1.5]"], r"train\.data\.val_fraction"),
    ([f"{CPT}=[model.init_from=/nonexistent/ckpt]"], r"stage cpt: train\.model\.init_from: not found"),
    (["stages.cpt.config=train/nope.yaml"], r"stage cpt: .*not found"),
    # data preparation
    ([f"{DATA}=[tokenizer.vocab_size=100]"], r"data\.tokenizer\.vocab_size: must be >= 300"),
    ([f"{DATA}=['sft.synthetic.families=[nope]']"], r"data\.sft\.synthetic\.families: unknown \['nope'\]"),
    ([f"{DATA}=['cpt.external=[{{path: /nonexistent/*.jsonl}}]']"], r"data\.cpt\.external\[0\]\.path: no file"),
    ([f"{DATA}=[tokenizer.path=/nonexistent/tok]"], r"data\.tokenizer\.path: not found"),
    # values several stages must agree on
    ([f"{DATA}=[block_length=16,cpt.seq_len=128]"], r"train\.trainer\.block_length.*does not divide.*16"),
    ([f"{SFT}=[trainer.block_length=16]"], r"decodes with block_length 32, but sft trains .*16"),
    ([f"{DATA}=[max_seq_len=2048,cpt.seq_len=2048]"], r"max_position_embeddings=1024, but data\.cpt\.seq_len is 2048"),
    ([f"{SFT}=[model.overrides.mask_token_id=7]"],
     r"sft: train\.model with the tokenizer trained by data_prep: .*model mask_token_id=7 but the tokenizer's mask id is 2"),
    ([f"{SFT}=[model.overrides.vocab_size=310]"], r"sft: train\.model .*the tokenizer has 2048 ids but the model's vocab_size is 310"),
    ([f"{SFT}=[model.overrides.pad_token_id=3000]"], r"sft: train\.model .*'pad_token_id'=3000 is outside the vocabulary"),
    # RL
    ([f"{RL}=[rollout.decode.preset=turbo]"], r"rl\.rollout\.decode\.preset: must be one of \['quality', 'speedy'\]"),
    ([f"{RL}=[rollout.decode.overrides.threshold=1.5]"], r"rl\.rollout.*threshold:? must be in \[0, 1\]"),
    ([f"{RL}=[rollout.group_size=1]"], r"rl\.rollout\.group_size"),
    ([f"{RL}=[max_minutes=-1]"], r"rl\.max_minutes"),
    ([f"{RL}=[prompts.family=nosuch]"], r"nosuch"),
    # benchmark
    ([f"{BENCH}=['settings=[{{decode: {{preset: turbo}}}}]']"], r"bench\.settings\[0\]\.decode\.preset: unknown decoding preset 'turbo'"),
    ([f"{BENCH}=['settings=[{{decode: {{preset: speedy, overrides: {{threshold: 2.0}}}}}}]']"], r"settings\[0\].*threshold"),
    ([f"{BENCH}=[repeats=0]"], r"bench\.repeats: must be >= 1"),
    ([f"{BENCH}=[prompts.task=nosuchtask]"], r"bench\.prompts\.task.*nosuchtask"),
    # quantization
    (["stages.quantize.overrides=[method=int4]"], r"quantize\.method: must be one of"),
    # evaluation: tasks, presets, decoding, data files
    ([f"{EVAL}=['tasks=[nosuchtask]']"], r"eval\.tasks\[0\]: .*unknown task .nosuchtask."),
    ([f"{EVAL}=['presets=[turbo]']"], r"eval\.presets: must be one of \['quality', 'speedy'\]"),
    ([f"{EVAL}=['task_overrides=[decode.overrides.threshold=1.5]']"], r"eval\.tasks\[0\].*threshold:? must be in \[0, 1\]"),
    ([f"{EVAL}=['task_overrides=[decode.overrides.editing_threshold=-0.5]']"], r"editing_threshold:? must be >= 0"),
    ([f"{EVAL}=['task_overrides=[decode.overrides.block_length=16]']"], r"decodes with block_length 16"),
    ([f"{EVAL}=['task_overrides=[decode.preset=turbo]']"], r"turbo"),
    (["probe.overrides=['presets=[turbo]']"], r"probe: .*eval\.presets"),
    (["probe.stages=[sft,benchmark]"], r"probe\.stages\[1\]: must be one of \['cpt', 'sft', 'rl', 'quantize'\]"),
    (lambda tmp: [f"{EVAL}=['tasks=[{_task_file(tmp, 'mine', None)}]']"], r"mine.*(not found|no such file|does not exist)"),
    (lambda tmp: [f"{EVAL}=['tasks=[{_task_file(tmp, 'bad', MALFORMED)}]']"], r"bad\.jsonl:1: invalid JSON"),
    (lambda tmp: [f"{EVAL}=['tasks=[{_task_file(tmp, 'cols', COLS)}]']"],
     r"cols.*question"),
    # the pipeline itself
    (["serve_preset=turbo"], r"serve_preset: must be one of \['quality', 'speedy'\]"),
    (["retries=-1"], r"retries"),
    (["tracking.log_checkpoints=maybe"], r"tracking\.log_checkpoints"),
    (["init_checkpoint=/nonexistent/model"], r"init_checkpoint: not found"),
    (["stages.data_prep.enabled=false", "init_data=/nonexistent/data"], r"init_data: not found"),
]


@pytest.mark.parametrize("overrides,needle", BAD, ids=[f"bad{i:02d}" for i in range(len(BAD))])
def test_bad_configuration_is_caught_before_any_stage(overrides, needle, tmp_path):
    if callable(overrides):
        overrides = overrides(tmp_path)
    with pytest.raises(ConfigError, match=needle) as info:
        check_pipeline(load_pipeline_config("fast", overrides))
    assert "\n" not in str(info.value), "one line"


def test_the_table_is_long_enough():
    assert len(BAD) >= 30


def test_the_presets_pass(monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)  # small is a GPU preset: its configs, on any machine
    for preset in ("tiny", "fast", "small"):
        configs = check_pipeline(load_pipeline_config(preset))
        assert "evaluate" in configs
