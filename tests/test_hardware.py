"""`hardware=cpu`: the same preset on this machine's CPU, device settings only; a GPU preset on a machine
without one stops in preflight with one line naming the key."""

from __future__ import annotations

import pytest
import torch

from components.config import ConfigError, to_container
from flows.config import load_pipeline_config, stage_config_path, stage_overrides
from flows.preflight import check_device, check_pipeline
from flows.stages import load_stage_config

DEVICE_KEYS = {"trainer.accelerator", "trainer.devices", "trainer.precision", "trainer.strategy", "device"}


def _flat(tree, prefix=""):
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items() for k, v in _flat(sub, f"{prefix}{key}.").items()}
    return {prefix[:-1]: tree}


def _stage_configs(cfg):
    return {s: load_stage_config(s, stage_config_path(cfg.stage(s)), stage_overrides(cfg, s))
            for s in ("sft", "rl", "benchmark")}


def test_hardware_cpu_changes_only_device_settings(tmp_path):
    gpu = _stage_configs(load_pipeline_config("llada2.1-mini", [f"init_checkpoint={tmp_path}"]))
    cpu = _stage_configs(load_pipeline_config("llada2.1-mini", [f"init_checkpoint={tmp_path}", "hardware=cpu"]))
    for stage in gpu:
        a, b = _flat(to_container(gpu[stage])), _flat(to_container(cpu[stage]))
        changed = {k for k in a if a[k] != b[k]}
        assert changed and changed <= DEVICE_KEYS, (stage, changed)
        check_device(stage, cpu[stage], "cpu")  # runs here, with or without a GPU
    assert cpu["sft"].lora.enabled and cpu["sft"].trainer.precision == "bf16-mixed"


def test_gpu_preset_on_a_machine_without_gpu_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = load_pipeline_config("llada2.1-mini", [f"init_checkpoint={tmp_path}"])
    with pytest.raises(ConfigError, match=r"^stage sft: train\.trainer\.accelerator: is 'gpu' but this machine "
                                          r"has no CUDA device \(hardware=cpu") as info:
        check_pipeline(cfg)
    assert "\n" not in str(info.value)


def test_a_strategy_the_hardware_cannot_run_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = load_pipeline_config("llada2.1-mini", [f"init_checkpoint={tmp_path}"])
    sft = load_stage_config("sft", stage_config_path(cfg.stage("sft")), ["trainer.accelerator=cpu"])
    assert sft.trainer.strategy == "fsdp"
    check_device("sft", sft, "cpu")  # FSDP runs on CPU processes
    deepspeed = load_stage_config("sft", stage_config_path(cfg.stage("sft")),
                                  ["trainer.accelerator=cpu", "trainer.strategy=deepspeed"])
    with pytest.raises(ConfigError, match=r"^stage sft: train\.trainer\.strategy: deepspeed needs trainer\.accelerator=gpu"):
        check_device("sft", deepspeed, "cpu")


def test_unknown_hardware_names_the_key():
    with pytest.raises(ConfigError, match=r"hardware: no hardware file 'tpu'; expected one of \['cpu'\]"):
        load_pipeline_config("fast", ["hardware=tpu"])
