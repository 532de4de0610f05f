"""Seeded, verifiable synthetic task families with disjoint train / held-out splits.

Why these families: a model that has mastered a deterministic task leaves no uncertainty while
drafting, so decoding thresholds stop mattering. Draft-and-edit shows its worth
where parallel drafting is genuinely uncertain: tasks with *many valid answers* and a verifier, where
positions decoded in the same step pick clashing choices (a symbol used twice, digits that miss the
target sum, a sudoku row with a repeated digit) that editing must repair. So most families here
have many answers and their `score` accepts any valid one; `addition`, `sort` and `dedup` are the
deterministic controls (`dedup`'s answer length is decided by the runs of its prompt).

Splits are disjoint by construction: the split of an instance is a function of its prompt text
(sha256 of family name + prompt, mod `SPLIT_BUCKETS`), so the same problem can never appear in both
splits, whatever seed or count is asked for.

Answers are short (at most ~32 tokens with per-digit tokenisation) so a tiny model learns them on CPU.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import random
import re
import string
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable, Protocol, runtime_checkable

SPLITS = ("train", "heldout")
SPLIT_BUCKETS = 5  # bucket 0 of 5 -> held-out (about 20% of the instance space)


@dataclass(frozen=True)
class Example:
    """One problem instance. `answer` is one reference solution; `score` accepts any valid one."""

    id: str
    family: str
    prompt: str
    answer: str
    meta: dict = field(default_factory=dict, hash=False, compare=True)


@runtime_checkable
class SyntheticFamily(Protocol):
    name: str

    def make(self, split: str, n: int, seed: int) -> list[Example]: ...

    def score(self, completion: str, example: Example) -> bool: ...


def split_of(family: str, prompt: str) -> str:
    """Which split an instance belongs to; depends only on the instance, never on the seed."""
    digest = hashlib.sha256(f"{family}\x00{prompt}".encode()).digest()
    return "heldout" if int.from_bytes(digest[:8], "big") % SPLIT_BUCKETS == 0 else "train"


def _example_id(family: str, split: str, prompt: str) -> str:
    return f"{family}-{split}-{hashlib.sha1(prompt.encode()).hexdigest()[:12]}"


def _check_make_args(family: str, split: str, n: int, seed: int) -> None:
    if split not in SPLITS:
        raise ValueError(f"{family}.make: split must be one of {SPLITS}, got {split!r}")
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise ValueError(f"{family}.make: n must be a non-negative int, got {n!r}")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ValueError(f"{family}.make: seed must be an int, got {seed!r}")


def _sample_split(
    family: str,
    split: str,
    n: int,
    seed: int,
    draw: Callable[[random.Random], tuple[str, str, dict]],
) -> list[Example]:
    """Rejection-sample `n` distinct instances of `split` from `draw(rng) -> (prompt, answer, meta)`."""
    _check_make_args(family, split, n, seed)
    rng = random.Random(f"{family}:{split}:{seed}")  # str seeds are stable across processes
    out: list[Example] = []
    seen: set[str] = set()
    max_attempts = 200 * n + 2000
    attempts = 0
    while len(out) < n:
        attempts += 1
        if attempts > max_attempts:
            raise ValueError(
                f"{family}.make: found only {len(out)} distinct {split!r} instances of {n} requested "
                f"after {max_attempts} draws; the family's instance space is too small for this n "
                "(widen its size parameters)"
            )
        prompt, answer, meta = draw(rng)
        if prompt in seen or split_of(family, prompt) != split:
            continue
        seen.add(prompt)
        out.append(Example(_example_id(family, split, prompt), family, prompt, answer, dict(meta)))
    return out


def _safe(score_fn: Callable[[str, Example], bool]) -> Callable[[str, Example], bool]:
    """Verifiers must never raise on garbage: any exception means 'not a valid answer'."""

    def wrapped(self, completion, example):  # noqa: ANN001 - method signature of the families
        if not isinstance(completion, str):
            return False
        try:
            return bool(score_fn(self, completion, example))
        except Exception:  # garbage of any shape is simply wrong
            return False

    wrapped.__doc__ = score_fn.__doc__
    wrapped.__name__ = score_fn.__name__
    return wrapped


def _int_tokens(text: str) -> list[int] | None:
    """Whitespace-separated non-negative integers without leading zeros, or None."""
    parts = text.split()
    if not parts or not all(re.fullmatch(r"0|[1-9]\d*", p) for p in parts):
        return None
    return [int(p) for p in parts]


# --------------------------------------------------------------------------------------------------
# permutation: order given symbols so that "X before Y" constraints hold (many valid answers)
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PermutationFamily:
    """Prompt ``perm: E B A C F; C before A; F before E`` -> any ordering of exactly those letters
    that satisfies every constraint, e.g. ``C A F E B``. Parallel drafting tends to place the same
    letter twice or drop one; editing must repair that."""

    name: str = "permutation"
    min_symbols: int = 4
    max_symbols: int = 6
    min_constraints: int = 1
    max_constraints: int = 2

    def __post_init__(self) -> None:
        if not 2 <= self.min_symbols <= self.max_symbols <= 26:
            raise ValueError(f"{self.name}: need 2 <= min_symbols <= max_symbols <= 26")
        if not 0 <= self.min_constraints <= self.max_constraints:
            raise ValueError(f"{self.name}: need 0 <= min_constraints <= max_constraints")

    def _draw(self, rng: random.Random) -> tuple[str, str, dict]:
        k = rng.randint(self.min_symbols, self.max_symbols)
        symbols = rng.sample(string.ascii_uppercase, k)
        reference = symbols[:]
        rng.shuffle(reference)
        pairs = [(reference[i], reference[j]) for i in range(k) for j in range(i + 1, k)]
        m = min(rng.randint(self.min_constraints, self.max_constraints), len(pairs))
        constraints = sorted(rng.sample(pairs, m))
        shown = " ".join(symbols)
        rules = "".join(f"; {a} before {b}" for a, b in constraints)
        meta = {"symbols": symbols, "constraints": [list(c) for c in constraints]}
        return f"perm: {shown}{rules}", " ".join(reference), meta

    def make(self, split: str, n: int, seed: int) -> list[Example]:
        return _sample_split(self.name, split, n, seed, self._draw)

    @_safe
    def score(self, completion: str, example: Example) -> bool:
        """Valid iff the completion is each given letter exactly once and every constraint holds."""
        got = completion.split()
        symbols = example.meta["symbols"]
        if sorted(got) != sorted(symbols):
            return False
        where = {s: i for i, s in enumerate(got)}
        return all(where[a] < where[b] for a, b in example.meta["constraints"])


# --------------------------------------------------------------------------------------------------
# sum: fill the blanks with digits so that the row sums to a target (many valid answers)
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SumFamily:
    """Prompt ``sum 23: 4 ? ? 7 ? ?`` -> the whole row with every ``?`` replaced by a digit 0-9 so
    that the row sums to 23, e.g. ``4 9 0 7 3 0``. Digits decoded in parallel do not know each other,
    so they over- or undershoot the target; editing must fix the total."""

    name: str = "sum"
    min_len: int = 4
    max_len: int = 7
    pin_prob: float = 0.3
    min_blanks: int = 2

    def __post_init__(self) -> None:
        if not 1 <= self.min_len <= self.max_len:
            raise ValueError(f"{self.name}: need 1 <= min_len <= max_len")
        if not 0.0 <= self.pin_prob < 1.0:
            raise ValueError(f"{self.name}: pin_prob must be in [0, 1), got {self.pin_prob}")
        if not 1 <= self.min_blanks <= self.min_len:
            raise ValueError(f"{self.name}: need 1 <= min_blanks <= min_len")

    def _draw(self, rng: random.Random) -> tuple[str, str, dict]:
        k = rng.randint(self.min_len, self.max_len)
        reference = [rng.randint(0, 9) for _ in range(k)]
        pinned = [rng.random() < self.pin_prob for _ in range(k)]
        while k - sum(pinned) < self.min_blanks:  # unpin until enough blanks remain
            pinned[rng.choice([i for i in range(k) if pinned[i]])] = False
        target = sum(reference)
        pattern = [str(d) if p else "?" for d, p in zip(reference, pinned)]
        meta = {"target": target, "pattern": pattern}
        return f"sum {target}: {' '.join(pattern)}", " ".join(map(str, reference)), meta

    def make(self, split: str, n: int, seed: int) -> list[Example]:
        return _sample_split(self.name, split, n, seed, self._draw)

    @_safe
    def score(self, completion: str, example: Example) -> bool:
        """Valid iff one digit per slot, pinned slots unchanged, and the digits sum to the target."""
        digits = _int_tokens(completion)
        pattern = example.meta["pattern"]
        if digits is None or len(digits) != len(pattern) or any(d > 9 for d in digits):
            return False
        if any(p != "?" and int(p) != d for p, d in zip(pattern, digits)):
            return False
        return sum(digits) == example.meta["target"]


# --------------------------------------------------------------------------------------------------
# sudoku4: complete a 4x4 sudoku from few clues (usually many valid completions)
# --------------------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _all_sudoku4() -> tuple[tuple[int, ...], ...]:
    """All 288 valid 4x4 sudoku grids (row-major), enumerated once by backtracking."""
    rows = list(itertools.permutations(range(1, 5)))
    grids = []

    def extend(prefix: tuple[int, ...]) -> None:
        if len(prefix) == 16:
            if _sudoku4_valid(prefix):
                grids.append(prefix)
            return
        r = len(prefix) // 4
        for row in rows:  # prune on columns as rows are added
            if all(row[c] != prefix[4 * q + c] for q in range(r) for c in range(4)):
                extend(prefix + row)

    extend(())
    return tuple(grids)


def _sudoku4_completions(puzzle: str, limit: int | None = None) -> list[tuple[int, ...]]:
    """The valid grids that keep the clues of `puzzle` (row-major, ``0`` = empty); at most `limit`."""
    fits = (g for g in _all_sudoku4() if all(p == "0" or int(p) == v for p, v in zip(puzzle, g)))
    return list(itertools.islice(fits, limit))


def _sudoku4_valid(g: tuple[int, ...] | list[int]) -> bool:
    full = {1, 2, 3, 4}
    for i in range(4):
        if set(g[4 * i : 4 * i + 4]) != full or {g[4 * r + i] for r in range(4)} != full:
            return False
    for br, bc in ((0, 0), (0, 2), (2, 0), (2, 2)):
        if {g[4 * (br + r) + bc + c] for r in range(2) for c in range(2)} != full:
            return False
    return True


@dataclass(frozen=True)
class Sudoku4Family:
    """Prompt ``sudoku: 1030 0020 0000 4001`` (rows, ``0`` = empty) -> a full valid grid agreeing
    with the clues, e.g. ``1234 3412 2143 4321``. With few clues most puzzles have several
    solutions, and parallel drafting repeats digits in a row/column/box that editing must repair.
    Empty cells are ``0`` rather than ``.`` so that, with per-digit tokenisation, every cell is
    exactly one token (runs of dots merge into varying BPE tokens)."""

    name: str = "sudoku4"
    min_clues: int = 4
    max_clues: int = 8

    def __post_init__(self) -> None:
        if not 0 <= self.min_clues <= self.max_clues <= 16:
            raise ValueError(f"{self.name}: need 0 <= min_clues <= max_clues <= 16")

    def _draw(self, rng: random.Random) -> tuple[str, str, dict]:
        grid = rng.choice(_all_sudoku4())
        shown = set(rng.sample(range(16), rng.randint(self.min_clues, self.max_clues)))
        cells = "".join(str(v) if i in shown else "0" for i, v in enumerate(grid))
        puzzle = " ".join(cells[4 * r : 4 * r + 4] for r in range(4))
        answer = " ".join("".join(map(str, grid[4 * r : 4 * r + 4])) for r in range(4))
        return f"sudoku: {puzzle}", answer, {"puzzle": cells}

    def make(self, split: str, n: int, seed: int) -> list[Example]:
        return _sample_split(self.name, split, n, seed, self._draw)

    @_safe
    def score(self, completion: str, example: Example) -> bool:
        """Valid iff four rows of four digits 1-4 form a valid sudoku that keeps every clue."""
        rows = completion.split()
        if len(rows) != 4 or not all(re.fullmatch(r"[1-4]{4}", r) for r in rows):
            return False
        grid = [int(c) for c in "".join(rows)]
        puzzle = example.meta["puzzle"]
        if len(puzzle) != 16 or any(p != "0" and int(p) != v for p, v in zip(puzzle, grid)):
            return False
        return _sudoku4_valid(grid)

    def count_solutions(self, example: Example, limit: int | None = None) -> int:
        """How many valid grids keep the example's clues (at most `limit`)."""
        return len(_sudoku4_completions(example.meta["puzzle"], limit))


