"""Edit accounting (components.edits) and the training / RL / evaluation pieces built on it:
fix / break / neutral / oscillation classification, pooled visible losses, editing-stream rows,
the permuted-advantage control, per-mode evaluation with editing on and off."""

from __future__ import annotations

import io
import math

import pytest
import torch

from components.edits import EditStats, classify_edits, forward_split, judge_edits
from components.rl.ebpo import permute_within_groups
from components.training.config import ObjectiveConfig
from components.training.corruption import Corruption, m2t_corrupt, unmask_rows
from components.training.objective import DraftEditObjective, stream_losses
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


# ------------------------------------------------------------------------------------ training objective


def _corruption(t2t_rows: int) -> tuple[torch.Tensor, Corruption]:
    """4 visible noisable positions in one row: `t2t_rows` of them wrong, the rest kept."""
    x0 = torch.tensor([[1, 2, 3, 4]])
    t2t = torch.tensor([[i < t2t_rows for i in range(4)]])
    c = Corruption(xt=torch.where(t2t, 0, x0), x0=x0, noisable=torch.ones_like(t2t), m2t=torch.zeros_like(t2t),
                   t2t=t2t, t=torch.full((1, 4), 0.5))
    torch.manual_seed(0)
    return torch.randn(1, 4, 8), c


def test_pooled_visible_losses_share_one_count_per_stream_means_do_not():
    logits, c = _corruption(t2t_rows=1)
    ce = torch.nn.functional.cross_entropy(logits[0], c.x0[0], reduction="none")
    pooled = stream_losses(logits, c, "none", "pooled")
    assert pooled["t2t"] == pytest.approx(float(ce[0] / 4))
    assert pooled["keep"] == pytest.approx(float(ce[1:].sum() / 4))
    assert pooled["t2t"] + pooled["keep"] == pytest.approx(float(ce.mean()))  # one cross-entropy
    per_stream = stream_losses(logits, c, "none", "per_stream")
    assert per_stream["t2t"] == pytest.approx(float(ce[0]))  # the one wrong token weighs 3x a kept one
    assert per_stream["keep"] == pytest.approx(float(ce[1:].mean()))


def test_editing_stream_rows_have_no_masks_and_other_rows_keep_theirs():
    g = torch.Generator().manual_seed(0)
    x0 = torch.arange(1, 33).view(4, 8)
    c = m2t_corrupt(x0, torch.ones_like(x0, dtype=torch.bool), mask_id=0, t_min=0.5, t_max=1.0, generator=g)
    rows = torch.tensor([[True], [False], [True], [False]])
    u = unmask_rows(c, rows)
    assert not u.m2t[rows[:, 0]].any() and torch.equal(u.xt[rows[:, 0]], x0[rows[:, 0]])
    assert torch.equal(u.m2t[~rows[:, 0]], c.m2t[~rows[:, 0]]) and c.m2t[~rows[:, 0]].any()


def test_objective_with_editing_stream_only_trains_visible_tokens():
    cfg = ObjectiveConfig(t2t_rate_min=0.5, t2t_rate_max=0.5, t2t_stream_prob=1.0)
    objective = DraftEditObjective(cfg, mask_id=0, vocab_size=40, special_ids=set())
    batch = {"input_ids": torch.randint(1, 40, (3, 16)), "loss_mask": torch.ones(3, 16, dtype=torch.bool)}
    c = objective.corrupt(batch, block_length=16, generator=torch.Generator().manual_seed(1), step=10)
    assert not c.m2t.any() and c.t2t.any() and (c.xt != 0).all()


# ------------------------------------------------------------------------------------ RL control arm


def test_permuted_advantages_keep_each_groups_values_in_another_order():
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5, 2.0, 0.0, -2.0, 0.0])
    out = permute_within_groups(adv, 4, torch.Generator().manual_seed(0))
    for g in range(2):
        assert sorted(out[4 * g: 4 * g + 4].tolist()) == sorted(adv[4 * g: 4 * g + 4].tolist())
    outs = {tuple(permute_within_groups(adv, 4, torch.Generator().manual_seed(s)).tolist()) for s in range(5)}
    assert len(outs) > 1  # the order depends on the generator: the link to the reward is gone


# ------------------------------------------------------------------------------------ progress lines


class _Trainer:
    is_global_zero = True
    global_step = 0


def test_progress_in_a_log_prints_about_ten_lines_with_step_figures_and_eta():
    from components.progress import ConsoleProgress

    stream = io.StringIO()  # not a terminal
    progress = ConsoleProgress("sft", 200, read=lambda t, m: {"loss": 0.5}, stream=stream)
    trainer = _Trainer()
    progress.on_train_start(trainer, None)
    for step in range(1, 201):
        trainer.global_step = step
        progress.on_train_batch_end(trainer, None, None, None, step)
    lines = stream.getvalue().splitlines()
    assert 9 <= len(lines) <= 11
    assert lines[0].startswith("[sft] step 20/200") and "loss 0.5" in lines[0] and "ETA" in lines[0]
    assert "(100%)" in lines[-1]


