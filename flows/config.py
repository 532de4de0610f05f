"""Schema of the pipeline config (`conf/pipeline/*.yaml`).

The pipeline config says which stages run, which stage config each uses (a YAML under `conf/`, loaded
with that stage's own schema) and with which overrides, where outputs go and where runs are tracked.
Stage configs are loaded and validated when the pipeline config is, so a typo in any stage fails
before the first stage starts.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from components.config import CONF_DIR, check_choice, check_min, conf_defaults, fail, load_config, resolve_conf, to_container

DEFAULT_PRESET = "tiny"
MODEL_STAGES = ("cpt", "sft", "rl")  # stages whose output is the next model


@dataclass
@conf_defaults("pipeline/defaults/pipeline.yaml", "tracking")
class TrackingConfig:
    uri: str | None  # None: sqlite:///<output_dir>/mlflow.db; a server: http://host:5000
    experiment: str
    registered_model: str
    champion_metric: str  # the evaluate run's metric that ranks registered models
    greater_is_better: bool
    log_checkpoints: bool  # copy checkpoints into MLflow artifacts (false: record their path)


@dataclass
@conf_defaults("pipeline/defaults/pipeline.yaml", "stages.data_prep")
class StageConfig:
    enabled: bool
    config: str  # stage YAML, relative to conf/ (or absolute)
    overrides: list[str]
    pool: str | None  # None: runs inside the pipeline's process; a work pool: its deployment there (flows/deploy.py)


@dataclass
@conf_defaults("pipeline/defaults/pipeline.yaml", "stages")
class StagesConfig:
    """One field per stage, in pipeline order: the stages of flows.stages.COMPONENTS (which imports the
    components, too heavy for reading a config; tests/test_stage_table.py keeps the two equal)."""

    data_prep: StageConfig
    cpt: StageConfig
    sft: StageConfig
    rl: StageConfig
    quantize: StageConfig
    benchmark: StageConfig
    evaluate: StageConfig


STAGE_ORDER = tuple(f.name for f in fields(StagesConfig))


@dataclass
@conf_defaults("pipeline/defaults/pipeline.yaml", "probe")
class ProbeConfig:
    """A quick evaluation of each model stage's checkpoint (`stages`: cpt, sft, rl, quantize), so the
    summary shows score, TPF and TPS per stage. Uses the evaluate stage's config plus `overrides`."""

    enabled: bool
    overrides: list[str]
    stages: list[str]

    def __post_init__(self) -> None:
        for i, stage in enumerate(self.stages):
            check_choice(f"probe.stages[{i}]", stage, (*MODEL_STAGES, "quantize"))


@dataclass
@conf_defaults("pipeline/defaults/pipeline.yaml", "reeval")
class ReevalConfig:
    """The scheduled re-evaluation of the registered champion (`draftedit serve reeval`)."""

    cron: str
    timezone: str
    alias: str
    deployment: str
    overrides: list[str]  # on top of the evaluate stage's config


@dataclass
@conf_defaults("pipeline/defaults/pipeline.yaml")
class PipelineConfig:
    name: str
    output_dir: str
    init_checkpoint: str | None  # model folder or URI the first model stage starts from
    init_data: str | None  # prepared-data folder or URI, used when data_prep is disabled
    serve_preset: str  # decoding preset of the registered pyfunc model
    retries: int  # retries of a stage after a transient failure (connection, timeout)
    retry_delay_seconds: float
    hardware: str | None  # conf/pipeline/hardware/<name>.yaml: per-stage device overrides
    tracking: TrackingConfig
    stages: StagesConfig
    probe: ProbeConfig
    reeval: ReevalConfig

    def __post_init__(self) -> None:
        check_min("retries", self.retries, 0)
        check_min("retry_delay_seconds", self.retry_delay_seconds, 0)
        for name in STAGE_ORDER:
            stage = getattr(self.stages, name)
            if stage.enabled and not stage.config:
                fail(f"stages.{name}.config", "required when the stage is enabled")
        if not any(getattr(self.stages, s).enabled for s in MODEL_STAGES) and not self.init_checkpoint:
            downstream = [s for s in ("quantize", "benchmark", "evaluate") if getattr(self.stages, s).enabled]
            if downstream:
                fail("init_checkpoint", f"stages {downstream} need a model but cpt, sft and rl are disabled "
                                        "and init_checkpoint is not set")

        placed = [s for s in STAGE_ORDER if getattr(self.stages, s).enabled and getattr(self.stages, s).pool]
        if placed and not str(self.tracking.uri or "").startswith(("http://", "https://")):
            # Stages on other hosts share nothing but the tracking server: its artifacts carry every output.
            fail(f"stages.{placed[0]}.pool", f"a stage on a work pool needs tracking.uri to be an MLflow server "
                                            f"(http://host:port) that every worker reaches; it is {self.tracking.uri!r}")
        if placed and not self.tracking.log_checkpoints:
            fail("tracking.log_checkpoints", f"must be true when a stage runs on a work pool (stages.{placed[0]}.pool): "
                                             "checkpoints reach the next stage's host only as MLflow artifacts")

        needs_data = [s for s in ("cpt", "sft") if getattr(self.stages, s).enabled]
        if needs_data and not self.stages.data_prep.enabled and not self.init_data:
            fail("init_data", f"stages {needs_data} need prepared data but data_prep is disabled and init_data is not set")

        if self.hardware is not None:
            hardware_overrides(self.hardware)

    def stage(self, name: str) -> StageConfig:
        """The config of stage `name`; KeyError naming the stages otherwise."""
        if name not in STAGE_ORDER:
            raise KeyError(f"unknown stage {name!r}; stages are {', '.join(STAGE_ORDER)}")
        return getattr(self.stages, name)


def preset_path(preset_or_path: str | os.PathLike) -> Path:
    """`tiny` -> conf/pipeline/tiny.yaml; a path is taken as is. Unknown names list the presets."""
    return resolve_conf("pipeline", preset_or_path, what="pipeline preset")


def load_pipeline_config(
    preset_or_path: str | os.PathLike = DEFAULT_PRESET, overrides: list[str] | None = None
) -> PipelineConfig:
    return load_config(PipelineConfig, preset_path(preset_or_path), overrides or [])


def stage_config_path(stage: StageConfig) -> Path:
    path = Path(stage.config)
    return path if path.is_absolute() else CONF_DIR / path


def hardware_overrides(name: str) -> dict[str, list[str]]:
    """The stage -> overrides map of conf/pipeline/hardware/<name>.yaml (device settings only)."""
    path = CONF_DIR / "pipeline" / "hardware" / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in path.parent.glob("*.yaml"))
        fail("hardware", f"no hardware file {name!r}; expected one of {known}")
    table = OmegaConf.to_container(OmegaConf.load(path))
    unknown = sorted(set(table) - set(STAGE_ORDER))
    if unknown:
        fail("hardware", f"{path.name} names unknown stages {unknown}; stages are {', '.join(STAGE_ORDER)}")
    return {stage: [str(o) for o in overrides] for stage, overrides in table.items()}


def stage_overrides(cfg: PipelineConfig, name: str) -> list[str]:
    """A stage's overrides: its own, then the pipeline's hardware overrides for it."""
    extra = hardware_overrides(cfg.hardware).get(name, []) if cfg.hardware is not None else []
    return list(cfg.stage(name).overrides) + extra


def config_hash(cfg: Any) -> str:
    """Stable short hash of a config's resolved values (keys sorted)."""
    blob = json.dumps(to_container(cfg), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