# --------------------------------------------------------------------------------------------------
# latin: complete an n x n latin square from some clues (a third of the default puzzles have several)
# --------------------------------------------------------------------------------------------------


def _random_latin_square(n: int, rng: random.Random) -> tuple[int, ...]:
    """A random n x n latin square over 1..n (row-major): cell-by-cell backtracking in shuffled
    digit order. Not uniform over all squares, but covers far more than the isotopes of one square."""
    grid = [0] * (n * n)

    def fill(i: int) -> bool:
        if i == n * n:
            return True
        r, c = divmod(i, n)
        used = set(grid[r * n : r * n + c]) | {grid[q * n + c] for q in range(r)}
        options = [v for v in range(1, n + 1) if v not in used]
        rng.shuffle(options)
        for v in options:
            grid[i] = v
            if fill(i + 1):
                return True
        grid[i] = 0
        return False

    fill(0)
    return tuple(grid)


def _latin_completions(puzzle: str, n: int, limit: int | None = None) -> list[list[int]]:
    """The latin squares over 1..n that keep the clues of `puzzle` (row-major, ``0`` = empty), by
    exhaustive search; at most `limit` of them."""
    grid, out = [int(c) for c in puzzle], []

    def fill(i: int) -> None:
        if limit is not None and len(out) >= limit:
            return
        if i == n * n:
            out.append(grid[:])
            return
        if grid[i]:
            return fill(i + 1)
        r, c = divmod(i, n)
        used = {grid[r * n + k] for k in range(n)} | {grid[q * n + c] for q in range(n)}
        for v in range(1, n + 1):
            if v not in used:
                grid[i] = v
                fill(i + 1)
        grid[i] = 0

    fill(0)
    return out


