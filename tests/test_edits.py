"""Edit accounting (components.edits): fix / break / neutral / oscillation classification, the forward
split, and which outputs are judged against a reference."""

from __future__ import annotations

import math

import pytest

from components.edits import EditStats, classify_edits, forward_split, judge_edits
from model.decoding import StepRecord, Trajectory

EOS = 9


def trajectory(steps: list[StepRecord], prompt_length: int = 2) -> Trajectory:
    return Trajectory(prompt_length=prompt_length, block_length=8, mask_id=99, initial_canvas=[], steps=steps)


def test_edits_are_fixes_breaks_neutral_and_oscillations():
    # reference completion [1, 2, 3] then EOS; canvas positions 2.. hold the completion
    steps = [
        StepRecord("draft", 0, m2t=[(2, 1), (3, 5), (4, 3), (5, 7)]),
        StepRecord("draft", 0, t2t=[(3, 5, 2),    # wrong -> right: fix
                                    (4, 3, 4),    # right -> wrong: break
                                    (5, 7, 6)]),  # wrong (EOS expected) -> other wrong: neutral
        StepRecord("post", 0, t2t=[(4, 4, 3)]),   # back to a value it held: fix and oscillation
    ]
    stats = classify_edits(trajectory(steps), [1, 2, 3], EOS, generated_tokens=4)
    assert (stats.edits, stats.fixes, stats.breaks, stats.neutral, stats.oscillations) == (4, 2, 1, 1, 1)
    assert stats.precision == pytest.approx(2 / 3)
    assert stats.oscillations_per_100_tokens == pytest.approx(25.0)


def test_without_reference_edits_are_counted_but_not_judged():
    steps = [StepRecord("draft", 0, m2t=[(2, 1)]), StepRecord("post", 0, t2t=[(2, 1, 4)])]
    stats = classify_edits(trajectory(steps), None, EOS)
    assert stats.edits == stats.unjudged == 1 and stats.fixes == stats.breaks == 0
    assert math.isnan(stats.precision)
    assert "x/edit_precision" not in stats.metrics("x")  # no decisive edit: no precision logged
    assert stats.metrics("x")["x/edits_per_sample"] == 1.0


def test_forward_split_counts_drafts_edit_rounds_verifications_and_mbe_passes():
    steps = [
        StepRecord("draft", 0, m2t=[(2, 1), (3, 5)]),
        StepRecord("draft", 0, m2t=[(4, 3)], t2t=[(3, 5, 2)]),  # still drafting, edits ride along
        StepRecord("post", 0, t2t=[(4, 3, 4)]),                  # an edit round
        StepRecord("post", 0),                                   # verification: ends the block
        StepRecord("speculative", 1, m2t=[(8, 7)]),              # drafted by the verification forward
        StepRecord("draft", 1, m2t=[(9, 1)]),
        StepRecord("mbe", 1, t2t=[(2, 1, 6)]),
    ]
    assert forward_split(trajectory(steps)) == {"draft": 3, "edit": 1, "verify": 1, "mbe": 1}


def test_select_counts_only_the_chosen_edits_but_remembers_every_token_held():
    # block length 8, prompt of 2: block 0 holds positions 2..7, block 1 positions 8..15
    steps = [
        StepRecord("draft", 0, m2t=[(2, 1), (3, 5)]),
        StepRecord("post", 0, t2t=[(3, 5, 6)]),            # not an MBE edit: skipped, but 3 has held 5
        StepRecord("draft", 1, m2t=[(8, 3)]),
        StepRecord("mbe", 1, t2t=[(3, 6, 5),               # earlier block, back to a held token
                                  (2, 1, 7),               # earlier block: breaks a right token
                                  (8, 3, 4)]),             # the block just ended: not selected
    ]
    earlier = lambda step, pos: step.kind == "mbe" and pos // 8 < step.block  # noqa: E731
    stats = classify_edits(trajectory(steps), [1, 2, 3, 4, 5, 6, 3], EOS, select=earlier)
    assert (stats.edits, stats.fixes, stats.breaks, stats.neutral, stats.oscillations) == (2, 0, 1, 1, 1)
    everything = classify_edits(trajectory(steps), [1, 2, 3, 4, 5, 6, 3], EOS)
    assert (everything.edits, everything.breaks) == (4, 2)


def test_edit_stats_add_up_over_samples():
    a = EditStats(edits=2, fixes=1, breaks=1, tokens=10, samples=1)
    b = EditStats(edits=1, fixes=1, tokens=10, samples=1)
    total = a + b
    assert (total.edits, total.fixes, total.breaks, total.samples) == (3, 2, 1, 2)
    assert total.edits_per_sample == 1.5 and total.metrics("m")["m/edit_precision"] == pytest.approx(2 / 3)


def test_judge_edits_uses_a_correct_output_as_its_own_reference():
    # completion [4, 2] + EOS; position 2 drafted 1 then edited to 4, position 3 drafted 2 then edited to 5 and back
    steps = [StepRecord("draft", 0, m2t=[(2, 1), (3, 2)]),
             StepRecord("post", 0, t2t=[(2, 1, 4), (3, 2, 5)]), StepRecord("post", 0, t2t=[(3, 5, 2)])]
    seq = [4, 2, EOS]
    own = judge_edits(trajectory(steps), seq, EOS, correct=True, reference=[1, 2])  # another valid answer
    assert (own.fixes, own.breaks, own.neutral, own.oscillations, own.tokens) == (2, 1, 0, 1, 3)
    wrong = judge_edits(trajectory(steps), seq, EOS, correct=False, reference=[1, 2])
    assert (wrong.fixes, wrong.breaks, wrong.neutral) == (1, 2, 0)  # 1 -> 4 broke a right token
    unjudged = judge_edits(trajectory(steps), seq, EOS, correct=False, reference=None)
    assert unjudged.unjudged == unjudged.edits == 3 and unjudged.named()["edit_precision"] is None
    assert own.named()["edit_precision"] == pytest.approx(2 / 3) == own.metrics("m")["m/edit_precision"]


def test_example_edits_of_a_wrong_output_are_judged_only_where_the_answer_is_unique():
    from components.edits import judge_example_edits
    from components.families import get_family, has_unique_answer

    class Chars:
        eos_id = EOS

        def encode(self, text):
            return [ord(c) for c in text]

    examples = get_family("sudoku4").make("heldout", 40, seed=0)
    unique = next(e for e in examples if has_unique_answer(e))
    several = next(e for e in examples if not has_unique_answer(e))
    for example, judged in ((unique, True), (several, False)):
        right = ord(example.answer[0])
        steps = [StepRecord("draft", 0, m2t=[(2, right)]), StepRecord("post", 0, t2t=[(2, right, right + 1)])]
        stats = judge_example_edits(trajectory(steps), [right + 1, EOS], Chars(), example, correct=False)
        assert (stats.breaks, stats.unjudged) == ((1, 0) if judged else (0, 1))
