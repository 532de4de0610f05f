"""Scorers: judge one extracted answer against its sample.

A scorer is `fn(answer: str | None, sample: Sample, task: TaskConfig) -> Judgement` (or a bool),
registered here by name or named in a task as `"package.module:function"` / `"my_file.py:function"`.
A task whose answers are checked by a rule rather than compared with a reference (any valid sudoku
solution) uses `scorer: verifier` with `verifier: "module:function"`, a plain
`fn(answer: str, fields: dict) -> bool` that sees the sample's columns. A scorer may raise on a
malformed sample (e.g. a reference with no number); the runner records the error and scores that
sample as failed. `unit_tests` runs generated code only inside `components.sandbox`.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Optional

from components.evaluate.extractors import gsm8k as _gsm8k_number
from components.evaluate.plugins import resolve
from components.sandbox import SandboxLimits, run_tests

if TYPE_CHECKING:
    from components.evaluate.config import TaskConfig
    from components.evaluate.sources import Sample


@dataclass(frozen=True)
class Judgement:
    correct: bool
    detail: str = ""  # why it failed (sandbox status, stderr line), for the per-sample record


class SandboxUnavailableError(RuntimeError):
    """The sandbox cannot run code on this machine at all (not a property of one sample)."""


Scorer = Callable[[Optional[str], "Sample", "TaskConfig"], Judgement]
SCORERS: dict[str, Scorer] = {}


def register_scorer(name: str) -> Callable[[Scorer], Scorer]:
    def deco(fn: Scorer) -> Scorer:
        SCORERS[name] = fn
        return fn

    return deco


def task_dir(task: "TaskConfig") -> Optional[str]:
    """The task file's folder: where `my_file.py:function` specs are looked up first."""
    return os.path.dirname(task.origin) if task.origin else None


def resolve_scorer(task: "TaskConfig") -> Scorer:
    """The task's scorer: a registered name or `module:function`."""
    return resolve(task.scorer, SCORERS, "scorer", task_dir(task))


def resolve_verifier(task: "TaskConfig") -> Callable[[str, dict], object]:
    if not task.verifier:
        raise ValueError("scorer 'verifier' needs the task key `verifier: \"module:function\"`")
    return resolve(task.verifier, {}, "verifier", task_dir(task))


@register_scorer("exact")
def exact(answer: Optional[str], sample: "Sample", task: "TaskConfig") -> Judgement:
    """Equal after stripping surrounding whitespace."""
    if sample.reference is None:
        raise ValueError(f"sample {sample.id} has no reference answer")
    return Judgement(answer is not None and answer.strip() == sample.reference.strip())


@register_scorer("numeric")
def numeric(answer: Optional[str], sample: "Sample", task: "TaskConfig") -> Judgement:
    """Numerically equal (relative tolerance 1e-6). The reference may be a bare number or a
    GSM8K solution ending in '#### 42'."""
    if sample.reference is None:
        raise ValueError(f"sample {sample.id} has no reference answer")
    ref = _gsm8k_number(sample.reference, sample)
    if ref is None:
        raise ValueError(f"reference answer of sample {sample.id} contains no number: {sample.reference[-80:]!r}")
    if answer is None:
        return Judgement(False, "no number in the output")
    try:
        got = float(answer.replace(",", ""))
    except ValueError:
        return Judgement(False, f"extracted answer {answer!r} is not a number")
    return Judgement(math.isclose(got, float(ref), rel_tol=1e-6, abs_tol=1e-9))


@register_scorer("synthetic")
def synthetic(answer: Optional[str], sample: "Sample", task: "TaskConfig") -> Judgement:
    """The family's own verifier (accepts any valid answer, not only the reference)."""
    from components.families import get_family

    if answer is None:
        return Judgement(False, "no answer extracted")
    return Judgement(get_family(sample.data.family).score(answer, sample.data))


@register_scorer("verifier")
def verifier(answer: Optional[str], sample: "Sample", task: "TaskConfig") -> Judgement:
    """The task's `verifier(answer, fields)`: accepts any answer the rule allows, on any source."""
    if answer is None:
        return Judgement(False, "no answer extracted")
    return as_judgement(resolve_verifier(task)(answer, dict(sample.fields)), f"verifier {task.verifier!r}")


def as_judgement(verdict: object, what: str) -> Judgement:
    """A Judgement from what a user's scorer or verifier returned (a Judgement or a truth value)."""
    if isinstance(verdict, Judgement):
        return verdict
    if verdict is None or isinstance(verdict, (str, bytes, list, tuple, dict)):
        raise TypeError(f"{what} returned {type(verdict).__name__} {verdict!r}; expected True/False or a Judgement")
    return Judgement(bool(verdict))


def sandbox_limits(task: "TaskConfig") -> SandboxLimits:
    s = task.sandbox
    return SandboxLimits(timeout_s=s.timeout_s, memory_mb=s.memory_mb, max_processes=s.max_processes)


@register_scorer("unit_tests")
def unit_tests(answer: Optional[str], sample: "Sample", task: "TaskConfig") -> Judgement:
    """Run the program against the sample's tests in the sandbox (HumanEval's check(candidate))."""
    if answer is None:
        return Judgement(False, "no program extracted")
    outcome = run_tests(answer, sample.data["test"], sample.data["entry_point"], limits=sandbox_limits(task))
    if outcome.status == "setup_error":
        raise SandboxUnavailableError(f"the sandbox could not start: {outcome.detail}")
    return Judgement(outcome.passed, "" if outcome.passed else f"{outcome.status}: {outcome.detail}")


def preflight(task: "TaskConfig") -> Optional[dict[str, str]]:
    """Fail before any generation if the task's scorer cannot work here (sandbox check for code).
    Returns the sandbox's active protections for code tasks (recorded with the results), else None."""
    if task.scorer != "unit_tests":
        return None
    limits = sandbox_limits(task)
    good = run_tests("def f():\n    return 1\n", "def check(c):\n    assert c() == 1\n", "f", limits=limits)
    bad = run_tests("def f():\n    return 2\n", "def check(c):\n    assert c() == 1\n", "f", limits=limits)
    if not good.passed or bad.passed:
        raise SandboxUnavailableError(
            f"task {task.name!r}: the code sandbox does not work on this machine (a known-good program "
            f"{'passed' if good.passed else 'failed: ' + good.status + ' ' + good.detail}; a known-bad one "
            f"{'passed' if bad.passed else 'failed'}); protections: {good.result.protections}"
        )
    return good.result.protections
