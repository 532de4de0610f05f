"""Task data files and pluggable scoring: parse errors name file and line, values keep their types,
missing values are an error or a recorded failed sample, templates, `module:function` scorers."""

from __future__ import annotations

import json
import re
import shutil
import textwrap
from pathlib import Path

import pytest
import yaml

from components.config import ConfigError
from components.data.records import RecordFileError, convert, iter_rows
from components.evaluate import TaskConfigError, TaskDataError, load_samples, load_task
from components.evaluate.prompts import TemplateError, parse_template, render, template_columns
from components.evaluate.scorers import Judgement, as_judgement, resolve_scorer
from components.evaluate.sources import CHECK_ROWS, check_source

EXAMPLE = Path(__file__).resolve().parent / "data" / "sudoku_csv"


def _task(tmp_path: Path, data_name: str, data: str | bytes, body: str, **extra: str) -> Path:
    """A task file beside a data file (and any extra files, e.g. a verifier module)."""
    target = tmp_path / data_name
    target.write_bytes(data) if isinstance(data, bytes) else target.write_text(data)
    for name, text in extra.items():
        (tmp_path / name).write_text(textwrap.dedent(text))
    task = yaml.safe_load(textwrap.dedent(body)) or {}
    task = {"name": "t", **task, "source": {"kind": "file", "path": data_name, **task.get("source", {})}}
    path = tmp_path / "task.yaml"
    path.write_text(json.dumps(task))  # JSON is YAML
    return path


def _fails(path: Path, pattern: str, error=TaskDataError, overrides=()):
    with pytest.raises(error) as info:
        load_samples(load_task(path, list(overrides)))
    assert "\n" not in str(info.value)
    assert re.search(pattern, str(info.value)), str(info.value)
    return str(info.value)


# ------------------------------------------------------------------------------------ parse errors


def test_bad_json_line_names_file_and_line(tmp_path):
    lines = [json.dumps({"q": f"{i}+1?", "a": str(i + 1)}) for i in range(5)]
    lines[3] = '{"q": "3+1?", "a": 4'  # line 4 is cut short
    path = _task(tmp_path, "q.jsonl", "\n".join(lines) + "\n", "source: {answer_field: a}\nprompt: {template: '{q}'}\n")
    _fails(path, rf"task 't': {tmp_path / 'q.jsonl'}:4: invalid JSON: Expecting ',' delimiter \(column 21\)")


def test_json_array_error_and_non_object_records_are_named(tmp_path):
    path = _task(tmp_path, "q.json", '[\n {"q": "a", "a": "1"},\n {"q": "b" "a": "2"}\n]\n',
                 "source: {answer_field: a}\nprompt: {template: '{q}'}\n")
    _fails(path, r"q\.json:3: invalid JSON: Expecting ',' delimiter")
    (tmp_path / "q.json").write_text('[{"q": "a", "a": "1"}, ["not", "an", "object"]]')
    _fails(path, r"q\.json: record 1: expected a JSON object, got list")
    (tmp_path / "q.json").write_text('{"q": "a", "a": "1"}\n7\n')
    _fails(path, r"q\.json:2: expected a JSON object per line, got int")


@pytest.mark.parametrize("name, body, line, column", [
    ("q.jsonl", b'{"q": "ok", "a": "1"}\n{"q": "caf\xe9", "a": "2"}\n', 2, 11),
    ("q.csv", b"q,a\nok,1\nok,2\nna\xefve,3\n", 4, 3),
])
def test_non_utf8_bytes_name_file_line_and_column(tmp_path, name, body, line, column):
    path = _task(tmp_path, name, body, "source: {answer_field: a}\nprompt: {template: '{q}'}\n")
    message = _fails(path, rf"{name}:{line}: not UTF-8 text \(byte 0x[0-9a-f]{{2}} at column {column}\)")
    assert "codec" not in message


