"""Structured configs: dataclass schema ⊕ YAML file ⊕ dotlist overrides.

Every stage has a dataclass schema in its component and its defaults in `conf/`. Loading goes through
`load_config` so that an unknown key or a value of the wrong type fails with the full key path and the
file it came from, before any heavy work starts. Configs never run code: no resolvers are registered.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

T = TypeVar("T")

REPO_ROOT = Path(__file__).resolve().parent.parent
CONF_DIR = REPO_ROOT / "conf"


def default_output_dir() -> Path:
    """Where runs write by default: $DRAFTEDIT_OUTPUT_DIR or ./outputs."""
    return Path(os.environ.get("DRAFTEDIT_OUTPUT_DIR", "outputs")).resolve()


class ConfigError(ValueError):
    """A config file or override does not match its schema (message names the key and the source)."""


# ------------------------------------------------------------------------------------ defaults in conf/
_DEFAULT_FILES: dict[Path, dict] = {}


def _defaults_file(path: Path) -> dict:
    """A defaults YAML as plain data, read once (PyYAML: OmegaConf would be slower and adds nothing here)."""
    if path not in _DEFAULT_FILES:
        import yaml

        if not path.is_file():
            raise ConfigError(f"defaults file not found: {path}")
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
        _DEFAULT_FILES[path] = data
    return _DEFAULT_FILES[path]


def _schema_hints(cls: type) -> dict[str, Any]:
    import typing

    return typing.get_type_hints(cls)


def _nested_schema(hint: Any) -> type | None:
    """The dataclass inside a field's type (`X`, `X | None`), or None."""
    import typing

    if dataclasses.is_dataclass(hint):
        return hint
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if len(args) == 1 and dataclasses.is_dataclass(args[0]) else None


def _list_item_schema(hint: Any) -> type | None:
    import typing

    if typing.get_origin(hint) is list:
        (item,) = typing.get_args(hint) or (None,)
        return item if dataclasses.is_dataclass(item) else None
    return None


def build_schema(cls: type[T], values: Mapping[str, Any]) -> T:
    """An instance of dataclass `cls` from plain data (nested mappings become nested dataclasses);
    fields the mapping does not give keep the class's own defaults."""
    hints = _schema_hints(cls)
    kwargs: dict[str, Any] = {}
    for name, value in values.items():
        hint = hints.get(name)
        nested, item = _nested_schema(hint), _list_item_schema(hint)
        if nested is not None and isinstance(value, Mapping):
            kwargs[name] = build_schema(nested, value)
        elif item is not None and isinstance(value, list):
            kwargs[name] = [build_schema(item, v) if isinstance(v, Mapping) else v for v in value]
        else:
            kwargs[name] = copy.deepcopy(value)
    return cls(**kwargs)


def conf_defaults(path: str, section: str = "") -> Callable[[type[T]], type[T]]:
    """Class decorator (below `@dataclass`): the defaults of every field come from `conf/<path>`,
    at `section` (dotted). This keeps `conf/` the one place defaults live: a field declared without a
    value in code gets the YAML's; a field that has a value in code as well, a field the YAML does not
    give, or a YAML key the class does not declare fails at import, naming the file and the key."""
    file = CONF_DIR / path

    def apply(cls: type[T]) -> type[T]:
        values: Any = _defaults_file(file)
        for part in section.split(".") if section else ():
            values = values.get(part) if isinstance(values, dict) else None
        shown = file.relative_to(REPO_ROOT) if file.is_relative_to(REPO_ROOT) else file
        where = f"{shown}{': ' + section if section else ''}"
        if not isinstance(values, dict):
            raise ConfigError(f"{where}: expected a mapping with the defaults of {cls.__name__}")
        declared = list(cls.__dict__.get("__annotations__", {}))
        unknown = sorted(set(values) - set(declared))
        if unknown:
            raise ConfigError(f"{where}: {unknown} are not settings of {cls.__name__}")
        for name in declared:
            prefix = f"{where}{'.' if section else ': '}{name}"
            if name in cls.__dict__:
                raise ConfigError(f"{cls.__name__}.{name} has a default in code; it belongs in {prefix}")
            if name not in values:
                raise ConfigError(f"{prefix}: missing (every setting of {cls.__name__} needs its default here)")
            value = values[name]
            if isinstance(value, (dict, list)):
                setattr(cls, name, dataclasses.field(default_factory=_Factory(cls, name, value)))
            else:
                setattr(cls, name, value)
        cls.__conf_defaults__ = where  # where a reader (and the tests) find this class's defaults
        return cls

    return apply


class _Factory:
    """default_factory of a mapping or list field: a fresh copy, nested dataclasses built (the field's
    type is resolved on first use, when every class of the module exists)."""

    def __init__(self, owner: type, name: str, value: Any) -> None:
        self.owner, self.name, self.value = owner, name, value

    def __call__(self) -> Any:
        hint = _schema_hints(self.owner)[self.name]
        nested, item = _nested_schema(hint), _list_item_schema(hint)
        if nested is not None and isinstance(self.value, Mapping):
            return build_schema(nested, self.value)
        if item is not None:
            return [build_schema(item, v) if isinstance(v, Mapping) else copy.deepcopy(v) for v in self.value]
        return copy.deepcopy(self.value)


# ------------------------------------------------------------------------------------ validation toolkit
def fail(key: str, message: str) -> NoReturn:
    """Every schema check ends here: one line, the full key path first."""
    raise ConfigError(f"{key}: {message}")


