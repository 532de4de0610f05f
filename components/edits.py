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

Levenshtein editing adds structural edits (DELETE, INSERT; `model.levenshtein`), recorded per block
as `StructuralRecord`s. They move every later token of the block, so they are not judged position by
position: each deletion or insertion, applied alone to the block it edited, is a **fix** when it
lowers the block's edit distance to its reference block ([MASK] matching anything), a **break** when
it raises it and **neutral** otherwise (`classify_structural_edits`).

Error attribution (`attribute_errors`) goes the other way: from each wrong token of a wrong answer
back to the step that left it there -- a draft that was kept, an edit that broke a right token, an
edit from one wrong token to another, or a wrong draft the model itself would have edited to the
right token at block end had its confidence cleared tau_edit (that needs the block-end view,
`block_end_choices`) -- or to the answer's length (EOS too early or too late).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields

import torch

from components.families import Example, has_unique_answer
from model.decoding import StepRecord, Trajectory
from model.levenshtein import StructuralRecord, apply_block_edits, edit_distance
from model.masks import block_causal_mask

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


STRUCTURAL_KINDS = ("deletion", "insertion")


@dataclass
class StructuralStats:
    """Deletions and insertions over one or more decodes, each a fix, break or neutral; add with `+`."""

    deletions: int = 0
    deletion_fixes: int = 0
    deletion_breaks: int = 0
    deletion_neutral: int = 0
    insertions: int = 0
    insertion_fixes: int = 0
    insertion_breaks: int = 0
    insertion_neutral: int = 0
    unjudged: int = 0  # structural edits of decodes without a reference
    samples: int = 0

    def __add__(self, other: "StructuralStats") -> "StructuralStats":
        return StructuralStats(**{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)})

    def precision(self, kind: str) -> float:
        """fixes / (fixes + breaks) of `kind` (deletion | insertion); NaN when none was decisive."""
        fixes, breaks = getattr(self, f"{kind}_fixes"), getattr(self, f"{kind}_breaks")
        return fixes / (fixes + breaks) if fixes + breaks else float("nan")

    def named(self) -> dict[str, float | None]:
        """Reported figures under stable names; a precision is None when nothing was decisive."""
        out: dict[str, float | None] = {}
        for kind in STRUCTURAL_KINDS:
            count = getattr(self, f"{kind}s")
            out[f"{kind}s_per_sample"] = count / self.samples if self.samples else 0.0
            for verdict in ("fixes", "breaks", "neutral"):
                out[f"{kind}_{verdict}"] = float(getattr(self, f"{kind}_{verdict}"))
            decisive = getattr(self, f"{kind}_fixes") + getattr(self, f"{kind}_breaks")
            out[f"{kind}_precision"] = self.precision(kind) if decisive else None
        return out

    def metrics(self, prefix: str) -> dict[str, float]:
        """`<prefix>/deletions_per_sample`, `<prefix>/insertion_precision`, ... (NaN-free)."""
        return {f"{prefix}/{name}": value for name, value in self.named().items() if value is not None}


def structural_records(trajectory: Trajectory) -> list[StructuralRecord]:
    """One decode's structural edits in decoding order (none without Levenshtein editing)."""
    return [trajectory.structural[i] for i in sorted(trajectory.structural)]


def reference_block(record: StructuralRecord, reference: list[int], eos_id: int | None, prompt_length: int) -> list[int]:
    """What the edited block should hold: its prompt tokens as they are, then the reference
    completion at the block's positions, EOS past its end (what SFT trains there)."""
    out = []
    for k, token in enumerate(record.before):
        i = record.start + k - prompt_length
        out.append(token if i < 0 else reference[i] if i < len(reference) else eos_id)
    return out