def test_csv_structure_errors_name_the_line(tmp_path):
    path = _task(tmp_path, "q.csv", "q,a\n1,2\n3,4,5\n", "source: {answer_field: a}\nprompt: {template: '{q}'}\n")
    _fails(path, r"q\.csv:3: 3 fields but the header has 2")
    (tmp_path / "q.csv").write_text('q,a\n"x",1\n"y"z,2\n')
    _fails(path, r"q\.csv:3: invalid CSV")
    (tmp_path / "q.csv").write_text("q,q\n1,2\n")
    _fails(path, r"q\.csv:1: the header needs distinct")


# ------------------------------------------------------------------------------------ column types


def test_csv_digit_strings_keep_leading_zeros(tmp_path):
    rows = "id,puzzle,answer\n" + "".join(f"{i},{p},{a}\n" for i, (p, a) in enumerate(
        [("0123", "0321"), ("0040", "007"), ("1200", "12")]))
    path = _task(tmp_path, "p.csv", rows,
                 "source: {answer_field: answer, id_field: id}\nprompt: {template: '{puzzle}'}\n")
    samples = load_samples(load_task(path))
    assert [s.fields["puzzle"] for s in samples] == ["0123", "0040", "1200"]
    assert [s.reference for s in samples] == ["0321", "007", "12"] and [s.id for s in samples] == ["0", "1", "2"]
    assert all(isinstance(s.fields["id"], str) for s in samples)


def test_declared_column_types_convert_and_bad_values_name_file_line_column(tmp_path):
    rows = "q,n,w,ok,a\nx, 7 ,0.5,yes,1\ny,12,2,false,2\n"
    body = "source: {answer_field: a, columns: {n: int, w: float, ok: bool}}\nprompt: {template: '{q}'}\n"
    path = _task(tmp_path, "p.csv", rows, body)
    first, second = load_samples(load_task(path))
    assert (first.fields["n"], first.fields["w"], first.fields["ok"]) == (7, 0.5, True)
    assert (second.fields["n"], second.fields["w"], second.fields["ok"]) == (12, 2.0, False)
    assert first.fields["q"] == "x" and first.reference == "1"
    (tmp_path / "p.csv").write_text(rows + "z,seven,1,no,3\n")
    _fails(path, r"p\.csv:4: column 'n': expected int, got 'seven'")
    (tmp_path / "p.csv").write_text("q,w,ok,a\nx,0.5,yes,1\n")
    _fails(path, r"no column\(s\) \['n'\] \(used: 'n' by source\.columns\.n\)")
    (tmp_path / "p.jsonl").write_text(json.dumps({"q": "x", "n": 2.5, "a": "1"}) + "\n")
    _fails(path, r"p\.jsonl:1: column 'n': expected int, got 2\.5", overrides=["source.path=p.jsonl"])


def test_convert_rules():
    assert convert("0012", "int") == 12 and convert(3.0, "int") == 3 and convert(5, "str") == "5"
    assert convert(None, "int") is None and convert("1", "bool") is True and convert("1e3", "float") == 1000.0
    for value, kind in [(True, "int"), ("nan", "float"), ("maybe", "bool"), ("", "int")]:
        with pytest.raises(ValueError, match=f"expected {kind}"):
            convert(value, kind)


def test_bad_column_type_and_on_missing_values_name_the_key(tmp_path):
    path = _task(tmp_path, "p.csv", "q,a\nx,1\n", "source: {answer_field: a, columns: {n: integer}}\n")
    _fails(path, r"source\.columns\.n: must be one of \['str', 'int', 'float', 'bool'\]", TaskConfigError)
    path.write_text("name: t\nsource: {kind: file, path: p.csv, answer_field: a, on_missing: ignore}\n")
    _fails(path, r"source\.on_missing: must be one of \['error', 'fail_sample'\]", TaskConfigError)


# ------------------------------------------------------------------------------------ missing values


