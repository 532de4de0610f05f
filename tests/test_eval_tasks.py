"""Tasks as configs: every shipped config loads, bad configs fail with the key, sources, extractors, scorers."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from components.evaluate import (
    TaskConfigError,
    TaskDataError,
    list_tasks,
    load_eval_config,
    load_samples,
    load_task,
)
from components.evaluate.config import EVAL_DIR, TASK_DIR, TaskConfig
from components.evaluate.extractors import gsm8k, last_number, python_completion, resolve_extractor
from components.evaluate.scorers import SCORERS
from components.evaluate.sources import Sample
from components.families import get_family, split_of

SYNTHETIC = ["permutation", "sum", "sudoku4", "addition", "sort", "dedup"]


def _write(tmp_path: Path, text: str, name: str = "task.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


# ------------------------------------------------------------------------------------ shipped configs


@pytest.mark.parametrize("name", sorted(p.stem for p in TASK_DIR.glob("*.yaml")))
def test_every_shipped_task_loads_validates_and_has_samples(name):
    cfg = load_task(name)
    assert cfg.name == name
    samples = load_samples(cfg)
    assert samples and len({s.id for s in samples}) == len(samples)


@pytest.mark.parametrize("path", sorted(EVAL_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_suite_loads_and_names_existing_tasks(path):
    suite = load_eval_config(path)
    assert suite.tasks and set(suite.tasks) <= set(list_tasks())


def test_builtin_tasks_cover_synthetic_humaneval_and_gsm8k():
    assert set(SYNTHETIC) | {"humaneval", "humaneval_sampled", "gsm8k"} <= set(list_tasks())
    assert load_task("humaneval").metric == "pass_at_k"
    sampled = load_task("humaneval_sampled")
    assert sampled.samples_per_prompt >= max(sampled.k) and sampled.decode.overrides["temperature"] > 0


@pytest.mark.parametrize("family", SYNTHETIC)
def test_synthetic_tasks_use_the_heldout_split(family):
    cfg = load_task(family, ["source.num_examples=30"])
    samples = load_samples(cfg)
    expected = get_family(family, **cfg.source.params).make("heldout", 30, cfg.seed)
    assert [s.data for s in samples] == expected
    assert all(split_of(family, s.fields["prompt"]) == "heldout" for s in samples)
    assert all(SCORERS["synthetic"](s.reference, s, cfg).correct for s in samples)


def test_humaneval_source_reads_the_bundled_problems():
    samples = load_samples(load_task("humaneval"))
    assert len(samples) == 164 and samples[0].id == "HumanEval/0"
    assert samples[0].data["entry_point"] == "has_close_elements" and "def check" in samples[0].data["test"]


def test_gsm8k_task_accepts_any_file_of_that_shape(tmp_path):
    data = tmp_path / "mine.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in [
        {"question": "1+1?", "answer": "#### 2"},
        {"question": "2+2?", "answer": "4"},
    ]))
    cfg = load_task("gsm8k", [f"source.path={data}"])
    samples = load_samples(cfg)
    assert [s.fields["question"] for s in samples] == ["1+1?", "2+2?"]
    parquet = tmp_path / "mine.parquet"
    import datasets

    datasets.Dataset.from_list([{"question": "3+3?", "answer": "6", "qid": "a"}]).to_parquet(str(parquet))
    cfg = load_task("gsm8k", [f"source.path={parquet}", "source.id_field=qid"])
    (s,) = load_samples(cfg)
    assert s.id == "a" and s.reference == "6"


def test_relative_data_paths_resolve_beside_the_task_file(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "q.jsonl").write_text(json.dumps({"q": "x", "a": "1"}) + "\n")
    path = _write(tmp_path, """
        name: local
        source: {kind: file, path: d/q.jsonl, answer_field: a}
        prompt: {template: "{q}"}
        scorer: numeric
    """)
    (s,) = load_samples(load_task(path))
    assert s.fields == {"q": "x", "a": "1"} and s.id == "local-0"


def test_hub_source_calls_datasets_with_name_subset_split(monkeypatch):
    import datasets

    calls = []

    def fake_load(name, subset=None, split=None):
        calls.append((name, subset, split))
        return [{"question": "q", "answer": "#### 3"}]

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    cfg = load_task("gsm8k", ["source.kind=hub", "source.name=openai/gsm8k", "source.subset=main", "source.path=null"])
    (s,) = load_samples(cfg)
    assert calls == [("openai/gsm8k", "main", "test")] and s.reference == "#### 3"


# ------------------------------------------------------------------------------------ bad configs


@pytest.mark.parametrize("yaml_text, key", [
    ("source: {kind: synthetic, name: sum}\n", "name"),
    ("name: t\n", "source.kind"),
    ("name: t\nsource: {kind: file, answer_field: a}\n", "source.path"),
    ("name: t\nsource: {kind: file, path: x.jsonl}\n", "source.answer_field"),
    ("name: t\nsource: {kind: synthetic, name: nope}\n", "source.name"),
    ("name: t\nsource: {kind: carrier_pigeon}\n", "source.kind"),
    ("name: t\nsource: {kind: synthetic, name: sum}\nbogus_key: 1\n", "bogus_key"),
    ("name: t\nsource: {kind: synthetic, name: sum}\nbatch_size: many\n", "batch_size"),
    ("name: t\nsource: {kind: synthetic, name: sum}\nextractor: no_such\n", "extractor"),
    ("name: t\nsource: {kind: synthetic, name: sum}\nscorer: vibes\n", "scorer"),
    ("name: t\nsource: {kind: synthetic, name: sum}\nmetric: pass_at_k\nk: [5]\n", "k"),
    ("name: t\nsource: {kind: synthetic, name: sum}\nsamples_per_prompt: 3\n", "samples_per_prompt"),
    ("name: t\nsource: {kind: synthetic, name: sum}\nprompt: {template: '{prompt.__class__}'}\n", "prompt.template"),
    ("name: t\nsource: {kind: synthetic, name: sum}\nscorer: unit_tests\n", "scorer"),
    ("name: t\nsource: {kind: synthetic, name: sum}\nlimit: 0\n", "limit"),
])
def test_bad_task_files_fail_naming_the_key(tmp_path, yaml_text, key):
    path = _write(tmp_path, yaml_text)
    with pytest.raises(TaskConfigError) as info:
        load_task(path)
    message = str(info.value)
    assert key in message and str(path) in message


def test_unknown_task_name_lists_the_builtin_ones():
    with pytest.raises(TaskConfigError, match="unknown task .no_such_task.; known: .*gsm8k"):
        load_task("no_such_task")
    with pytest.raises(TaskConfigError, match="not found"):
        load_task("missing/dir/task.yaml")


def test_bad_override_names_the_key():
    with pytest.raises(TaskConfigError, match="sandbox.timeout_z"):
        load_task("humaneval", ["sandbox.timeout_z=3"])


def test_empty_and_missing_data_files_are_clear_errors(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(TaskDataError, match="has no samples"):
        load_samples(load_task("gsm8k", [f"source.path={empty}"]))
    with pytest.raises(TaskDataError, match="data file not found"):
        load_samples(load_task("gsm8k", [f"source.path={tmp_path / 'nope.jsonl'}"]))
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps({"question": "q", "solution": "1"}) + "\n")
    with pytest.raises(TaskDataError, match=r"no column\(s\) \['answer'\].*solution"):
        load_samples(load_task("gsm8k", [f"source.path={other}"]))


def test_bad_eval_suite_config(tmp_path):
    with pytest.raises(TaskConfigError, match=r"eval\.preset: must be one of"):
        load_eval_config(_write(tmp_path, "tasks: [sum]\npreset: turbo\n", "suite.yaml"))
    with pytest.raises(TaskConfigError, match="taskz"):
        load_eval_config(_write(tmp_path, "taskz: [sum]\n", "suite2.yaml"))


# ------------------------------------------------------------------------------------ extractors


def _sample(reference=None, **fields) -> Sample:
    return Sample("s", fields, reference, None)


def test_numeric_extractors():
    s = _sample()
    assert gsm8k("so 3 + 4 = 7.\n#### 1,234", s) == "1234"
    assert gsm8k("we get 12 then 15", s) == "15"  # no '####': the last number
    assert gsm8k("#### $2.50", s) == "2.5"
    assert gsm8k("no digits here", s) is None
    assert last_number("between -3 and 4.0", s) == "4"
    assert last_number("the answer is -3", s) == "-3"


def test_numeric_scorer_reads_gsm8k_references():
    score = SCORERS["numeric"]
    cfg = TaskConfig(name="t")
    assert score("3600", _sample("3 * 1200 = 3,600\n#### 3,600"), cfg).correct
    assert not score("360", _sample("#### 3,600"), cfg).correct
    assert score("2.5", _sample("#### 2.5"), cfg).correct and score("5", _sample("5"), cfg).correct
    assert not score(None, _sample("5"), cfg).correct
    with pytest.raises(ValueError, match="contains no number"):
        score("5", _sample("five"), cfg)


def test_python_completion_cuts_at_top_level_statements():
    sample = Sample("p", {"prompt": "def f(x):\n    \"\"\"doc\"\"\"\n"}, None, {"entry_point": "f", "test": ""})
    body = "    y = x + 1\n    def inner():\n        return y\n    return inner()\n"
    out = python_completion(body + "\ndef unrelated():\n    pass\nprint(f(1))\n", sample)
    assert out == sample.fields["prompt"] + body  # nested def kept; top-level def and print cut
    fenced = "Here it is:\n```python\ndef f(x):\n    return x + 1\n```\nDone."
    assert python_completion(fenced, sample) == "def f(x):\n    return x + 1\n"


def test_extractor_by_import_path_and_unknown_names():
    assert resolve_extractor("components.evaluate.extractors:strip")(" a ", _sample()) == "a"
    with pytest.raises(ValueError, match="unknown extractor"):
        resolve_extractor("nope")


# ------------------------------------------------------------------------------------ code scorer


def test_humaneval_canonical_solutions_pass_and_broken_ones_fail():
    cfg = load_task("humaneval", ["sandbox.timeout_s=60"])  # bounds a hang; the clock decides nothing here
    samples = load_samples(cfg)[:4]
    score = SCORERS["unit_tests"]
    for s in samples:
        program = python_completion(s.reference, s)
        assert score(program, s, cfg).correct, s.id
    broken = python_completion("    return None\n", samples[0])
    verdict = score(broken, samples[0], cfg)
    assert not verdict.correct and verdict.detail.startswith("failed")
