"""Every `draftedit` command turns a user mistake into one line (key, file or option named), exit code 2;
`--debug` (or DRAFTEDIT_DEBUG=1) shows the traceback; options and overrides mix in any order."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from components.config import source_of, yaml_line
from components.config import ConfigError
from flows import cli
from golden import require_golden

BAD_YAML = "# a training config with one bad value\ntrainer:\n  batch_size: -4\n"


@pytest.fixture
def env(tmp_path, monkeypatch):
    """Outputs and Prefect's home in tmp_path; DRAFTEDIT_DEBUG restored after the test."""
    monkeypatch.setenv("DRAFTEDIT_OUTPUT_DIR", str(tmp_path / "outputs"))
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect"))
    monkeypatch.setenv("DRAFTEDIT_DEBUG", "")
    (tmp_path / "bad.yaml").write_text(BAD_YAML)
    (tmp_path / "latin1.txt").write_bytes("café".encode("latin-1"))
    (tmp_path / "model").mkdir()
    return tmp_path


def golden() -> str:
    return str(require_golden())


# (command line with {tmp} for the test's folder, text the one line must contain)
CASES = [
    (["train", "--out", "{tmp}/t", "trainer.batch_size=-4"], ["trainer.batch_size", "override 'trainer.batch_size=-4'"]),
    (["train", "--out", "{tmp}/t", "optim.lr=-1"], ["optim.lr", "-1"]),
    (["train", "--config", "{tmp}/bad.yaml", "--out", "{tmp}/t"], ["trainer.batch_size", "bad.yaml:3"]),
    (["train", "--out", "{tmp}/t", "trainer.no_such_key=1"], ["trainer.no_such_key"]),
    (["train", "--config", "{tmp}/missing.yaml", "--out", "{tmp}/t"], ["missing.yaml"]),
    (["data", "cpt.seq_len=-5"], ["cpt.seq_len", "override"]),
    (["rl", "--model", "{tmp}/model", "--out", "{tmp}/rl", "optim.lr=-1"], ["optim.lr", "override"]),
    (["rl", "--model", "{tmp}/model", "--out", "{tmp}/rl"], ["config.json"]),
    (["quantize", "--model", "{tmp}/model", "--out", "{tmp}/q", "--set", "no_such_key=1"], ["no_such_key"]),
    (["quantize", "--model", "{tmp}/model", "--out", "{tmp}/model"], ["--out must differ from --model"]),
    (["quantize", "--model", "{tmp}/absent", "--out", "{tmp}/q"], ["absent", "does not exist"]),
    (["checkpoint", "check", "{tmp}/absent"], ["absent", "does not exist"]),
    (["checkpoint", "init", "--like", "llada2.1-mini", "--out", "{tmp}/s", "--experts", "7"], ["num_experts (7)"]),
    (["bench", "--model", "{tmp}/model", "--set", "no_such_key=1"], ["no_such_key"]),
    (["gpu-check", "--device", "cpu", "--set", "no_such_key=1"], ["no_such_key"]),
    (["eval", "--model", "{tmp}/model", "--limit", "0"], ["--limit must be >= 1"]),
    (["eval", "--model", "{tmp}/model", "--task", "no_such_task"], ["no_such_task"]),
    (["eval", "--task", "sum"], ["--model is required"]),
    (["generate", "--model", "{golden}", "--prompt", ""], ["--prompt", "empty"]),
    (["generate", "--model", "{golden}", "--prompt", "caf\udce9"], ["--prompt", "not UTF-8", "0xe9"]),
    (["generate", "--model", "{golden}", "--prompt-file", "{tmp}/latin1.txt"], ["latin1.txt", "not UTF-8"]),
    (["generate", "--model", "{golden}", "--prompt-file", "{tmp}/absent.txt"], ["absent.txt", "cannot read"]),
    (["generate", "--model", "{golden}", "--ids", ",".join(["7"] * 257)], ["257 tokens", "gen_length 256"]),
    (["generate", "--model", "{golden}", "--ids", "1,2", "--threshold", "2"], ["threshold"]),
    (["generate", "--model", "{golden}", "--ids", "1,2", "--preset", "nope"], ["nope"]),
    (["pipeline", "--dry-run", "retries=-1"], ["retries", "override 'retries=-1'"]),
    (["pipeline", "--dry-run", "stages.sft.overrides=[trainer.batch_size=-4]"], ["stage sft", "trainer.batch_size"]),
    (["pipeline", "--dry-run", "--preset", "no_such_preset"], ["no_such_preset"]),
    (["run", "sft", "trainer.batch_size=-4", "--input", "data={tmp}"], ["stage sft", "trainer.batch_size", "override"]),
    (["run", "sft", "--config", "{tmp}/bad.yaml", "--input", "data={tmp}"], ["stage sft", "bad.yaml:3"]),
    (["run", "rl", "--input", "checkpoint"], ["--input must look like NAME=URI"]),
    (["run", "rl", "--set", "retries=-1"], ["retries", "override"]),
    (["compare", "--last", "0"], ["--last must be >= 1"]),
    (["compare", "--set", "retries=-1"], ["retries"]),
    (["serve", "model", "retries=-1"], ["retries", "override"]),
    (["ui", "--check", "retries=-1"], ["retries", "override"]),
    (["deploy", "apply", "--pool", "gpu", "retries=-1"], ["retries", "override 'retries=-1'"]),
    (["deploy", "apply", "--pool", "gpu"], ["tracking.uri", "MLflow server"]),
]


