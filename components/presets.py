"""Decoding presets: `conf/decode/<name>.yaml` (or any YAML path) merged into `model.DecodeConfig`.

The presets (S = speedy, Q = quality, and whatever a user adds) are the files in `conf/decode/`:
code never lists them. `model.DecodeConfig`'s own field defaults mirror the authors' reference
`generate()` signature (the parity API of docs/design.md); everything in the project decodes from a preset.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from model import DecodeConfig

from .config import check_choice, check_fraction, check_min, conf_names, fail, load_config, resolve_conf

# tau_edit above 1 can never be exceeded by a probability: no token is edited (the "editing off" arm
# of every ablation).
EDITING_OFF = 1.01


def preset_names() -> list[str]:
    """The decoding presets: the files in conf/decode/."""
    return conf_names("decode")


def check_preset(key: str, name: str) -> None:
    """`key` must name a preset in conf/decode/ (one line naming the key and the known presets)."""
    check_choice(key, name, preset_names())


def check_decode_config(cfg: DecodeConfig, where: str = "decode") -> None:
    """Values the decoder would misread rather than reject (a threshold of 1.5 fills no mask by
    confidence and silently turns S or Q mode into one token per forward)."""
    check_fraction(f"{where}.threshold", cfg.threshold)
    check_min(f"{where}.editing_threshold", cfg.editing_threshold, 0.0, note=f" (above 1, e.g. {EDITING_OFF}: no editing)")
    check_min(f"{where}.block_length", cfg.block_length, 1)
    check_min(f"{where}.gen_length", cfg.gen_length, 1)
    check_min(f"{where}.max_post_steps", cfg.max_post_steps, 0)
    check_min(f"{where}.num_to_transfer", cfg.num_to_transfer, 1)
    check_min(f"{where}.temperature", cfg.temperature, 0.0)
    check_min(f"{where}.top_k", cfg.top_k, 1, allow_none=True)
    if cfg.top_p is not None and not 0.0 < cfg.top_p <= 1.0:
        fail(f"{where}.top_p", f"must be in (0, 1] or null, got {cfg.top_p!r}")
    check_min(f"{where}.mbe_window", cfg.mbe_window, 0)
    check_min(f"{where}.max_batch_size", cfg.max_batch_size, 1, allow_none=True)


def load_decode_config(name_or_path: str | os.PathLike,
                       overrides: Sequence[str] | Mapping[str, Any] | None = None, **fields: Any) -> DecodeConfig:
    """A preset by name (`speedy`, `quality`) or YAML path, then dotlist overrides, then keyword fields;
    checked (`check_decode_config`) so a bad threshold fails here, not as a silently slow decode."""
    merged: dict[str, Any] = {}
    if isinstance(overrides, Mapping):
        merged.update(overrides)
        overrides = None
    merged.update(fields)
    dotlist = list(overrides or []) + [f"{k}={_dotlist_value(v)}" for k, v in merged.items()]
    path = resolve_conf("decode", name_or_path, what="decoding preset")
    cfg = load_config(DecodeConfig, path, dotlist)
    check_decode_config(cfg, where=f"decode ({path.stem})")
    return cfg


def _dotlist_value(value: Any) -> str:
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