def _latin_valid(g: list[int], n: int) -> bool:
    full = set(range(1, n + 1))
    return all(
        set(g[n * i : n * i + n]) == full and {g[n * r + i] for r in range(n)} == full for i in range(n)
    )


@dataclass(frozen=True)
class LatinFamily:
    """Prompt ``latin: 10300 00020 00000 40010 00005`` (n rows of n cells, ``0`` = empty) -> a full
    latin square over 1..n (each digit once per row and once per column) that keeps every clue, e.g.
    ``12345 ...``. Like sudoku4 without boxes and larger: digits drafted in parallel clash in a row or
    column, and the clues of the crossing column tell which copy is wrong -- the context an editor
    needs to repair a clash. Cells are single digits, so one token each."""

    name: str = "latin"
    size: int = 5
    min_clues: int = 10
    max_clues: int = 14

    def __post_init__(self) -> None:
        if not 2 <= self.size <= 9:
            raise ValueError(f"{self.name}: size must be in 2..9 (one digit per cell), got {self.size}")
        if not 0 <= self.min_clues <= self.max_clues <= self.size**2:
            raise ValueError(f"{self.name}: need 0 <= min_clues <= max_clues <= size**2 = {self.size**2}")

    def _draw(self, rng: random.Random) -> tuple[str, str, dict]:
        n = self.size
        grid = _random_latin_square(n, rng)
        shown = set(rng.sample(range(n * n), rng.randint(self.min_clues, self.max_clues)))
        cells = "".join(str(v) if i in shown else "0" for i, v in enumerate(grid))
        puzzle = " ".join(cells[n * r : n * r + n] for r in range(n))
        answer = " ".join("".join(map(str, grid[n * r : n * r + n])) for r in range(n))
        return f"latin: {puzzle}", answer, {"puzzle": cells, "size": n}

    def make(self, split: str, n: int, seed: int) -> list[Example]:
        return _sample_split(self.name, split, n, seed, self._draw)

    @_safe
    def score(self, completion: str, example: Example) -> bool:
        """Valid iff n rows of n digits 1..n form a latin square that keeps every clue."""
        n, puzzle = example.meta["size"], example.meta["puzzle"]
        rows = completion.split()
        if len(rows) != n or not all(re.fullmatch(f"[1-{n}]{{{n}}}", r) for r in rows):
            return False
        grid = [int(c) for c in "".join(rows)]
        if len(puzzle) != n * n or any(p != "0" and int(p) != v for p, v in zip(puzzle, grid)):
            return False
        return _latin_valid(grid, n)

    def count_solutions(self, example: Example, limit: int | None = None) -> int:
        """How many latin squares keep the example's clues (at most `limit`)."""
        return len(_latin_completions(example.meta["puzzle"], int(example.meta["size"]), limit))


