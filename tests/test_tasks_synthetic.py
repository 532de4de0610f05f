"""Synthetic task families: determinism, disjoint splits, strict verifiers that accept any valid answer."""

import dataclasses
import itertools
import json

import pytest

from components.families import SPLITS, SYNTHETIC_FAMILIES, Example, SyntheticFamily, get_family, split_of
from components.families.synthetic import (
    AdditionFamily,
    DedupFamily,
    LatinFamily,
    PermutationFamily,
    Sudoku4Family,
    SumFamily,
    _all_sudoku4,
    _latin_completions,
    _sudoku4_valid,
)

GARBAGE = ["", "   ", "\x00\xff", "🙂🙂", "<|mask|>", "-1", "1 2 3 x", "None", "9" * 500, "\n\n"]


def _ex(family: SyntheticFamily, prompt_meta: dict, answer: str = "") -> Example:
    return Example(id="t", family=family.name, prompt="", answer=answer, meta=prompt_meta)


def test_registry_has_at_least_four_families_with_three_multi_answer():
    assert len(SYNTHETIC_FAMILIES) >= 4
    for name in ("permutation", "sum", "sudoku4", "addition"):
        fam = get_family(name)
        assert fam.name == name and isinstance(fam, SyntheticFamily)


def test_get_family_unknown_lists_known_names():
    with pytest.raises(KeyError, match="known: .*permutation.*"):
        get_family("chess")


@pytest.mark.parametrize("name", sorted(SYNTHETIC_FAMILIES))
def test_make_is_deterministic_and_seed_dependent(name):
    fam = get_family(name)
    a = fam.make("train", 50, seed=3)
    assert a == fam.make("train", 50, seed=3)
    assert a != fam.make("train", 50, seed=4)
    assert len({e.prompt for e in a}) == 50  # distinct instances within one call
    assert all(e.family == name and e.id.startswith(f"{name}-train-") for e in a)


@pytest.mark.parametrize("name", sorted(SYNTHETIC_FAMILIES))
def test_splits_are_disjoint_by_construction(name):
    fam = get_family(name)
    train = fam.make("train", 800, seed=0) + fam.make("train", 800, seed=1)
    held = fam.make("heldout", 300, seed=0) + fam.make("heldout", 300, seed=7)
    assert not {e.prompt for e in train} & {e.prompt for e in held}
    assert all(split_of(name, e.prompt) == "train" for e in train)
    assert all(split_of(name, e.prompt) == "heldout" for e in held)


def test_split_fraction_is_about_one_fifth():
    prompts = [f"p{i}" for i in range(5000)]
    frac = sum(split_of("x", p) == "heldout" for p in prompts) / len(prompts)
    assert 0.17 < frac < 0.23


@pytest.mark.parametrize("name", sorted(SYNTHETIC_FAMILIES))
def test_reference_answers_verify_and_answers_are_short(name):
    fam = get_family(name)
    for split in SPLITS:
        for e in fam.make(split, 300, seed=11):
            assert fam.score(e.answer, e), e
            assert fam.score(f"  {e.answer}\n", e)  # surrounding whitespace is tolerated
            assert len(e.answer) <= 32


@pytest.mark.parametrize("name", sorted(SYNTHETIC_FAMILIES))
def test_verifiers_reject_garbage_without_raising(name):
    fam = get_family(name)
    e = fam.make("heldout", 1, seed=0)[0]
    for junk in GARBAGE + [None, 12, b"1 2"]:
        assert fam.score(junk, e) is False
    # an example whose meta was damaged must not make the verifier raise either
    broken = dataclasses.replace(e, meta={})
    assert fam.score(e.answer, broken) is False


@pytest.mark.parametrize("name", sorted(SYNTHETIC_FAMILIES))
def test_examples_roundtrip_through_json(name):
    """Evaluation may store examples as JSONL; the verifier must still work after the round trip."""
    fam = get_family(name)
    e = fam.make("train", 1, seed=5)[0]
    back = Example(**json.loads(json.dumps(dataclasses.asdict(e))))
    assert back == e and fam.score(e.answer, back)


