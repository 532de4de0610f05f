"""The `draftedit` command: lazy subcommands, clear errors for bad input, every listed command exists."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

from flows import cli


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], capture_output=True, text=True,
                          timeout=300, env=env)


def test_help_lists_every_subcommand_without_importing_them():
    # A fresh interpreter: --help must not import any component or Prefect/MLflow.
    code = (
        "import sys; from flows import cli\n"
        "try:\n    cli.main(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('prefect', 'mlflow', 'torch', 'lightning') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    for name in cli.SUBCOMMANDS:
        assert name in out.stdout
    assert "HEAVY []" in out.stdout


def test_only_the_selected_module_is_imported(monkeypatch):
    imported = []
    real = importlib.import_module

    def spy(name, *a, **k):
        imported.append(name)
        return real(name, *a, **k)

    monkeypatch.setattr(cli.importlib, "import_module", spy)
    parser = cli.build_parser("compare")
    assert imported == ["flows.compare"]
    args = parser.parse_args(["compare", "--last", "3"])
    assert args.last == 3 and callable(args._run)


def test_missing_module_gives_a_clear_message(monkeypatch, capsys):
    monkeypatch.setitem(cli.SUBCOMMANDS, "ghost", ("components.no_such_module.cli", "a command that is not there"))
    assert cli.main(["ghost"]) == 2
    err = capsys.readouterr().err
    assert "draftedit ghost" in err and "components.no_such_module.cli" in err and "not available" in err


def test_module_without_entry_points_is_reported(monkeypatch, capsys):
    monkeypatch.setitem(cli.SUBCOMMANDS, "halfway", ("flows.config", "module lacking add_arguments/run"))
    assert cli.main(["halfway"]) == 2
    assert "does not define add_arguments()" in capsys.readouterr().err


def test_missing_dependency_inside_a_module_is_not_hidden(monkeypatch, tmp_path):
    # A module that exists but imports something missing is a real bug: it must raise, not be "unavailable".
    (tmp_path / "broken_cmd.py").write_text("import definitely_not_installed_pkg\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(cli.SUBCOMMANDS, "broken", ("broken_cmd", "broken"))
    with pytest.raises(ModuleNotFoundError, match="definitely_not_installed_pkg"):
        cli.main(["broken"])


def test_unknown_subcommand_exits_2():
    out = run_cli("frobnicate")
    assert out.returncode == 2
    assert "invalid choice" in out.stderr


def test_user_errors_are_one_line_not_a_traceback():
    out = run_cli("pipeline", "--dry-run", "--preset", "no_such_preset")
    assert out.returncode == 2
    assert "unknown pipeline preset 'no_such_preset'" in out.stderr
    assert "Traceback" not in out.stderr
    out = run_cli("pipeline", "--dry-run", "stages.rl.bogus_key=1")
    assert out.returncode == 2 and "stages.rl.bogus_key" in out.stderr


@pytest.mark.parametrize("name", sorted(cli.SUBCOMMANDS))
def test_every_listed_subcommand_exists(name):
    """By the end every command in SUBCOMMANDS must be implemented (add_arguments + run)."""
    module = cli.load_subcommand(name)
    parser = cli.build_parser(name)
    assert callable(module.run)
    help_text = parser._subparsers._group_actions[0].choices[name].format_help()
    assert f"draftedit {name}" in help_text


def test_console_script_is_declared():
    import tomllib
    from pathlib import Path

    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    assert pyproject["project"]["scripts"]["draftedit"] == "flows.cli:main"
