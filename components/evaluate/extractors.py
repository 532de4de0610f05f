"""Answer extractors: turn a model's raw output into the answer a scorer judges.

An extractor is `fn(output: str, sample: Sample) -> str | None` (None = no answer found, scored
as wrong). Register new ones with `@register_extractor("name")`, or point a task at any function
with `extractor: "package.module:function"` or `"my_file.py:function"` (beside the task file). An
extractor that raises on some output does not stop an evaluation: that sample is scored as failed
and the error is kept in its record.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Callable, Optional

from components.evaluate.plugins import resolve

if TYPE_CHECKING:
    from components.evaluate.sources import Sample

Extractor = Callable[[str, "Sample"], Optional[str]]
EXTRACTORS: dict[str, Extractor] = {}

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")
_FENCE = re.compile(r"```[ \t]*(?:python|py|Python)?[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL)
# Where a HumanEval completion of the function body ends (the Codex paper's stop sequences).
CODE_STOP_SEQUENCES = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#", "\nassert ")


def register_extractor(name: str) -> Callable[[Extractor], Extractor]:
    def deco(fn: Extractor) -> Extractor:
        if name in EXTRACTORS:
            raise ValueError(f"extractor {name!r} is already registered")
        EXTRACTORS[name] = fn
        return fn

    return deco


def resolve_extractor(name: str, base_dir: Optional[str] = None) -> Extractor:
    """A registered extractor, or `module:function` (see components.evaluate.plugins)."""
    return resolve(name, EXTRACTORS, "extractor", base_dir)


@register_extractor("identity")
def identity(output: str, sample: "Sample") -> str:
    """The output unchanged."""
    return output


@register_extractor("strip")
def strip(output: str, sample: "Sample") -> str:
    """The output without surrounding whitespace."""
    return output.strip()


@register_extractor("first_line")
def first_line(output: str, sample: "Sample") -> Optional[str]:
    """The first non-empty line (short answers followed by chatter)."""
    for line in output.splitlines():
        if line.strip():
            return line.strip()
    return None


def parse_number(text: str) -> Optional[float]:
    """A number written like '1,234', '-3.5', '$12', or None."""
    match = _NUMBER.search(text.replace("$", ""))
    if match is None:
        return None
    try:
        return float(match.group(0).replace(",", ""))
    except ValueError:
        return None


def format_number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


@register_extractor("last_number")
def last_number(output: str, sample: "Sample") -> Optional[str]:
    """The last number in the output, normalised ('1,000.0' -> '1000')."""
    numbers = _NUMBER.findall(output.replace("$", ""))
    for raw in reversed(numbers):
        try:
            return format_number(float(raw.replace(",", "")))
        except ValueError:
            continue
    return None


@register_extractor("gsm8k")
def gsm8k(output: str, sample: "Sample") -> Optional[str]:
    """GSM8K convention: the number after the last '####' if there is one, else the last number."""
    if "####" in output:
        tail = output.rsplit("####", 1)[1]
        value = parse_number(tail)
        if value is not None:
            return format_number(value)
    return last_number(output, sample)


@register_extractor("python_completion")
def python_completion(output: str, sample: "Sample") -> str:
    """A complete program for a HumanEval-style problem.

    A fenced code block that defines the entry point is taken as the whole program (chat models
    restate the function); otherwise the output is a continuation of the prompt, cut at the first
    stop sequence (a new top-level definition, print, comment or assert) and appended to it.
    """
    prompt = str(sample.fields.get("prompt", ""))
    entry = str(sample.data.get("entry_point", "")) if isinstance(sample.data, dict) else ""
    fenced = _FENCE.search(output)
    if fenced is not None:
        code = fenced.group(1)
        if entry and re.search(rf"^\s*def\s+{re.escape(entry)}\s*\(", code, re.MULTILINE):
            return code
        output = code
    cut = len(output)
    for stop in CODE_STOP_SEQUENCES:
        at = output.find(stop)
        if at != -1:
            cut = min(cut, at)
    return prompt + output[:cut]