def test_missing_value_fails_the_file_by_default_and_one_sample_on_request(tmp_path):
    rows = [{"question": "1+1?", "answer": "2"}, {"answer": "5"}, {"question": None, "answer": "3"},
            {"question": "4+4?", "answer": "8"}]
    data = "\n".join(json.dumps(r) for r in rows) + "\n"
    path = _task(tmp_path, "q.jsonl", data, "source: {answer_field: answer}\nprompt: {template: 'Q: {question}'}\n")
    message = _fails(path, r"q\.jsonl:2: no value for column\(s\) \['question'\].*source\.on_missing=fail_sample")
    assert "None" not in message.split("(set")[0]
    samples = load_samples(load_task(path, ["source.on_missing=fail_sample"]))
    assert [s.error is None for s in samples] == [True, False, False, True]
    assert samples[1].error.endswith("q.jsonl:2: no value for column(s) ['question']")
    assert samples[2].error.endswith("q.jsonl:3: no value for column(s) ['question']")
    with pytest.raises(TemplateError, match="no value for column 'question'"):
        render("Q: {question}", samples[2].fields)  # never rendered as 'None'


def test_empty_csv_cell_is_a_missing_value(tmp_path):
    path = _task(tmp_path, "q.csv", "q,a\nx,1\n,2\n", "source: {answer_field: a}\nprompt: {template: '{q}'}\n")
    _fails(path, r"q\.csv:3: no value for column\(s\) \['q'\]")


def test_column_absent_from_the_whole_file_is_a_config_mistake_even_with_fail_sample(tmp_path):
    path = _task(tmp_path, "q.jsonl", json.dumps({"question": "q", "answer": "1"}) + "\n",
                 "source: {answer_field: answer, on_missing: fail_sample}\nprompt: {template: '{problem|strip}'}\n")
    _fails(path, r"no column\(s\) \['problem'\] \(used: 'problem' by prompt\.template\); "
                 r"columns: \['answer', 'question'\]")


# ------------------------------------------------------------------------------------ check_source


def test_check_source_reads_only_the_first_rows_and_names_file_and_line(tmp_path):
    good = [json.dumps({"q": f"{i}?", "a": str(i)}) for i in range(CHECK_ROWS + 10)]
    path = _task(tmp_path, "q.jsonl", "\n".join(good + ["{broken"]) + "\n",
                 "source: {answer_field: a}\nprompt: {template: '{q}'}\n")
    cfg = load_task(path)
    check_source(cfg)  # the broken line is past the rows it checks: cheap, not exhaustive
    with pytest.raises(TaskDataError, match=rf"q\.jsonl:{CHECK_ROWS + 11}: invalid JSON"):
        load_samples(cfg)
    (tmp_path / "q.jsonl").write_text("\n".join(good[:3] + ['{"q": "x"', *good[3:]]) + "\n")
    with pytest.raises(ConfigError, match=r"q\.jsonl:4: invalid JSON"):
        check_source(cfg)
    (tmp_path / "q.jsonl").write_text("\n".join(good[:2] + [json.dumps({"a": "1"})]) + "\n")
    with pytest.raises(ConfigError, match=r"q\.jsonl:3: no value for column\(s\) \['q'\]"):
        check_source(cfg)
    with pytest.raises(ConfigError, match=r"no column\(s\) \['z'\]"):
        check_source(load_task(path, ["prompt.template='{z}'"]))
    (tmp_path / "q.jsonl").write_text("")
    with pytest.raises(ConfigError, match="has no samples"):
        check_source(cfg)
    check_source(load_task("sum"))  # other kinds: nothing to read here


# ------------------------------------------------------------------------------------ templates


def test_template_functions():
    fields = {"digits": [3, 1, 2], "grid": "1204", "cells": "0320204014000004", "name": "  Ada "}
    assert render("{digits|join(', ')}", fields) == "3, 1, 2"
    assert render("{grid|spaced}", fields) == "1 2 0 4"
    assert render("{cells|chunks(4)|join(' ')}", fields) == "0320 2040 1400 0004"
    assert render("{cells|chunks(8)|lines}", fields) == "03202040\n14000004"
    assert render("{digits|chunks(2)|lines}", fields) == "3 1\n2"
    assert render("{{literal}} {name|strip}!", fields) == "{literal} Ada!"
    assert render('{ grid | join("|") }', fields) == "1|2|0|4"
    assert render("{grid|join('}')}", fields) == "1}2}0}4"
    assert template_columns("{a} {b|spaced} {a|strip}") == ["a", "b"]