# --------------------------------------------------------------------------------------------------
# deterministic controls: addition and sorting (exactly one valid answer)
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AdditionFamily:
    """Prompt ``add: 123+4567=`` -> ``4690``. One answer; a control where thresholds matter little
    once learned. Few digits by default (7-digit addition is slow to learn with T2T noise)."""

    name: str = "addition"
    min_digits: int = 1
    max_digits: int = 3

    def __post_init__(self) -> None:
        if not 1 <= self.min_digits <= self.max_digits:
            raise ValueError(f"{self.name}: need 1 <= min_digits <= max_digits")

    def _operand(self, rng: random.Random) -> int:
        d = rng.randint(self.min_digits, self.max_digits)
        return rng.randint(0 if d == 1 else 10 ** (d - 1), 10**d - 1)

    def _draw(self, rng: random.Random) -> tuple[str, str, dict]:
        a, b = self._operand(rng), self._operand(rng)
        return f"add: {a}+{b}=", str(a + b), {"a": a, "b": b}

    def make(self, split: str, n: int, seed: int) -> list[Example]:
        return _sample_split(self.name, split, n, seed, self._draw)

    @_safe
    def score(self, completion: str, example: Example) -> bool:
        """Valid iff the completion is exactly the decimal sum (no sign, no leading zeros)."""
        value = _int_tokens(completion)
        return value is not None and value == [example.meta["a"] + example.meta["b"]]


