"""`draftedit ui` starts both services."""

from __future__ import annotations

import socket

import pytest

from flows import cli


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_ui_starts_mlflow_and_prefect(tmp_path, mlflow_uri, monkeypatch, capsys):
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect"))
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    code = cli.main(["ui", f"tracking.uri={mlflow_uri}", "--mlflow-port", str(free_port()),
                     "--prefect-port", str(free_port()), "--check", "--timeout", "240"])
    out = capsys.readouterr().out
    assert code == 0
    assert "MLflow UI:  http://127.0.0.1:" in out and "Prefect UI: http://127.0.0.1:" in out