def test_bad_make_arguments():
    fam = get_family("sum")
    with pytest.raises(ValueError, match="split must be one of"):
        fam.make("test", 3, 0)
    with pytest.raises(ValueError, match="n must be"):
        fam.make("train", -1, 0)
    with pytest.raises(ValueError, match="instance space is too small"):
        SumFamily(min_len=1, max_len=1, min_blanks=1).make("train", 100, 0)  # only 10 instances exist


def test_bad_family_parameters():
    with pytest.raises(ValueError):
        PermutationFamily(min_symbols=7, max_symbols=3)
    with pytest.raises(ValueError):
        Sudoku4Family(max_clues=17)
    with pytest.raises(ValueError):
        AdditionFamily(min_digits=0)
    with pytest.raises(ValueError, match="min_len <= max_len"):
        DedupFamily(min_len=5, max_len=3)
    with pytest.raises(ValueError, match="repeat_prob"):
        DedupFamily(repeat_prob=1.0)


# ---------------------------------------------------------------- permutation


def test_permutation_accepts_alternative_orders_and_rejects_violations():
    fam = get_family("permutation")
    e = _ex(fam, {"symbols": ["A", "B", "C", "D"], "constraints": [["C", "A"]]})
    for ok in ["C A B D", "B D C A", "C B D A", "D C B A"]:
        assert fam.score(ok, e), ok
    for bad in [
        "A C B D",  # constraint violated
        "C A B",  # missing D
        "C A B D D",  # extra symbol
        "C A B B",  # repeated, D missing
        "C A B E",  # foreign symbol
        "CABD",  # not separated
        "c a b d",  # wrong case
    ]:
        assert not fam.score(bad, e), bad


def test_permutation_instances_have_many_valid_answers():
    fam = get_family("permutation")
    for e in fam.make("train", 20, seed=2):
        valid = sum(fam.score(" ".join(p), e) for p in itertools.permutations(e.meta["symbols"]))
        assert valid >= 4  # at least 4!/6 orders satisfy two "before" constraints (worst case: a chain)


# ---------------------------------------------------------------- sum


def test_sum_accepts_any_valid_fill():
    fam = get_family("sum")
    e = _ex(fam, {"target": 12, "pattern": ["4", "?", "?", "1"]})
    for ok in ["4 7 0 1", "4 0 7 1", "4 3 4 1", "4 5 2 1"]:
        assert fam.score(ok, e), ok
    for bad in [
        "4 7 1 1",  # wrong total
        "5 6 0 1",  # pinned slot changed
        "4 7 0",  # too short
        "4 7 0 1 0",  # too long
        "4 10 -3 1",  # out of range / negative
        "4 07 0 1",  # leading zero
        "4 6.5 0.5 1",  # not digits
        "4701",  # not separated
    ]:
        assert not fam.score(bad, e), bad


def test_sum_instances_mostly_have_several_valid_answers():
    fam = get_family("sum")
    examples = fam.make("heldout", 100, seed=1)
    multi = 0
    for e in examples:
        blanks = e.meta["pattern"].count("?")
        rest = e.meta["target"] - sum(int(p) for p in e.meta["pattern"] if p != "?")
        assert blanks >= 2 and 0 <= rest <= 9 * blanks
        ways = [1] + [0] * rest  # ways[s]: digit fills of the blanks so far summing to s
        for _ in range(blanks):
            ways = [sum(ways[s - d] for d in range(10) if s - d >= 0) for s in range(rest + 1)]
        fills = ways[rest]
        multi += fills > 1
    assert multi >= 90


# ---------------------------------------------------------------- sudoku4


def test_sudoku_enumeration_is_complete_and_valid():
    grids = _all_sudoku4()
    assert len(grids) == 288 and len(set(grids)) == 288
    assert all(_sudoku4_valid(g) for g in grids)


def test_sudoku_accepts_every_completion_consistent_with_clues():
    fam = get_family("sudoku4")
    for e in fam.make("train", 30, seed=4):
        completions = [
            g for g in _all_sudoku4() if all(p == "0" or int(p) == v for p, v in zip(e.meta["puzzle"], g))
        ]
        assert completions  # the reference grid at least
        for g in completions:
            text = " ".join("".join(map(str, g[4 * r : 4 * r + 4])) for r in range(4))
            assert fam.score(text, e)


