"""`draftedit ui` starts both services, and the MLflow links we print open the training runs."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import tempfile

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


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def rendered_text(url: str) -> str:
    """The text of `url` after headless Chromium has run its scripts (MLflow's UI is a React app)."""
    with tempfile.TemporaryDirectory() as profile:
        out = subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--virtual-time-budget=20000", "--dump-dom", url],
            capture_output=True, text=True, timeout=120, check=True).stdout
    out = re.sub(r"<(script|style)[^>]*>.*?</\1>", " ", out, flags=re.S)
    return " ".join(re.sub(r"<[^>]+>", " ", out).split())


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on this machine (Debian: apt-get install chromium)")
def test_printed_links_open_the_runs_table_and_the_compare_view(tmp_path, mlflow_uri):
    from mlflow.tracking import MlflowClient

    from components.tracking import compare_url, get_or_create_experiment, runs_url
    from flows.processes import start, stop
    from flows.ui import mlflow_ui_command, wait_http

    client = MlflowClient(mlflow_uri)
    experiment = get_or_create_experiment(client, "draftedit-ui-check")
    parent = client.create_run(experiment, run_name="pipeline-ui-check").info.run_id
    stages = [client.create_run(experiment, run_name=f"{name}-stage", tags={"mlflow.parentRunId": parent}).info.run_id
              for name in ("sft", "evaluate")]
    for run in [parent, *stages]:
        client.set_terminated(run)
    port = free_port()
    server = start(mlflow_ui_command(mlflow_uri, "127.0.0.1", port))
    try:
        base = f"http://127.0.0.1:{port}"
        wait_http(f"{base}/health", 240, server)
        runs = rendered_text(runs_url(base, experiment))
        assert "pipeline-ui-check" in runs and "Run Name" in runs, runs[:500]
        assert "Detect Issues" not in runs and "No data available" not in runs, "opened on the GenAI overview"
        compare = rendered_text(compare_url(base, experiment, stages))
        assert "Comparing 2 Runs" in compare and "sft-stage" in compare and "evaluate-stage" in compare, compare[:500]
    finally:
        stop(server)
