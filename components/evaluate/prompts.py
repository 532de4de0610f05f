"""The prompt template mini-language: `{column}` and `{column|function|function(arg)}`.

Deliberately tiny (no expressions, no loops, no Jinja): a field names a column of the sample and may
pipe its value through a few formatting functions; `{{` and `}}` are literal braces.

    "{question}"                 the column as text
    "{digits|join(', ')}"        a list's items (or a string's characters) joined by ', '
    "{grid|spaced}"              the same joined by single spaces: "1204" -> "1 2 0 4"
    "{grid|chunks(4)|lines}"     rows of 4 characters (of a list: 4 items joined by spaces), one per line
    "{answer|strip}"             surrounding whitespace removed

A template is parsed when the task config is validated, so an unknown function or a malformed field
fails there with one line; a column the data lack fails when the data are checked.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable, Optional, Union

_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_ARG = r"'[^']*'|\"[^\"]*\"|-?\d+"
_CALL = rf"\s*\|\s*({_NAME})\s*(?:\(\s*({_ARG})?\s*\))?"
_FIELD = re.compile(rf"\{{\s*({_NAME})((?:{_CALL})*)\s*\}}")
_CALLS = re.compile(_CALL)


def _items(value: Any, fn: str) -> list[str]:
    if isinstance(value, str):
        return list(value)
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    raise TypeError(f"{fn} needs a string or a list, got {type(value).__name__} {value!r}")


def _join(value: Any, sep: str) -> str:
    return sep.join(_items(value, "join"))


def _chunks(value: Any, size: int) -> list[str]:
    if size < 1:
        raise ValueError(f"chunks needs a size >= 1, got {size}")
    items = _items(value, "chunks")
    sep = "" if isinstance(value, str) else " "
    return [sep.join(items[i:i + size]) for i in range(0, len(items), size)]


def _strip(value: Any) -> str:
    return str(value).strip()


# name -> (function, argument type or None when it takes no argument)
FUNCTIONS: dict[str, tuple[Callable[..., Any], Optional[type]]] = {
    "join": (_join, str),
    "spaced": (lambda value: _join(value, " "), None),
    "lines": (lambda value: _join(value, "\n"), None),
    "chunks": (_chunks, int),
    "strip": (_strip, None),
}


@dataclass(frozen=True)
class Field:
    column: str
    calls: tuple[tuple[str, Any], ...]  # (function name, argument or None)
    text: str  # as written, for error messages


Part = Union[str, Field]


class TemplateError(ValueError):
    """A template cannot be parsed or rendered (one line naming the field)."""


def _parse_call(name: str, raw: Optional[str], field_text: str) -> tuple[str, Any]:
    if name not in FUNCTIONS:
        raise TemplateError(f"unknown function {name!r} in {field_text}; known: {', '.join(sorted(FUNCTIONS))}")
    kind = FUNCTIONS[name][1]
    if kind is None:
        if raw is not None:
            raise TemplateError(f"function {name!r} in {field_text} takes no argument")
        return name, None
    if raw is None:
        raise TemplateError(f"function {name!r} in {field_text} needs one {kind.__name__} argument, e.g. {name}"
                            + ("(' ')" if kind is str else "(4)"))
    quoted = raw[0] in "'\""
    if (kind is str) != quoted:
        raise TemplateError(f"function {name!r} in {field_text} needs a {kind.__name__} argument, got {raw}")
    return name, raw[1:-1] if quoted else int(raw)


@lru_cache(maxsize=64)
def parse_template(template: str) -> tuple[Part, ...]:
    """Literal text and fields, in order; raises TemplateError for anything outside the language."""
    parts: list[Part] = []
    literal, i = [], 0
    while i < len(template):
        ch = template[i]
        if template.startswith("{{", i) or template.startswith("}}", i):
            literal.append(ch)
            i += 2
            continue
        if ch == "}":
            raise TemplateError(f"single '}}' at position {i}; write '}}}}' for a literal brace")
        if ch != "{":
            literal.append(ch)
            i += 1
            continue
        match = _FIELD.match(template, i)
        if match is None:
            end = template.find("}", i)
            shown = template[i:end + 1] if end != -1 else template[i:i + 30]
            raise TemplateError(
                f"bad field {shown!r} at position {i}: expected {{column}} or {{column|function}} "
                "(write '{{' for a literal brace)"
            )
        if literal:
            parts.append("".join(literal))
            literal = []
        text = match.group(0)
        calls = tuple(_parse_call(m.group(1), m.group(2), text) for m in _CALLS.finditer(match.group(2)))
        parts.append(Field(match.group(1), calls, text))
        i = match.end()
    if literal:
        parts.append("".join(literal))
    return tuple(parts)


def template_columns(template: str) -> list[str]:
    """The columns a template reads, in order of first use."""
    return list(dict.fromkeys(p.column for p in parse_template(template) if isinstance(p, Field)))


def render(template: str, fields: dict[str, Any]) -> str:
    """The template filled with `fields`; a missing column or a function that cannot apply raises
    TemplateError naming the field (a missing value is never rendered as 'None')."""
    out = []
    for part in parse_template(template):
        if isinstance(part, str):
            out.append(part)
            continue
        if fields.get(part.column) is None:
            raise TemplateError(f"{part.text}: the sample has no value for column {part.column!r}")
        value = fields[part.column]
        for name, arg in part.calls:
            fn = FUNCTIONS[name][0]
            try:
                value = fn(value) if arg is None else fn(value, arg)
            except (TypeError, ValueError) as exc:
                raise TemplateError(f"{part.text}: {exc}") from None
        out.append(value if isinstance(value, str) else str(value))
    return "".join(out)
