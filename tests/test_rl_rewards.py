"""RL rewards: the registry, each reward's verdicts, sandboxed unit tests, and failure handling."""

from __future__ import annotations

import time
from dataclasses import dataclass

import pytest

from components.rl.config import RewardSpec
from components.rl.rewards import (
    REWARDS,
    CombinedReward,
    Completion,
    build_reward,
    last_number,
)
from components.families import Example, get_family


def ex(answer: str = "", meta: dict | None = None, prompt: str = "q", family: str = "jsonl") -> Example:
    return Example("id-1", family, prompt, answer, meta or {})


def test_registry_names_and_unknown_name():
    assert {"exact_match", "numeric_match", "format", "code_unit_tests", "synthetic"} <= set(REWARDS)
    with pytest.raises(ValueError, match="unknown reward 'nope'.*known"):
        build_reward("nope")
    with pytest.raises(ValueError, match="bad params"):
        build_reward("exact_match", {"no_such_param": 1})


def test_exact_and_numeric_match():
    exact = build_reward("exact_match")
    assert exact(Completion("  4 9  0 "), ex("4 9 0")) == 1.0
    assert exact(Completion("4 9 1"), ex("4 9 0")) == 0.0
    numeric = build_reward("numeric_match")
    assert numeric(Completion("so the answer is 1,234.0"), ex("#### 1234")) == 1.0
    assert numeric(Completion("1235"), ex("1234")) == 0.0
    assert numeric(Completion("no number"), ex("7")) == 0.0
    assert last_number("a 3 b -2.5") == -2.5
    assert numeric.verifiable(ex("seven")) is not None


def test_similarity_gives_partial_credit():
    sim = build_reward("similarity")
    assert sim(Completion("1 2 3 4"), ex("1 2 3 4")) == 1.0
    assert sim(Completion("1 2 9 4"), ex("1 2 3 4")) == 0.75
    assert sim(Completion(""), ex("1 2 3 4")) == 0.0
    assert sim.verifiable(ex("")) is not None


def test_format_reward():
    fmt = build_reward("format", {"pattern": r"[0-9 ]+"})
    assert fmt(Completion("1 2 3", finished=True), ex()) == 1.0
    assert fmt(Completion("1 2 3", finished=False), ex()) == 0.0  # never ended
    assert fmt(Completion("1 a 3", finished=True), ex()) == 0.0
    with pytest.raises(ValueError, match="not a valid regex"):
        build_reward("format", {"pattern": "("})


def test_synthetic_verifier_accepts_any_valid_answer():
    family = get_family("sum")
    example = family.make("train", 1, 0)[0]
    reward = build_reward("synthetic")
    assert reward(Completion(example.answer), example) == 1.0
    assert reward(Completion(" " + example.answer + " "), example) == 1.0
    assert reward(Completion("9 9 9 9 9 9 9 9 9"), example) == 0.0
    assert reward.verifiable(ex("x", family="nope")) is not None
    with pytest.raises(ValueError, match="unknown family"):
        build_reward("synthetic", {"family": "nope"})


CODE_PROMPT = "def add(a, b):\n"
CODE_TEST = "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n"


def code_example() -> Example:
    return ex(meta={"test": CODE_TEST, "entry_point": "add"}, prompt=CODE_PROMPT)


def test_code_unit_tests_pass_and_fail():
    reward = build_reward("code_unit_tests", {"timeout_s": 10.0})
    assert reward(Completion("    return a + b\n"), code_example()) == 1.0
    assert reward(Completion("    return a - b\n"), code_example()) == 0.0
    assert reward(Completion("    return (\n"), code_example()) == 0.0  # syntax error
    assert reward.verifiable(ex("x")) is not None  # no unit tests -> not verifiable


def test_code_that_loops_or_escapes_cannot_harm_the_run(tmp_path):
    reward = build_reward("code_unit_tests", {"timeout_s": 2.0, "memory_mb": 256})
    start = time.monotonic()
    assert reward(Completion("    while True:\n        pass\n"), code_example()) == 0.0
    assert time.monotonic() - start < 30
    target = tmp_path / "escaped.txt"
    escape = f"    open({str(target)!r}, 'w').write('x')\n    return a + b\n"
    reward(Completion(escape), code_example())
    assert not target.exists()
    hog = "    x = bytearray(10**10)\n    return a + b\n"
    assert reward(Completion(hog), code_example()) == 0.0


@dataclass(frozen=True)
class Exploding:
    name: str = "exploding"

    def verifiable(self, example):
        return None

    def __call__(self, completion, example):
        if "boom" in completion.text:
            raise RuntimeError("reward crashed")
        return 1.0


def test_a_raising_reward_fails_that_sample_only():
    combined = CombinedReward([(Exploding(), 1.0), (build_reward("format"), 0.5)])
    bad = combined(Completion("boom", finished=True), ex())
    assert bad.reward == 0.5 and not bad.correct
    assert len(bad.errors) == 1 and "reward crashed" in bad.errors[0]
    good = combined(Completion("fine", finished=True), ex())
    assert good.reward == 1.5 and good.correct and not good.errors


def test_prompt_set_without_verifiable_answers_is_rejected():
    combined = CombinedReward.from_specs([RewardSpec("exact_match"), RewardSpec("format", 0.1)])
    with pytest.raises(ValueError, match="2 of 2 prompts have no answer the reward 'exact_match' can verify"):
        combined.check_verifiable([ex(""), ex("  ")])
    with pytest.raises(ValueError, match="empty"):
        combined.check_verifiable([])
    combined.check_verifiable([ex("4")])
    acc_on_format = CombinedReward.from_specs([RewardSpec("exact_match"), RewardSpec("format")], "format")
    assert acc_on_format.accuracy_term.name == "format"
    with pytest.raises(ValueError, match="distinct names"):
        CombinedReward.from_specs([RewardSpec("format"), RewardSpec("format")])
