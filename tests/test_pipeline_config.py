"""Pipeline configs: every preset in conf/pipeline/ loads and every stage config it names validates
against that stage's schema; invalid configs fail with the offending key."""

from __future__ import annotations


from dataclasses import dataclass, field

import pytest

from components.config import CONF_DIR, ConfigError, load_config, save_config, to_yaml
from flows.config import STAGE_ORDER, config_hash, load_pipeline_config, preset_path
from flows.preflight import check_pipeline

PRESETS = sorted(p.stem for p in (CONF_DIR / "pipeline").glob("*.yaml"))


def test_the_three_presets_exist():
    assert {"tiny", "small", "llada2.1-mini"} <= set(PRESETS)


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_and_all_its_stage_configs_validate(preset, tokenizer_folder, monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)  # the GPU presets' configs, on any machine
    # llada2.1-mini starts from a downloaded checkpoint: a folder with its tokenizer stands in for it
    overrides = [f"init_checkpoint={tokenizer_folder}"] if preset == "llada2.1-mini" else []
    cfg = load_pipeline_config(preset, overrides)
    assert cfg.name == preset
    configs = check_pipeline(cfg)  # every stage config with its schema, tasks, presets, inputs, agreement
    assert set(configs) == {s for s in STAGE_ORDER if cfg.stage(s).enabled}
    for stage in STAGE_ORDER:
        sc = cfg.stage(stage)
        if sc.enabled:
            assert (CONF_DIR / sc.config).is_file(), f"{preset}: stages.{stage}.config {sc.config} is missing"


def test_tiny_is_the_cpu_default():
    cfg = load_pipeline_config()
    assert cfg.name == "tiny" and cfg.tracking.uri is None and cfg.init_checkpoint is None
    assert all(cfg.stage(s).enabled for s in STAGE_ORDER)


def test_the_real_checkpoint_preset_needs_its_folder():
    with pytest.raises(ConfigError, match="init_checkpoint"):
        load_pipeline_config("llada2.1-mini")


@pytest.mark.parametrize("overrides,match", [
    (["stages.sft.nope=1"], r"stages\.sft\.nope"),
    (["retries=many"], r"retries"),
    (["tracking.log_checkpoints=maybe"], r"tracking\.log_checkpoints"),
    (["stages.rl.config=''"], r"stages\.rl\.config: required"),
    (["retries=-1"], r"retries: must be >= 0"),
    (["stages.cpt.enabled=false", "stages.sft.enabled=false", "stages.rl.enabled=false"], r"need a model"),
    (["stages.data_prep.enabled=false"], r"need prepared data"),
    (["not_a_dotlist"], r"key\.sub=value"),
])
def test_invalid_overrides_name_the_key(overrides, match):
    with pytest.raises((ConfigError, ValueError), match=match):
        load_pipeline_config("tiny", overrides)


def test_a_stage_config_error_names_the_stage():
    cfg = load_pipeline_config("tiny", ["stages.sft.overrides=[trainer.max_stepz=3]"])
    with pytest.raises(ConfigError, match=r"stage sft: .*max_stepz"):
        check_pipeline(cfg)


def test_unknown_preset_lists_the_known_ones(tmp_path):
    with pytest.raises(ConfigError, match="known: .*tiny"):
        preset_path("huge")
    with pytest.raises(ConfigError, match="not found"):
        preset_path(tmp_path / "missing.yaml")


def test_config_hash_is_stable_and_sensitive():
    a = config_hash({"b": 1, "a": [1, 2]})
    assert a == config_hash({"a": [1, 2], "b": 1})
    assert a != config_hash({"a": [1, 2], "b": 2})


# ------------------------------------------------------------ components.config (the shared loader)


@dataclass
class _Inner:
    steps: int = 10
    name: str | None = None


@dataclass
class _Schema:
    lr: float = 0.1
    inner: _Inner = field(default_factory=_Inner)
    tags: list[str] = field(default_factory=list)

    def __post_init__(self):
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")


def test_load_config_layers_and_errors(tmp_path):
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("lr: 0.5\ninner:\n  steps: 3\n")
    cfg = load_config(_Schema, yaml_file, ["inner.name=x", "tags=[a,b]"])
    assert cfg == _Schema(lr=0.5, inner=_Inner(steps=3, name="x"), tags=["a", "b"])
    assert load_config(_Schema, yaml_file, {"lr": 2.0}).lr == 2.0
    with pytest.raises(ConfigError, match=r"bad\.yaml: inner\.stepz"):
        (tmp_path / "bad.yaml").write_text("inner:\n  stepz: 3\n")
        load_config(_Schema, tmp_path / "bad.yaml")
    with pytest.raises(ConfigError, match=r"inner\.steps.*Integer"):
        load_config(_Schema, None, ["inner.steps=ten"])
    with pytest.raises(ValueError, match="lr must be > 0"):
        load_config(_Schema, None, ["lr=-1"])
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(_Schema, tmp_path / "nope.yaml")
    (tmp_path / "broken.yaml").write_text("lr: [1,\n")
    with pytest.raises(ConfigError, match="cannot parse YAML"):
        load_config(_Schema, tmp_path / "broken.yaml")
    (tmp_path / "req.yaml").write_text("inner:\n  name: ???\n")
    with pytest.raises(ConfigError, match=r"missing required config value\(s\): inner\.name"):
        load_config(_Schema, tmp_path / "req.yaml")
    assert load_config(_Schema, tmp_path / "req.yaml", ["inner.name=given"]).inner.name == "given"


def test_save_config_round_trips_atomically(tmp_path):
    cfg = _Schema(lr=0.25, tags=["x"])
    path = save_config(cfg, tmp_path / "out" / "config.yaml")
    assert load_config(_Schema, path) == cfg
    assert [p.name for p in path.parent.iterdir()] == ["config.yaml"]  # no temporary file left
    assert "lr: 0.25" in to_yaml(cfg)