def classify_structural_edits(records: list[StructuralRecord], reference: list[int] | None, eos_id: int | None,
                              mask_id: int, prompt_length: int) -> StructuralStats:
    """Judge every deletion and insertion of one decode (`records` in decoding order).

    Each edit is applied alone to its record's block and the block's edit distance to
    `reference_block` compared before and after (`model.levenshtein.edit_distance`): a step's edits
    are independent decisions of the model, so each is credited with what it does by itself.
    `reference=None` counts them only (`unjudged`).
    """
    stats = StructuralStats(samples=1)
    for record in records:
        before = torch.tensor(record.before)
        m = len(record.before)
        want = None if reference is None else reference_block(record, reference, eos_id, prompt_length)
        d0 = None if want is None else edit_distance(record.before, want, mask_id)
        for kind, offsets in (("deletion", record.deleted), ("insertion", record.inserted)):
            for k in offsets:
                setattr(stats, f"{kind}s", getattr(stats, f"{kind}s") + 1)
                if want is None:
                    stats.unjudged += 1
                    continue
                alone = torch.zeros(m, dtype=torch.bool)
                alone[k] = True
                none = torch.zeros(m, dtype=torch.bool)
                delete, insert = (alone, none) if kind == "deletion" else (none, alone)
                after = apply_block_edits(before, delete, insert, mask_id=mask_id).tokens.tolist()
                d1 = edit_distance(after, want, mask_id)
                verdict = "fixes" if d1 < d0 else "breaks" if d1 > d0 else "neutral"
                setattr(stats, f"{kind}_{verdict}", getattr(stats, f"{kind}_{verdict}") + 1)
    return stats


def judge_structural_edits(trajectory: Trajectory, sequence: list[int], eos_id: int | None, *, correct: bool,
                           reference: list[int] | None) -> StructuralStats:
    """`classify_structural_edits` of one decode, judged as `judge_edits` judges its T2T edits: a correct
    output is its own reference, a wrong one is judged against `reference` or left unjudged."""
    target = [t for t in sequence if t != eos_id] if correct else reference
    return classify_structural_edits(structural_records(trajectory), target, eos_id, trajectory.mask_id,
                                     trajectory.prompt_length)


FORWARD_KINDS = ("draft", "edit", "verify", "mbe")


def forward_split(trajectory: Trajectory) -> dict[str, int]:
    """Where one decode's forwards went (the paper's speed accounting):

    * ``draft``: the block still had masks (M2T fills, possibly with T2T edits in the same forward);
    * ``edit``: a post step (block fully drafted) that edited at least one token, or deleted or
      inserted one (Levenshtein editing) -- an edit round;
    * ``verify``: a post step that edited nothing and so ended the block;
    * ``mbe``: a Multi-Block Editing pass.

    A speculative draft of the next block rides on a ``verify`` forward and is not counted again, so
    the four counts add up to the decoder's forwards for this prompt.
    """
    split = dict.fromkeys(FORWARD_KINDS, 0)
    for i, step in enumerate(trajectory.steps):
        if step.kind == "speculative":
            continue
        if step.kind == "post":
            split["edit" if step.t2t or i in trajectory.structural else "verify"] += 1
        else:
            split[step.kind] += 1
    return split


def example_reference(tokenizer, example: Example) -> list[int] | None:
    """What a wrong output of a synthetic-family example is judged against: the example's answer where
    its clues make it the one valid answer (components.families.has_unique_answer), else None."""
    return tokenizer.encode(example.answer) if has_unique_answer(example) else None


def judge_example_edits(trajectory: Trajectory, sequence: list[int], tokenizer, example: Example, *, correct: bool,
                        select: EditFilter | None = None) -> EditStats:
    """`judge_edits` for a synthetic-family example (`example_reference`)."""
    return judge_edits(trajectory, sequence, tokenizer.eos_id, correct=correct,
                       reference=example_reference(tokenizer, example), select=select)


def judge_example_structural_edits(trajectory: Trajectory, sequence: list[int], tokenizer, example: Example, *,
                                   correct: bool) -> StructuralStats:
    """`judge_structural_edits` for a synthetic-family example (`example_reference`)."""
    return judge_structural_edits(trajectory, sequence, tokenizer.eos_id, correct=correct,
                                  reference=example_reference(tokenizer, example))