def test_sudoku_few_clues_usually_have_several_solutions():
    fam = Sudoku4Family(min_clues=4, max_clues=4)
    multi = 0
    for e in fam.make("train", 40, seed=0):
        n = sum(all(p == "0" or int(p) == v for p, v in zip(e.meta["puzzle"], g)) for g in _all_sudoku4())
        multi += n > 1
    assert multi >= 20


def test_sudoku_rejects_invalid_grids():
    fam = get_family("sudoku4")
    e = _ex(fam, {"puzzle": "1000" + "0" * 12})
    assert fam.score("1234 3412 2143 4321", e)
    for bad in [
        "2134 3412 1243 4321",  # clue 1 at (0,0) not kept
        "1234 3412 2143 4312",  # last row breaks columns
        "1234 1234 1234 1234",  # columns repeat
        "1234 2143 3412 4321",  # boxes repeat (rows and columns fine)
        "1234 3412 2143",  # 3 rows
        "1234341221434321",  # no row separators
        "1235 3412 2143 4321",  # digit out of range
    ]:
        assert not fam.score(bad, e), bad


# ---------------------------------------------------------------- latin


@pytest.mark.parametrize("size", [3, 4, 5, 7])
def test_latin_references_are_latin_squares_that_keep_their_clues(size):
    fam = LatinFamily(size=size, min_clues=size, max_clues=2 * size)
    for e in fam.make("train", 40, seed=2):
        rows = e.answer.split()
        assert len(rows) == size and all(len(r) == size for r in rows)
        grid = [int(c) for c in "".join(rows)]
        assert all(sorted(grid[size * i : size * i + size]) == list(range(1, size + 1)) for i in range(size))
        assert all(sorted(grid[size * r + i] for r in range(size)) == list(range(1, size + 1)) for i in range(size))
        clues = [(i, int(p)) for i, p in enumerate(e.meta["puzzle"]) if p != "0"]
        assert size <= len(clues) <= 2 * size and all(grid[i] == v for i, v in clues)
        assert e.prompt == "latin: " + " ".join(e.meta["puzzle"][size * r : size * r + size] for r in range(size))


def test_latin_accepts_every_completion_and_default_puzzles_are_often_ambiguous():
    fam = get_family("latin")
    several = 0
    for e in fam.make("heldout", 40, seed=1):
        completions = _latin_completions(e.meta["puzzle"], fam.size)
        assert completions  # the reference at least
        for g in completions:
            assert fam.score(" ".join("".join(map(str, g[5 * r : 5 * r + 5])) for r in range(5)), e)
        several += len(completions) > 1
    assert several >= 5  # about a third of the default puzzles have more than one solution


def test_latin_rejects_invalid_squares():
    fam = get_family("latin", size=4)
    e = _ex(fam, {"puzzle": "1000" + "0" * 12, "size": 4})
    assert fam.score("1234 2143 3412 4321", e)
    assert fam.score("1234 2341 3412 4123", e)  # a latin square that is not a sudoku: no boxes here
    for bad in [
        "2134 1243 3412 4321",  # clue 1 at (0,0) not kept
        "1234 2143 3412 4312",  # last row breaks columns
        "1234 1234 1234 1234",  # columns repeat
        "1234 2143 3412",  # 3 rows
        "1234214334124321",  # no row separators
        "1235 2143 3412 4321",  # digit out of range for size 4
    ]:
        assert not fam.score(bad, e), bad
    with pytest.raises(ValueError, match="size must be in 2..9"):
        LatinFamily(size=10)
    with pytest.raises(ValueError, match="max_clues <= size"):
        LatinFamily(size=3, max_clues=10)


# ---------------------------------------------------------------- deterministic controls


def test_addition_is_exact():
    fam = get_family("addition")
    e = _ex(fam, {"a": 123, "b": 4567})
    assert fam.score("4690", e)
    for bad in ["4691", "04690", "4690 0", "+4690", "4,690", "4690.0"]:
        assert not fam.score(bad, e), bad


