"""Edit accounting: was each token-to-token edit a repair or damage?

The decoder's trajectory records every T2T edit as (position, old, new). Against a reference
completion (the reference answer's tokens, then EOS), each edit is

* a **fix**: the old token was wrong and the new one is right,
* a **break**: the old token was right and the new one is wrong,
* **neutral**: wrong before and wrong after (one wrong token for another),

and an **oscillation** when the new token is one the position already held earlier in the same
decode (drafted or edited to), i.e. the edit undoes an earlier decision. Edit precision is
fixes / (fixes + breaks): the share of decisive edits that help.

Positions past the reference's end are compared with EOS, which is what SFT trains there
(`sft.fill: eos`). Without a reference (tasks with many valid answers) the caller may pass the
final output when it was judged correct: every edit that moved a token to its final value is then a
fix of a wrong draft, which is what that answer needed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, fields

from components.families import Example, has_unique_answer
from model.decoding import StepRecord, Trajectory

# Which edits to count: called with the step that made the edit and the edit's canvas position.
EditFilter = Callable[[StepRecord, int], bool]


@dataclass
class EditStats:
    """Counts over one or more decodes; add them with `+`."""

    edits: int = 0  # every T2T replacement
    fixes: int = 0
    breaks: int = 0
    neutral: int = 0
    oscillations: int = 0
    unjudged: int = 0  # edits of decodes without a reference
    tokens: int = 0  # generated tokens of the decodes counted
    samples: int = 0

    def __add__(self, other: "EditStats") -> "EditStats":
        return EditStats(**{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)})

    @property
    def precision(self) -> float:
        """fixes / (fixes + breaks); NaN when no edit was decisive (nothing to judge)."""
        decisive = self.fixes + self.breaks
        return self.fixes / decisive if decisive else float("nan")

    @property
    def edits_per_sample(self) -> float:
        return self.edits / self.samples if self.samples else 0.0

    @property
    def oscillations_per_100_tokens(self) -> float:
        return 100.0 * self.oscillations / self.tokens if self.tokens else 0.0

    def named(self) -> dict[str, float | None]:
        """The reported figures under their stable names; `edit_precision` is None when no edit was
        decisive (a JSON- and MLflow-safe stand-in for NaN)."""
        return {"edits_per_sample": self.edits_per_sample, "edit_fixes": float(self.fixes),
                "edit_breaks": float(self.breaks), "edit_neutral": float(self.neutral),
                "edit_oscillations": float(self.oscillations),
                "oscillations_per_100_tokens": self.oscillations_per_100_tokens,
                "edit_precision": self.precision if self.fixes + self.breaks else None}

    def metrics(self, prefix: str) -> dict[str, float]:
        """Stable metric names: `<prefix>/edits_per_sample`, `<prefix>/edit_precision`, ... (NaN-free)."""
        return {f"{prefix}/{name}": value for name, value in self.named().items() if value is not None}

    def as_dict(self) -> dict[str, float]:
        out = asdict(self)
        out.update(precision=self.precision, edits_per_sample=self.edits_per_sample,
                   oscillations_per_100_tokens=self.oscillations_per_100_tokens)
        return out


def classify_edits(trajectory: Trajectory, reference: list[int] | None, eos_id: int | None,
                   generated_tokens: int = 0, select: EditFilter | None = None) -> EditStats:
    """Classify every T2T edit of one decode against `reference` (completion token ids, no EOS).

    `reference=None` counts edits and oscillations only (the edits are `unjudged`). With `select`,
    only the edits it accepts are counted (e.g. a Multi-Block Editing pass's edits of earlier
    blocks); every edit still enters the history that marks oscillations.
    """
    start = trajectory.prompt_length
    held: dict[int, set[int]] = {}  # position -> every token it has held in this decode
    stats = EditStats(tokens=generated_tokens, samples=1)

    def expected(position: int) -> int | None:
        i = position - start
        if reference is None:
            return None
        return reference[i] if i < len(reference) else eos_id

    for step in trajectory.steps:
        for position, token in step.m2t:
            held.setdefault(position, set()).add(token)
        for position, old, new in step.t2t:
            seen = held.setdefault(position, {old})
            returns = new in seen
            seen.add(new)
            if select is not None and not select(step, position):
                continue
            stats.edits += 1
            stats.oscillations += returns
            want = expected(position)
            if want is None:
                stats.unjudged += 1
            elif old != want and new == want:
                stats.fixes += 1
            elif old == want and new != want:
                stats.breaks += 1
            else:
                stats.neutral += 1
    return stats


def judge_edits(trajectory: Trajectory, sequence: list[int], eos_id: int | None, *, correct: bool,
                reference: list[int] | None, select: EditFilter | None = None) -> EditStats:
    """Classify one decode's edits the way every stage judges them (evaluation, benchmark, sweeps).

    `sequence` is the generated token ids (EOS kept), `correct` the task's verdict on it, `reference`
    the reference answer's token ids -- pass it only when the task has a unique answer, else None.
    A correct output is its own reference (the edits that made it are fixes, whichever valid answer it
    is); a wrong one is judged against `reference`, or left unjudged without one. `select` as in
    `classify_edits`.
    """
    target = [t for t in sequence if t != eos_id] if correct else reference
    return classify_edits(trajectory, target, eos_id, len(sequence), select)


FORWARD_KINDS = ("draft", "edit", "verify", "mbe")


def forward_split(trajectory: Trajectory) -> dict[str, int]:
    """Where one decode's forwards went (the paper's speed accounting):

    * ``draft``: the block still had masks (M2T fills, possibly with T2T edits in the same forward);
    * ``edit``: a post step (block fully drafted) that edited at least one token -- an edit round;
    * ``verify``: a post step that edited nothing and so ended the block;
    * ``mbe``: a Multi-Block Editing pass.

    A speculative draft of the next block rides on a ``verify`` forward and is not counted again, so
    the four counts add up to the decoder's forwards for this prompt.
    """
    split = dict.fromkeys(FORWARD_KINDS, 0)
    for step in trajectory.steps:
        if step.kind == "speculative":
            continue
        if step.kind == "post":
            split["edit" if step.t2t else "verify"] += 1
        else:
            split[step.kind] += 1
    return split


def judge_example_edits(trajectory: Trajectory, sequence: list[int], tokenizer, example: Example, *, correct: bool,
                        select: EditFilter | None = None) -> EditStats:
    """`judge_edits` for a synthetic-family example: a wrong output is judged against the example's
    answer only where its clues make it the one valid answer (components.families.has_unique_answer)."""
    reference = tokenizer.encode(example.answer) if has_unique_answer(example) else None
    return judge_edits(trajectory, sequence, tokenizer.eos_id, correct=correct, reference=reference, select=select)
