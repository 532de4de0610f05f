"""The config toolkit: defaults live in conf/ only, one resolver, one atomic write, decode checks."""

from __future__ import annotations

import dataclasses
import importlib
import os

import pytest

from components.config import CONF_DIR, ConfigError, conf_defaults, conf_names, resolve_conf
from components.presets import load_decode_config
from model.files import atomic_write, atomic_writer

SCHEMA_MODULES = ["components.training.config", "components.data.config", "components.bench.config",
                  "components.quantize.config", "components.rl.config", "components.evaluate.config",
                  "flows.config", "components.serving", "components.presets"]


def _write(tmp_path, text: str) -> str:
    path = tmp_path / "defaults.yaml"
    path.write_text(text)
    return str(path)  # absolute: CONF_DIR / absolute is the absolute path


def test_defaults_come_from_the_yaml(tmp_path):
    path = _write(tmp_path, "lr: 0.5\nsteps: 3\nnames: [a, b]\nsub: {x: 1}\n")

    @dataclasses.dataclass
    @conf_defaults(path)
    class Settings:
        lr: float
        steps: int
        names: list[str]
        sub: dict

    one, two = Settings(), Settings(steps=4)
    assert (one.lr, one.steps, one.names, one.sub) == (0.5, 3, ["a", "b"], {"x": 1})
    assert two.steps == 4
    one.names.append("c")
    assert Settings().names == ["a", "b"], "every instance gets its own copy of a list default"


@pytest.mark.parametrize("yaml_text,body,needle", [
    ("lr: 0.5\n", "lr: float = 0.1", "has a default in code"),
    ("lr: 0.5\n", "lr: float\n    steps: int", r"steps: missing"),
    ("lr: 0.5\nlrr: 1\n", "lr: float", r"\['lrr'\] are not settings"),
])
def test_a_second_source_of_defaults_fails_at_import(tmp_path, yaml_text, body, needle):
    path = _write(tmp_path, yaml_text)
    source = f"@dataclasses.dataclass\n@conf_defaults({path!r})\nclass Settings:\n    {body}\n"
    with pytest.raises(ConfigError, match=needle):
        exec(source, {"dataclasses": dataclasses, "conf_defaults": conf_defaults})


@pytest.mark.parametrize("module", SCHEMA_MODULES)
def test_every_schema_takes_its_defaults_from_conf(module):
    """No schema dataclass carries a default value in code: each is decorated with conf_defaults
    (its defaults file), or declares only required fields."""
    mod = importlib.import_module(module)
    schemas = [obj for obj in vars(mod).values()
               if isinstance(obj, type) and dataclasses.is_dataclass(obj) and obj.__module__ == module]
    assert schemas
    for cls in schemas:
        if "__conf_defaults__" in cls.__dict__:
            continue
        defaulted = [f.name for f in dataclasses.fields(cls)
                     if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING]
        assert not defaulted, f"{module}.{cls.__name__} has defaults in code: {defaulted}"


def test_presets_are_discovered_from_conf():
    assert conf_names("decode") == sorted(p.stem for p in (CONF_DIR / "decode").glob("*.yaml"))
    assert resolve_conf("decode", "speedy") == CONF_DIR / "decode" / "speedy.yaml"
    with pytest.raises(ConfigError, match=r"unknown decoding preset 'turbo'; known: quality, speedy"):
        resolve_conf("decode", "turbo", what="decoding preset")
    with pytest.raises(ConfigError, match="not found"):
        resolve_conf("decode", "/nonexistent/x.yaml")


@pytest.mark.parametrize("fields,needle", [
    ({"threshold": 1.5}, r"DecodeConfig\.threshold must be in \[0, 1\] \(tau_mask\), got 1\.5 \(override 'threshold=1\.5'\)"),
    ({"editing_threshold": -0.1}, r"DecodeConfig\.editing_threshold must be >= 0"),
    ({"gen_length": 0}, r"DecodeConfig\.gen_length must be a positive integer, got 0 \(override"),
    ({"top_p": 0.0}, r"DecodeConfig\.top_p must be in \(0, 1\]"),
])
def test_decode_values_are_checked_when_loaded(fields, needle):
    """DecodeConfig checks itself; the loader adds which override set the value, in one line."""
    with pytest.raises(ConfigError, match=needle):
        load_decode_config("quality", **fields)
    assert load_decode_config("quality", editing_threshold=1.01).editing_threshold == 1.01  # editing off is valid


def _bench_choice(overrides):
    from components.bench.config import BenchConfig
    from components.config import load_config

    return load_config(BenchConfig, CONF_DIR / "bench" / "default.yaml", [f"settings=[{{decode: {overrides}}}]"]).settings[0].decode


def _rollout_choice(overrides):
    from components.config import load_config
    from components.rl.config import RLConfig

    sets = [f"rollout.decode.overrides.{k}={v}" for k, v in overrides.items()]
    return load_config(RLConfig, CONF_DIR / "rl" / "default.yaml", sets).rollout.decode


@pytest.mark.parametrize("choice_of", [_bench_choice, _rollout_choice], ids=["bench setting", "rl rollout"])
def test_one_decoding_choice_everywhere(choice_of):
    """A benchmark setting and the RL rollouts decode through the same `decode: {preset, overrides}` as
    a task: overrides given without a preset keep the enclosing config's preset (speedy for both)."""
    text = {_bench_choice: "{overrides: {threshold: 0.5}}", _rollout_choice: {"threshold": 0.5}}[choice_of]
    choice = choice_of(text)
    assert choice.preset == "speedy" and choice.overrides == {"threshold": 0.5}
    decode = choice.load()
    assert decode.threshold == 0.5 and decode.editing_threshold == load_decode_config("speedy").editing_threshold
    assert choice.load("quality").block_length == load_decode_config("quality").block_length  # preset replaced
    with pytest.raises(ConfigError, match=r"threshold.*must be in \[0, 1\]"):
        choice_of({_bench_choice: "{overrides: {threshold: 1.5}}", _rollout_choice: {"threshold": 1.5}}[choice_of]).load()


def test_the_rollouts_own_their_sampling_fields():
    from components.config import load_config
    from components.rl.config import RLConfig

    with pytest.raises(ConfigError, match=r"rl\.rollout\.decode\.overrides\.temperature: is set by the rollouts"):
        load_config(RLConfig, CONF_DIR / "rl" / "default.yaml", ["rollout.decode.overrides.temperature=0.5"])


def test_atomic_write_never_leaves_half_a_file(tmp_path):
    target = tmp_path / "out.json"
    atomic_write(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_writer(target) as fh:
            fh.write("half of the new")
            raise RuntimeError("killed mid-write")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["out.json"], "the temporary file is removed"
    atomic_write(target, b"\x00new")
    assert target.read_bytes() == b"\x00new" and oct(target.stat().st_mode)[-3:] == "644"