@dataclass(frozen=True)
class SortFamily:
    """Prompt ``sort: 34 7 89 12`` -> ``7 12 34 89``. One answer (ties are indistinguishable)."""

    name: str = "sort"
    min_len: int = 4
    max_len: int = 7
    max_value: int = 99

    def __post_init__(self) -> None:
        if not 1 <= self.min_len <= self.max_len:
            raise ValueError(f"{self.name}: need 1 <= min_len <= max_len")
        if self.max_value < 1:
            raise ValueError(f"{self.name}: max_value must be >= 1")

    def _draw(self, rng: random.Random) -> tuple[str, str, dict]:
        values = [rng.randint(0, self.max_value) for _ in range(rng.randint(self.min_len, self.max_len))]
        return f"sort: {' '.join(map(str, values))}", " ".join(map(str, sorted(values))), {"values": values}

    def make(self, split: str, n: int, seed: int) -> list[Example]:
        return _sample_split(self.name, split, n, seed, self._draw)

    @_safe
    def score(self, completion: str, example: Example) -> bool:
        """Valid iff the completion is the given numbers in ascending order."""
        return _int_tokens(completion) == sorted(example.meta["values"])


@dataclass(frozen=True)
class DedupFamily:
    """Prompt ``dedup: 3 3 5 1 1 1 2`` -> ``3 5 1 2``: every run of equal digits collapsed to one. One
    answer, shorter than the prompt by a length only the runs decide: a drafter that misjudges a run
    boundary gets the answer's length wrong, the error a DELETE or INSERT edit repairs and a
    substitution cannot (every token after it is off by one)."""

    name: str = "dedup"
    min_len: int = 6
    max_len: int = 12
    max_value: int = 9
    repeat_prob: float = 0.5  # chance that a digit repeats the one before it: runs of mean length 2

    def __post_init__(self) -> None:
        if not 1 <= self.min_len <= self.max_len:
            raise ValueError(f"{self.name}: need 1 <= min_len <= max_len")
        if self.max_value < 1:
            raise ValueError(f"{self.name}: max_value must be >= 1")
        if not 0.0 <= self.repeat_prob < 1.0:
            raise ValueError(f"{self.name}: repeat_prob must be in [0, 1)")

    def _draw(self, rng: random.Random) -> tuple[str, str, dict]:
        values = [rng.randint(0, self.max_value)]
        for _ in range(rng.randint(self.min_len, self.max_len) - 1):
            values.append(values[-1] if rng.random() < self.repeat_prob else rng.randint(0, self.max_value))
        return f"dedup: {' '.join(map(str, values))}", " ".join(map(str, dedup_runs(values))), {"values": values}

    def make(self, split: str, n: int, seed: int) -> list[Example]:
        return _sample_split(self.name, split, n, seed, self._draw)

    @_safe
    def score(self, completion: str, example: Example) -> bool:
        """Valid iff the completion is the given numbers with every run of equal ones collapsed."""
        return _int_tokens(completion) == dedup_runs(example.meta["values"])


