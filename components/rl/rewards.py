"""Verifiable rewards, pluggable by name from config.

A reward is built by `REWARDS[name](**params)` and is an object with
  * `verifiable(example) -> str | None`: why it cannot judge this example (None = it can), asked for
    every prompt before any rollout, so a prompt set without answers fails at once;
  * `__call__(completion, example) -> float` in [0, 1].

`CombinedReward` sums the configured terms with their weights. A term that raises on one sample
scores that sample 0 for that term (a failed answer) and is counted in `errors`; the run goes on.
Code is only ever executed inside `components.sandbox` (own process, time and memory limits, no
network, private temporary directory).
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from components.families import SYNTHETIC_FAMILIES, Example, get_family

log = logging.getLogger(__name__)

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:[eE][-+]?\d+)?|-?\.\d+")


@dataclass(frozen=True)
class Completion:
    """One decoded response: its text (special tokens removed), ids, and whether it emitted EOS."""

    text: str
    token_ids: tuple[int, ...] = ()
    finished: bool = True


class Reward(Protocol):
    name: str

    def verifiable(self, example: Example) -> str | None: ...

    def __call__(self, completion: Completion, example: Example) -> float: ...


def _normalise(text: str, case_sensitive: bool) -> str:
    text = " ".join(text.split())
    return text if case_sensitive else text.casefold()


def last_number(text: str) -> float | None:
    """The last number written in `text` (commas as thousands separators), or None."""
    found = _NUMBER.findall(text)
    if not found:
        return None
    try:
        return float(found[-1].replace(",", ""))
    except ValueError:
        return None


@dataclass(frozen=True)
class ExactMatch:
    """1 when the completion equals the reference answer up to whitespace (and case, if asked)."""

    case_sensitive: bool = True
    name: str = "exact_match"

    def verifiable(self, example: Example) -> str | None:
        if not isinstance(example.answer, str) or not example.answer.strip():
            return "no reference answer"
        return None

    def __call__(self, completion: Completion, example: Example) -> float:
        return float(_normalise(completion.text, self.case_sensitive) == _normalise(example.answer, self.case_sensitive))


@dataclass(frozen=True)
class NumericMatch:
    """1 when the last number of the completion equals the reference's last number (math answers,
    including GSM8K-style '#### 42' references)."""

    rel_tol: float = 1e-6
    abs_tol: float = 1e-9
    name: str = "numeric_match"

    def verifiable(self, example: Example) -> str | None:
        if not isinstance(example.answer, str) or last_number(example.answer) is None:
            return "reference answer contains no number"
        return None

    def __call__(self, completion: Completion, example: Example) -> float:
        got = last_number(completion.text)
        ref = last_number(example.answer)
        return float(got is not None and math.isclose(got, ref, rel_tol=self.rel_tol, abs_tol=self.abs_tol))


@dataclass(frozen=True)
class Similarity:
    """Partial credit in [0, 1]: difflib's similarity ratio between the completion's and the reference's
    whitespace-separated tokens (1 = identical). A dense shaping term beside an exact-match accuracy term."""

    name: str = "similarity"

    def verifiable(self, example: Example) -> str | None:
        if not isinstance(example.answer, str) or not example.answer.strip():
            return "no reference answer"
        return None

    def __call__(self, completion: Completion, example: Example) -> float:
        import difflib

        return difflib.SequenceMatcher(a=completion.text.split(), b=example.answer.split(), autojunk=False).ratio()


@dataclass(frozen=True)
class FormatReward:
    """1 when the response ended itself (emitted EOS) and, if `pattern` is set, its stripped text
    matches the regular expression fully. Needs no answer, so it never makes a prompt verifiable."""

    pattern: str | None = None
    require_eos: bool = True
    name: str = "format"

    def __post_init__(self) -> None:
        if self.pattern is not None:
            try:
                re.compile(self.pattern)
            except re.error as exc:
                raise ValueError(f"format reward: pattern {self.pattern!r} is not a valid regex: {exc}") from exc

    def verifiable(self, example: Example) -> str | None:
        return None

    def __call__(self, completion: Completion, example: Example) -> float:
        if self.require_eos and not completion.finished:
            return 0.0
        if self.pattern is not None and re.fullmatch(self.pattern, completion.text.strip(), re.DOTALL) is None:
            return 0.0
        return 1.0


@dataclass(frozen=True)
class SyntheticVerifier:
    """The task family's own verifier: any valid answer scores 1, not only the reference."""

    family: str | None = None  # None: the example's own family
    name: str = "synthetic"

    def __post_init__(self) -> None:
        if self.family is not None and self.family not in SYNTHETIC_FAMILIES:
            raise ValueError(f"synthetic reward: unknown family {self.family!r}; known: {sorted(SYNTHETIC_FAMILIES)}")

    def verifiable(self, example: Example) -> str | None:
        family = self.family or getattr(example, "family", None)
        if family not in SYNTHETIC_FAMILIES:
            return f"family {family!r} has no synthetic verifier"
        if self.family is not None and example.family != self.family:
            return f"example of family {example.family!r}, reward verifies {self.family!r}"
        return None

    def __call__(self, completion: Completion, example: Example) -> float:
        return float(get_family(self.family or example.family).score(completion.text.strip(), example))


