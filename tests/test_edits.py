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


# ------------------------------------------------------------------------------------------ attribution
def test_every_wrong_token_is_traced_to_the_step_that_left_it():
    from components.edits import attribute_errors

    # reference [1, 2, 3, 4, 5] then EOS at canvas positions 2..7
    steps = [
        StepRecord("draft", 0, m2t=[(2, 1), (3, 6), (4, 3), (5, 7)]),  # 3 drafted wrong (6), 5 drafted wrong (7)
        StepRecord("draft", 0, m2t=[(6, 5), (7, EOS)], t2t=[(4, 3, 8)]),  # right -> wrong: broken
        StepRecord("post", 0, t2t=[(5, 7, 0)]),  # wrong -> another wrong
        StepRecord("post", 0),
    ]
    final = [1, 6, 8, 0, 5, EOS]
    # the block-end view: at 3 the model now prefers the right token 2 (below tau_edit)
    res = attribute_errors(trajectory(steps), final, EOS, correct=False, reference=[1, 2, 3, 4, 5],
                           block_end={3: (2, 0.4)})
    assert res.tokens == {"accepted_draft": 0, "never_fired": 1, "broken_by_edit": 1, "wrong_edit": 1, "length": 0}
    assert res.answers["never_fired"] == 1 and sum(res.answers.values()) == 1  # the first wrong token's cause
    assert res.never_fired_confidence == [0.4]
    # without the view (or where the model still prefers its draft) the kept draft is an accepted draft
    for view, held in ((None, []), ({3: (6, 0.9)}, [0.9]), ({3: (4, 0.6)}, [])):
        res = attribute_errors(trajectory(steps), final, EOS, correct=False, reference=[1, 2, 3, 4, 5], block_end=view)
        assert res.tokens["accepted_draft"] == 1 and res.tokens["never_fired"] == 0
        assert res.accepted_confidence == held  # only where the model still holds its draft


def test_an_edit_that_leaves_a_right_token_through_other_wrong_ones_is_a_break():
    from components.edits import attribute_errors

    steps = [StepRecord("draft", 0, m2t=[(2, 1), (3, EOS)]), StepRecord("post", 0, t2t=[(2, 1, 4)]),
             StepRecord("post", 0, t2t=[(2, 4, 5)])]
    res = attribute_errors(trajectory(steps), [5, EOS], EOS, correct=False, reference=[1])
    assert res.tokens["broken_by_edit"] == 1 and sum(res.tokens.values()) == 1


def test_an_answer_that_ends_early_or_late_is_one_length_error():
    from components.edits import attribute_errors

    steps = [StepRecord("draft", 0, m2t=[(2, 1), (3, EOS), (4, 3)])]
    early = attribute_errors(trajectory(steps), [1, EOS], EOS, correct=False, reference=[1, 2, 3])
    late = attribute_errors(trajectory(steps), [1, 2, 3, 4, EOS], EOS, correct=False, reference=[1, 2, 3])
    cut = attribute_errors(trajectory(steps), [1, 2], EOS, correct=False, reference=[1, 2])  # no EOS: out of canvas
    wrong_then_early = attribute_errors(trajectory(steps), [7, EOS], EOS, correct=False, reference=[1, 2, 3])
    for res in (early, late, cut):
        assert res.tokens == {**dict.fromkeys(res.tokens, 0), "length": 1} and res.answers["length"] == 1
    assert wrong_then_early.tokens["accepted_draft"] == 1 and wrong_then_early.tokens["length"] == 1
    assert wrong_then_early.answers["accepted_draft"] == 1 and wrong_then_early.answers["length"] == 0


def test_right_answers_have_no_errors_and_wrong_ones_without_reference_are_unjudged():
    from components.edits import ErrorAttribution, attribute_errors

    steps = [StepRecord("draft", 0, m2t=[(2, 1), (3, EOS)])]
    right = attribute_errors(trajectory(steps), [1, EOS], EOS, correct=True, reference=[2])
    open_ = attribute_errors(trajectory(steps), [1, EOS], EOS, correct=False, reference=None)
    total = right + open_ + ErrorAttribution()
    assert (total.samples, total.wrong_answers, total.unjudged) == (2, 1, 1)
    assert sum(total.tokens.values()) == 0 and all(math.isnan(v) for v in total.shares().values())


def test_block_end_view_is_the_decoders_greedy_choice_under_the_block_causal_mask():
    import torch

    from components.edits import block_end_choices
    from model import DiffusionLM, ModelConfig
    from model.masks import block_causal_mask
    from model.sampling import choose_tokens

    torch.manual_seed(0)
    lm = DiffusionLM(ModelConfig.tiny(vocab_size=32, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                                      mask_token_id=31, eos_token_id=30)).eval()
    canvas = torch.randint(0, 30, (12,)).tolist()
    view = block_end_choices(lm, canvas, 4, [5, 2], mask_id=31)
    # the later block does not change what an earlier one sees: the view ends at position 5's block
    with torch.no_grad():
        full = lm(torch.tensor(canvas)[None], attention_mask=block_causal_mask(12, 4)).logits[0]
    tokens, conf = choose_tokens(full, 31)
    for p in (2, 5):
        assert view[p][0] == int(tokens[p]) and view[p][1] == pytest.approx(float(conf[p]), abs=1e-5)
    assert block_end_choices(lm, canvas, 4, [], mask_id=31) == {}


