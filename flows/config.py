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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from components.config import CONF_DIR, ConfigError, load_config, to_container

PIPELINE_CONF_DIR = CONF_DIR / "pipeline"
DEFAULT_PRESET = "tiny"
STAGE_ORDER = ("data_prep", "cpt", "sft", "rl", "quantize", "benchmark", "evaluate")
MODEL_STAGES = ("cpt", "sft", "rl")  # stages whose output is the next model


@dataclass
class TrackingConfig:
    uri: str | None = None  # None: sqlite:///<output_dir>/mlflow.db; a server: http://host:5000
    experiment: str = "draftedit"
    registered_model: str = "draftedit"
    champion_metric: str = "eval/score"  # the evaluate run's metric that ranks registered models
    greater_is_better: bool = True
    log_checkpoints: bool = True  # copy checkpoints into MLflow artifacts (false: record their path)


@dataclass
class StageConfig:
    enabled: bool = True
    config: str = ""  # stage YAML, relative to conf/ (or absolute)
    overrides: list[str] = field(default_factory=list)


@dataclass
class StagesConfig:
    data_prep: StageConfig = field(default_factory=StageConfig)
    cpt: StageConfig = field(default_factory=StageConfig)
    sft: StageConfig = field(default_factory=StageConfig)
    rl: StageConfig = field(default_factory=StageConfig)
    quantize: StageConfig = field(default_factory=StageConfig)
    benchmark: StageConfig = field(default_factory=StageConfig)
    evaluate: StageConfig = field(default_factory=StageConfig)


@dataclass
class ProbeConfig:
    """A quick evaluation of each model stage's checkpoint (cpt, sft, rl, quantize), so the summary
    shows score, TPF and TPS per stage. Uses the evaluate stage's config plus these overrides."""

    enabled: bool = True
    overrides: list[str] = field(default_factory=list)


@dataclass
class ReevalConfig:
    """The scheduled re-evaluation of the registered champion (`draftedit serve reeval`)."""

    cron: str = "0 3 * * *"
    timezone: str = "UTC"
    alias: str = "champion"
    deployment: str = "champion-reeval"
    overrides: list[str] = field(default_factory=list)  # on top of the evaluate stage's config


@dataclass
class PipelineConfig:
    name: str = DEFAULT_PRESET
    output_dir: str = "outputs"
    init_checkpoint: str | None = None  # model folder or URI the first model stage starts from
    init_data: str | None = None  # prepared-data folder or URI, used when data_prep is disabled
    serve_preset: str = "quality"  # decoding preset of the registered pyfunc model
    retries: int = 2  # retries of a stage after a transient failure (connection, timeout)
    retry_delay_seconds: float = 5.0
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    stages: StagesConfig = field(default_factory=StagesConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    reeval: ReevalConfig = field(default_factory=ReevalConfig)

    def __post_init__(self) -> None:
        if self.retries < 0:
            raise ValueError(f"retries must be >= 0, got {self.retries}")
        if self.retry_delay_seconds < 0:
            raise ValueError(f"retry_delay_seconds must be >= 0, got {self.retry_delay_seconds}")
        for name in STAGE_ORDER:
            stage = getattr(self.stages, name)
            if stage.enabled and not stage.config:
                raise ValueError(f"stages.{name}.config: required when the stage is enabled")
        if not any(getattr(self.stages, s).enabled for s in MODEL_STAGES) and not self.init_checkpoint:
            downstream = [s for s in ("quantize", "benchmark", "evaluate") if getattr(self.stages, s).enabled]
            if downstream:
                raise ValueError(
                    f"stages {downstream} need a model but cpt, sft and rl are disabled and "
                    f"init_checkpoint is not set"
                )

        needs_data = [s for s in ("cpt", "sft") if getattr(self.stages, s).enabled]
        if needs_data and not self.stages.data_prep.enabled and not self.init_data:
            raise ValueError(f"stages {needs_data} need prepared data but data_prep is disabled and init_data is not set")

    def stage(self, name: str) -> StageConfig:
        if name not in STAGE_ORDER:
            raise KeyError(f"unknown stage {name!r}; stages are {', '.join(STAGE_ORDER)}")
        return getattr(self.stages, name)


def preset_path(preset_or_path: str | os.PathLike) -> Path:
    """`tiny` -> conf/pipeline/tiny.yaml; a path is taken as is. Unknown names list the presets."""
    text = str(preset_or_path)
    path = Path(text)
    if path.suffix in (".yaml", ".yml") or os.sep in text:
        if not path.is_file():
            raise ConfigError(f"pipeline config not found: {path}")
        return path
    candidate = PIPELINE_CONF_DIR / f"{text}.yaml"
    if not candidate.is_file():
        known = sorted(p.stem for p in PIPELINE_CONF_DIR.glob("*.yaml"))
        raise ConfigError(f"unknown pipeline preset {text!r}; presets: {', '.join(known)}")
    return candidate


def load_pipeline_config(
    preset_or_path: str | os.PathLike = DEFAULT_PRESET, overrides: list[str] | None = None
) -> PipelineConfig:
    return load_config(PipelineConfig, preset_path(preset_or_path), overrides or [])


def stage_config_path(stage: StageConfig) -> Path:
    path = Path(stage.config)
    return path if path.is_absolute() else CONF_DIR / path


def config_hash(cfg: Any) -> str:
    """Stable short hash of a config's resolved values (keys sorted)."""
    blob = json.dumps(to_container(cfg), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