def dedup_runs(values: list[int]) -> list[int]:
    """`values` with every run of equal neighbours kept once, in order."""
    return [v for i, v in enumerate(values) if i == 0 or v != values[i - 1]]


SYNTHETIC_FAMILIES: dict[str, SyntheticFamily] = {
    f.name: f
    for f in (PermutationFamily(), SumFamily(), Sudoku4Family(), LatinFamily(), AdditionFamily(), SortFamily(),
              DedupFamily())
}

# Families with many valid answers, where draft-and-edit has something to repair.
MULTI_ANSWER_FAMILIES = ("permutation", "sum", "sudoku4", "latin")


@lru_cache(maxsize=4096)  # evaluations judge the same held-out prompts again and again
def has_unique_answer(example: Example) -> bool:
    """Whether `example.answer` is the only valid answer, so that the edits of a wrong output can be
    judged against it (components.edits): always for the deterministic families; for a many-answer
    family that can count its solutions (`count_solutions`: sudoku4, latin), for the puzzles whose
    clues fix the whole grid; never otherwise."""
    family = SYNTHETIC_FAMILIES.get(example.family)
    if family is None:
        return False
    if example.family not in MULTI_ANSWER_FAMILIES:
        return True
    count_solutions = getattr(family, "count_solutions", None)
    if count_solutions is None:
        return False
    try:
        return count_solutions(example, limit=2) == 1
    except (KeyError, IndexError, TypeError, ValueError):  # damaged meta: nothing to judge against
        return False


def to_messages(example: Example, with_answer: bool = False) -> list[dict[str, str]]:
    """The chat form shared by SFT data and evaluation prompts, so both tokenise identically:
    one user turn holding the prompt (plus the reference answer as the assistant turn)."""
    messages = [{"role": "user", "content": example.prompt}]
    if with_answer:
        messages.append({"role": "assistant", "content": example.answer})
    return messages


def get_family(name: str, **params) -> SyntheticFamily:
    """The registered family `name`; `params` override its size / difficulty fields, e.g.
    ``get_family("sudoku4", min_clues=4, max_clues=5)``. A KeyError lists the known names, a
    ValueError the known parameters. The split of an instance never depends on the parameters."""
    try:
        family = SYNTHETIC_FAMILIES[name]
    except KeyError:
        raise KeyError(
            f"unknown synthetic task family {name!r}; known: {sorted(SYNTHETIC_FAMILIES)}"
        ) from None
    if not params:
        return family
    known = [f.name for f in dataclasses.fields(family) if f.name != "name"]
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise ValueError(f"synthetic family {name!r}: unknown parameter(s) {unknown}; known: {known}")
    return dataclasses.replace(family, **params)