def _argv(args: list[str], tmp) -> list[str]:
    return [golden() if a == "{golden}" else a.replace("{tmp}", str(tmp)) for a in args]


@pytest.mark.parametrize("args,needles", CASES, ids=[" ".join(args)[:60] for args, _ in CASES])
def test_user_error_is_one_line(args, needles, env, capsys):
    argv = _argv(args, env)
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"draftedit {argv[0]}: error: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def test_every_command_has_an_error_case():
    assert {args[0] for args, _ in CASES} == set(cli.SUBCOMMANDS)


@pytest.mark.parametrize("where", ["global", "command"])
def test_debug_flag_shows_the_traceback(where, env):
    args = ["train", "--out", str(env / "t"), "trainer.batch_size=-4"]
    argv = ["--debug", *args] if where == "global" else [args[0], "--debug", *args[1:]]
    with pytest.raises(ConfigError, match="trainer.batch_size"):
        cli.main(argv)


def test_debug_environment_shows_the_traceback(env, monkeypatch):
    monkeypatch.setenv("DRAFTEDIT_DEBUG", "1")
    with pytest.raises(ConfigError, match="cpt.seq_len"):
        cli.main(["data", "cpt.seq_len=-5"])


def test_a_bug_is_not_turned_into_one_line(env, monkeypatch):
    """Only user errors are caught: a ValueError from a component's own code keeps its traceback."""
    from components.training import run as train_run

    def broken(*_a, **_k):
        raise ValueError("a bug inside training")

    monkeypatch.setattr(train_run, "run_training", broken)
    with pytest.raises(ValueError, match="a bug inside training"):
        cli.main(["train", "--out", str(env / "t"), "trainer.max_steps=1"])


# ------------------------------------------------------------------ options and overrides in any order
ORDER_CASES = [
    ("train", ["a=1", "--out", "o", "b=2", "--config", "c.yaml", "c=3"], "overrides", ["a=1", "b=2", "c=3"]),
    ("data", ["a=1", "--force", "b=2"], "overrides", ["a=1", "b=2"]),
    ("rl", ["a=1", "--model", "m", "b=2", "--out", "o", "c=3"], "overrides", ["a=1", "b=2", "c=3"]),
    ("pipeline", ["a=1", "--dry-run", "b=2", "--preset", "tiny", "c=3"], "overrides", ["a=1", "b=2", "c=3"]),
    ("run", ["rl", "max_minutes=3", "--input", "checkpoint=X", "optim.lr=1e-5"], "overrides",
     ["max_minutes=3", "optim.lr=1e-5"]),
    ("serve", ["model", "a=1", "--port", "5", "b=2"], "overrides", ["a=1", "b=2"]),
    ("ui", ["a=1", "--no-prefect", "b=2"], "overrides", ["a=1", "b=2"]),
    ("compare", ["r1", "--last", "2", "r2"], "runs", ["r1", "r2"]),
    ("quantize", ["--set", "a=1", "--model", "m", "--set", "b=2", "--out", "o"], "overrides", ["a=1", "b=2"]),
    ("bench", ["--set", "a=1", "--model", "m", "--set", "b=2"], "overrides", ["a=1", "b=2"]),
    ("gpu-check", ["--set", "a=1", "--device", "cpu", "--set", "b=2"], "overrides", ["a=1", "b=2"]),
    ("eval", ["--set", "a=1", "--model", "m", "--set", "b=2"], "overrides", ["a=1", "b=2"]),
    ("generate", ["--set", "a=1", "--model", "m", "--ids", "1", "--set", "b=2"], "overrides", ["a=1", "b=2"]),
]