def test_block_end_view_agrees_with_the_verifying_step_of_a_decode():
    """With tau_edit = 0 a verifying step (a post step that edits nothing) means the model's arg-max
    equals the canvas at every drafted position of its block; the block-end view must say the same."""
    import torch

    from components.edits import block_end_choices
    from model import DecodeConfig, DiffusionLM, ModelConfig, generate

    torch.manual_seed(1)
    lm = DiffusionLM(ModelConfig.tiny(vocab_size=32, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                                      mask_token_id=31, eos_token_id=30)).eval()
    prompts = [torch.randint(0, 30, (n,)).tolist() for n in (3, 6, 9)]
    cfg = DecodeConfig(block_length=4, gen_length=12, threshold=0.9, editing_threshold=0.0, max_post_steps=64,
                       use_cache=False, record_trajectory=True, mask_id=31, eos_id=30)
    res = generate(lm, prompts, cfg)
    checked = 0
    for traj, canvas in zip(res.trajectories, res.canvases):
        last = {}
        for step in traj.steps:
            last[step.block] = step
        for block, step in last.items():
            if step.kind != "post" or step.t2t:
                continue  # ended some other way: nothing pins the model's view to the canvas
            positions = [p for p in range(block * 4, block * 4 + 4) if p >= traj.prompt_length]
            view = block_end_choices(lm, canvas, 4, positions, mask_id=31)
            assert all(view[p][0] == canvas[p] for p in positions)
            checked += 1
    assert checked > 0


# ---------------------------------------------------------------------------------------- structural edits
def structural(start, before, deleted=(), inserted=()):
    from model.levenshtein import StructuralRecord

    return StructuralRecord(start, tuple(before), tuple(deleted), tuple(inserted))


def test_structural_edits_are_judged_by_the_block_edit_distance():
    from components.edits import classify_structural_edits

    M = 99
    # prompt of 2 tokens, block of 4 at canvas position 2; reference completion [1, 2, 3, 4]
    records = [
        structural(2, [1, 3, 4, 5], inserted=[1]),  # restores the skipped 2: [1, M, 3, 4], distance 2 -> 0
        structural(2, [1, 2, 2, 3], deleted=[1]),  # drops the duplicate: [1, 2, 3, M], 2 -> 0
        structural(2, [1, 2, 3, 4], deleted=[2], inserted=[0]),  # both damage a correct block
        structural(2, [1, 3, 4, 5], deleted=[3]),  # alone, dropping the surplus 5 leaves the skip: 2 -> 2
    ]
    stats = classify_structural_edits(records, [1, 2, 3, 4], EOS, M, prompt_length=2)
    assert (stats.insertions, stats.insertion_fixes, stats.insertion_breaks, stats.insertion_neutral) == (2, 1, 1, 0)
    assert (stats.deletions, stats.deletion_fixes, stats.deletion_breaks, stats.deletion_neutral) == (3, 1, 1, 1)
    assert stats.precision("deletion") == 0.5 and stats.unjudged == 0
    named = stats.named()
    assert named["deletions_per_sample"] == 3.0 and named["insertion_precision"] == 0.5
    assert (stats + stats).deletion_fixes == 2 and (stats + stats).samples == 2
    assert "levenshtein/deletion_precision" in stats.metrics("levenshtein")


def test_structural_edits_respect_the_prompt_part_of_a_block_and_eos_past_the_answer():
    from components.edits import classify_structural_edits, reference_block

    # a block [7, 8 | 1, 5] starting at 0 with a prompt of 2: its reference is [7, 8, 1, EOS]
    record = structural(0, [7, 8, 1, 5], deleted=[3])
    assert reference_block(record, [1], EOS, prompt_length=2) == [7, 8, 1, EOS]
    stats = classify_structural_edits([record], [1], EOS, 99, prompt_length=2)
    # [7, 8, 1, M]: the mask may still become EOS, so the deletion of the wrong 5 is a fix
    assert stats.deletion_fixes == 1


def test_structural_edits_without_a_reference_are_counted_unjudged():
    from components.edits import classify_structural_edits

    stats = classify_structural_edits([structural(2, [1, 2, 3], deleted=[0], inserted=[2])], None, EOS, 99, 2)
    assert (stats.deletions, stats.insertions, stats.unjudged, stats.deletion_fixes) == (1, 1, 2, 0)
    assert stats.named()["deletion_precision"] is None and math.isnan(stats.precision("insertion"))


def test_a_trajectory_structural_edits_are_judged_in_order_and_a_correct_output_is_its_own_reference():
    from components.edits import judge_structural_edits, structural_records

    M = 99
    steps = [StepRecord("draft", 0, m2t=[(2, 1), (3, 3), (4, 4), (5, 5)]),
             StepRecord("post", 0),  # inserts before 3: [1, M, 3, 4]
             StepRecord("draft", 0, m2t=[(3, 2)]),
             StepRecord("post", 0)]  # verification
    traj = Trajectory(prompt_length=2, block_length=4, mask_id=M, initial_canvas=[], steps=steps)
    traj.structural[1] = structural(2, [1, 3, 4, 5], inserted=[1])
    assert structural_records(traj) == [traj.structural[1]]
    assert forward_split(traj) == {"draft": 2, "edit": 1, "verify": 1, "mbe": 0}  # a structural-only round edits
    right = judge_structural_edits(traj, [1, 2, 3, 4, EOS], EOS, correct=True, reference=None)
    assert (right.insertions, right.insertion_fixes, right.unjudged) == (1, 1, 0)
    wrong = judge_structural_edits(traj, [1, 2, 3, 4, EOS], EOS, correct=False, reference=[1, 3, 4, 5])
    assert (wrong.insertion_breaks, wrong.insertion_fixes) == (1, 0)  # against [1, 3, 4, 5] it damaged the block
    unknown = judge_structural_edits(traj, [1, 2, 3, 4, EOS], EOS, correct=False, reference=None)
    assert (unknown.insertions, unknown.unjudged) == (1, 1)
