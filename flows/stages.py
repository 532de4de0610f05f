"""The stage table: for each pipeline stage, its config schema and the adapter that calls its component.

Follow a stage to its code by name: `COMPONENTS["rl"]` holds `RLConfig` (components/rl/config.py)
and `adapters.reinforce` (flows/adapters.py), which calls `components.rl.run_rl`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components.cli_errors import config_errors
from components.config import load_config
from components.bench.config import BenchConfig
from components.data.config import DataConfig
from components.evaluate.config import EvalConfig
from components.quantize.config import QuantizeConfig
from components.rl.config import RLConfig
from components.training.config import TrainConfig

from . import adapters

# entry(cfg, out_dir, inputs) -> {"metrics": {...}, "<output>_dir": path, ...}; see flows/adapters.py.
Entry = Callable[[Any, Path, dict[str, Path]], dict]


class StageError(RuntimeError):
    """A stage cannot start (unknown stage, missing input) or its component broke its contract."""


@dataclass(frozen=True)
class Component:
    """A stage's config schema and the adapter (in flows.adapters) that calls its component."""

    schema: type  # the component's config dataclass
    entry: Entry
    inputs: tuple[str, ...]  # required input names (URIs resolved to local paths)
    optional: tuple[str, ...] = ()
    output: str | None = None  # name of the folder output the entry returns (key `<output>_dir`)


COMPONENTS: dict[str, Component] = {
    "data_prep": Component(DataConfig, adapters.prepare, (), ("checkpoint",), "data"),
    "cpt": Component(TrainConfig, adapters.train, ("data",), ("checkpoint",), "checkpoint"),
    "sft": Component(TrainConfig, adapters.train, ("data",), ("checkpoint",), "checkpoint"),
    "rl": Component(RLConfig, adapters.reinforce, ("checkpoint",), ("data",), "checkpoint"),
    "quantize": Component(QuantizeConfig, adapters.quantize, ("checkpoint",), (), "checkpoint"),
    "benchmark": Component(BenchConfig, adapters.benchmark, ("checkpoint",)),
    "evaluate": Component(EvalConfig, adapters.evaluate, ("checkpoint",)),
}


def stage_spec(stage: str) -> Component:
    """The stage's entry in COMPONENTS; StageError naming the known stages otherwise."""
    try:
        return COMPONENTS[stage]
    except KeyError:
        raise StageError(f"unknown stage {stage!r}; stages are {', '.join(COMPONENTS)}") from None


def entry_name(spec: Component) -> str:
    """`module.function` of a stage's adapter, for messages."""
    return f"{spec.entry.__module__}.{spec.entry.__qualname__}"


def load_stage_config(stage: str, config_path: str | os.PathLike, overrides: list[str] | None = None):
    """The stage's config as its component's dataclass; errors name the stage and the key."""
    schema = stage_spec(stage).schema
    with config_errors(config_path, overrides, context=f"stage {stage}"):
        return load_config(schema, config_path, overrides or [])
