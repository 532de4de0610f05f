"""Decoding presets: `conf/decode/<name>.yaml` (or any YAML path) merged into `model.DecodeConfig`."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from model import DecodeConfig

from .config import CONF_DIR, ConfigError, load_config

DECODE_DIR = CONF_DIR / "decode"


def preset_names() -> list[str]:
    return sorted(p.stem for p in DECODE_DIR.glob("*.yaml"))


def preset_path(name_or_path: str | os.PathLike) -> Path:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        return path
    candidate = DECODE_DIR / f"{name_or_path}.yaml"
    if not candidate.is_file():
        raise ConfigError(f"unknown decoding preset {str(name_or_path)!r}; known presets: {', '.join(preset_names())}")
    return candidate


def load_decode_config(name_or_path: str | os.PathLike = "quality",
                       overrides: Sequence[str] | Mapping[str, Any] | None = None, **fields: Any) -> DecodeConfig:
    """A preset by name (`speedy`, `quality`) or YAML path, then dotlist overrides, then keyword fields."""
    merged: dict[str, Any] = {}
    if isinstance(overrides, Mapping):
        merged.update(overrides)
        overrides = None
    merged.update(fields)
    dotlist = list(overrides or []) + [f"{k}={_dotlist_value(v)}" for k, v in merged.items()]
    return load_config(DecodeConfig, preset_path(name_or_path), dotlist)


def _dotlist_value(value: Any) -> str:
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