def check_choice(key: str, value: Any, allowed: Sequence[Any]) -> None:
    if value not in allowed:
        fail(key, f"must be one of {list(allowed)}, got {value!r}")


def check_min(key: str, value: float | None, minimum: float, *, allow_none: bool = False, note: str = "") -> None:
    """value >= minimum (None allowed only when said so); `note` says what the bound means."""
    if value is None and allow_none:
        return
    if value is None or value < minimum:
        fail(key, f"must be >= {minimum}{' or null' if allow_none else ''}{note}, got {value!r}")


def check_positive(key: str, value: float | None, *, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if value is None or not value > 0:
        fail(key, f"must be > 0{' or null' if allow_none else ''}, got {value!r}")


def check_fraction(key: str, value: float, *, include_one: bool = True, note: str = "") -> None:
    """0 <= value <= 1, or 0 <= value < 1 where 1 has no meaning (a decay, a share held out)."""
    if not (0.0 <= value <= 1.0 if include_one else 0.0 <= value < 1.0):
        fail(key, f"must be in [0, 1{']' if include_one else ')'}{note}, got {value!r}")


# ------------------------------------------------------------------------------------ names in conf/
def conf_names(group: str) -> list[str]:
    """The configs of a `conf/<group>/` folder by name (`quality`, `speedy`, ...): presets are discovered,
    never listed in code."""
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def resolve_conf(group: str, name_or_path: str | os.PathLike, what: str | None = None) -> Path:
    """`quality` -> conf/<group>/quality.yaml; a YAML path (or any path with a separator) is taken as
    given. The one resolver for presets, tasks and stage configs; an unknown name lists the known ones."""
    text = str(name_or_path)
    what = what or f"{group} config"
    path = Path(text)
    if path.suffix in (".yaml", ".yml") or os.sep in text:
        if not path.is_file():
            candidate = CONF_DIR / path
            if not path.is_absolute() and candidate.is_file():
                return candidate
            raise ConfigError(f"{what} not found: {path}")
        return path
    candidate = CONF_DIR / group / f"{text}.yaml"
    if not candidate.is_file():
        raise ConfigError(f"unknown {what} {text!r}; known: {', '.join(conf_names(group)) or '(none)'}")
    return candidate


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
    try:
        return OmegaConf.from_dotlist(list(overrides))
    except Exception as exc:  # YAML parse errors of a value: yaml.YAMLError, OmegaConf errors
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"overrides {list(overrides)!r}: cannot parse a value ({first}); quote list items "
                          "that hold brackets, e.g. \"key=['a=[1]']\"") from exc


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


# ------------------------------------------------------------------------------------ where a value came from
# The key a validation message starts with: `trainer.batch_size: must be ...` or `retries must be ...`.
_KEY = re.compile(r"^([A-Za-z_][\w.\[\]-]*):?\s")


def names_source(message: str, yaml_path: str | os.PathLike | None) -> bool:
    """Whether a config error message already says where the value came from."""
    if yaml_path is not None and (str(yaml_path) in message or Path(yaml_path).name in message):
        return True
    return "(override '" in message or message.startswith(
        ("overrides", "config file not found", "missing required config value"))


def source_of(
    message: str,
    yaml_path: str | os.PathLike | None,
    overrides: Sequence[str] | Mapping[str, Any] | None,
) -> str:
    """" (override 'k=v')", " (FILE:LINE)" or " (FILE)" for the key a validation message starts with.

    The message's key may carry a prefix the user does not write (`train.trainer.batch_size`), so
    every suffix of it is tried (`trainer.batch_size`, `batch_size`), longest first.
    """
    match = _KEY.match(message)
    candidates = _suffixes(match.group(1)) if match else []
    items = list(overrides.items()) if isinstance(overrides, Mapping) else [
        tuple(o.split("=", 1)) for o in overrides or () if "=" in o
    ]
    for candidate in candidates:
        for key, value in items:
            key = key.strip()
            if candidate == key or candidate.startswith(key + "."):
                return f" (override '{key}={value}')"
    if yaml_path is None:
        return ""
    shown = _display(Path(yaml_path))
    for candidate in candidates:
        line = yaml_line(Path(yaml_path), candidate)
        if line is not None:
            return f" ({shown}:{line})"
    return f" (config {shown})"


def _suffixes(key: str) -> list[str]:
    parts = key.split(".")
    return [".".join(parts[i:]) for i in range(len(parts))]


def _display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def yaml_line(path: Path, key: str) -> int | None:
    """1-based line of dotted `key` (list items as `name[0]` or `name.0`) in a YAML file, or None."""
    import yaml

    try:
        node = yaml.compose(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    line = None
    for part in re.findall(r"[^.\[\]]+", key):
        if isinstance(node, yaml.MappingNode):
            found = next(((k, v) for k, v in node.value if getattr(k, "value", None) == part), None)
            if found is None:
                return None
            line, node = found[0].start_mark.line + 1, found[1]
        elif isinstance(node, yaml.SequenceNode) and part.isdigit() and int(part) < len(node.value):
            node = node.value[int(part)]
            line = node.start_mark.line + 1
        else:
            return None
    return line


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
    except ValueError as exc:  # a schema check (`fail`): say which override or file line set the value
        message = " ".join(str(exc).split())
        if not names_source(message, yaml_path):
            message += source_of(message, yaml_path, overrides)
        raise ConfigError(message) from exc


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
    """Write the resolved config as YAML atomically."""
    from model.files import atomic_write  # imported here: `model` pulls in torch, configs should not

    return atomic_write(path, to_yaml(cfg))