@pytest.mark.parametrize("name,args,dest,expected", ORDER_CASES, ids=[c[0] for c in ORDER_CASES])
def test_options_and_overrides_mix_in_any_order(name, args, dest, expected):
    parsed = cli.subcommand_parser(name).parse_intermixed_args(args)
    assert getattr(parsed, dest) == expected


def test_every_command_taking_overrides_is_order_tested():
    takes = set()
    for name in cli.SUBCOMMANDS:
        dests = {a.dest for a in cli.subcommand_parser(name)._actions}
        if dests & {"overrides", "runs"}:
            takes.add(name)
    assert takes == {c[0] for c in ORDER_CASES}


def test_overrides_after_an_option_reach_the_stage_config(env, capsys):
    """`draftedit run rl max_minutes=3 --input checkpoint=X optim.lr=-1`: the last override is read
    (and rejected by the schema), not refused by argparse as an unrecognized argument."""
    argv = ["run", "rl", "max_minutes=3", "--input", f"checkpoint={env}", "optim.lr=-1"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "optim.lr" in err and "unrecognized" not in err


# ------------------------------------------------------------------ where a bad value came from
def test_source_names_the_override_or_the_yaml_line(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("a:\n  b: 1\n  items:\n    - x: 1\n    - x: 2\n")
    assert yaml_line(path, "a.b") == 2
    assert yaml_line(path, "a.items[1].x") == 5
    assert yaml_line(path, "a.nope") is None
    message = "train.a.b: must be >= 1, got 0"
    assert source_of(message, path, ["a.b=0"]) == " (override 'a.b=0')"
    assert source_of(message, path, ["z=1"]).endswith("c.yaml:2)")
    assert source_of("something else went wrong", None, []) == ""


def test_generate_stays_light_and_reads_raw_argv_bytes(tmp_path):
    """In a fresh interpreter: a non-UTF-8 prompt as raw argv bytes is one line, and `draftedit generate`
    imported neither Prefect nor MLflow."""
    code = ("import sys; from flows import cli; rc = cli.main(sys.argv[1:]); "
            "print('HEAVY', [m for m in ('prefect', 'mlflow') if m in sys.modules]); sys.exit(rc)")
    out = subprocess.run([sys.executable, "-c", code, "generate", "--model", golden(), "--prompt", b"ab\xffcd"],
                         capture_output=True, text=True, timeout=300,
                         env={**os.environ, "DRAFTEDIT_OUTPUT_DIR": str(tmp_path)})
    assert out.returncode == 2, out.stderr
    assert out.stderr.splitlines() == ["draftedit generate: error: --prompt: not UTF-8 text (byte 0xff at offset 2)"]
    assert "HEAVY []" in out.stdout


def test_generate_rejects_a_text_prompt_longer_than_the_model_takes(env, capsys):
    """A tokenized prompt over max_position_embeddings minus gen_length: one line, before decoding."""
    from pipeline_support import make_checkpoint

    folder = make_checkpoint(env / "ckpt")  # max_position_embeddings 256
    base = ["generate", "--model", str(folder), "--gen-length", "64", "--block-length", "32", "--no-live"]
    assert cli.main(base + ["--prompt", "sort 3 1 2 " * 200]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert "--prompt: the prompt is" in line and "longer than the 192 this model can take" in line
    assert cli.main(base + ["--prompt", "sort 3 1 2"]) == 0


def test_a_user_error_inside_a_flow_is_one_line_too(env, prefect_harness, mlflow_uri, capfd):
    """Prefect logs the traceback of whatever leaves a flow; for a user error the CLI's line is all."""
    argv = ["run", "evaluate", "--input", f"checkpoint={env}/absent", "--set", f"tracking.uri={mlflow_uri}",
            "--set", f"output_dir={env}/outputs"]
    assert cli.main(argv) == 2
    err = capfd.readouterr().err
    assert "Traceback" not in err
    assert [line for line in err.splitlines() if "error" in line.lower()] == [
        f"draftedit run: error: stage evaluate input 'checkpoint' not found: {env}/absent does not exist"]