def test_sort_is_exact():
    fam = get_family("sort")
    e = _ex(fam, {"values": [34, 7, 89, 7]})
    assert fam.score("7 7 34 89", e)
    for bad in ["7 34 89", "89 34 7 7", "7 7 34 89 1", "07 7 34 89"]:
        assert not fam.score(bad, e), bad


def test_dedup_is_exact():
    fam = get_family("dedup")
    e = _ex(fam, {"values": [3, 3, 5, 1, 1, 1, 2]})
    assert fam.score("3 5 1 2", e)
    for bad in ["3 3 5 1 2", "3 5 1", "3 5 1 2 2", "1 2 3 5", "03 5 1 2"]:
        assert not fam.score(bad, e), bad


def test_dedup_answers_collapse_the_prompt_s_runs_and_respect_the_length_bounds():
    fam = get_family("dedup", min_len=8, max_len=10)
    examples = fam.make("train", 200, seed=0)
    for e in examples:
        values = [int(v) for v in e.prompt.removeprefix("dedup: ").split()]
        assert values == e.meta["values"] and 8 <= len(values) <= 10
        answer = [int(v) for v in e.answer.split()]
        assert all(a != b for a, b in zip(answer, answer[1:]))
        assert [v for v, _ in itertools.groupby(values)] == answer
    assert sum(len(e.answer.split()) < len(e.meta["values"]) for e in examples) > 150  # most prompts have runs


def test_to_messages_is_the_shared_chat_form():
    from components.families import to_messages

    e = get_family("addition").make("train", 1, seed=0)[0]
    assert to_messages(e) == [{"role": "user", "content": e.prompt}]
    assert to_messages(e, with_answer=True)[1] == {"role": "assistant", "content": e.answer}


def test_get_family_with_parameters():
    hard = get_family("sudoku4", min_clues=4, max_clues=4)
    assert hard.name == "sudoku4" and hard is not get_family("sudoku4")
    examples = hard.make("train", 20, seed=0)
    assert all(sum(c != "0" for c in e.meta["puzzle"]) == 4 for e in examples)
    assert all(get_family("sudoku4").score(e.answer, e) for e in examples)  # verifier reads meta only
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['clues'\]; known: \['min_clues', 'max_clues'\]"):
        get_family("sudoku4", clues=3)
    with pytest.raises(ValueError, match="max_clues"):
        get_family("sudoku4", max_clues=20)  # the family's own validation still runs


def test_has_unique_answer_counts_the_completions_of_puzzles():
    from components.families import has_unique_answer

    sudoku = get_family("sudoku4").make("heldout", 60, seed=0)
    fits = lambda e: sum(all(p == "0" or int(p) == v for p, v in zip(e.meta["puzzle"], g)) for g in _all_sudoku4())  # noqa: E731
    assert [has_unique_answer(e) for e in sudoku] == [fits(e) == 1 for e in sudoku]
    assert all(get_family("sudoku4").count_solutions(e) == fits(e) for e in sudoku)
    latin = get_family("latin").make("heldout", 60, seed=0)
    assert [has_unique_answer(e) for e in latin] == [len(_latin_completions(e.meta["puzzle"], 5)) == 1 for e in latin]
    for examples in (sudoku, latin):  # both kinds occur, so the judge really depends on the puzzle
        assert 0 < sum(map(has_unique_answer, examples)) < len(examples)
    assert all(has_unique_answer(e) for e in get_family("sort").make("heldout", 5, seed=0))
    assert not any(has_unique_answer(e) for e in get_family("permutation").make("heldout", 5, seed=0))
    damaged = dataclasses.replace(latin[0], meta={"puzzle": latin[0].meta["puzzle"]})  # no size
    assert not has_unique_answer(damaged)
    assert not has_unique_answer(dataclasses.replace(latin[0], family="chess"))


def test_synthetic_task_params_set_the_family_difficulty():
    from components.evaluate import load_samples, load_task

    samples = load_samples(load_task("sort16", ["source.num_examples=20"]))
    assert all(8 <= len(s.data.meta["values"]) <= 16 and max(s.data.meta["values"]) <= 9 for s in samples)
