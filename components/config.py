"""Structured configs: dataclass schema ⊕ YAML file ⊕ dotlist overrides.

Every stage has a dataclass schema in its component and its defaults in `conf/`. Loading goes through
`load_config` so that an unknown key or a value of the wrong type fails with the full key path and the
file it came from, before any heavy work starts. Configs never run code: no resolvers are registered.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

T = TypeVar("T")

REPO_ROOT = Path(__file__).resolve().parent.parent
CONF_DIR = REPO_ROOT / "conf"


class ConfigError(ValueError):
    """A config file or override does not match its schema (message names the key and the source)."""


def _describe(exc: OmegaConfBaseException) -> str:
    # OmegaConf messages carry extra "full_key:/object_type=" lines; keep the first line and add the key.
    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    key = getattr(exc, "full_key", None)
    return f"{key}: {first}" if key and key not in first else first


def _parse_overrides(overrides: Sequence[str] | Mapping[str, Any] | None) -> DictConfig:
    if overrides is None:
        return OmegaConf.create({})
    if isinstance(overrides, Mapping):
        return OmegaConf.create(dict(overrides))
    if isinstance(overrides, str):
        raise ConfigError(f"overrides must be a list of 'key=value' strings, got the string {overrides!r}")
    bad = [o for o in overrides if not isinstance(o, str) or "=" not in o or o.startswith("=")]
    if bad:
        raise ConfigError(f"overrides must look like 'key.sub=value'; got {bad!r}")
    return OmegaConf.from_dotlist(list(overrides))


def _clear_replaced_mappings(base: DictConfig, overrides) -> None:
    """`key={...}` on the command line replaces the mapping at `key` (as `key=[...]` replaces a list):
    merging would keep the keys it does not name, so `params={}` could never clear a default."""
    if overrides is None or isinstance(overrides, Mapping):
        return
    for item in overrides:
        key, _, value = item.partition("=")
        if not value.strip().startswith("{"):
            continue
        node = OmegaConf.select(base, key.strip(), throw_on_missing=False)
        if isinstance(node, DictConfig) and OmegaConf.get_type(node) is dict:
            for name in list(node.keys()):
                del node[name]


def merge_config(
    schema_cls: type[T],
    yaml_path: str | os.PathLike | None = None,
    overrides: Sequence[str] | Mapping[str, Any] | None = None,
) -> DictConfig:
    """The merged, still-structured OmegaConf object (schema ⊕ YAML ⊕ overrides), validated."""
    if not dataclasses.is_dataclass(schema_cls):
        raise TypeError(f"schema_cls must be a dataclass type, got {schema_cls!r}")
    base = OmegaConf.structured(schema_cls)
    layers: list[tuple[str, DictConfig]] = []
    if yaml_path is not None:
        path = Path(yaml_path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            loaded = OmegaConf.load(path)
        except Exception as exc:  # YAML syntax errors come from several libraries
            raise ConfigError(f"{path}: cannot parse YAML: {exc}") from exc
        if not isinstance(loaded, DictConfig):
            raise ConfigError(f"{path}: expected a mapping at the top level")
        layers.append((str(path), loaded))
    layers.append(("overrides", _parse_overrides(overrides)))
    for source, layer in layers:
        try:
            if source == "overrides":
                _clear_replaced_mappings(base, overrides)
            base = OmegaConf.merge(base, layer)
        except OmegaConfBaseException as exc:
            raise ConfigError(f"{source}: {_describe(exc)}") from exc
        except TypeError as exc:  # e.g. `a.0.b=x` addressing a list item: OmegaConf raises a bare TypeError
            raise ConfigError(f"{source}: {exc} (a list item cannot be overridden by index; override the "
                              f"whole list, e.g. 'key=[...]')") from exc
    # A YAML marks a value the user must give with `???`. Merging `???` over a schema default keeps the
    # default, so check the YAML ⊕ overrides layers on their own as well.
    user_layers = OmegaConf.merge(*(layer for _, layer in layers)) if layers else OmegaConf.create({})
    missing = sorted(set(OmegaConf.missing_keys(base)) | set(OmegaConf.missing_keys(user_layers)))
    if missing:
        raise ConfigError(f"missing required config value(s): {', '.join(missing)}")
    return base


def load_config(
    schema_cls: type[T],
    yaml_path: str | os.PathLike | None = None,
    overrides: Sequence[str] | Mapping[str, Any] | None = None,
) -> T:
    """Load `yaml_path` over the defaults of `schema_cls`, apply `overrides`, return a dataclass instance.

    The instance is built by OmegaConf, so the dataclass `__post_init__` validation runs too; its
    errors (ValueError) propagate unchanged.
    """
    merged = merge_config(schema_cls, yaml_path, overrides)
    try:
        return OmegaConf.to_object(merged)  # type: ignore[return-value]
    except OmegaConfBaseException as exc:
        raise ConfigError(_describe(exc)) from exc


def to_container(cfg: Any) -> dict[str, Any]:
    """Plain nested dict of a dataclass instance or OmegaConf object (for logging and hashing)."""
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        cfg = OmegaConf.structured(cfg)
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)  # type: ignore[return-value]
    if isinstance(cfg, Mapping):
        return dict(cfg)
    raise TypeError(f"cannot turn {type(cfg).__name__} into a config mapping")


def to_yaml(cfg: Any) -> str:
    """YAML text of a config (dataclass, DictConfig or mapping)."""
    return OmegaConf.to_yaml(OmegaConf.create(to_container(cfg)))


def save_config(cfg: Any, path: str | os.PathLike) -> Path:
    """Write the resolved config as YAML atomically (tmp file then os.replace)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(to_yaml(cfg))
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path