@pytest.mark.parametrize("template, message", [
    ("{grid|shout}", r"unknown function 'shout' in \{grid\|shout\}; known: chunks, join, lines, spaced, strip"),
    ("{grid|join}", r"function 'join' in \{grid\|join\} needs one str argument"),
    ("{grid|join(2)}", r"function 'join' .* needs a str argument, got 2"),
    ("{grid|chunks('a')}", r"function 'chunks' .* needs a int argument"),
    ("{grid|spaced(' ')}", r"function 'spaced' .* takes no argument"),
    ("{grid.__class__}", r"bad field '\{grid\.__class__\}' at position 0"),
    ("{grid:>5}", r"bad field"),
    ("{}", r"bad field"),
    ("a } b", r"single '\}' at position 2"),
])
def test_bad_templates_fail_at_load_with_one_line(tmp_path, template, message):
    with pytest.raises(TemplateError, match=message):
        parse_template(template)
    path = tmp_path / "task.yaml"
    path.write_text(f"name: t\nsource: {{kind: synthetic, name: sum}}\nprompt:\n  template: {json.dumps(template)}\n")
    with pytest.raises(TaskConfigError, match=rf"{path}: prompt\.template: .*{message}"):
        load_task(path)


def test_template_function_on_a_wrong_value_fails_that_prompt():
    with pytest.raises(TemplateError, match=r"\{n\|spaced\}: join needs a string or a list, got int 7"):
        render("{n|spaced}", {"n": 7})
    with pytest.raises(TemplateError, match=r"chunks needs a size >= 1"):
        render("{g|chunks(0)}", {"g": "12"})


# ------------------------------------------------------------------------------------ pluggable scoring


VERIFIER = """
    def even_digits(answer, fields):
        return answer.isdigit() and int(answer) % 2 == 0 and len(answer) == fields["width"]

    def says_yes(answer, sample, task):
        return answer == "yes"

    def chatty(answer, sample, task):
        return "maybe"

    NOT_A_FUNCTION = 3
"""


def test_module_function_scorer_and_verifier_from_a_file_beside_the_task(tmp_path):
    path = _task(tmp_path, "q.csv", "q,width\nx,2\ny,3\n",
                 "source: {columns: {width: int}}\nprompt: {template: '{q}'}\nscorer: verifier\n"
                 "verifier: 'mine.py:even_digits'\n", **{"mine.py": VERIFIER})
    cfg = load_task(path)
    first, second = load_samples(cfg)
    score = resolve_scorer(cfg)
    assert score("42", first, cfg).correct and score("12", first, cfg).correct  # any valid answer
    assert not score("41", first, cfg).correct and not score("420", first, cfg).correct
    assert score("246", second, cfg).correct and not score(None, second, cfg).correct
    custom = load_task(path, ["scorer=mine.py:says_yes", "verifier=null"])
    assert resolve_scorer(custom)("yes", first, custom) is True  # the runner wraps plain bools
    with pytest.raises(TypeError, match="returned str 'maybe'; expected True/False"):
        as_judgement(resolve_scorer(load_task(path, ["scorer=mine.py:chatty", "verifier=null"]))("x", first, cfg), "x")
    dotted = load_task(path, ["scorer=components.evaluate.scorers:exact", "verifier=null", "source.answer_field=q"])
    row = load_samples(dotted)[0]
    assert resolve_scorer(dotted)("x", row, dotted) == Judgement(True)


