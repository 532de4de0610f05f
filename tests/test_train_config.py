"""Every training config loads; bad input stops with a clear message before training starts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from components.config import ConfigError
from components.training import TrainingInputError, load_train_config, run_training
from train_support import REPO, data_overrides, prepare_tiny_data, train_overrides

CONFIGS = sorted((REPO / "conf" / "train").glob("*.yaml"))


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    return prepare_tiny_data(tmp_path_factory.mktemp("train-data"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    cfg = load_train_config(path)
    assert cfg.stage in ("cpt", "sft")


def test_shipped_baseline_really_is_m2t_only():
    base = load_train_config(REPO / "conf/train/sft_m2t_only.yaml")
    assert base.objective.t2t_rate_max == 0.0 and base.objective.mtf_prob == 0.0
    mixed = load_train_config(REPO / "conf/train/sft.yaml")
    assert mixed.objective.t2t_rate_max > 0 and mixed.objective.keep_weight > 0 and mixed.objective.t2t_stream_prob > 0


def test_unknown_key_names_its_path():
    with pytest.raises(ConfigError, match="objective.t2t_ratio"):
        load_train_config(REPO / "conf/train/sft.yaml", ["objective.t2t_ratio=0.1"])


@pytest.mark.parametrize("override,field", [
    ("objective.t_min=0.9", "objective.t_min"),  # above t_max=... (band inverted) once t_max is lower
    ("objective.t2t_source=random", "objective.t2t_source"),
    ("objective.mtf_start_step=-1", "objective.mtf_start_step"),
    ("objective.t2t_shift_prob=1.5", "objective.t2t_shift_prob"),
    ("objective.mbe_window=0", "objective.mbe_window"),
    ("trainer.strategy=horovod", "trainer.strategy"),
    ("trainer.block_length=-1", "trainer.block_length"),
    ("optim.betas=[0.9]", "optim.betas"),
])
def test_invalid_values_name_the_field(override, field):
    extra = ["objective.t_max=0.5"] if field == "objective.t_min" else []
    with pytest.raises((ValueError, ConfigError), match=field.replace(".", r"\.")):
        load_train_config(REPO / "conf/train/sft.yaml", [override, *extra])


def test_mbe_rows_need_editing_stream_rows():
    with pytest.raises(ConfigError, match=r"objective\.mbe_prob: needs train\.objective\.t2t_stream_prob > 0"):
        load_train_config(REPO / "conf/train/sft.yaml", ["objective.mbe_prob=0.5", "objective.t2t_stream_prob=0.0"])


def _no_training_happened(out: Path) -> None:
    assert not (out / "checkpoints").exists() and not (out / "model").exists()


def test_stage_without_rows_stops_before_training(tmp_path):
    from components.data import load_data_config, prepare_data

    cpt_only = prepare_data(load_data_config(overrides=data_overrides(tmp_path / "d") + ["sft.enabled=false"]))
    cfg = load_train_config(None, train_overrides(cpt_only.root, "sft"))
    with pytest.raises(TrainingInputError, match="no sft rows"):
        run_training(cfg, tmp_path / "run")
    _no_training_happened(tmp_path / "run")


@pytest.mark.parametrize("content,message", [("", "empty"), (None, "not found|does not exist|no such|missing")])
def test_empty_or_missing_dataset_file_stops_before_training(tmp_path, content, message):
    from components.data import DataError

    empty = tmp_path / "data.jsonl"
    if content is not None:
        empty.write_text(content)
    overrides = train_overrides(tmp_path, "cpt")
    overrides = [o for o in overrides if not o.startswith("data.prepared")]
    data = data_overrides(tmp_path / "d") + ["cpt.synthetic.enabled=false", "sft.enabled=false",
                                             f"cpt.external=[{{kind: file, path: '{empty}'}}]"]
    cfg = load_train_config(None, overrides + ["data.overrides=[" + ",".join(json.dumps(d) for d in data) + "]"])
    with pytest.raises(DataError, match=f"(?i){message}"):
        run_training(cfg, tmp_path / "run")
    _no_training_happened(tmp_path / "run")


def test_rows_longer_than_the_model_limit_stop_before_training(prepared, tmp_path):
    cfg = load_train_config(None, train_overrides(prepared.root, "cpt") + ["model.overrides.max_position_embeddings=16"])
    with pytest.raises(TrainingInputError, match="max_position_embeddings=16"):
        run_training(cfg, tmp_path / "run")
    _no_training_happened(tmp_path / "run")


def test_tokenizer_without_mask_token_stops_before_training(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    from model.tokenizer import TokenizerError

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel()
    tok.train_from_iterator(["some text 123"] * 10, trainers.BpeTrainer(vocab_size=300, special_tokens=["<|eos|>"]))
    (tmp_path / "tok").mkdir()
    tok.save(str(tmp_path / "tok" / "tokenizer.json"))
    data = data_overrides(tmp_path / "d") + [f"tokenizer.path={tmp_path / 'tok'}"]
    overrides = [o for o in train_overrides(tmp_path, "sft") if not o.startswith("data.prepared")]
    cfg = load_train_config(None, overrides + ["data.overrides=[" + ",".join(json.dumps(d) for d in data) + "]"])
    with pytest.raises(TokenizerError, match="mask token"):
        run_training(cfg, tmp_path / "run")
    _no_training_happened(tmp_path / "run")


def test_checkpoint_with_a_different_tokenizer_stops_before_training(prepared, tmp_path):
    from model import DiffusionLM, ModelConfig

    other = DiffusionLM(ModelConfig.tiny(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=1, head_dim=16, mask_token_id=5))
    other.save_pretrained(tmp_path / "ckpt")
    overrides = [o for o in train_overrides(prepared.root, "sft") if not o.startswith("model.overrides")]
    cfg = load_train_config(None, overrides + [f"model.init_from={tmp_path / 'ckpt'}"])
    with pytest.raises(TrainingInputError, match="vocab_size is 64"):
        run_training(cfg, tmp_path / "run")
    _no_training_happened(tmp_path / "run")