# Why a token of a wrong answer is wrong, in the order the table prints them:
# * accepted_draft: drafted (M2T) wrong and never edited, and the model still prefers a wrong token
#   at block end (or its block-end view is unknown) -- the draft threshold let it in;
# * never_fired: drafted wrong and never edited although at block end the model's arg-max is the
#   right token, below tau_edit -- the edit rule held back a repair the model already had;
# * broken_by_edit: the position held the right token and an edit took it away (possibly through
#   further edits) -- the edit threshold let a bad edit through;
# * wrong_edit: edited, but only ever between wrong tokens;
# * length: the answer's EOS came early or late (or never), one per answer: what follows it is
#   misaligned, so its tokens are not judged one by one.
ERROR_CAUSES = ("accepted_draft", "never_fired", "broken_by_edit", "wrong_edit", "length")

# Block-end view of a decode: canvas position -> (arg-max token, its probability) in a forward over
# the final canvas under the decoding mask, what the block's last (verifying) step saw.
BlockEndChoices = dict[int, tuple[int, float]]


@dataclass
class ErrorAttribution:
    """Wrong tokens by cause over one or more decodes; add them with `+`.

    `tokens` counts every wrong token by cause; `answers` counts each wrong answer once, under the
    cause of its first wrong token (what derailed it), so it sums to `wrong_answers - unjudged`.
    `never_fired_confidence` holds the block-end probability of the right token for every
    `never_fired` token: how far tau_edit would have to drop to let each repair through.
    `accepted_confidence` holds, for every `accepted_draft` token the model still chooses at block
    end, its block-end probability. The block-end view reads the token itself (it is no longer a mask),
    so this is how firmly the model endorses a wrong token it sees -- what T2T editing has to overcome --
    not how confident the draft was: near 1, no tau_edit repairs it and the lever is the editing
    objective's calibration; well below 1, the model doubts it and only the edit's arg-max is missing.
    """

    tokens: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ERROR_CAUSES, 0))
    answers: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ERROR_CAUSES, 0))
    wrong_answers: int = 0
    unjudged: int = 0  # wrong answers without a unique reference to judge tokens against
    samples: int = 0
    never_fired_confidence: list[float] = field(default_factory=list)
    accepted_confidence: list[float] = field(default_factory=list)

    def __add__(self, other: "ErrorAttribution") -> "ErrorAttribution":
        return ErrorAttribution({c: self.tokens[c] + other.tokens[c] for c in ERROR_CAUSES},
                                {c: self.answers[c] + other.answers[c] for c in ERROR_CAUSES},
                                self.wrong_answers + other.wrong_answers, self.unjudged + other.unjudged,
                                self.samples + other.samples,
                                self.never_fired_confidence + other.never_fired_confidence,
                                self.accepted_confidence + other.accepted_confidence)

    def shares(self, level: str = "tokens") -> dict[str, float]:
        """Each cause's share of the judged wrong tokens (or answers); NaN when there are none."""
        counts = getattr(self, level)
        total = sum(counts.values())
        return {c: counts[c] / total if total else float("nan") for c in ERROR_CAUSES}

    def as_dict(self) -> dict[str, float]:
        return {"wrong_answers": self.wrong_answers, "err_unjudged": self.unjudged,
                **{f"err_tokens_{c}": v for c, v in self.tokens.items()},
                **{f"err_answers_{c}": v for c, v in self.answers.items()},
                "never_fired_confidence": list(self.never_fired_confidence),
                "accepted_confidence": list(self.accepted_confidence)}