def test_progress_on_a_terminal_rewrites_one_line():
    from components.progress import ConsoleProgress

    class Tty(io.StringIO):
        def isatty(self):
            return True

    stream = Tty()
    progress = ConsoleProgress("rl", 10, read=lambda t, m: {"reward": 0.9}, stream=stream)
    trainer = _Trainer()
    progress.on_train_start(trainer, None)
    trainer.global_step = 1
    progress.on_train_batch_end(trainer, None, None, None, 0)
    progress.on_train_end(trainer, None)
    text = stream.getvalue()
    assert text.startswith("\r[rl] step 1/10") and text.endswith("\n") and text.count("\n") == 1


# ------------------------------------------------------------------------------------ evaluation


def test_evaluate_stage_reports_each_mode_with_editing_on_and_off(tmp_path):
    from components.evaluate.config import EvalConfig
    from flows import adapters
    from tests.pipeline_support import make_checkpoint

    torch.set_num_threads(1)
    ckpt = make_checkpoint(tmp_path / "ckpt")
    cfg = EvalConfig(tasks=["sort", "sum"], limit=3, modes=["quality", "speedy"], editing_ablation=True,
                     task_overrides=["decode.overrides.gen_length=8", "decode.overrides.editing_threshold=0.0"])
    metrics = adapters.evaluate(cfg, tmp_path / "eval", {"checkpoint": ckpt})["metrics"]
    for prefix in ("eval", "eval/quality", "eval/speedy", "eval/quality_noedit", "eval/speedy_noedit"):
        assert {f"{prefix}/score", f"{prefix}/tpf", f"{prefix}/tps", f"{prefix}/edits_per_sample"} <= set(metrics)
    # tau_edit 0 edits whenever the arg-max differs; the ablation turns every edit off
    assert metrics["eval/speedy/edits_per_sample"] > 0
    assert metrics["eval/speedy_noedit/edits_per_sample"] == metrics["eval/quality_noedit/edits_per_sample"] == 0
    assert metrics["eval/sort/edit_fixes"] + metrics["eval/sort/edit_breaks"] + metrics["eval/sort/edit_neutral"] > 0
    records = (tmp_path / "eval" / "speedy" / "sort" / "records.jsonl").read_text()
    assert '"edit_breaks"' in records and '"edit_oscillations"' in records


def test_eval_config_rejects_unknown_modes_and_an_ablation_without_modes(tmp_path):
    from components.evaluate import TaskConfigError
    from components.evaluate.config import load_eval_config

    with pytest.raises(TaskConfigError, match="modes"):
        load_eval_config(None, ["modes=[fast]"])
    with pytest.raises(TaskConfigError, match="editing_ablation"):
        load_eval_config(None, ["modes=[]", "editing_ablation=true"])


def test_synthetic_task_params_set_the_family_difficulty():
    from components.evaluate import load_samples, load_task

    samples = load_samples(load_task("sort16", ["source.num_examples=20"]))
    assert all(8 <= len(s.data.meta["values"]) <= 16 and max(s.data.meta["values"]) <= 9 for s in samples)


def test_progress_of_a_time_budgeted_run_shows_the_clock_fraction():
    import time as _time

    from components.progress import ConsoleProgress

    progress = ConsoleProgress("rl", 100000, read=lambda t, m: {}, stream=io.StringIO())
    now = _time.monotonic()
    progress._start, progress.deadline = now - 30.0, now + 30.0  # half the wall-clock budget is spent
    text = progress.line(5, now)
    assert text.startswith("[rl] step 5 ( 50%)") and "/100000" not in text


def test_wrong_outputs_are_judged_against_the_reference_only_where_it_is_the_one_answer():
    from components.evaluate import load_task
    from components.evaluate.runner import answer_ids
    from components.evaluate.sources import load_samples
    from components.families import has_unique_answer

    class Chars:  # answer_ids only encodes the reference
        def encode(self, text):
            return [ord(c) for c in text]

    sudoku = load_task("sudoku4", ["source.num_examples=40"])
    samples = load_samples(sudoku)
    refs = [answer_ids(sudoku, s, Chars()) for s in samples]
    assert [r is not None for r in refs] == [has_unique_answer(s.data) for s in samples]
    assert 0 < sum(r is not None for r in refs) < len(refs)
    assert all(r == [ord(c) for c in s.reference] for r, s in zip(refs, samples) if r is not None)
    sort = load_task("sort", ["source.num_examples=5"])
    assert all(answer_ids(sort, s, Chars()) is not None for s in load_samples(sort))


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