@dataclass(frozen=True)
class CodeUnitTests:
    """Runs the program against the example's unit tests in the sandbox (HumanEval convention).

    example.meta: "test" (code defining `check(candidate)` or plain asserts) and optionally
    "entry_point" (the function handed to `check`). The program is the prompt followed by the
    completion when `prepend_prompt` (a completed function body), else the completion alone.
    """

    timeout_s: float = 5.0
    memory_mb: int = 512
    prepend_prompt: bool = True
    name: str = "code_unit_tests"

    def __post_init__(self) -> None:
        from components.sandbox import SandboxLimits

        SandboxLimits(timeout_s=self.timeout_s, memory_mb=self.memory_mb)  # validates the limits now

    def verifiable(self, example: Example) -> str | None:
        test = example.meta.get("test") if isinstance(example.meta, dict) else None
        if not isinstance(test, str) or not test.strip():
            return "meta has no unit tests ('test')"
        return None

    def __call__(self, completion: Completion, example: Example) -> float:
        from components.sandbox import SandboxLimits, run_tests

        program = (example.prompt + completion.text) if self.prepend_prompt else completion.text
        outcome = run_tests(program, example.meta["test"], example.meta.get("entry_point") or None,
                            limits=SandboxLimits(timeout_s=self.timeout_s, memory_mb=self.memory_mb))
        if outcome.status == "setup_error":  # the machine, not the sample: must not read as "wrong"
            raise RuntimeError(f"sandbox could not start: {outcome.detail}")
        return float(outcome.passed)


REWARDS: dict[str, Callable[..., Reward]] = {
    "exact_match": ExactMatch,
    "numeric_match": NumericMatch,
    "similarity": Similarity,
    "format": FormatReward,
    "synthetic": SyntheticVerifier,
    "code_unit_tests": CodeUnitTests,
}


def build_reward(name: str, params: dict[str, Any] | None = None) -> Reward:
    """The registered reward `name` built with `params`; errors name the reward and the bad key."""
    if name not in REWARDS:
        raise ValueError(f"unknown reward {name!r}; known: {sorted(REWARDS)}")
    try:
        return REWARDS[name](**dict(params or {}))
    except TypeError as exc:
        raise ValueError(f"reward {name!r}: bad params {dict(params or {})!r}: {exc}") from exc


@dataclass
class Scored:
    reward: float  # weighted sum of the terms
    correct: bool  # the accuracy term scored 1
    terms: dict[str, float]
    errors: list[str]


class CombinedReward:
    """Weighted sum of reward terms; one of them (the first by default) defines correctness."""

    def __init__(self, terms: list[tuple[Reward, float]], accuracy_index: int = 0):
        if not terms:
            raise ValueError("a reward needs at least one term")
        if not 0 <= accuracy_index < len(terms):
            raise ValueError(f"accuracy_index {accuracy_index} is outside the {len(terms)} reward terms")
        names = [r.name for r, _ in terms]
        if len(set(names)) != len(names):
            raise ValueError(f"reward terms must have distinct names, got {names}")
        self.terms = terms
        self.accuracy_index = accuracy_index

    @classmethod
    def from_specs(cls, specs, accuracy_reward: str | None = None) -> "CombinedReward":
        terms = [(build_reward(s.name, s.params), float(s.weight)) for s in specs]
        names = [r.name for r, _ in terms]
        index = names.index(accuracy_reward) if accuracy_reward is not None else 0
        return cls(terms, index)

    @property
    def accuracy_term(self) -> Reward:
        return self.terms[self.accuracy_index][0]

    def check_verifiable(self, examples: list[Example]) -> None:
        """Raise before any rollout if the accuracy term cannot judge some example."""
        if not examples:
            raise ValueError("the prompt set is empty")
        term = self.accuracy_term
        bad = [(e.id, why) for e in examples if (why := term.verifiable(e)) is not None]
        if bad:
            shown = "; ".join(f"{i}: {why}" for i, why in bad[:3])
            raise ValueError(
                f"{len(bad)} of {len(examples)} prompts have no answer the reward {term.name!r} can verify "
                f"({shown}{' ...' if len(bad) > 3 else ''}); RL needs verifiable prompts")
        for reward, _ in self.terms:
            if reward is not term:
                bad = [e.id for e in examples if reward.verifiable(e) is not None]
                if bad:
                    raise ValueError(f"reward {reward.name!r} cannot judge {len(bad)} prompts (e.g. {bad[0]})")

    def __call__(self, completion: Completion, example: Example) -> Scored:
        values, errors = {}, []
        total = 0.0
        for reward, weight in self.terms:
            try:
                value = float(reward(completion, example))
                if not math.isfinite(value):
                    raise ValueError(f"returned {value}")
            except Exception as exc:  # one bad sample must not end the run: it simply fails
                errors.append(f"{reward.name} on {example.id}: {type(exc).__name__}: {exc}")
                value = 0.0
            values[reward.name] = value
            total += weight * value
        correct = values[self.accuracy_term.name] >= 1.0
        return Scored(total, correct, values, errors)