def attribute_errors(trajectory: Trajectory, sequence: list[int], eos_id: int | None, *, correct: bool,
                     reference: list[int] | None, block_end: BlockEndChoices | None = None) -> ErrorAttribution:
    """The cause of every wrong token of one decode (ERROR_CAUSES).

    `sequence` is the generated token ids (cut after the first EOS, EOS kept), `correct` the task's
    verdict, `reference` the reference answer's ids (no EOS) or None where the task has several valid
    answers (a wrong answer is then `unjudged`). `block_end` (`block_end_choices`) tells a kept wrong
    draft the model would have repaired (`never_fired`) from one it still believes (`accepted_draft`);
    without it every kept wrong draft is an accepted draft.
    """
    out = ErrorAttribution(samples=1)
    if correct:
        return out
    out.wrong_answers = 1
    if reference is None:
        out.unjudged = 1
        return out
    start = trajectory.prompt_length
    history: dict[int, list[tuple[str, int]]] = {}  # position -> [(how, token)] in decoding order
    for step in trajectory.steps:
        for position, token in step.m2t:
            history.setdefault(position, []).append(("draft", token))
        for position, _, new in step.t2t:
            history.setdefault(position, []).append(("edit", new))
    causes = []
    for i, got in enumerate(sequence):
        want = reference[i] if i < len(reference) else eos_id
        if got == want:
            continue
        if got == eos_id or want == eos_id:
            causes.append("length")
            break
        events = history.get(start + i, [])
        if not any(how == "edit" for how, _ in events):
            choice = (block_end or {}).get(start + i)
            if choice is not None and choice[0] == want:
                causes.append("never_fired")
                out.never_fired_confidence.append(choice[1])
            else:
                causes.append("accepted_draft")
                if choice is not None and choice[0] == got:
                    out.accepted_confidence.append(choice[1])
        elif any(token == want for _, token in events[:-1]):
            causes.append("broken_by_edit")
        else:
            causes.append("wrong_edit")
    else:
        if len(sequence) <= len(reference) and (not sequence or sequence[-1] != eos_id):
            causes.append("length")  # ran out of canvas before the answer (or its EOS) was complete
    for cause in causes:
        out.tokens[cause] += 1
    if causes:
        out.answers[causes[0]] += 1
    return out


@torch.no_grad()
def block_end_logits(lm, canvas: list[int], block_length: int, positions: list[int]) -> torch.Tensor:
    """Logits [K, V] of the block-end view at `positions` (absolute canvas positions, not empty): one
    forward over the final canvas up to the last of them, under the decoding's block-causal mask. Each
    block then sees itself and the earlier blocks as they were when it ended -- what its verifying step
    saw -- unless a Multi-Block Editing pass changed them later."""
    end = (max(positions) // block_length + 1) * block_length
    ids = torch.tensor(canvas[:end], dtype=torch.long, device=lm.device)[None]  # (1, T)
    mask = block_causal_mask(end, block_length, device=lm.device)  # (1, 1, T, T)
    return lm(ids, attention_mask=mask).logits[0, positions]  # (K, V)


def block_end_choices(lm, canvas: list[int], block_length: int, positions: list[int],
                      mask_id: int) -> BlockEndChoices:
    """The block-end view (`block_end_logits`) at `positions`, greedy choice as the decoder makes it
    (model.sampling)."""
    from model.sampling import choose_tokens

    if not positions:
        return {}
    tokens, conf = choose_tokens(block_end_logits(lm, canvas, block_length, positions), mask_id)
    return {p: (int(t), float(c)) for p, t, c in zip(positions, tokens.tolist(), conf.tolist())}


def attribute_example_errors(lm, trajectory: Trajectory, sequence: list[int], canvas: list[int], tokenizer,
                             example: Example, *, correct: bool) -> ErrorAttribution:
    """`attribute_errors` for a synthetic-family example, with the block-end view from `lm` at the
    wrong tokens that were never edited (the only ones it decides). Judged against the example's
    answer only where it is the one valid answer (components.families.has_unique_answer)."""
    if correct:
        return attribute_errors(trajectory, sequence, tokenizer.eos_id, correct=True, reference=None)
    reference = example_reference(tokenizer, example)
    block_end = None
    if reference is not None:
        start = trajectory.prompt_length
        edited = {p for step in trajectory.steps for p, _, _ in step.t2t}
        want = reference + [tokenizer.eos_id]
        kept = [start + i for i, got in enumerate(sequence[:len(reference)])
                if got != want[i] and got != tokenizer.eos_id and start + i not in edited]
        block_end = block_end_choices(lm, canvas, trajectory.block_length, kept, tokenizer.mask_id)
    return attribute_errors(trajectory, sequence, tokenizer.eos_id, correct=False, reference=reference,
                            block_end=block_end)
