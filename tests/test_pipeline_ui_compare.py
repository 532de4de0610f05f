"""`draftedit compare` tables and plots, and `draftedit ui` starting both services."""

from __future__ import annotations

import socket


from flows import cli
from flows.compare import RunView, plot, table_rows


def test_compare_rows_put_runs_side_by_side_per_mode(tmp_path):
    a = RunView("a" * 32, "run a", {"eval/score": 0.5, "eval/tpf": 2.0, "eval/tps": 30.0,
                                    "bench/speedy/tps": 100.0, "bench/speedy/tpf": 3.0, "bench/speedy/score": 0.4,
                                    "bench/speedy_b8/tps": 300.0, "train/loss_m2t": 1.0})
    b = RunView("b" * 32, "run b", {"eval/score": 0.75, "bench/quality/tps": 50.0})
    header, rows = table_rows([a, b])
    assert header == ["mode", "metric", "run a", "run b"]
    assert ["eval", "score", "0.500", "0.750"] in rows
    assert ["eval", "TPF", "2.00", "-"] in rows
    assert ["speedy", "TPS", "100.0", "-"] in rows
    assert ["quality", "TPS", "-", "50.0"] in rows
    assert ["speedy_b8", "TPS", "300.0", "-"] in rows
    assert not any(r[1] == "loss_m2t" for r in rows)
    out = plot([a, b], tmp_path / "plots" / "c.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_compare_of_a_missing_run_is_a_clear_error(tmp_path, mlflow_uri, capsys):
    code = cli.main(["compare", "deadbeef", "--set", f"tracking.uri={mlflow_uri}",
                     "--set", f"output_dir={tmp_path}"])
    assert code == 2
    assert "run 'deadbeef' does not exist" in capsys.readouterr().err


def test_ui_starts_mlflow_and_prefect(tmp_path, mlflow_uri, monkeypatch, capsys):
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect"))
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    code = cli.main(["ui", f"tracking.uri={mlflow_uri}", "--mlflow-port", str(free_port()),
                     "--prefect-port", str(free_port()), "--check", "--timeout", "240"])
    out = capsys.readouterr().out
    assert code == 0
    assert "MLflow UI:  http://127.0.0.1:" in out and "Prefect UI: http://127.0.0.1:" in out