@pytest.mark.parametrize("overrides, key, message", [
    (["scorer=nope"], "scorer", r"unknown scorer 'nope'; known: \[.*'verifier'.*\]"),
    (["scorer=no_such_pkg.mod:fn"], "scorer", r"cannot import module 'no_such_pkg\.mod'"),
    (["scorer=mine.py:missing"], "scorer", r"module 'mine\.py' has no attribute 'missing'"),
    (["scorer=mine.py:NOT_A_FUNCTION"], "scorer", r"is not callable"),
    (["scorer=other.py:f"], "scorer", r"file other\.py not found"),
    (["scorer=verifier"], "verifier", r"scorer 'verifier' needs the task key"),
    (["verifier=mine.py:even_digits"], "verifier", r"only used by scorer 'verifier'"),
    (["scorer=verifier", "verifier=mine.py:gone"], "verifier", r"has no attribute 'gone'"),
    (["extractor=broken.py:f"], "extractor", r"importing .*broken\.py failed: ZeroDivisionError"),
])
def test_bad_scorer_verifier_and_extractor_specs_name_the_key(tmp_path, overrides, key, message):
    path = _task(tmp_path, "q.csv", "q,a\nx,1\n", "source: {answer_field: a}\nprompt: {template: '{q}'}\n",
                 **{"mine.py": VERIFIER, "broken.py": "x = 1 / 0\n"})
    _fails(path, rf"{path}: {key}: .*{message}", TaskConfigError, overrides)


def test_reference_scorers_need_an_answer_column_others_do_not(tmp_path):
    path = _task(tmp_path, "q.csv", "q\nx\n", "prompt: {template: '{q}'}\n")
    _fails(path, r"source\.answer_field: is required for kind 'file' with scorer 'exact'", TaskConfigError)
    (tmp_path / "mine.py").write_text(textwrap.dedent(VERIFIER))
    (s,) = load_samples(load_task(path, ["scorer=mine.py:says_yes"]))
    assert s.reference is None and s.fields == {"q": "x"}


def test_shipped_csv_example_verifier_accepts_any_valid_solution(tmp_path):
    from components.families.synthetic import _all_sudoku4

    cfg = load_task(EXAMPLE / "task.yaml")
    check_source(cfg)
    samples = load_samples(cfg)
    score = resolve_scorer(cfg)
    assert samples[0].fields["puzzle"] == "0320204014000004" and samples[0].fields["size"] == 4
    assert sum(s.fields["puzzle"].startswith("0") for s in samples) >= 5
    several = 0
    for s in samples:
        clues = s.fields["puzzle"]
        solutions = ["".join(map(str, g)) for g in _all_sudoku4()
                     if all(c == "0" or int(c) == v for c, v in zip(clues, g))]
        assert s.reference in solutions
        for sol in solutions:  # every valid grid, spaced as rows, is right; a broken one is not
            assert score(" ".join(sol[i:i + 4] for i in range(0, 16, 4)), s, cfg).correct
        several += len(solutions) > 1
        assert not score(s.reference[1:] + s.reference[0], s, cfg).correct
    assert several >= 1, "the example should show a verifier accepting answers other than the reference"
    copy = tmp_path / "mine"
    shutil.copytree(EXAMPLE, copy)
    (copy / "puzzles.csv").write_text((EXAMPLE / "puzzles.csv").read_text().replace("p03,0301000321300000,4",
                                                                                    "p03,0301000321300000,four"))
    with pytest.raises(TaskDataError, match=r"puzzles\.csv:4: column 'size': expected int, got 'four'"):
        load_samples(load_task(copy / "task.yaml"))


def test_iter_rows_is_lazy_for_line_formats(tmp_path):
    path = tmp_path / "big.jsonl"
    path.write_text('{"a": 1}\n{"a": 2}\n{oops\n')
    rows = iter_rows(path, "json")
    assert next(rows).values == {"a": 1} and next(rows).where == f"{path}:2"
    with pytest.raises(RecordFileError, match=r"big\.jsonl:3"):
        next(rows)
