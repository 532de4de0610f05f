"""evaluate_task / evaluate_suite / `draftedit eval` end to end on a tiny random model.

Scoring logic is checked with a stand-in `generate` that answers some prompts correctly, so the
expected score is known exactly; plumbing (batching, results files, TPF) with the real decoder.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import model as model_pkg
from components.data.bpe import train_bpe_tokenizer
from components.evaluate import (
    EXTRACTORS,
    SandboxUnavailableError,
    TaskConfigError,
    TaskDataError,
    evaluate_suite,
    evaluate_task,
    load_samples,
    load_task,
    read_jsonl,
    render_prompt,
)
from components.evaluate import cli
from components.families import get_family
from model import DiffusionLM, GenerationResult, ModelConfig

SHORT = ["decode.overrides.gen_length=16"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tok():
    texts = [f"{e.prompt}\n{e.answer}" for n in ("sum", "sort", "addition") for e in get_family(n).make("train", 40, 0)]
    texts += ["def f(x):\n    return x + 1\n", "How many apples? #### 42"] * 4
    return train_bpe_tokenizer(texts, vocab_size=360)


@pytest.fixture(scope="module")
def lm(tok):
    torch.manual_seed(0)
    cfg = ModelConfig.tiny(
        vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=4096,
        mask_token_id=tok.mask_id, eos_token_id=tok.eos_id, pad_token_id=tok.pad_id,
    )
    return DiffusionLM(cfg).eval()


class ScriptedGenerate:
    """Stands in for model.generate: answers each prompt with `answer(prompt_ids, call_index)`."""

    def __init__(self, tok, answer):
        self.tok, self.answer, self.calls, self.seen = tok, answer, 0, {}

    def __call__(self, lm, prompts, cfg):
        self.calls += 1
        seqs = []
        for p in prompts:
            key = tuple(p)
            self.seen[key] = self.seen.get(key, 0) + 1
            seqs.append(self.tok.encode(self.answer(key, self.seen[key])) + [self.tok.eos_id])
        n = len(prompts)
        return GenerationResult(sequences=seqs, forwards=[len(s) for s in seqs], edits=[0] * n, commits=[0] * n,
                                canvases=[[] for _ in range(n)], forward_calls=1, wall_seconds=0.0)


def _forbid_generation(monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("generate must not run: the error belongs before any decoding")

    monkeypatch.setattr(model_pkg, "generate", boom)


# ------------------------------------------------------------------------------------ real decoder


def test_end_to_end_writes_records_and_results(lm, tok, tmp_path):
    res = evaluate_task(lm, tok, "sum", limit=6, batch_size=4, overrides=SHORT, output_dir=tmp_path)
    assert res.num_generations == res.num_problems == 6 and res.num_errors == 0
    records = read_jsonl(tmp_path / "sum" / "records.jsonl")
    assert len(records) == 6
    assert {"prompt", "output", "extracted", "reference", "correct", "error", "tokens", "forwards"} <= set(records[0])
    # Each verdict is the family verifier applied to that record's own output.
    samples = {s.id: s for s in load_samples(load_task("sum", ["source.num_examples=200"]))}
    for r in records:
        assert r["extracted"] == r["output"].strip()
        assert r["correct"] == get_family("sum").score(r["extracted"], samples[r["id"]].data)
        assert 0 < r["tokens"] <= 16 and r["forwards"] >= 1
        assert r["prompt"] == tok.apply_chat_template([{"role": "user", "content": samples[r["id"]].fields["prompt"]}])
    assert res.tpf == pytest.approx(sum(r["tokens"] for r in records) / sum(r["forwards"] for r in records))
    assert res.mean_length == pytest.approx(sum(r["tokens"] for r in records) / 6)
    assert res.score == pytest.approx(sum(r["correct"] for r in records) / 6)
    saved = json.loads((tmp_path / "sum" / "result.json").read_text())
    assert saved["decode"]["gen_length"] == 16 and saved["preset"] == "quality" and "records" not in saved
    assert saved["score"] == pytest.approx(res.score) and saved["tpf"] == pytest.approx(res.tpf)
    metrics = res.metrics()
    assert metrics["eval/sum/accuracy"] == pytest.approx(res.score) and metrics["eval/sum/tpf"] == pytest.approx(res.tpf)


def test_levenshtein_decoding_reports_its_deletions_and_insertions(lm, tok):
    import copy

    from components.evaluate.suite import suite_metrics
    from model.levenshtein import add_edit_controls

    lev = copy.deepcopy(lm)
    delete, insert = add_edit_controls(lev)
    with torch.no_grad():  # each control wins somewhere: along one hidden direction and its opposite
        direction = torch.randn(lev.config.hidden_size, generator=torch.Generator().manual_seed(1)) * 4
        lev.lm_head.weight[delete], lev.lm_head.weight[insert] = direction, -direction
    on = SHORT + ["decode.overrides.delete_threshold=0.2", "decode.overrides.insert_threshold=0.2"]
    res = evaluate_task(lev, tok, "sort", limit=4, batch_size=4, overrides=on)
    s = res.structural
    assert s["samples"] == 4 and s["deletions"] + s["insertions"] > 0
    assert sum(s[f"{k}_{v}"] for k in ("deletion", "insertion") for v in ("fixes", "breaks", "neutral")) + s[
        "unjudged"] == s["deletions"] + s["insertions"]
    assert sum(r["deletions"] + r["insertions"] for r in res.records) == s["deletions"] + s["insertions"]
    metrics = res.metrics()
    assert metrics["eval/sort/deletion_fixes"] == s["deletion_fixes"]
    assert metrics["eval/sort/insertions_per_sample"] == s["insertions"] / 4
    assert suite_metrics([res, res], "eval")["eval/insertions_per_sample"] == s["insertions"] / 4
    plain = evaluate_task(lm, tok, "sort", limit=2, batch_size=2, overrides=SHORT)  # Levenshtein off: nothing new
    assert plain.structural is None and not any("deletion" in k for k in plain.metrics())
    assert "deletions" not in plain.records[0]
    assert not any("deletion" in k for k in suite_metrics([plain], "eval"))


def test_batch_size_does_not_change_which_output_belongs_to_which_sample(lm, tok):
    one = evaluate_task(lm, tok, "sort", limit=5, batch_size=1, overrides=SHORT)
    three = evaluate_task(lm, tok, "sort", limit=5, batch_size=3, overrides=SHORT)
    assert [(r["id"], r["output"], r["forwards"]) for r in one.records] == \
           [(r["id"], r["output"], r["forwards"]) for r in three.records]
    assert len({r["output"] for r in one.records}) > 1, "outputs differ per prompt, so a mix-up would show"


def test_mode_switches_the_decoding_preset(lm, tok):
    quality = evaluate_task(lm, tok, "addition", limit=2, overrides=SHORT)
    speedy = evaluate_task(lm, tok, "addition", limit=2, overrides=SHORT, preset="speedy")
    assert quality.preset == "quality" and speedy.preset == "speedy"
    assert speedy.decode["threshold"] < quality.decode["threshold"]


def test_prompt_that_does_not_fit_fails_alone(lm, tok, tmp_path):
    data = tmp_path / "q.jsonl"
    rows = [{"question": "2+2?", "answer": "4"}, {"question": "7 " * 5000, "answer": "7"}, {"question": "1+2?", "answer": "3"}]
    data.write_text("\n".join(json.dumps(r) for r in rows))
    res = evaluate_task(lm, tok, "gsm8k", overrides=SHORT + [f"source.path={data}"])
    errors = [r["error"] for r in res.records]
    assert errors[0] is None and errors[2] is None
    assert errors[1].startswith("prompt:") and "max_position_embeddings" in errors[1]
    assert res.num_errors == 1 and res.records[0]["output"] is not None and not res.records[1]["correct"]


# ------------------------------------------------------------------------------------ scoring logic


def _answer_table(tok, task, limit):
    cfg = load_task(task)
    samples = load_samples(cfg)[:limit]
    return [(tuple(tok.encode(render_prompt(s, cfg, tok))), s) for s in samples]


def test_accuracy_counts_exactly_the_correct_answers(lm, tok, monkeypatch):
    table = _answer_table(tok, "permutation", 6)
    right = {key: s.reference for i, (key, s) in enumerate(table) if i % 3 == 0}  # samples 0 and 3
    monkeypatch.setattr(model_pkg, "generate", ScriptedGenerate(tok, lambda key, n: right.get(key, "Z Z")))
    res = evaluate_task(lm, tok, "permutation", limit=6, batch_size=4)
    assert [r["correct"] for r in res.records] == [True, False, False, True, False, False]
    assert res.score == pytest.approx(2 / 6) and res.scores == {"accuracy": pytest.approx(2 / 6)}


def test_pass_at_k_with_several_samples_runs_the_unit_tests(lm, tok, monkeypatch):
    table = _answer_table(tok, "humaneval", 2)
    canonical = {key: s.reference for key, s in table}
    # First sample of every problem is the canonical solution, the second a wrong body.
    script = ScriptedGenerate(tok, lambda key, n: canonical[key] if n == 1 else "    return None\n")
    monkeypatch.setattr(model_pkg, "generate", script)
    res = evaluate_task(lm, tok, "humaneval_sampled", limit=2, batch_size=3,
                        overrides=["samples_per_prompt=2", "k=[1,2]", "sandbox.timeout_s=60"])
    assert res.num_problems == 2 and res.num_generations == 4
    assert [(r["id"], r["sample_index"], r["correct"]) for r in res.records] == [
        ("HumanEval/0", 0, True), ("HumanEval/0", 1, False), ("HumanEval/1", 0, True), ("HumanEval/1", 1, False)]
    assert res.scores == {"pass@1": pytest.approx(0.5), "pass@2": pytest.approx(1.0)}
    assert res.score == pytest.approx(0.5)
    assert res.records[1]["detail"].startswith("failed")
    assert res.sandbox["rlimits"] == "on" and res.sandbox["process_group"] == "on"


def test_failing_batch_is_retried_per_sample_and_only_the_culprit_fails(lm, tok, monkeypatch):
    table = _answer_table(tok, "sort", 5)
    poison = table[2][0]
    refs = {key: s.reference for key, s in table}
    inner = ScriptedGenerate(tok, lambda key, n: refs[key])

    def generate(lm_, prompts, cfg):
        if poison in [tuple(p) for p in prompts]:
            raise RuntimeError("decoder exploded")
        return inner(lm_, prompts, cfg)

    monkeypatch.setattr(model_pkg, "generate", generate)
    res = evaluate_task(lm, tok, "sort", limit=5, batch_size=5)
    assert [r["correct"] for r in res.records] == [True, True, False, True, True]
    assert "decoder exploded" in res.records[2]["error"] and res.num_errors == 1
    assert res.score == pytest.approx(0.8)


def test_csv_task_with_a_verifier_and_a_recorded_failed_row(lm, tok, tmp_path, monkeypatch):
    """The own-CSV example of docs/evaluation.md: any valid grid is right, a row without a puzzle is one failed
    record (source.on_missing=fail_sample) that is never decoded."""
    from components.families.synthetic import _all_sudoku4

    example = Path(__file__).resolve().parent / "data" / "sudoku_csv"
    shutil.copytree(example, tmp_path / "task")
    with open(tmp_path / "task" / "puzzles.csv", "a") as fh:
        fh.write("p09,,4,1234341221434321\n")
    cfg = load_task(tmp_path / "task" / "task.yaml", ["source.on_missing=fail_sample"])
    samples = load_samples(cfg)
    rows = lambda grid: " ".join(grid[i:i + 4] for i in range(0, 16, 4))  # noqa: E731
    answers = {}
    for i, s in enumerate(samples[:8]):
        valid = ["".join(map(str, g)) for g in _all_sudoku4()
                 if all(c == "0" or int(c) == v for c, v in zip(s.fields["puzzle"], g))]
        other = [g for g in valid if g != s.reference]  # not the CSV's solution, but valid
        answers[tuple(tok.encode(render_prompt(s, cfg, tok)))] = (
            rows(other[0] if other else s.reference) if i % 2 == 0 else rows(s.reference[::-1]))
    script = ScriptedGenerate(tok, lambda key, n: answers[key])
    monkeypatch.setattr(model_pkg, "generate", script)
    res = evaluate_task(lm, tok, cfg, batch_size=4)
    assert [r["correct"] for r in res.records] == [True, False] * 4 + [False]
    assert res.score == pytest.approx(4 / 9) and res.num_errors == 1 and res.num_generations == 9
    last = res.records[-1]
    assert last["id"] == "p09" and last["output"] is None and last["prompt"] == ""
    assert last["error"].startswith("data: ")
    assert last["error"].endswith("puzzles.csv:10: no value for column(s) ['puzzle']")
    assert sum(script.seen.values()) == 8  # the row without a puzzle never reached the decoder


def test_extractor_that_raises_fails_that_sample_only(lm, tok, monkeypatch):
    def picky(output, sample):
        if "9" in sample.fields["prompt"]:
            raise RuntimeError("cannot parse this one")
        return output.strip()

    monkeypatch.setitem(EXTRACTORS, "picky", picky)
    table = _answer_table(tok, "sort", 8)
    refs = {key: s.reference for key, s in table}
    monkeypatch.setattr(model_pkg, "generate", ScriptedGenerate(tok, lambda key, n: refs[key]))
    res = evaluate_task(lm, tok, "sort", limit=8, overrides=["extractor=picky"])
    bad = ["9" in s.fields["prompt"] for _, s in table]
    assert 0 < sum(bad) < 8
    assert [r["correct"] for r in res.records] == [not b for b in bad]
    assert all(("cannot parse this one" in (r["error"] or "")) == b for r, b in zip(res.records, bad))
    assert res.score == pytest.approx(1 - sum(bad) / 8)


# ------------------------------------------------------------------------------------ errors before decoding


def test_greedy_decoding_with_several_samples_is_rejected_before_decoding(lm, tok, monkeypatch):
    _forbid_generation(monkeypatch)
    with pytest.raises(TaskConfigError, match="needs sampling"):
        evaluate_task(lm, tok, "humaneval", overrides=["samples_per_prompt=3", "k=[1,3]"])


def test_template_field_missing_from_data_is_rejected_before_decoding(lm, tok, monkeypatch):
    _forbid_generation(monkeypatch)
    with pytest.raises(TaskDataError, match=r"no column\(s\) \['problem'\] \(used: 'problem' by prompt\.template\); "
                                            r"columns: \['answer', 'question'\]"):
        evaluate_task(lm, tok, "gsm8k", overrides=["prompt.template='Solve: {problem}'"])


def test_row_without_a_needed_value_stops_before_decoding(lm, tok, tmp_path, monkeypatch):
    data = tmp_path / "q.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in [{"question": "1+1?", "answer": "2"}, {"answer": "3"}]) + "\n")
    with monkeypatch.context() as m:
        _forbid_generation(m)
        with pytest.raises(TaskDataError, match=r"q\.jsonl:2: no value for column\(s\) \['question'\]"):
            evaluate_task(lm, tok, "gsm8k", overrides=[f"source.path={data}"])


def test_broken_sandbox_is_reported_before_decoding(lm, tok, monkeypatch):
    from components.evaluate import scorers
    from components.sandbox import SandboxResult, TestOutcome

    def broken(*args, **kwargs):
        return TestOutcome(False, "setup_error", "cannot drop privileges", SandboxResult(121, "", "", False, 0.0, False, {}))

    monkeypatch.setattr(scorers, "run_tests", broken)
    _forbid_generation(monkeypatch)
    with pytest.raises(SandboxUnavailableError, match="does not work on this machine"):
        evaluate_task(lm, tok, "humaneval", limit=1)


def test_bad_arguments(lm, tok):
    with pytest.raises(ValueError, match="limit"):
        evaluate_task(lm, tok, "sum", limit=0)
    with pytest.raises(ValueError, match="unknown decoding preset 'warp'; known: quality, speedy"):
        evaluate_task(lm, tok, "sum", preset="warp")


# ------------------------------------------------------------------------------------ suite and CLI


def test_suite_validates_every_task_first_and_writes_a_summary(lm, tok, tmp_path, monkeypatch):
    with monkeypatch.context() as m:
        _forbid_generation(m)
        with pytest.raises(TaskConfigError, match="unknown task 'nope'"):
            evaluate_suite(lm, tok, ["sum", "nope"])
        with pytest.raises(TaskConfigError, match="more than once"):
            evaluate_suite(lm, tok, ["sum", "sum"])
        with pytest.raises(TaskDataError, match="data file not found"):  # the 2nd task's data, before the 1st decodes
            evaluate_suite(lm, tok, ["sum", "gsm8k"], task_overrides=[f"source.path={tmp_path / 'none.jsonl'}"])
    results = evaluate_suite(lm, tok, ["sum", "addition"], limit=2, task_overrides=SHORT, output_dir=tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [s["task"] for s in summary] == ["sum", "addition"] == [r.task for r in results]
    assert all(s["num_generations"] == 2 for s in summary)


def test_cli_prints_a_table_and_writes_results(lm, tok, tmp_path, capsys):
    ckpt = tmp_path / "ckpt"
    lm.save_pretrained(ckpt)
    tok.save(ckpt)
    out = tmp_path / "out"
    code = cli.main(["--model", str(ckpt), "--task", "sum", "--task", "sort", "--limit", "3",
                     "--set", "decode.overrides.gen_length=8", "--out", str(out), "--preset", "speedy"])
    printed = capsys.readouterr().out
    assert code == 0
    assert "sum" in printed and "sort" in printed and "speedy" in printed and "TPF" in printed
    assert len(read_jsonl(out / "sort" / "records.jsonl")) == 3 and (out / "summary.json").is_file()


def test_cli_and_the_pipeline_stage_report_the_same_metrics(lm, tok, tmp_path, capsys):
    """`draftedit eval` and the evaluate stage run one function: every arm (presets, editing off) with the
    same metric names and, timings aside, the same values."""
    from components.evaluate.config import load_eval_config
    from flows import adapters

    ckpt = tmp_path / "ckpt"
    lm.save_pretrained(ckpt)
    tok.save(ckpt)
    suite = ["tasks=[sum]", "limit=2", "presets=[speedy]", "editing_ablation=true",
             "task_overrides=[decode.overrides.gen_length=8]"]
    stage = adapters.evaluate(load_eval_config(None, suite), tmp_path / "stage", {"checkpoint": ckpt})["metrics"]
    code = cli.main(["--model", str(ckpt), "--out", str(tmp_path / "cli"),
                     *[arg for item in suite for arg in ("--suite-set", item)]])
    assert code == 0 and "speedy_noedit" in capsys.readouterr().out
    cli_metrics = json.loads((tmp_path / "cli" / "metrics.json").read_text())
    assert {"eval/score", "eval/speedy/score", "eval/speedy_noedit/score", "eval/sum/accuracy"} <= set(stage)
    assert set(cli_metrics) == set(stage)
    untimed = [k for k in stage if not k.endswith(("tps", "seconds"))]
    assert {k: cli_metrics[k] for k in untimed} == {k: stage[k] for k in untimed}


def test_cli_bad_input_gives_a_message_and_exit_code_2(lm, tok, tmp_path, capsys):
    ckpt = tmp_path / "ckpt"
    lm.save_pretrained(ckpt)
    tok.save(ckpt)
    assert cli.main(["--model", str(ckpt), "--task", "nope"]) == 2
    assert "unknown task 'nope'" in capsys.readouterr().err
    assert cli.main(["--model", str(tmp_path / "missing"), "--task", "sum"]) == 2
    assert "not a folder" in capsys.readouterr().err
    assert cli.main(["--model", str(ckpt), "--task", "sum", "--set", "bogus=1"]) == 2
    assert "bogus" in capsys.readouterr().err
    assert cli.main(["--list-tasks"]) == 0 and "humaneval" in capsys.readouterr().out


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
