"""Decoding presets: `conf/decode/<name>.yaml` (or any YAML path) merged into `model.DecodeConfig`.

The presets (S = speedy, Q = quality, and whatever a user adds) are the files in `conf/decode/`:
code never lists them. `model.DecodeConfig`'s own field defaults mirror the authors' reference
`generate()` signature (the parity API of docs/design.md); everything in the project decodes from a preset.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from model import DecodeConfig

from .config import check_choice, conf_defaults, conf_names, load_config, resolve_conf

# tau_edit above 1 can never be exceeded by a probability: no token is edited (the "editing off" arm
# of every ablation).
EDITING_OFF = 1.01


def preset_names() -> list[str]:
    """The decoding presets: the files in conf/decode/."""
    return conf_names("decode")


def check_preset(key: str, name: str) -> None:
    """`key` must name a preset in conf/decode/ (one line naming the key and the known presets)."""
    check_choice(key, name, preset_names())


def load_decode_config(name_or_path: str | os.PathLike,
                       overrides: Sequence[str] | Mapping[str, Any] | None = None, **fields: Any) -> DecodeConfig:
    """A preset by name (`speedy`, `quality`) or YAML path, then dotlist overrides, then keyword fields;
    `DecodeConfig` checks itself, and `load_config` turns its ValueError into one line naming the
    file line or override that set the value, so a bad threshold fails here, not as a silently slow decode."""
    merged: dict[str, Any] = {}
    if isinstance(overrides, Mapping):
        merged.update(overrides)
        overrides = None
    merged.update(fields)
    dotlist = list(overrides or []) + [f"{k}={_dotlist_value(v)}" for k, v in merged.items()]
    path = resolve_conf("decode", name_or_path, what="decoding preset")
    return load_config(DecodeConfig, path, dotlist)


@dataclass
@conf_defaults("decode/defaults/choice.yaml")
class DecodeChoice:
    """How something decodes: a preset in conf/decode/ plus overrides of its fields.

    The one shape of every config that decodes (a task's `decode`, a benchmark setting's `decode`, the
    RL rollouts' `rollout.decode`), so that `decode.preset=quality decode.overrides.threshold=0.8` means
    the same wherever it is written. The preset's default is the enclosing config's (a task decodes
    with quality, the rollouts with speedy)."""

    preset: str
    overrides: dict[str, Any]

    def check(self, key: str) -> None:
        """The preset exists (one line naming `key`.preset and the known presets)."""
        check_preset(f"{key}.preset", self.preset)

    def load(self, preset: str | None = None, overrides: Mapping[str, Any] | None = None,
             **fields: Any) -> DecodeConfig:
        """The DecodeConfig: this preset (or `preset`, which replaces it), `overrides` under this
        choice's own, then keyword `fields` that the caller owns (ids, batch size, sampling seed)."""
        return load_decode_config(preset or self.preset, overrides={**(overrides or {}), **self.overrides}, **fields)


def _dotlist_value(value: Any) -> str:
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
